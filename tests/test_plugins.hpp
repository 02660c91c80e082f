// The plugin host the runtime tests share: the build's plugins (plus any
// extra fixture folders), scanned without cache or environment.
#pragma once

#include "model/model.hpp"
#include "abi/plugins.hpp"

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

inline mango::PluginHost make_test_plugin_host(std::vector<std::string> extra = {}) {
    mango::registry::Options o;
    o.use_env = false;
    o.use_builtin = false;
    o.cache_file = "-";
    o.scanner = MANGO_SCANNER_PATH;
    o.plugin_paths = {MANGO_PLUGIN_DIR};
    for (auto &e : extra) o.plugin_paths.push_back(std::move(e));
    return mango::PluginHost(mango::registry::Registry::discover(o));
}

// One host for a whole test binary: the build's plugins.
inline const mango::PluginHost &shared_plugins() {
    static const mango::PluginHost host = make_test_plugin_host();
    return host;
}

// An adapter or router by plugin name, with options.
inline mango::InstanceSpec named(const std::string &name, nlohmann::json options = nlohmann::json::object()) {
    mango::InstanceSpec s;
    s.name = name;
    s.options = std::move(options);
    return s;
}

// A small DeepSeek-V3 config (2 layers, the first dense; 4 experts in 2 groups; LoRA query), `extra` merged in.
inline nlohmann::json tiny_deepseek_config(nlohmann::json extra = nlohmann::json::object()) {
    nlohmann::json c = {{"model_type", "deepseek_v3"},
                        {"hidden_size", 32},
                        {"num_hidden_layers", 2},
                        {"num_attention_heads", 2},
                        {"num_key_value_heads", 2},
                        {"intermediate_size", 48},
                        {"moe_intermediate_size", 16},
                        {"n_routed_experts", 4},
                        {"n_shared_experts", 1},
                        {"num_experts_per_tok", 2},
                        {"n_group", 2},
                        {"topk_group", 1},
                        {"first_k_dense_replace", 1},
                        {"q_lora_rank", 16},
                        {"kv_lora_rank", 8},
                        {"qk_rope_head_dim", 4},
                        {"qk_nope_head_dim", 4},
                        {"v_head_dim", 8},
                        {"vocab_size", 64},
                        {"initializer_range", 0.1}};
    c.update(extra);
    return c;
}

// A small random LLaMA (2 layers, 4 heads, 2 KV heads) of the given width,
// its config.json written to a folder under the test's temp dir.
inline std::shared_ptr<mango::Model> random_llama(int64_t hidden, uint64_t seed, int64_t vocab = 128, at::Device device = at::kCPU) {
    const auto dir = std::filesystem::path(MANGO_TEST_TMP) / ("llama_" + std::to_string(hidden) + "_v" + std::to_string(vocab));
    std::filesystem::create_directories(dir);
    // ctest runs tests in parallel processes: write aside, then rename, so no one reads half a file.
    const auto tmp = dir / ("config.json." + std::to_string(::getpid()));
    std::ofstream(tmp) << nlohmann::json{{"model_type", "llama"},    {"hidden_size", hidden},    {"num_hidden_layers", 2},
                                         {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"intermediate_size", 2 * hidden},
                                         {"vocab_size", vocab},      {"initializer_range", 0.1}}
                              .dump();
    std::filesystem::rename(tmp, dir / "config.json");
    return mango::Model::init_random(shared_plugins(), dir.string(), seed, at::kFloat, device);
}
