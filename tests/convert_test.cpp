// Dense -> MoE conversion (host/src/moe, plugins/moe): what the papers'
// constructions promise before any training — sparse upcycling and FFN
// splitting with every expert active reproduce the dense model's logits
// (fp32, <= 1e-5); Drop-Upcycling re-draws the same neurons in gate, up and
// down; split experts partition the neurons — a layer that fails the test is
// reverted to the dense tensors byte for byte; the output loads in the MoE
// architectures; bad requests are refused by name.
#include "formats/safetensors.hpp"
#include "model/model.hpp"
#include "moe/convert.hpp"

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
    const fs::path d = fs::path(MANGO_TEST_TMP) / "convert" / ::testing::UnitTest::GetInstance()->current_test_info()->name() / name;
    fs::remove_all(d);
    fs::create_directories(d.parent_path());
    return d;
}

json llama_config(json extra = json::object()) {
    json c = {{"model_type", "llama"},    {"hidden_size", 32},           {"num_hidden_layers", 3}, {"num_attention_heads", 4},
              {"num_key_value_heads", 2}, {"intermediate_size", 48},     {"vocab_size", 64},       {"initializer_range", 0.1},
              {"rms_norm_eps", 1e-5},     {"tie_word_embeddings", false}};
    c.update(extra);
    return c;
}

// A random dense model saved as a folder; `scale` multiplies layer l's FFN down projection.
fs::path dense_model(const std::string &name, json config = llama_config(), uint64_t seed = 1, std::map<int, double> scale = {}) {
    const fs::path d = dir_of(name);
    fs::create_directories(d);
    std::ofstream(d / "config.json") << config.dump();
    auto m = Model::init_random(shared_plugins(), d.string(), seed);
    formats::NamedTensors named;
    for (auto [n, t] : m->named_weights()) {
        for (auto [l, s] : scale)
            if (n == "model.layers." + std::to_string(l) + ".mlp.down_proj.weight") t = t * s;
        named.emplace_back(n, t.contiguous());
    }
    formats::write_checkpoint(d.string(), named);
    return d;
}

at::Tensor tokens(int64_t n = 6, int64_t t = 16) {
    at::manual_seed(7);
    return at::randint(0, 64, {n, t});
}

at::Tensor logits_of(const fs::path &dir, const at::Tensor &ids) {
    auto m = Model::load(shared_plugins(), dir.string());
    at::NoGradGuard g;
    const at::Tensor pos = at::arange(ids.size(1)).unsqueeze(0).expand_as(ids);
    return m->forward(ids, at::ones_like(ids), pos);
}

moe::ConvertOptions options(const std::string &converter, int64_t experts, int64_t top_k, json converter_options = json::object()) {
    moe::ConvertOptions o;
    o.converter = converter;
    o.converter_options = std::move(converter_options);
    o.experts = experts;
    o.top_k = top_k;
    o.progress = false;
    return o;
}

std::map<std::string, at::Tensor> tensors_of(const fs::path &dir) {
    const auto ckpt = formats::Checkpoint::open(dir.string());
    std::map<std::string, at::Tensor> out;
    for (const auto &n : ckpt.names()) out[n] = ckpt.tensor(n).clone();
    return out;
}

bool same_bytes(const at::Tensor &a, const at::Tensor &b) {
    return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
           std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(), size_t(a.numel()) * a.element_size()) == 0;
}

std::string error_of(const std::function<void()> &f) {
    try {
        f();
    } catch (const std::exception &e) {
        return e.what();
    }
    return "(no error)";
}

}  // namespace

