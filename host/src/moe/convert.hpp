// Dense -> mixture-of-experts conversion: the FFNs of chosen layers of a
// dense model handed to a moe_converter plugin (upcycle, split, from_models,
// ...), each converted layer tested on text and reverted to dense when it
// hurts, the result written as a Hugging Face MoE folder: Mixtral when every
// layer is converted, Qwen2-MoE (dense layers between sparse ones, zero q/k/v
// biases where the source has none) otherwise.
#pragma once

#include "abi/plugins.hpp"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace mango::moe {

struct ConvertOptions {
    std::string converter = "upcycle";
    nlohmann::json converter_options = nlohmann::json::object();
    std::string where = "command line";  // for messages about the options
    int64_t experts = 4, top_k = 2;
    std::vector<int32_t> layers;  // explicit layers; empty = by `every`
    int64_t every = 1;            // convert layers l with (l + 1) % every == 0
    std::string format;           // "" (auto), "mixtral", "qwen2_moe", "deepseek_v3"
    // Test text: each converted layer is kept only if the metric on it rises
    // by at most max_increase (perplexity: relative; kl: nats per token,
    // against the dense model's predictions).
    std::string test_data;
    at::Tensor test_ids;  // or tokenised sequences [N, T] (pipelines: a data set's validation part)
    double max_increase = 0.02;
    std::string metric = "perplexity";
    int64_t test_sequences = 16, seq_len = 128;
    // Router initialisation data: calibration text (the FFN inputs, for
    // router_init = data), and prompts per expert (a YAML/JSON list of
    // {positive_prompts, negative_prompts}, or mergekit-moe's configuration)
    // turned into router rows by `gate_mode` (for router_init = directions).
    std::string calibration_data, prompts, gate_mode;  // gate_mode "" = hidden with prompts
    int64_t calibration_tokens = 2048;
    at::Tensor calibration_ids;        // or tokenised sequences [N, T]
    std::vector<std::string> sources;  // from_models: one fine-tune folder per expert (default: the prompts file's source_model)
    std::string rest = "base";         // from_models: non-FFN tensors from the base, or "average" of the sources
    std::string tokenizer;             // default: MODEL_DIR/tokenizer.json
    uint64_t seed = 0;
    bool force = false, progress = true;
    bool keep_other_files = false;  // with force: files of the replaced OUT_DIR the conversion does not write stay
};

struct LayerOutcome {
    int32_t layer = 0;
    bool converted = false;
    double before = 0, after = 0;  // the metric without and with this layer converted (0 without test data)
};

struct ConvertResult {
    std::string out_dir, format, metric;
    double dense_metric = 0, final_metric = 0;
    std::vector<LayerOutcome> layers;
    int64_t experts = 0, top_k = 0;
};

ConvertResult convert(const PluginHost &host, const std::string &model_dir, const std::string &out_dir, const ConvertOptions &options);

// The outcome as a printable table.
std::string outcome_table(const ConvertResult &r);

}  // namespace mango::moe
