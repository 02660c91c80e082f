// Architecture plugins against transformers (tests/golden/models): logits on
// every real token of a padded batch within 1e-4, 20 greedy tokens identical
// with and without the KV cache, and cached decoding equal to recomputation.
#include "abi/host_api.hpp"
#include "model/generate.hpp"
#include "model/model.hpp"

#include "test_plugins.hpp"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <set>

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string model_dir(const std::string &name) { return (fs::path(MANGO_SOURCE_DIR) / "tests/golden/models" / name).string(); }

at::Tensor tensor_of(const json &j, at::ScalarType t) {
    std::vector<int64_t> shape;
    const json *p = &j;
    while (p->is_array()) {
        shape.push_back(static_cast<int64_t>(p->size()));
        p = &(*p)[0];
    }
    std::vector<double> flat;
    std::function<void(const json &)> walk = [&](const json &x) {
        if (x.is_array())
            for (const auto &e : x) walk(e);
        else
            flat.push_back(x.get<double>());
    };
    walk(j);
    return at::tensor(flat, at::kDouble).reshape(shape).to(t);
}

struct Golden {
    json j;
    at::Tensor ids, mask, pos;
    explicit Golden(const std::string &name) : j(json::parse(std::ifstream(fs::path(model_dir(name)) / "golden.json"))) {
        ids = tensor_of(j["input_ids"], at::kLong);
        mask = tensor_of(j["attention_mask"], at::kLong);
        if (j.contains("position_ids")) pos = tensor_of(j["position_ids"], at::kLong);
    }
    std::vector<std::vector<int64_t>> prompts() const {
        std::vector<std::vector<int64_t>> out;
        for (int64_t b = 0; b < ids.size(0); ++b) {
            std::vector<int64_t> p;
            for (int64_t t = 0; t < ids.size(1); ++t)
                if (mask[b][t].item<int64_t>()) p.push_back(ids[b][t].item<int64_t>());
            out.push_back(p);
        }
        return out;
    }
};

// A copy of golden model `name` under the test's temp dir as `tag`, its config.json changed by `edit`.
std::string patched_copy(const std::string &name, const std::string &tag, const std::function<void(json &)> &edit) {
    const fs::path d = fs::path(MANGO_TEST_TMP) / tag;
    fs::remove_all(d);
    fs::create_directories(d);
    json cfg = json::parse(std::ifstream(fs::path(model_dir(name)) / "config.json"));
    edit(cfg);
    std::ofstream(d / "config.json") << cfg.dump();
    fs::copy_file(fs::path(model_dir(name)) / "model.safetensors", d / "model.safetensors");
    return d.string();
}

// Largest |a - b| over positions where mask is 1 (a, b: [B, T, ...]).
double masked_max_diff(const at::Tensor &a, const at::Tensor &b, const at::Tensor &mask) {
    at::Tensor keep = mask.to(at::kBool);
    return (a.to(at::kDouble) - b.to(at::kDouble)).abs().index({keep}).max().item<double>();
}

}  // namespace

class DecoderParity : public ::testing::TestWithParam<std::string> {};

TEST_P(DecoderParity, LogitsMatchTransformers) {
    const Golden g(GetParam());
    auto model = mango::Model::load(shared_plugins(), model_dir(GetParam()));
    at::NoGradGuard no_grad;
    at::Tensor logits = model->forward(g.ids, g.mask, g.pos);
    const double diff = masked_max_diff(logits, tensor_of(g.j["logits"], at::kDouble), g.mask);
    EXPECT_LE(diff, 1e-4) << GetParam();
    RecordProperty("max_abs_diff", std::to_string(diff));
}

TEST_P(DecoderParity, GreedyTokensMatchTransformersWithAndWithoutCache) {
    const Golden g(GetParam());
    auto model = mango::Model::load(shared_plugins(), model_dir(GetParam()));
    mango::GenerateOptions o;
    o.max_new_tokens = 20;
    const auto want = g.j["generated"].get<std::vector<std::vector<int64_t>>>();
    EXPECT_EQ(mango::generate(*model, g.prompts(), o), want) << GetParam() << " with cache";
    o.use_cache = false;
    EXPECT_EQ(mango::generate(*model, g.prompts(), o), want) << GetParam() << " without cache";
    // The static KV cache (what GPUs decode with, and capture as CUDA graphs): the same tokens. Sliding
    // windows (mistral and mixtral_fused: sliding_window in config.json; gpt_neo's local layers) keep the
    // growing cache and say so.
    o.use_cache = true;
    o.decode = "static";
    std::string used;
    o.decode_used = &used;
    EXPECT_EQ(mango::generate(*model, g.prompts(), o), want) << GetParam() << " with a static cache";
    const bool windowed = GetParam() == "mistral" || GetParam() == "mixtral_fused" || GetParam().rfind("gpt_neo", 0) == 0;
    EXPECT_EQ(used, windowed ? "eager" : "static") << GetParam();
}