// Sparse upcycling (Komatsuzaki et al. 2022): identical experts, zero router,
// renormalised top-k weights summing to 1 -> the dense FFN exactly.
TEST(Convert, UpcyclingReproducesTheDenseModel) {
    const fs::path dense = dense_model("dense");
    const at::Tensor ids = tokens();
    const at::Tensor want = logits_of(dense, ids);
    for (const std::string format : {"mixtral", "qwen2_moe"}) {
        moe::ConvertOptions o = options("upcycle", 4, 2);
        o.format = format;
        if (format == "qwen2_moe") o.layers = {0, 2};
        const fs::path out = dir_of("moe_" + format);
        const moe::ConvertResult r = moe::convert(shared_plugins(), dense.string(), out.string(), o);
        EXPECT_EQ(r.format, format);
        const json cfg = json::parse(std::ifstream(out / "config.json"));
        EXPECT_EQ(cfg["model_type"], format);
        EXPECT_LE((logits_of(out, ids) - want).abs().max().item<double>(), 1e-5) << format;
        EXPECT_TRUE(fs::exists(out / "conversion_report.json"));
    }
    // Every layer and no biases: Mixtral is chosen; a subset: Qwen2-MoE, the others dense.
    moe::ConvertOptions o = options("upcycle", 4, 2);
    EXPECT_EQ(moe::convert(shared_plugins(), dense.string(), dir_of("auto_all").string(), o).format, "mixtral");
    o.every = 2;
    const fs::path sub = dir_of("auto_every2");
    EXPECT_EQ(moe::convert(shared_plugins(), dense.string(), sub.string(), o).format, "qwen2_moe");
    EXPECT_EQ(json::parse(std::ifstream(sub / "config.json"))["mlp_only_layers"], json({0, 2}));
    // A Mistral config without num_key_value_heads has MistralConfig's 8 (not all 16 heads); the
    // converted config says so, and the MoE model still reproduces the dense one.
    json mistral = llama_config({{"model_type", "mistral"}, {"num_attention_heads", 16}});
    mistral.erase("num_key_value_heads");
    const fs::path source = dense_model("mistral", mistral);
    const fs::path out = dir_of("moe_mistral");
    moe::convert(shared_plugins(), source.string(), out.string(), options("upcycle", 4, 2));
    const json cfg = json::parse(std::ifstream(out / "config.json"));
    EXPECT_EQ(cfg["num_key_value_heads"], 8);
    EXPECT_EQ(cfg["sliding_window"], 4096) << "MistralConfig's window, also a default";
    EXPECT_LE((logits_of(out, ids) - logits_of(source, ids)).abs().max().item<double>(), 1e-5);
}

// GPT-2, GPT-J and GPT-Neo (LayerNorm, biases, GELU MLP; Conv1D in GPT-2)
// have no transformers MoE family: they convert to the Mango format (their
// own config and tensors, plus "mango_moe" and experts in the chosen
// layers), which their plugins run. Upcycling and all-experts splitting
// reproduce the dense model there too, biases included; the layer test
// works the same.
TEST(Convert, Gpt2StyleModelsConvertToTheMangoFormatExactly) {
    for (const std::string arch : {"gpt2", "gptj", "gpt_neo"}) {
        json config = json::parse(std::ifstream(fs::path(MANGO_SOURCE_DIR) / "tests/golden/models" / arch / "config.json"));
        config["initializer_range"] = 0.2;
        const fs::path dense = dense_model(arch, config);
        {  // non-zero biases, so that their handling shows
            auto t = tensors_of(dense);
            formats::NamedTensors named;
            at::manual_seed(3);
            for (auto &[n, v] : t) named.emplace_back(n, n.find(".bias") != std::string::npos ? at::randn_like(v) * 0.1 : v);
            formats::write_checkpoint(dense.string(), named);
        }
        const int64_t L = formats::parse_hf_config(config.dump(), arch).num_layers;
        const at::Tensor ids = tokens();
        const at::Tensor want = logits_of(dense, ids);
        struct Case {
            std::string name, converter;
            int64_t top_k;
            std::vector<int32_t> layers;
        };
        for (const Case &c :
             {Case{"upcycle_all", "upcycle", 2, {}}, Case{"upcycle_first", "upcycle", 2, {0}}, Case{"split", "split", 4, {}}}) {
            moe::ConvertOptions o = options(c.converter, 4, c.top_k);
            o.layers = c.layers;
            const fs::path out = dir_of(arch + "_" + c.name);
            EXPECT_EQ(moe::convert(shared_plugins(), dense.string(), out.string(), o).format, "mango") << arch << " " << c.name;
            const json cfg = json::parse(std::ifstream(out / "config.json"));
            EXPECT_EQ(cfg["model_type"], arch);
            EXPECT_EQ(cfg["mango_moe"]["layers"].size(), c.layers.empty() ? size_t(L) : c.layers.size()) << arch << " " << c.name;
            bool has_expert_bias = false;
            for (const auto &[n, v] : tensors_of(out))
                has_expert_bias |= n.find(".mlp.experts.3.") != std::string::npos && n.find("bias") != std::string::npos;
            EXPECT_TRUE(has_expert_bias) << arch << " " << c.name;
            EXPECT_LE((logits_of(out, ids) - want).abs().max().item<double>(), 1e-5) << arch << " " << c.name;
        }
        // The layer test: a threshold nothing passes reverts every layer, as for LLaMA sources.
        moe::ConvertOptions o = options("upcycle", 4, 2, {{"noise", 1.0}});
        o.test_ids = tokens(4, 16);
        o.metric = "kl";  // > 0 for any change
        o.max_increase = 0;
        const std::string e = error_of([&] { moe::convert(shared_plugins(), dense.string(), dir_of(arch + "_reverted").string(), o); });
        EXPECT_NE(e.find("every converted layer was reverted"), std::string::npos) << arch << ": " << e;
        o.max_increase = 1e9;
        const moe::ConvertResult kept = moe::convert(shared_plugins(), dense.string(), dir_of(arch + "_kept").string(), o);
        EXPECT_EQ(kept.layers.size(), size_t(L));
        for (const auto &l : kept.layers) EXPECT_TRUE(l.converted) << arch;
    }
}

