// Mixture-of-experts models beyond parity (parity_test.cpp has that): a
// Mixtral, Qwen2-MoE and DeepSeek-V3 trained from their config, saved in the
// per-expert layout transformers writes and loaded back identically; the
// training features (capacity, null expert, dense warm-up, bias updates,
// router resets, learned token importance) do what configs/README.md says;
// statistics reach the metrics log; bad configurations and checkpoints are
// refused by name.
#include "formats/safetensors.hpp"
#include "model/model.hpp"
#include "train/evaluate.hpp"
#include "train/training_run.hpp"

#include "test_plugins.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
using namespace mango;
using nlohmann::json;

namespace {

fs::path dir_of(const std::string &name) {
    const fs::path d = fs::path(MANGO_TEST_TMP) / "moe" / ::testing::UnitTest::GetInstance()->current_test_info()->name() / name;
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

json mixtral(json extra = json::object()) {
    json c = {{"model_type", "mixtral"},  {"hidden_size", 32},       {"num_hidden_layers", 2}, {"num_attention_heads", 4},
              {"num_key_value_heads", 2}, {"intermediate_size", 24}, {"num_local_experts", 4}, {"num_experts_per_tok", 2},
              {"vocab_size", 64},         {"initializer_range", 0.1}};
    c.update(extra);
    return c;
}
json deepseek(json extra = json::object()) { return tiny_deepseek_config(std::move(extra)); }

std::shared_ptr<Model> random_model(const std::string &name, const json &config, uint64_t seed = 1) {
    const fs::path d = dir_of(name);
    std::ofstream(d / "config.json") << config.dump();
    return std::shared_ptr<Model>(Model::init_random(shared_plugins(), d.string(), seed));
}

at::Tensor data() {
    at::manual_seed(3);
    return at::randint(3, 64, {16, 12});
}

TrainRunOptions options(const std::string &stem, int64_t steps) {
    TrainRunOptions o;
    o.train.steps = steps;
    o.train.batch_size = 4;
    o.train.lr = 1e-2;
    o.train.aux_weights["router_z"] = 0.001;
    const fs::path d = fs::path(MANGO_TEST_TMP) / "moe" / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::create_directories(d);
    o.state_path = (d / (stem + ".state.safetensors")).string();
    o.log_path = (d / (stem + ".metrics.jsonl")).string();
    o.fingerprint = stem;
    o.progress = false;
    fs::remove(o.state_path);
    return o;
}

at::Tensor logits(CausalLM &m, const at::Tensor &ids) {
    at::NoGradGuard g;
    m.train(false);
    return m.logits(ids, at::ones_like(ids), at::arange(ids.size(1)).unsqueeze(0).expand_as(ids), false);
}

std::string load_error(const json &config) {
    try {
        random_model("bad", config);
    } catch (const std::exception &e) {
        return e.what();
    }
    return "";
}

}  // namespace

TEST(Moe, FamiliesTrainFromScratchSaveAndReload) {
    const std::vector<json> configs = {mixtral(),
                                       deepseek(),
                                       {{"model_type", "qwen2_moe"},
                                        {"hidden_size", 32},
                                        {"num_hidden_layers", 2},
                                        {"num_attention_heads", 4},
                                        {"num_key_value_heads", 2},
                                        {"intermediate_size", 48},
                                        {"moe_intermediate_size", 16},
                                        {"shared_expert_intermediate_size", 24},
                                        {"num_experts", 4},
                                        {"num_experts_per_tok", 2},
                                        {"vocab_size", 64},
                                        {"initializer_range", 0.1}}};
    for (const json &cfg : configs) {
        const std::string type = cfg["model_type"];
        auto m = random_model(type, cfg);
        m->set_trainable(true);
        const at::Tensor d = data();
        const double before = evaluate(*m, d.narrow(0, 0, 12), 4).perplexity;
        logits(*m, d.narrow(0, 0, 2));  // a small batch stacks the experts for decoding: training must not leave it stale
        m->set_trainable(true);
        const TrainRunOptions o = options(type, 40);
        run_training(*m, d.narrow(0, 0, 12), o);
        const double after = evaluate(*m, d.narrow(0, 0, 12), 4).perplexity;
        EXPECT_LT(after, before * 0.8) << type;
        // Expert statistics and the MoE losses are in the metrics log.
        std::ifstream log(o.log_path);
        std::string line;
        std::getline(log, line);
        const json j = json::parse(line);
        EXPECT_TRUE(j["aux_losses"].contains("load_balance")) << line;
        EXPECT_TRUE(j["aux_losses"].contains("router_z")) << line;
        EXPECT_TRUE(j["stats"].contains("layer1.expert_share")) << line;
        EXPECT_TRUE(j["stats"].contains("layer1.load_cv")) << line;
        // Saved in the per-expert layout transformers writes, and reloaded identically.
        m->set_trainable(false);
        const fs::path out = dir_of(type + "_saved");
        m->save(out.string());
        auto names = formats::Checkpoint::open(out.string()).names();
        EXPECT_TRUE(std::any_of(names.begin(), names.end(), [](const std::string &n) {
            return n.find(".experts.3.") != std::string::npos;
        })) << type;
        auto back = Model::load(shared_plugins(), out.string());
        EXPECT_TRUE(at::allclose(logits(*back, d.narrow(0, 0, 2)), logits(*m, d.narrow(0, 0, 2)), 1e-5, 1e-6)) << type;
    }
}

TEST(Moe, CapacityDropsOverflowAndNullExpertKeepsWeight) {
    const at::Tensor ids = data().narrow(0, 0, 8);
    for (const bool null_expert : {false, true}) {
        auto m = random_model(null_expert ? "null" : "drop",
                              mixtral({{"expert_capacity_factor", 0.25}, {"min_expert_capacity", 1}, {"use_null_expert", null_expert}}));
        m->set_trainable(true);
        m->train(true);
        const at::Tensor mask = at::ones_like(ids);
        m->logits(ids, mask, at::arange(ids.size(1)).unsqueeze(0).expand_as(ids), false);
        double dropped = -1;
        for (const auto &r : m->layer_reports())
            for (const auto &[name, v] : r.stats)
                if (name == "capacity_dropped") dropped = v.item<double>();
        // 96 tokens x 2 slots over 4 experts, capacity ceil(0.25 * 48) = 12 each: at least 3/4 of the slots overflow.
        EXPECT_GE(dropped, 0.74) << null_expert;
    }
}

TEST(Moe, WarmupBiasUpdatesAndStepCounterAreResumable) {
    auto m = random_model(
        "feat",
        deepseek({{"moe_warmup_steps", 5}, {"bias_update_rate", 0.05}, {"router_reset_step", 3}, {"learned_token_importance", true}}));
    ASSERT_FALSE(m->buffers().empty());
    at::Tensor bias;
    for (const auto &[name, t] : m->named_weights())
        if (name.find("e_score_correction_bias") != std::string::npos) bias = t.detach().clone();
    m->set_trainable(true);
    run_training(*m, data(), options("feat", 6));
    for (const auto &[name, t] : m->named_weights()) {
        if (name.find("e_score_correction_bias") != std::string::npos) {
            EXPECT_GT((t - bias).abs().max().item<double>(), 0.01) << "the correction bias moved toward balance";
        }
    }
    for (const auto &[name, t] : m->buffers()) {
        if (name.find("moe_step") != std::string::npos) {
            EXPECT_EQ(t.item<double>(), 6.0) << "one count per training forward";
        }
    }
    // The learned token importance is trained with the rest: the last step gave it a gradient.
    int found = 0;
    for (const auto &[name, t] : m->trainable())
        if (name.find("token_importance") != std::string::npos) {
            ++found;
            ASSERT_TRUE(t.grad().defined()) << name;
            EXPECT_GT(t.grad().abs().sum().item<double>(), 0) << name;
        }
    EXPECT_EQ(found, 1);  // one sparse layer
}

// transformers keeps DeepSeek's e_score_correction_bias in float32
// (_keep_in_fp32_modules_strict) whatever dtype the model loads in: a bf16
// copy rounds the bias to 8 bits and can change which experts are chosen.
TEST(Moe, CorrectionBiasStaysFloat32InHalfPrecision) {
    const std::string bias_name = "model.layers.1.mlp.gate.e_score_correction_bias";
    auto m = random_model("f32", deepseek());
    const at::Tensor exact = at::tensor({0.1234567f, -0.0012345f, 0.3333333f, 1.0000123f});
    ASSERT_FALSE(at::equal(exact.to(at::kBFloat16).to(at::kFloat), exact)) << "values a bf16 copy would round";
    for (const auto &[name, t] : m->named_weights())
        if (name == bias_name) t.detach().copy_(exact);
    const fs::path saved = dir_of("saved");
    m->save(saved.string());

    auto dtype_of = [&](const Model &model, const std::string &name) {
        for (const auto &[n, t] : model.named_weights())
            if (n == name) return t.scalar_type();
        ADD_FAILURE() << name << " was not read";
        return at::kFloat;
    };
    for (const at::ScalarType half : {at::kBFloat16, at::kHalf}) {
        auto loaded = Model::load(shared_plugins(), saved.string(), half);
        EXPECT_EQ(dtype_of(*loaded, bias_name), at::kFloat) << half;
        EXPECT_EQ(dtype_of(*loaded, "model.layers.1.mlp.gate.weight"), half) << "every other weight in the run's dtype";
        for (const auto &[name, t] : loaded->named_weights())
            if (name == bias_name) {
                EXPECT_TRUE(at::equal(t, exact)) << "read without rounding";
            }
        if (half == at::kBFloat16) {  // (CPU LibTorch has no float16 matmul)
            EXPECT_EQ(logits(*loaded, data().narrow(0, 0, 2)).scalar_type(), half);
        }
        // Saved again, the checkpoint keeps it float32 (as DeepSeek's own checkpoints hold it).
        const fs::path again = dir_of(std::string("again_") + c10::toString(half));
        loaded->save(again.string());
        EXPECT_EQ(formats::Checkpoint::open(again.string()).tensor(bias_name).scalar_type(), at::kFloat);
    }
    const fs::path cfg = dir_of("random_bf16");
    std::ofstream(cfg / "config.json") << deepseek().dump();
    auto fresh = Model::init_random(shared_plugins(), cfg.string(), 1, at::kBFloat16);
    EXPECT_EQ(dtype_of(*fresh, bias_name), at::kFloat) << "created from the config alone";
}

// A routed_scaling_factor that config.json lacks is DeepseekV3Config's 2.5.
TEST(Moe, MissingRoutedScalingIsTheConfigClassDefault) {
    const at::Tensor ids = data().narrow(0, 0, 2);
    auto absent = random_model("absent", deepseek());
    ASSERT_FALSE(deepseek().contains("routed_scaling_factor"));
    auto given = random_model("given", deepseek({{"routed_scaling_factor", 2.5}}));
    auto one = random_model("one", deepseek({{"routed_scaling_factor", 1.0}}));
    EXPECT_TRUE(at::equal(logits(*absent, ids), logits(*given, ids)));
    EXPECT_FALSE(at::allclose(logits(*absent, ids), logits(*one, ids), 1e-4, 1e-5));
}

TEST(Moe, BadTopKIsRefusedByName) {
    EXPECT_NE(load_error(mixtral({{"num_experts_per_tok", 5}})).find("num_experts_per_tok (5) must be between 1 and"), std::string::npos);
}
TEST(Moe, BadGroupsAreRefusedByName) {
    EXPECT_NE(load_error(deepseek({{"n_group", 3}})).find("n_group (3) must divide n_routed_experts (4)"), std::string::npos);
}
TEST(Moe, UnsupportedScoringIsRefusedByName) {
    EXPECT_NE(load_error(deepseek({{"scoring_func", "softmax"}})).find("scoring_func 'softmax' is not supported"), std::string::npos);
}
TEST(Moe, ZeroCapacityIsRefusedByName) {
    EXPECT_NE(load_error(mixtral({{"expert_capacity_factor", 1.0}, {"min_expert_capacity", 0}})).find("at least 1 token"),
              std::string::npos);
}
TEST(Moe, QwenLayerTypesLongerThanTheLayersAreRefused) {
    // Sliding windows per layer (Model.QwenSlidingWindowsFollowLayerTypes): one layer_types entry per layer.
    json qwen = {{"model_type", "qwen2_moe"},
                 {"hidden_size", 32},
                 {"num_hidden_layers", 2},
                 {"num_attention_heads", 4},
                 {"num_experts", 4},
                 {"num_experts_per_tok", 2},
                 {"vocab_size", 64},
                 {"use_sliding_window", true},
                 {"layer_types", {"full_attention", "full_attention", "sliding_attention"}}};
    EXPECT_NE(load_error(qwen).find("layer_types has more entries than num_hidden_layers (2)"), std::string::npos) << load_error(qwen);
}
TEST(Moe, MissingExpertIsRefusedByName) {
    // A checkpoint without one expert: the missing tensor is named.
    const fs::path src = fs::path(MANGO_SOURCE_DIR) / "tests/golden/models/mixtral";
    const fs::path d = dir_of("missing_expert");
    fs::copy_file(src / "config.json", d / "config.json");
    auto ck = formats::Checkpoint::open(src.string());
    formats::NamedTensors kept;
    for (const auto &n : ck.names())
        if (n.find("layers.1.block_sparse_moe.experts.2.w3") == std::string::npos) kept.emplace_back(n, ck.tensor(n));
    formats::write_safetensors((d / "model.safetensors").string(), kept);
    try {
        Model::load(shared_plugins(), d.string());
        FAIL();
    } catch (const std::exception &e) {
        EXPECT_NE(std::string(e.what()).find("model.layers.1.block_sparse_moe.experts.2.w3.weight"), std::string::npos) << e.what();
    }
}