TEST_P(DecoderParity, CachedDecodingEqualsRecomputation) {
    const Golden g(GetParam());
    auto model = mango::Model::load(shared_plugins(), model_dir(GetParam()));
    at::NoGradGuard no_grad;
    const int64_t T = g.ids.size(1), split = T - 3;
    at::Tensor full = model->forward(g.ids, g.mask, g.pos);
    model->clear_cache();
    at::Tensor first = model->forward(g.ids.narrow(1, 0, split), g.mask.narrow(1, 0, split), g.pos.narrow(1, 0, split), true);
    EXPECT_EQ(model->cached_tokens(), split);
    at::Tensor rest = model->forward(g.ids.narrow(1, split, T - split), g.mask, g.pos.narrow(1, split, T - split), true);
    const at::Tensor both = at::cat({first, rest}, 1);
    EXPECT_LE(masked_max_diff(both, full, g.mask), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Golden, DecoderParity,
                         ::testing::Values("gpt2", "gpt_neo", "gptj", "llama", "llama3_scaled", "llama_linear", "mistral", "qwen2",
                                           "mixtral", "mixtral_fused", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3",
                                           "deepseek_v3_plain", "llama_bias", "gpt2_untied", "gpt_neo_untied"));

TEST(Model, UnknownModelTypeListsInstalledArchitectures) {
    const fs::path d = fs::path(MANGO_TEST_TMP) / "unknown_arch";
    fs::create_directories(d);
    std::ofstream(d / "config.json") << R"({"model_type": "falcon"})";
    try {
        mango::Model::load(shared_plugins(), d.string());
        FAIL();
    } catch (const mango::HostError &e) {
        EXPECT_NE(
            std::string(e.what()).find("no architecture plugin handles model_type = \"falcon\" (installed: bert (bert, roberta, "
                                       "distilbert); deepseek_v3 (deepseek_v3); gpt2 (gpt2); gpt_neo (gpt_neo); gptj (gptj); llama (llama, "
                                       "mistral, qwen2); mixtral (mixtral)"),
            std::string::npos)
            << e.what();
    }
}

TEST(Model, MissingOrMisshapenTensorIsNamed) {
    const fs::path d = fs::path(MANGO_TEST_TMP) / "broken_llama";
    fs::remove_all(d);
    fs::create_directories(d);
    fs::copy_file(fs::path(model_dir("llama")) / "config.json", d / "config.json");
    auto ckpt = mango::formats::Checkpoint::open(model_dir("llama"));
    mango::formats::NamedTensors ts;
    for (const auto &n : ckpt.names())
        if (n != "model.layers.1.mlp.up_proj.weight") ts.emplace_back(n, ckpt.tensor(n));
    mango::formats::write_checkpoint(d.string(), ts);
    try {
        mango::Model::load(shared_plugins(), d.string());
        FAIL();
    } catch (const mango::HostError &e) {
        EXPECT_NE(std::string(e.what()).find("has no tensor 'model.layers.1.mlp.up_proj.weight'"), std::string::npos) << e.what();
    }
    ts.emplace_back("model.layers.1.mlp.up_proj.weight", at::zeros({128, 64}, at::kLong));
    mango::formats::write_checkpoint(d.string(), ts);
    try {
        mango::Model::load(shared_plugins(), d.string());
        FAIL();
    } catch (const mango::HostError &e) {
        EXPECT_NE(std::string(e.what()).find("tensor 'model.layers.1.mlp.up_proj.weight' has dtype Long, expected a floating-point weight"),
                  std::string::npos)
            << e.what();
    }
    ts.back() = {"model.layers.1.mlp.up_proj.weight", at::zeros({128, 65})};
    mango::formats::write_checkpoint(d.string(), ts);
    try {
        mango::Model::load(shared_plugins(), d.string());
        FAIL();
    } catch (const mango::HostError &e) {
        EXPECT_NE(std::string(e.what()).find("tensor 'model.layers.1.mlp.up_proj.weight' has shape [128, 65], expected [128, 64]"),
                  std::string::npos)
            << e.what();
    }
}

// Qwen2 and Qwen2-MoE slide per layer: the layers `layer_types` marks, or, in configs without it, the
// layers transformers' config classes pick (Qwen2Config: from max_window_layers on; Qwen2MoeConfig: the even
// layers below max_window_layers). The goldens have no window; a window no layer uses must give their
// logits, and the rule must agree with the same pattern written out as layer_types.
TEST(Model, QwenSlidingWindowsFollowLayerTypes) {
    for (const std::string name : {"qwen2", "qwen2_moe"}) {
        const Golden g(name);
        const int64_t layers = json::parse(std::ifstream(fs::path(model_dir(name)) / "config.json"))["num_hidden_layers"].get<int64_t>();
        int variant = 0;
        auto logits = [&](const json &patch) {
            const std::string d = patched_copy(name, "windows_" + name + "_" + std::to_string(variant++), [&](json &cfg) {
                cfg.erase("layer_types");
                cfg.merge_patch(patch);
            });
            at::NoGradGuard no_grad;
            return mango::Model::load(shared_plugins(), d)->forward(g.ids, g.mask, g.pos);
        };
        const at::Tensor golden = tensor_of(g.j["logits"], at::kDouble);
        const json on = {{"use_sliding_window", true}, {"sliding_window", 2}};
        json none = on, all_full = on, by_rule = on, listed = on;
        none["max_window_layers"] = name == "qwen2" ? layers : 0;  // the rule picks no layer
        all_full["max_window_layers"] = 0;
        all_full["layer_types"] = json::array();
        by_rule["max_window_layers"] = name == "qwen2" ? 0 : layers;  // qwen2: every layer; qwen2_moe: 0, 2, ...
        listed["max_window_layers"] = 0;
        listed["layer_types"] = json::array();
        for (int64_t i = 0; i < layers; ++i) {
            all_full["layer_types"].push_back("full_attention");
            listed["layer_types"].push_back(name == "qwen2" || i % 2 == 0 ? "sliding_attention" : "full_attention");
        }
        EXPECT_LE(masked_max_diff(logits(none), golden, g.mask), 1e-4) << name;
        EXPECT_LE(masked_max_diff(logits(all_full), golden, g.mask), 1e-4) << name;
        const at::Tensor ruled = logits(by_rule);
        EXPECT_GT(masked_max_diff(ruled, golden, g.mask), 1e-3) << name << ": a 2-token window must change the logits";
        EXPECT_LE(masked_max_diff(logits(listed), ruled, g.mask), 1e-6) << name;
        json bad = on;
        bad["layer_types"] = json::array({"sliding_attention"});
        bad["layer_types"][0] = "local";
        try {
            logits(bad);
            ADD_FAILURE() << name << ": layer_types 'local' was accepted";
        } catch (const mango::HostError &e) {
            EXPECT_NE(std::string(e.what()).find("layer_types.0 is 'local', expected sliding_attention or full_attention"),
                      std::string::npos)
                << e.what();
        }
    }
}

// sliding_window as the config classes read it: MistralConfig's default is
// 4096 (null: no window); LlamaConfig has no such key, so llama ignores it.
TEST(Model, SlidingWindowKeyFollowsTheConfigClass) {
    const int64_t T = 4100;  // past the 4096-token default window
    at::manual_seed(5);
    const at::Tensor ids = at::randint(0, 64, {1, T}), mask = at::ones_like(ids), pos = at::arange(T).unsqueeze(0);
    int variant = 0;
    auto logits = [&](const std::string &name, const std::function<void(json &)> &edit) {
        const std::string d = patched_copy(name, "window_key_" + std::to_string(variant++), [&](json &cfg) {
            cfg["max_position_embeddings"] = 8192;
            edit(cfg);
        });
        at::NoGradGuard no_grad;
        return mango::Model::load(shared_plugins(), d)->forward(ids, mask, pos).narrow(1, T - 8, 8);
    };
    auto diff = [](const at::Tensor &a, const at::Tensor &b) { return (a - b).abs().max().item<double>(); };
    const at::Tensor absent = logits("mistral", [](json &c) { c.erase("sliding_window"); });
    const at::Tensor explicit_4096 = logits("mistral", [](json &c) { c["sliding_window"] = 4096; });
    const at::Tensor none = logits("mistral", [](json &c) { c["sliding_window"] = nullptr; });
    EXPECT_LE(diff(absent, explicit_4096), 1e-6) << "absent is MistralConfig's 4096";
    EXPECT_GT(diff(absent, none), 1e-5) << "null is no window: the last tokens also see the first four";
    const Golden g("llama");
    const std::string d = patched_copy("llama", "window_key_llama", [](json &cfg) { cfg["sliding_window"] = 2; });
    at::NoGradGuard no_grad;
    EXPECT_LE(masked_max_diff(mango::Model::load(shared_plugins(), d)->forward(g.ids, g.mask, g.pos), tensor_of(g.j["logits"], at::kDouble),
                              g.mask),
              1e-4)
        << "llama ignores sliding_window";
}

// Yarn keys written as null mean what transformers' _compute_yarn_parameters makes of None: attention_factor
// null is computed from factor (as if absent), truncate null does not truncate (as false).
TEST(Model, YarnNullKeysReadAsTransformersReadsThem) {
    const Golden g("llama");
    int variant = 0;
    auto logits = [&](const json &yarn) {
        const std::string d = patched_copy("llama", "yarn_null_" + std::to_string(variant++), [&](json &cfg) {
            cfg.erase("rope_parameters");
            cfg["rope_theta"] = 10000.0;
            cfg["rope_scaling"] = yarn;
        });
        at::NoGradGuard no_grad;
        return mango::Model::load(shared_plugins(), d)->forward(g.ids, g.mask, g.pos);
    };
    const json yarn = {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 4096}};
    json null_factor = yarn, truncate_null = yarn, truncate_false = yarn;
    null_factor["attention_factor"] = nullptr;
    truncate_null["truncate"] = nullptr;
    truncate_false["truncate"] = false;
    const at::Tensor plain = logits(yarn);
    EXPECT_EQ(masked_max_diff(logits(null_factor), plain, g.mask), 0.0);
    const at::Tensor untruncated = logits(truncate_false);
    EXPECT_GT(masked_max_diff(untruncated, plain, g.mask), 1e-6) << "the correction range (2.62, 5.63) truncates to (2, 6)";
    EXPECT_EQ(masked_max_diff(logits(truncate_null), untruncated, g.mask), 0.0);
}