// FFN splitting (LLaMA-MoE): with every expert active and the zero router
// (weights 1/E, down scaled by E) the split experts sum to the dense FFN.
TEST(Convert, SplitWithAllExpertsActiveReproducesTheDenseModel) {
    const fs::path dense = dense_model("dense");
    const at::Tensor ids = tokens();
    const at::Tensor want = logits_of(dense, ids);
    for (const std::string method : {"random", "clustering"}) {
        const fs::path out = dir_of("split_" + method);
        moe::convert(shared_plugins(), dense.string(), out.string(), options("split", 4, 4, {{"method", method}}));
        EXPECT_LE((logits_of(out, ids) - want).abs().max().item<double>(), 1e-5) << method;
        // The experts partition the neurons: every dense up row appears in exactly one expert, 48 / 4 each.
        const auto d = tensors_of(dense), m = tensors_of(out);
        for (int l = 0; l < 3; ++l) {
            const std::string L = "model.layers." + std::to_string(l) + ".";
            const at::Tensor up = d.at(L + "mlp.up_proj.weight");
            std::vector<at::Tensor> rows;
            for (int e = 0; e < 4; ++e) {
                const std::string E = L + "block_sparse_moe.experts." + std::to_string(e) + ".";
                ASSERT_EQ(m.at(E + "w3.weight").size(0), 12);
                rows.push_back(m.at(E + "w3.weight"));
                // down: the same neurons' columns, times E
                const at::Tensor match = (m.at(E + "w3.weight").unsqueeze(1) == up.unsqueeze(0)).all(-1).to(at::kLong).argmax(1);
                EXPECT_TRUE(at::allclose(m.at(E + "w2.weight"), d.at(L + "mlp.down_proj.weight").index_select(1, match) * 4));
            }
            const at::Tensor all = at::cat(rows);
            EXPECT_TRUE(at::equal(std::get<0>(at::sort(all.sum(1))), std::get<0>(at::sort(up.sum(1)))));
        }
    }
}

// Drop-Upcycling (Nakamura et al. 2025): per expert, drop_ratio of the
// neurons re-drawn — the same neurons in gate rows, up rows and down columns.
TEST(Convert, DropUpcyclingRedrawsTheSameNeuronsInEveryMatrix) {
    const fs::path dense = dense_model("dense");
    const fs::path out = dir_of("drop");
    moe::convert(shared_plugins(), dense.string(), out.string(), options("upcycle", 4, 2, {{"drop_ratio", 0.5}}));
    const auto d = tensors_of(dense), m = tensors_of(out);
    std::vector<at::Tensor> kept;
    for (int e = 0; e < 4; ++e) {
        const std::string E = "model.layers.1.block_sparse_moe.experts." + std::to_string(e) + ".";
        const at::Tensor same_gate = (m.at(E + "w1.weight") == d.at("model.layers.1.mlp.gate_proj.weight")).all(1);
        const at::Tensor same_up = (m.at(E + "w3.weight") == d.at("model.layers.1.mlp.up_proj.weight")).all(1);
        const at::Tensor same_down = (m.at(E + "w2.weight") == d.at("model.layers.1.mlp.down_proj.weight")).all(0);
        EXPECT_EQ(same_up.sum().item<int64_t>(), 24);  // 48 neurons, half re-drawn
        EXPECT_TRUE(at::equal(same_gate, same_up));
        EXPECT_TRUE(at::equal(same_down, same_up));
        kept.push_back(same_up);
    }
    EXPECT_FALSE(at::equal(kept[0], kept[1]));  // drawn per expert
}

