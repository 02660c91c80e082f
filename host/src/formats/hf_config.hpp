// Hugging Face config.json: the common fields every architecture needs,
// read from either generation of keys (transformers 4.x: rope_theta,
// rope_scaling, torch_dtype; 5.x: rope_parameters, dtype; GPT-2's n_embd...).
// The raw JSON stays available for what is architecture-specific.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace mango::formats {

struct ConfigError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct RopeScaling {
    std::string type = "default";  // default | linear | dynamic | llama3 | yarn | ...
    double factor = 1.0;
    nlohmann::json params;  // every key of the scaling object
};

struct HfConfig {
    std::string path;  // for error messages
    std::string model_type;
    std::vector<std::string> architectures;
    int64_t hidden_size = 0, num_layers = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
    int64_t intermediate_size = 0, vocab_size = 0, max_positions = 0;
    double rope_theta = 10000.0;
    RopeScaling rope_scaling;
    std::string dtype;  // "float32", "bfloat16", ... ("" when unset)
    bool tie_word_embeddings = false;
    std::vector<int64_t> bos_token_ids, eos_token_ids;
    std::optional<int64_t> pad_token_id;
    nlohmann::json raw;

    // A key of raw as T, or throws ConfigError naming the file and key.
    template <class T>
    T require(const std::string &key) const {
        if (!raw.contains(key)) throw ConfigError(path + ": missing key '" + key + "'");
        try {
            return raw[key].get<T>();
        } catch (const nlohmann::json::exception &) {
            throw ConfigError(path + ": key '" + key + "' has the wrong type: " + raw[key].dump());
        }
    }
};

HfConfig parse_hf_config(const std::string &text, const std::string &where);
HfConfig load_hf_config(const std::string &model_dir);  // MODEL_DIR/config.json

}  // namespace mango::formats
