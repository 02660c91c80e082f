#include "formats/hf_config.hpp"

#include "util/error.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>

namespace mango::formats {
namespace {

using nlohmann::json;

// The first present key of `keys`, as an integer (0 when none is present).
int64_t int_key(const json &j, std::initializer_list<const char *> keys, const std::string &where) {
    for (const char *k : keys) {
        if (!j.contains(k) || j[k].is_null()) continue;
        if (!j[k].is_number_integer() || j[k].get<int64_t>() < 0)
            throw ConfigError(where + ": key '" + k + "' must be a non-negative integer, found " + j[k].dump());
        return j[k].get<int64_t>();
    }
    return 0;
}

std::vector<int64_t> id_list(const json &j, const char *key, const std::string &where) {
    if (!j.contains(key) || j[key].is_null()) return {};
    if (j[key].is_number_integer()) return {j[key].get<int64_t>()};
    if (j[key].is_array()) {
        std::vector<int64_t> out;
        for (const json &v : j[key]) {
            if (!v.is_number_integer()) throw ConfigError(where + ": key '" + key + "' must hold integers, found " + j[key].dump());
            out.push_back(v.get<int64_t>());
        }
        return out;
    }
    throw ConfigError(where + ": key '" + key + "' must be an integer or a list of integers, found " + j[key].dump());
}

}  // namespace

namespace {
HfConfig parse_checked(const std::string &text, const std::string &where) {
    HfConfig c;
    c.path = where;
    try {
        c.raw = json::parse(text);
    } catch (const json::exception &e) {
        throw ConfigError(where + ": not valid JSON: " + e.what());
    }
    const json &j = c.raw;
    if (!j.is_object()) throw ConfigError(where + ": config must be a JSON object");
    if (!j.contains("model_type") || !j["model_type"].is_string())
        throw ConfigError(where + ": missing string key 'model_type' (which architecture is this?)");
    c.model_type = j["model_type"].get<std::string>();
    if (j.contains("architectures") && j["architectures"].is_array())
        for (const json &a : j["architectures"])
            if (a.is_string()) c.architectures.push_back(a.get<std::string>());

    c.hidden_size = int_key(j, {"hidden_size", "n_embd", "d_model", "dim"}, where);
    c.num_layers = int_key(j, {"num_hidden_layers", "n_layer", "num_layers", "n_layers"}, where);
    // Each layer declares tensors, and tensor tables stop at 250,000 (mango/tensors.hpp). A larger count is
    // a wrong config, refused before an architecture plugin sizes per-layer state by it. Every spelling is
    // checked: a plugin reads its own.
    constexpr int64_t kMaxLayers = 250000;
    for (const char *key : {"num_hidden_layers", "n_layer", "num_layers", "n_layers"})
        if (const int64_t n = int_key(j, {key}, where); n > kMaxLayers)
            throw ConfigError(where + ": " + key + " = " + std::to_string(n) + " is more layers than a model can declare (at most " +
                              std::to_string(kMaxLayers) + ")");
    c.num_heads = int_key(j, {"num_attention_heads", "n_head", "num_heads", "n_heads"}, where);
    c.num_kv_heads = int_key(j, {"num_key_value_heads", "n_kv_heads"}, where);
    if (!c.num_kv_heads) c.num_kv_heads = c.num_heads;
    c.head_dim = int_key(j, {"head_dim"}, where);
    if (!c.head_dim && c.num_heads) c.head_dim = c.hidden_size / c.num_heads;
    c.intermediate_size = int_key(j, {"intermediate_size", "n_inner", "ffn_dim", "hidden_dim"}, where);
    c.vocab_size = int_key(j, {"vocab_size"}, where);
    c.max_positions = int_key(j, {"max_position_embeddings", "n_positions", "n_ctx"}, where);
    if (c.num_heads && c.num_kv_heads && c.num_heads % c.num_kv_heads != 0)
        throw ConfigError(where + ": num_attention_heads " + std::to_string(c.num_heads) + " is not a multiple of num_key_value_heads " +
                          std::to_string(c.num_kv_heads));

    // RoPE: 5.x nests theta and scaling in rope_parameters; 4.x has rope_theta + rope_scaling.
    const json rope = j.contains("rope_parameters") && j["rope_parameters"].is_object() ? j["rope_parameters"] : json();
    const json theta = rope.contains("rope_theta") ? rope["rope_theta"] : j.value("rope_theta", json());
    if (!theta.is_null()) {
        if (!theta.is_number() || theta.get<double>() <= 0)
            throw ConfigError(where + ": rope_theta must be a positive number, found " + theta.dump());
        c.rope_theta = theta.get<double>();
    }
    json scaling = j.contains("rope_scaling") && j["rope_scaling"].is_object() ? j["rope_scaling"] : rope;
    if (scaling.is_object() && !scaling.empty()) {
        const json type = scaling.contains("rope_type") ? scaling["rope_type"] : scaling.value("type", json("default"));
        if (!type.is_string()) throw ConfigError(where + ": rope scaling type must be a string, found " + type.dump());
        c.rope_scaling.type = type.get<std::string>();
        if (scaling.contains("factor")) {
            if (!scaling["factor"].is_number()) throw ConfigError(where + ": rope scaling factor must be a number");
            c.rope_scaling.factor = scaling["factor"].get<double>();
        }
        c.rope_scaling.params = scaling;
    }

    const json dtype = j.contains("dtype") ? j["dtype"] : j.value("torch_dtype", json());
    if (dtype.is_string()) c.dtype = dtype.get<std::string>();
    // The config classes that leave tie_word_embeddings at PretrainedConfig's true; the others set false.
    for (const char *tied : {"gpt2", "gpt_neo", "bert", "roberta", "distilbert"})
        if (c.model_type == tied) c.tie_word_embeddings = true;
    if (j.contains("tie_word_embeddings")) {
        if (!j["tie_word_embeddings"].is_boolean())
            throw ConfigError(where + ": tie_word_embeddings must be true or false, found " + clip(j["tie_word_embeddings"].dump()));
        c.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
    }
    c.bos_token_ids = id_list(j, "bos_token_id", where);
    c.eos_token_ids = id_list(j, "eos_token_id", where);
    if (j.contains("pad_token_id") && j["pad_token_id"].is_number_integer()) c.pad_token_id = j["pad_token_id"].get<int64_t>();
    return c;
}
}  // namespace

HfConfig parse_hf_config(const std::string &text, const std::string &where) {
    try {
        return parse_checked(text, where);
    } catch (const json::exception &e) {  // a type the checks above did not foresee
        throw ConfigError(where + ": " + e.what());
    }
}

HfConfig load_hf_config(const std::string &model_dir) {
    const std::string path = (std::filesystem::path(model_dir) / "config.json").string();
    std::ifstream in(path);
    if (!in) throw ConfigError(path + ": cannot read (a model folder needs config.json)");
    std::stringstream ss;
    ss << in.rdbuf();
    return parse_hf_config(ss.str(), path);
}

}  // namespace mango::formats