// The layer test: a layer whose conversion raises the metric by more than
// the threshold goes back to the dense tensors, byte for byte.
TEST(Convert, ALayerThatFailsTheTestIsRevertedByteForByte) {
    // Layer 0's FFN dominates the output, layer 2's barely matters.
    const fs::path dense = dense_model("dense", llama_config(), 1, {{0, 8.0}, {2, 1e-3}});
    moe::ConvertOptions o = options("split", 4, 1);
    o.layers = {0, 2};
    o.test_ids = tokens(8, 16);
    o.metric = "kl";
    o.max_increase = 1e9;
    const moe::ConvertResult loose = moe::convert(shared_plugins(), dense.string(), dir_of("loose").string(), o);
    ASSERT_EQ(loose.layers.size(), 2u);
    const double d0 = loose.layers[0].after - loose.layers[0].before, d2 = loose.layers[1].after - loose.layers[1].before;
    ASSERT_GT(d0, 100 * d2) << "layer 0 should matter far more than layer 2";
    o.max_increase = d0 / 10;
    const fs::path out = dir_of("strict");
    const moe::ConvertResult r = moe::convert(shared_plugins(), dense.string(), out.string(), o);
    ASSERT_EQ(r.layers.size(), 2u);
    EXPECT_FALSE(r.layers[0].converted);
    EXPECT_TRUE(r.layers[1].converted);
    EXPECT_EQ(r.format, "qwen2_moe");
    const auto d = tensors_of(dense), m = tensors_of(out);
    for (const char *w : {"mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"}) {
        const std::string n = std::string("model.layers.0.") + w;
        ASSERT_TRUE(m.count(n)) << n;
        EXPECT_TRUE(same_bytes(m.at(n), d.at(n))) << n;
    }
    EXPECT_FALSE(m.count("model.layers.2.mlp.up_proj.weight"));
    EXPECT_TRUE(m.count("model.layers.2.mlp.experts.0.up_proj.weight"));
    const json report = json::parse(std::ifstream(out / "conversion_report.json"));
    EXPECT_EQ(report["layers"][0]["converted"], false);
    EXPECT_EQ(report["metric"], "kl");
    // Nothing kept at all: an error that shows the table, and no folder.
    o.max_increase = 0;
    o.layers = {0};
    const std::string e = error_of([&] { moe::convert(shared_plugins(), dense.string(), dir_of("none").string(), o); });
    EXPECT_NE(e.find("every converted layer was reverted"), std::string::npos) << e;
    EXPECT_FALSE(fs::exists(dir_of("none")));
}

// Experts from fine-tunes (mergekit-moe, BTX): expert e is source e's FFN;
// the rest from the base, or the sources' average.
TEST(Convert, FromModelsTakesEachExpertFromItsSource) {
    const fs::path base = dense_model("base", llama_config(), 1);
    const fs::path a = dense_model("a", llama_config(), 2), b = dense_model("b", llama_config(), 3);
    for (const std::string rest : {"base", "average"}) {
        moe::ConvertOptions o = options("from_models", 2, 1, {{"router_init", "zero"}});
        o.sources = {a.string(), b.string()};
        o.rest = rest;
        const fs::path out = dir_of("btx_" + rest);
        moe::convert(shared_plugins(), base.string(), out.string(), o);
        const auto m = tensors_of(out), tb = tensors_of(base), ta = tensors_of(a), tbb = tensors_of(b);
        EXPECT_TRUE(at::equal(m.at("model.layers.1.block_sparse_moe.experts.0.w1.weight"), ta.at("model.layers.1.mlp.gate_proj.weight")));
        EXPECT_TRUE(at::equal(m.at("model.layers.1.block_sparse_moe.experts.1.w2.weight"), tbb.at("model.layers.1.mlp.down_proj.weight")));
        const std::string q = "model.layers.1.self_attn.q_proj.weight";
        if (rest == "base")
            EXPECT_TRUE(at::equal(m.at(q), tb.at(q)));
        else
            EXPECT_TRUE(at::allclose(m.at(q), (ta.at(q) + tbb.at(q)) / 2));
    }
    moe::ConvertOptions o = options("from_models", 3, 1);
    o.sources = {a.string(), b.string()};
    const std::string e = error_of([&] { moe::convert(shared_plugins(), base.string(), dir_of("three").string(), o); });
    EXPECT_NE(e.find("one expert per source model: 2 sources for 3 experts"), std::string::npos) << e;
}