// transformers reads a key that config.json lacks as its config class's
// default, and a null one as None; for num_key_value_heads the two differ.
TEST(Model, MissingKeysTakeTheConfigClassDefaults) {
    const fs::path d = fs::path(MANGO_TEST_TMP) / "class_defaults";
    auto table = [&](const json &cfg) {
        fs::remove_all(d);
        fs::create_directories(d);
        std::ofstream(d / "config.json") << cfg.dump();
        return mango::Model::tensor_table(shared_plugins(), d.string(), false);
    };
    auto rows = [&](const json &cfg, const std::string &tensor) -> int64_t {
        for (const auto &t : table(cfg))
            if (t.name == tensor) return t.shape.at(0);
        return -1;
    };
    const std::string k = "model.layers.0.self_attn.k_proj.weight";
    // 64 heads of width 1: k_proj has one row per key/value head.
    const std::vector<std::pair<std::string, int64_t>> absent = {{"llama", 64},     {"mistral", 8},   {"qwen2", 32}, {"mixtral", 8},
                                                                 {"qwen2_moe", 16}, {"qwen3_moe", 4}, {"olmoe", 64}};
    for (const auto &[type, kv] : absent) {
        json cfg = {{"model_type", type}, {"hidden_size", 64},       {"num_hidden_layers", 1},      {"num_attention_heads", 64},
                    {"head_dim", 1},      {"intermediate_size", 16}, {"moe_intermediate_size", 16}, {"shared_expert_intermediate_size", 16},
                    {"num_experts", 4},   {"num_local_experts", 4},  {"num_experts_per_tok", 2},    {"vocab_size", 32}};
        EXPECT_EQ(rows(cfg, k), kv) << type << ": num_key_value_heads absent";
        cfg["num_key_value_heads"] = nullptr;
        EXPECT_EQ(rows(cfg, k), 64) << type << ": null is every head";
        cfg["num_key_value_heads"] = 2;
        EXPECT_EQ(rows(cfg, k), 2) << type;
    }
    // DeepSeek-V3: q_lora_rank absent is DeepseekV3Config's 1536 (a LoRA query), null a plain q_proj.
    json ds = json::parse(std::ifstream(fs::path(model_dir("deepseek_v3")) / "config.json"));
    ds.erase("q_lora_rank");
    EXPECT_EQ(rows(ds, "model.layers.0.self_attn.q_a_proj.weight"), 1536);
    ds["q_lora_rank"] = nullptr;
    EXPECT_EQ(rows(ds, "model.layers.0.self_attn.q_a_proj.weight"), -1);
    EXPECT_EQ(rows(ds, "model.layers.0.self_attn.q_proj.weight"), 4 * 24);
    // n_group and topk_group absent are 8 and 4: 16 experts group, 12 and 8 (groups of one) do not.
    ds.erase("n_group");
    ds.erase("topk_group");
    ds["n_routed_experts"] = 16;
    EXPECT_EQ(rows(ds, "model.layers.1.mlp.gate.weight"), 16);
    for (const auto &[experts, why] : std::vector<std::pair<int, std::string>>{
             {12, "n_group (8) must divide n_routed_experts (12)"}, {8, "group-limited routing needs at least 2 experts per group"}}) {
        ds["n_routed_experts"] = experts;
        try {
            table(ds);
            ADD_FAILURE() << experts << " experts in DeepseekV3Config's 8 groups";
        } catch (const std::exception &e) {
            EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
        }
    }
}