// Routers from the model's own data: k-means of the FFN inputs (unit rows),
// and mergekit-moe's random gate modes at their scales.
TEST(Convert, RoutersFromDataAndGateModes) {
    const fs::path dense = dense_model("dense");
    moe::ConvertOptions o = options("upcycle", 4, 2, {{"router_init", "data"}});
    o.calibration_ids = tokens(8, 16);
    o.calibration_tokens = 100;
    const fs::path out = dir_of("data");
    moe::convert(shared_plugins(), dense.string(), out.string(), o);
    const at::Tensor g = tensors_of(out).at("model.layers.1.block_sparse_moe.gate.weight");
    EXPECT_EQ(g.sizes(), (at::IntArrayRef{4, 32}));
    EXPECT_TRUE(at::allclose(g.norm(2, 1), at::ones({4}), 1e-4, 1e-4));
    EXPECT_FALSE(at::allclose(g[0], g[1]));

    moe::ConvertOptions u = options("upcycle", 4, 2, {{"router_init", "directions"}});
    u.gate_mode = "uniform_random";
    const fs::path uo = dir_of("uniform");
    moe::convert(shared_plugins(), dense.string(), uo.string(), u);
    const at::Tensor ug = tensors_of(uo).at("model.layers.0.block_sparse_moe.gate.weight");
    EXPECT_LE(ug.abs().max().item<double>(), 1 / std::sqrt(32.0));
    EXPECT_GT(ug.abs().max().item<double>(), 0.5 / std::sqrt(32.0));
    // Data init without data says what it needs.
    moe::ConvertOptions n = options("upcycle", 4, 2, {{"router_init", "data"}});
    const std::string e = error_of([&] { moe::convert(shared_plugins(), dense.string(), dir_of("nodata").string(), n); });
    EXPECT_NE(e.find("--calibration-data"), std::string::npos) << e;
}

TEST(Convert, BadRequestsAreRefusedByName) {
    const fs::path dense = dense_model("dense");
    auto fails = [&](moe::ConvertOptions o, const std::string &expect, const fs::path &model = {}) {
        const fs::path out = dir_of("out");
        const std::string e = error_of([&] { moe::convert(shared_plugins(), (model.empty() ? dense : model).string(), out.string(), o); });
        EXPECT_NE(e.find(expect), std::string::npos) << "expected \"" << expect << "\" in: " << e;
        EXPECT_FALSE(fs::exists(out)) << "nothing is written on error";
    };
    fails(options("upcycle", 1, 1), "at least 2 experts");
    fails(options("upcycle", 4, 5), "top-k must be between 1 and the number of experts (4)");
    moe::ConvertOptions o = options("upcycle", 4, 2);
    o.layers = {0, 7};
    fails(o, "layer 7 is out of range: " + dense.string() + " has 3 layers (0..2)");
    o = options("upcycle", 4, 2);
    o.format = "deepseek_v3";
    fails(o, "use --format mixtral (every layer converted) or --format qwen2_moe");
    o.format = "mixtral";
    o.every = 2;
    fails(o, "layers 0, 2 stay dense");
    o = options("upcycle", 4, 2);
    o.format = "switch";
    fails(o, "unknown MoE format 'switch' (known: mixtral, qwen2_moe, deepseek_v3, mango)");
    o.format = "mango";
    fails(o, "converts to --format mixtral (every layer) or qwen2_moe (any layers)");
    fails(options("split", 5, 2), "5 experts do not divide the 48 intermediate neurons");
    fails(options("no_such_converter", 4, 2), "no_such_converter");
    // A source whose family no transformers MoE format expresses: the Mango format only.
    const json gpt2 = {{"model_type", "gpt2"}, {"n_embd", 32}, {"n_layer", 2}, {"n_head", 4}, {"vocab_size", 64}, {"n_positions", 64}};
    o = options("upcycle", 4, 2);
    o.format = "mixtral";
    fails(o, "its experts go in the Mango MoE format (--format mango", dense_model("gpt2", gpt2));
    fails(options("from_models", 2, 1), "from_models takes the source models' FFN weights but not their biases",
          dense_model("gpt2b", gpt2));
    // Qwen2 has q/k/v biases: Mixtral cannot hold them.
    o = options("upcycle", 4, 2);
    o.format = "mixtral";
    fails(o, "has them; use --format qwen2_moe", dense_model("qwen2", llama_config({{"model_type", "qwen2"}})));
    // Qwen2 slides the layers from max_window_layers on: one format window cannot say "only some".
    o = options("upcycle", 4, 2);
    fails(o, "2 of its 3 layers attend over a sliding window of 8 tokens",
          dense_model("qwen2_windows", llama_config({{"model_type", "qwen2"},
                                                     {"use_sliding_window", true},
                                                     {"sliding_window", 8},
                                                     {"max_window_layers", 1},
                                                     {"max_position_embeddings", 64}})));
    // An existing output is never overwritten without force.
    const fs::path out = dir_of("exists");
    fs::create_directories(out);
    std::ofstream(out / "keep.txt") << "keep";
    const std::string e = error_of([&] { moe::convert(shared_plugins(), dense.string(), out.string(), options("upcycle", 4, 2)); });
    EXPECT_NE(e.find("exists; pass --force"), std::string::npos) << e;
    EXPECT_TRUE(fs::exists(out / "keep.txt"));
}