TEST(Model, UnsupportedRopeScalingIsRefused) {
    const std::string d = patched_copy("llama", "yarn_llama", [](json &cfg) {
        cfg["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 4.0}};
    });
    try {
        mango::Model::load(shared_plugins(), d);
        FAIL();
    } catch (const mango::HostError &e) {
        EXPECT_NE(std::string(e.what()).find("rope_scaling type 'dynamic' is not supported"), std::string::npos) << e.what();
    }
}

// A size past 32 bits is a wrong config, refused by name before a plugin
// multiplies it (found by fuzz_hf_architecture under UBSan: GPT-J's default
// n_inner, 4 * n_embd, overflowed int64 for n_embd = 6499999999999999229);
// an integer past int64 is not read as a wrapped negative one.
TEST(Model, OutOfRangeConfigIntegersAreRefusedByName) {
    const fs::path d = fs::path(MANGO_TEST_TMP) / "config_int_range";
    auto refusal = [&](const std::string &name, const std::string &key, const json &value) -> std::string {
        fs::remove_all(d);
        fs::create_directories(d);
        json cfg = json::parse(std::ifstream(fs::path(model_dir(name)) / "config.json"));
        cfg[key] = value;
        std::ofstream(d / "config.json") << cfg.dump();
        try {
            mango::Model::tensor_table(shared_plugins(), d.string(), false);
        } catch (const std::exception &e) {  // HostError from the plugin, ConfigError where the host reads the key too
            return e.what();
        }
        return "accepted";
    };
    const std::vector<std::pair<std::string, std::string>> cases = {{"gptj", "n_embd"},           {"gpt2", "n_embd"},
                                                                    {"gpt_neo", "hidden_size"},   {"llama", "head_dim"},
                                                                    {"qwen2_moe", "num_experts"}, {"deepseek_v3", "qk_nope_head_dim"}};
    for (const auto &[name, key] : cases) {
        EXPECT_NE(refusal(name, key, int64_t(6499999999999999229)).find("config key '" + key + "' = 6499999999999999229 is out of range"),
                  std::string::npos)
            << name;
        EXPECT_NE(refusal(name, key, int64_t(2147483648))
                      .find("'" + key + "' = 2147483648 is out of range (a model's sizes and ids are at most 2147483647)"),
                  std::string::npos)
            << name;
        const std::string past_int64 = refusal(name, key, uint64_t(18446744073709551615u));
        EXPECT_NE(past_int64.find("'" + key + "' must be"), std::string::npos) << name << ": " << past_int64;
        EXPECT_NE(past_int64.find("integer"), std::string::npos) << name << ": " << past_int64;
    }
}

TEST(Generate, BatchWithPaddingEqualsOneByOne) {
    const Golden g("llama");
    auto model = mango::Model::load(shared_plugins(), model_dir("llama"));
    mango::GenerateOptions o;
    o.max_new_tokens = 12;
    const auto prompts = g.prompts();
    const auto batch = mango::generate(*model, prompts, o);
    for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(mango::generate(*model, {prompts[i]}, o)[0], batch[i]) << i;
}

// A padded batch decoded over the static cache: the left-padded rows keep
// their padding masked while the cache's unwritten entries are masked too.
TEST(Generate, StaticCacheBatchWithPaddingEqualsGrowingCache) {
    const Golden g("llama");
    auto model = mango::Model::load(shared_plugins(), model_dir("llama"));
    mango::GenerateOptions o;
    o.max_new_tokens = 12;
    o.decode = "eager";
    const auto growing = mango::generate(*model, g.prompts(), o);
    std::string used;
    o.decode = "graph";  // no GPU here: the capture is refused, the steps run eagerly over the static cache
    o.decode_used = &used;
    EXPECT_EQ(mango::generate(*model, g.prompts(), o), growing);
    EXPECT_EQ(used, "static");
}

// A sliding window at least as long as the static cache masks nothing, so its
// layers decode through the static cache (host API revision 8); a shorter
// one keeps the growing cache. Either way the tokens are those of eager
// decoding with the same window, and a window longer than the whole
// sequence gives Mistral's tokens without a window.
TEST(Generate, WindowNoShorterThanTheStaticCacheDecodesThroughIt) {
    for (const std::string name : {"mistral", "mixtral_fused", "gpt_neo"}) {
        const Golden g(name);
        const std::string key = name == "gpt_neo" ? "window_size" : "sliding_window";
        mango::GenerateOptions o;
        o.max_new_tokens = 20;
        const int64_t span = g.ids.size(1) + o.max_new_tokens;  // the padded prompt and the new tokens
        auto decode = [&](const json &window, const std::string &mode, std::string *used) {
            const std::string d = patched_copy(name, "window_static_" + name, [&](json &cfg) { cfg[key] = window; });
            auto model = mango::Model::load(shared_plugins(), d);
            o.decode = mode;
            o.decode_used = used;
            return mango::generate(*model, g.prompts(), o);
        };
        for (int64_t w : {span - 4, span - 1, span, span + 16, span + 40}) {
            std::string used;
            const auto eager = decode(w, "eager", nullptr);
            EXPECT_EQ(decode(w, "static", &used), eager) << name << " window " << w;
            if (w >= span + 16) {  // past any rounding of the capacity
                EXPECT_EQ(used, "static") << name << " window " << w;
            } else if (w < span) {  // the window masks keys of the last steps
                EXPECT_EQ(used, "eager") << name << " window " << w;
            }
            if (name == "mistral" && w >= span) {
                EXPECT_EQ(eager, decode(nullptr, "eager", nullptr)) << "window " << w;
            }
        }
        // A host older than revision 8 tells no capacity: every window keeps the growing cache.
        mango::set_host_api_size_for_testing(offsetof(mango_host_api, cache_capacity));
        std::string used;
        std::vector<std::vector<int64_t>> old_host;
        try {
            old_host = decode(span + 40, "static", &used);
        } catch (...) {
            mango::set_host_api_size_for_testing(0);
            throw;
        }
        mango::set_host_api_size_for_testing(0);
        EXPECT_EQ(used, "eager") << name;
        EXPECT_EQ(old_host, decode(span + 40, "eager", nullptr)) << name;
    }
}

// Offloading: per-layer weights leave the device between blocks and come
// back for their block (here the "device" is the CPU itself, which exercises
// every storage swap); logits and cached greedy decoding (growing and static
// cache) equal the resident model's, tied and model-level weights stay, and a
// backward pass through it is refused by name.
TEST(Model, OffloadedModelEqualsResident) {
    for (const char *name : {"llama", "gpt2", "qwen2_moe"}) {
        const Golden g(name);
        auto resident = mango::Model::load(shared_plugins(), model_dir(name));
        auto offloaded = mango::Model::load(shared_plugins(), model_dir(name));
        EXPECT_GT(offloaded->offload(), 0) << name;
        EXPECT_TRUE(offloaded->offloaded());
        size_t away = 0, kept = 0;  // between blocks a layer's weights hold no memory; the embeddings do
        for (const auto &[w, t] : offloaded->named_weights()) (t.storage().data() == nullptr ? away : kept)++;
        EXPECT_GT(away, 0u) << name;
        EXPECT_GT(kept, 0u) << name;
        {
            at::NoGradGuard no_grad;
            EXPECT_TRUE(at::equal(resident->forward(g.ids, g.mask, g.pos), offloaded->forward(g.ids, g.mask, g.pos))) << name;
        }
        mango::GenerateOptions o;
        o.max_new_tokens = 10;
        const auto want = mango::generate(*resident, g.prompts(), o);
        EXPECT_EQ(mango::generate(*offloaded, g.prompts(), o), want) << name;
        o.decode = "graph";  // offloaded weights move: no graph, the static cache still
        std::string used;
        o.decode_used = &used;
        EXPECT_EQ(mango::generate(*offloaded, g.prompts(), o), want) << name;
        EXPECT_EQ(used, "static") << name;
        if (std::string(name) == "llama") {
            at::Tensor h = offloaded->embed(g.ids, g.pos).detach().requires_grad_(true);
            try {
                offloaded->block(0, h, g.mask, g.pos, false);
                ADD_FAILURE() << "a block that needs a backward pass ran offloaded";
            } catch (const mango::HostError &e) {
                EXPECT_NE(std::string(e.what()).find("offload"), std::string::npos) << e.what();
            }
        }
    }
}

TEST(Generate, SamplingIsReproducibleAndNgramsAreNotRepeated) {
    const Golden g("gpt2");
    auto model = mango::Model::load(shared_plugins(), model_dir("gpt2"));
    mango::GenerateOptions o;
    o.max_new_tokens = 30;
    o.greedy = false;
    o.temperature = 0.7;
    o.top_k = 20;
    o.top_p = 0.9;
    o.seed = 42;
    o.no_repeat_ngram_size = 2;
    const auto a = mango::generate(*model, g.prompts(), o), b = mango::generate(*model, g.prompts(), o);
    EXPECT_EQ(a, b);
    o.seed = 43;
    EXPECT_NE(mango::generate(*model, g.prompts(), o), a);
    const auto prompts = g.prompts();
    for (size_t i = 0; i < a.size(); ++i) {
        std::vector<int64_t> seq = prompts[i];
        seq.insert(seq.end(), a[i].begin(), a[i].end());
        std::set<std::pair<int64_t, int64_t>> seen;
        for (size_t t = 0; t + 1 < seq.size(); ++t) EXPECT_TRUE(seen.insert({seq[t], seq[t + 1]}).second) << "bigram repeated at " << t;
    }
}

TEST(Generate, StopsAtStopIds) {
    const Golden g("llama");
    auto model = mango::Model::load(shared_plugins(), model_dir("llama"));
    mango::GenerateOptions o;
    o.max_new_tokens = 20;
    const auto want = g.j["generated"].get<std::vector<std::vector<int64_t>>>();
    o.stop_ids = {want[0][3]};  // row 0 stops after its 4th token
    std::vector<std::vector<int64_t>> streamed;
    o.on_token = [&](size_t row, int64_t token) {
        streamed.resize(std::max(streamed.size(), row + 1));
        streamed[row].push_back(token);
    };
    o.decode = "eager";
    const auto out = mango::generate(*model, g.prompts(), o);
    EXPECT_EQ(out[0], std::vector<int64_t>(want[0].begin(), want[0].begin() + 4));
    EXPECT_EQ(streamed, out);
    // the static cache's greedy loop picks and feeds tokens on the device, a step ahead of the host:
    // the same tokens, the same stops, streamed in the same order
    streamed.clear();
    o.decode = "static";
    EXPECT_EQ(mango::generate(*model, g.prompts(), o), out);
    EXPECT_EQ(streamed, out);
}

TEST(Model, RandomInitFromConfigSavesAndReloads) {
    for (const char *name : {"llama3_scaled", "gpt2"}) {
        auto m = mango::Model::init_random(shared_plugins(), model_dir(name), 7);
        double std2d = 0;
        for (const auto &[n, t] : m->named_weights()) {
            if (t.dim() >= 2 && n.find("wpe") == std::string::npos) std2d = std::max(std2d, t.std().item<double>());
            if (t.dim() == 1 && n.size() > 5 && n.substr(n.size() - 5) == ".bias") {
                EXPECT_TRUE(at::equal(t, at::zeros_like(t))) << n;
            }
            if (t.dim() == 1 && n.size() > 7 && n.substr(n.size() - 7) == ".weight") {
                EXPECT_TRUE(at::equal(t, at::ones_like(t))) << n;
            }
        }
        EXPECT_NEAR(std2d, 0.02, 0.004) << name;  // initializer_range of the config
        const Golden g(name);
        at::NoGradGuard no_grad;
        at::Tensor logits = m->forward(g.ids, g.mask, g.pos);
        const fs::path d = fs::path(MANGO_TEST_TMP) / (std::string("random_") + name);
        fs::remove_all(d);
        m->save(d.string());
        auto back = mango::Model::load(shared_plugins(), d.string());
        EXPECT_TRUE(at::equal(back->forward(g.ids, g.mask, g.pos), logits)) << name;
        EXPECT_EQ(back->named_weights().size(), m->named_weights().size());
    }
}

class EncoderParity : public ::testing::TestWithParam<std::string> {};

TEST_P(EncoderParity, HiddenStatesAndMaskedLmLogitsMatchTransformers) {
    const Golden g(GetParam());
    auto model = mango::Model::load(shared_plugins(), model_dir(GetParam()));
    EXPECT_FALSE(model->info().is_causal);
    at::NoGradGuard no_grad;
    at::Tensor pos = at::arange(g.ids.size(1)).unsqueeze(0).expand_as(g.ids);
    at::Tensor h = model->embed(g.ids, pos);
    for (int32_t l = 0; l < model->info().n_layers; ++l) h = model->block(l, h, g.mask, pos, false);
    const double dh = masked_max_diff(h, tensor_of(g.j["last_hidden_state"], at::kDouble), g.mask);
    const double dl = masked_max_diff(model->head(h), tensor_of(g.j["logits"], at::kDouble), g.mask);
    EXPECT_LE(dh, 1e-4) << GetParam();
    EXPECT_LE(dl, 1e-4) << GetParam();
    RecordProperty("max_abs_diff", std::to_string(std::max(dh, dl)));
    mango::GenerateOptions o;
    EXPECT_THROW(mango::generate(*model, g.prompts(), o), mango::HostError);  // encoders do not generate
}

INSTANTIATE_TEST_SUITE_P(Golden, EncoderParity, ::testing::Values("bert", "roberta", "distilbert", "roberta_gelu_new"));

// Keys the goldens write, left out: each must mean its config class's
// default. GPTNeoConfig expands attention_types into attention_layers
// (default: 12 repeats of global, local); RobertaConfig's pad_token_id is 1
// (RoBERTa counts positions from it); GPTJConfig's rotary_dim is 64, more than
// the golden's 16-wide heads hold, which transformers cannot run either.
TEST(Model, GptAndRobertaKeysLeftOutTakeTheConfigClassDefaults) {
    at::NoGradGuard no_grad;
    int variant = 0;
    auto load = [&](const std::string &name, const std::function<void(json &)> &edit) {
        return mango::Model::load(shared_plugins(), patched_copy(name, "gpt_defaults_" + std::to_string(variant++), edit));
    };
    auto refusal = [&](const std::string &name, const std::function<void(json &)> &edit) -> std::string {
        try {
            load(name, edit);
        } catch (const mango::HostError &e) {
            return e.what();
        }
        return "accepted";
    };
    for (const std::string name : {"gpt_neo", "gpt_neo_untied"}) {
        const Golden g(name);
        auto model = load(name, [](json &cfg) { cfg.erase("attention_layers"); });
        EXPECT_LE(masked_max_diff(model->forward(g.ids, g.mask, g.pos), tensor_of(g.j["logits"], at::kDouble), g.mask), 1e-4) << name;
        const std::string both = refusal(name, [](json &cfg) {
            cfg.erase("attention_layers");
            cfg.erase("attention_types");
        });
        EXPECT_NE(both.find("must list global/local for each of the 2 layers"), std::string::npos) << both;  // 24 by default
        const std::string bad = refusal(name, [](json &cfg) {
            cfg.erase("attention_layers");
            cfg["attention_types"] = json::parse(R"([[["global", "sparse"], 1]])");
        });
        EXPECT_NE(bad.find("attention layer kind 'sparse' is not supported"), std::string::npos) << bad;
    }
    {
        const Golden g("roberta");
        auto model = load("roberta", [](json &cfg) { cfg.erase("pad_token_id"); });
        at::Tensor pos = at::arange(g.ids.size(1)).unsqueeze(0).expand_as(g.ids);
        at::Tensor h = model->embed(g.ids, pos);
        for (int32_t l = 0; l < model->info().n_layers; ++l) h = model->block(l, h, g.mask, pos, false);
        EXPECT_LE(masked_max_diff(model->head(h), tensor_of(g.j["logits"], at::kDouble), g.mask), 1e-4);
    }
    const std::string rotary = refusal("gptj", [](json &cfg) { cfg.erase("rotary_dim"); });
    EXPECT_NE(rotary.find("rotary_dim must be even and at most the head size"), std::string::npos) << rotary;
    const Golden g("gptj");
    auto full = load("gptj", [](json &cfg) { cfg["rotary_dim"] = nullptr; });  // null: the whole head rotates
    EXPECT_GT(masked_max_diff(full->forward(g.ids, g.mask, g.pos), tensor_of(g.j["logits"], at::kDouble), g.mask), 1e-3);
}

TEST(Cuda, DecoderParityOnGpu) {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device (or a CPU-only LibTorch)";
    for (const char *name : {"llama", "gpt2", "gptj"}) {
        const Golden g(name);
        auto model = mango::Model::load(shared_plugins(), model_dir(name), at::kFloat, at::kCUDA);
        at::NoGradGuard no_grad;
        at::Tensor logits = model->forward(g.ids.cuda(), g.mask.cuda(), g.pos.cuda()).cpu();
        EXPECT_LE(masked_max_diff(logits, tensor_of(g.j["logits"], at::kDouble), g.mask), 1e-3) << name;  // TF32 matmuls
        mango::GenerateOptions o;
        o.max_new_tokens = 20;
        EXPECT_EQ(mango::generate(*model, g.prompts(), o), g.j["generated"].get<std::vector<std::vector<int64_t>>>()) << name;
    }
}

// scaled_dot_product_attention (flash / memory-efficient kernels, with and
// without the padding mask) against the eager math (MANGO_ATTENTION=eager)
// on the same weights: padded batch, one unpadded prompt, cached decoding.
TEST(Cuda, FastAttentionMatchesEagerMath) {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device (or a CPU-only LibTorch)";
    if (!c10::Dispatcher::singleton().findSchema({"aten::scaled_dot_product_attention", ""}))
        GTEST_SKIP() << "this LibTorch has no scaled_dot_product_attention";
    const Golden g("llama");
    struct Out {
        at::Tensor padded, single;
        std::vector<std::vector<int64_t>> batch, one;
    };
    for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
        auto model = mango::Model::load(shared_plugins(), model_dir("llama"), dtype, at::kCUDA);
        auto run = [&](bool eager) {
            if (eager)
                ::setenv("MANGO_ATTENTION", "eager", 1);
            else
                ::unsetenv("MANGO_ATTENTION");
            Out o;
            {
                at::NoGradGuard no_grad;
                o.padded = model->forward(g.ids.cuda(), g.mask.cuda(), g.pos.cuda()).to(at::kFloat).cpu();
                o.single = model->forward(g.ids.narrow(0, 0, 1).cuda(), g.mask.narrow(0, 0, 1).cuda(), g.pos.narrow(0, 0, 1).cuda())
                               .to(at::kFloat)
                               .cpu();
            }
            mango::GenerateOptions opts;
            opts.max_new_tokens = 12;
            o.batch = mango::generate(*model, g.prompts(), opts);
            o.one = mango::generate(*model, {g.prompts()[1]}, opts);
            ::unsetenv("MANGO_ATTENTION");
            return o;
        };
        const Out fast = run(false), eager = run(true);
        const double tol = dtype == at::kFloat ? 1e-3 : 6e-2;
        EXPECT_LE(masked_max_diff(fast.padded, eager.padded, g.mask), tol) << dtype;
        EXPECT_LE(masked_max_diff(fast.single, eager.single, g.mask.narrow(0, 0, 1)), tol) << dtype;
        if (dtype == at::kFloat) {  // bf16 rounding may flip a near-tie
            EXPECT_EQ(fast.batch, eager.batch);
            EXPECT_EQ(fast.one, eager.one);
            EXPECT_EQ(fast.one[0], fast.batch[1]);  // alone (no mask) = in the padded batch (masked)
        }
    }
}

// Decoding over the static KV cache with each step replayed as a CUDA graph
// gives the eager decoder's tokens (growing cache, no graph), for the dense
// decoders (which must be captured) and for MoE ones (captured, or refused
// with the reason logged and decoded eagerly: either way the same tokens),
// padded batches and one prompt alone; a second generation recaptures.
TEST(Cuda, GraphDecodeEqualsEagerDecode) {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device (or a CPU-only LibTorch)";
    struct Case {
        std::string golden, dir, mode;  // mode: the batch's decode mode ("": either)
    };
    std::vector<Case> cases;
    for (const std::string name : {"llama", "gpt2", "gptj", "qwen2", "mistral", "mixtral", "deepseek_v3"})
        cases.push_back({name, model_dir(name), name == "mistral" ? "eager" : name == "mixtral" || name == "deepseek_v3" ? "" : "graph"});
    // The golden's 4-token window keeps the growing cache; Mistral's own 4096-token window masks nothing in
    // a 29-token sequence, so that model is captured like any other.
    cases.push_back({"mistral", patched_copy("mistral", "graph_window_4096", [](json &cfg) { cfg["sliding_window"] = 4096; }), "graph"});
    for (const Case &c : cases) {
        const Golden g(c.golden);
        const std::string label = c.golden + (c.dir == model_dir(c.golden) ? "" : " (window 4096)");
        auto model = mango::Model::load(shared_plugins(), c.dir, at::kFloat, at::kCUDA);
        mango::GenerateOptions o;
        o.max_new_tokens = 20;
        std::string used;
        o.decode_used = &used;
        o.decode = "eager";
        const auto eager = mango::generate(*model, g.prompts(), o);
        const auto eager_one = mango::generate(*model, {g.prompts()[1]}, o);
        o.decode = "graph";
        EXPECT_EQ(mango::generate(*model, g.prompts(), o), eager) << label;
        const std::string batch_mode = used;
        EXPECT_EQ(mango::generate(*model, {g.prompts()[1]}, o), eager_one) << label;
        if (c.dir == model_dir(c.golden)) {
            EXPECT_EQ(eager, g.j["generated"].get<std::vector<std::vector<int64_t>>>()) << label;
        }
        if (!c.mode.empty()) {
            EXPECT_EQ(batch_mode, c.mode) << label;
        }
        std::cout << label << ": decoded with " << batch_mode << "\n";
    }
}
