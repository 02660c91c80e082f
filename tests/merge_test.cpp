// Merging (mango merge, mergekit's YAML): every method against its formula
// written here directly in LibTorch on small random LLaMAs (a base and two
// "fine-tunes" = base + noise), mergekit's properties (identical models give
// the model; slerp at t = 0 / 1 gives the endpoints; TIES with density 1 and
// one model equals task arithmetic; gradients give per-layer values; random
// methods are reproducible), slices, tokenizer union, and bad input refused
// with nothing written. Golden values from mergekit itself: merge_golden_test.cpp.
#include "formats/tokenizer.hpp"
#include "merge/merge.hpp"
#include "model/model.hpp"

#include "test_plugins.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>

namespace fs = std::filesystem;
using namespace mango;

namespace {

// One folder per test: ctest runs the tests as parallel processes.
fs::path root() {
    static const fs::path r = [] {
        fs::path p = fs::path(MANGO_TEST_TMP) / "merge" / ::testing::UnitTest::GetInstance()->current_test_info()->name();
        fs::remove_all(p);
        fs::create_directories(p);
        return p;
    }();
    return r;
}

// A saved random LLaMA: base (noise 0) or base + noise * N(0, 1) with `seed`.
std::string model(const std::string &name, uint64_t seed, double noise, int64_t layers = 3, int64_t vocab = 64) {
    const fs::path dir = root() / name;
    if (fs::exists(dir / "model.safetensors")) return dir.string();
    const fs::path cfg = root() / ("cfg_" + std::to_string(layers) + "_" + std::to_string(vocab));
    fs::create_directories(cfg);
    std::ofstream(cfg / "config.json") << nlohmann::json{{"model_type", "llama"},       {"hidden_size", 16},
                                                         {"num_hidden_layers", layers}, {"num_attention_heads", 2},
                                                         {"num_key_value_heads", 1},    {"intermediate_size", 24},
                                                         {"vocab_size", vocab},         {"initializer_range", 0.2},
                                                         {"torch_dtype", "float32"}}
                                              .dump();
    auto m = Model::init_random(shared_plugins(), cfg.string(), 1);  // the same base for all
    if (noise > 0) {
        at::NoGradGuard g;
        at::manual_seed(seed);
        for (auto &[_, t] : m->named_weights()) t.add_(at::randn_like(t) * noise);
    }
    m->save(dir.string());
    return dir.string();
}

std::map<std::string, at::Tensor> tensors(const std::string &dir) {
    auto ck = formats::Checkpoint::open(dir);
    std::map<std::string, at::Tensor> out;
    for (const auto &n : ck.names()) out[n] = ck.tensor(n).clone();
    return out;
}

// Runs YAML text; returns the output folder.
std::string merge_yaml(const std::string &name, const std::string &yaml, merge::Options o = {}) {
    const fs::path file = root() / (name + ".yml");
    std::ofstream(file) << yaml;
    const fs::path out = root() / ("out_" + name);
    o.progress = false;
    o.force = true;
    merge::run(shared_plugins(), merge::load_config(file.string()), out.string(), o);
    return out.string();
}

std::string error_of(const std::string &name, const std::string &yaml, merge::Options o = {}) {
    try {
        merge_yaml(name, yaml, o);
    } catch (const std::exception &e) {
        return e.what();
    }
    return "";
}

struct Trio {
    std::string base = model("base", 0, 0), a = model("ft_a", 2, 0.05), b = model("ft_b", 3, 0.05);
};

double max_diff(const at::Tensor &x, const at::Tensor &y) { return (x.to(at::kDouble) - y.to(at::kDouble)).abs().max().item<double>(); }

}  // namespace

TEST(Merge, LinearIsTheNormalisedWeightedSum) {
    Trio m;
    const std::string out =
        merge_yaml("linear", "merge_method: linear\nmodels:\n  - model: " + m.a + "\n    parameters: {weight: 0.3}\n  - model: " + m.b +
                                 "\n    parameters: {weight: 0.9}\ndtype: float32\n");
    auto A = tensors(m.a), B = tensors(m.b), O = tensors(out);
    ASSERT_EQ(O.size(), A.size());
    for (auto &[n, t] : O) EXPECT_LT(max_diff(t, (0.3 * A[n] + 0.9 * B[n]) / 1.2), 1e-6) << n;
    // The output loads and runs like any model folder.
    auto loaded = Model::load(shared_plugins(), out);
    EXPECT_EQ(loaded->info().n_layers, 3);
}

// A tensor the architecture keeps in float32 (MANGO_TENSOR_F32: DeepSeek's
// e_score_correction_bias) is merged and written in float32 whatever dtype
// and out_dtype say; every other tensor takes them.
TEST(Merge, Float32TensorsStayFloat32) {
    std::vector<std::string> dirs;
    for (uint64_t seed : {1, 2}) {
        const fs::path cfg = root() / ("deepseek_cfg_" + std::to_string(seed));
        fs::create_directories(cfg);
        std::ofstream(cfg / "config.json") << tiny_deepseek_config({{"torch_dtype", "float32"}}).dump();
        auto m = Model::init_random(shared_plugins(), cfg.string(), seed);
        for (const auto &[n, t] : m->named_weights())
            if (n.find("e_score_correction_bias") != std::string::npos) t.detach().copy_(at::randn_like(t) * 0.1);
        const fs::path dir = root() / ("deepseek_" + std::to_string(seed));
        m->save(dir.string());
        dirs.push_back(dir.string());
    }
    const std::string out =
        merge_yaml("f32", "merge_method: linear\nmodels:\n  - model: " + dirs[0] + "\n    parameters: {weight: 0.25}\n" +
                              "  - model: " + dirs[1] + "\n    parameters: {weight: 0.75}\ndtype: bfloat16\n");
    auto A = tensors(dirs[0]), B = tensors(dirs[1]), O = tensors(out);
    const std::string bias = "model.layers.1.mlp.gate.e_score_correction_bias";
    ASSERT_TRUE(O.count(bias));
    EXPECT_EQ(O[bias].scalar_type(), at::kFloat);
    EXPECT_LT(max_diff(O[bias], 0.25 * A[bias] + 0.75 * B[bias]), 1e-7) << "merged in float32, not rounded to bfloat16";
    EXPECT_EQ(O["model.layers.1.mlp.gate.weight"].scalar_type(), at::kBFloat16);
    EXPECT_EQ(nlohmann::json::parse(std::ifstream(fs::path(out) / "config.json")).value("torch_dtype", ""), "bfloat16");
}

TEST(Merge, IdenticalModelsGiveTheModel) {
    Trio m;
    auto A = tensors(m.a);
    for (const std::string method : {"linear", "karcher", "task_arithmetic", "ties", "dare_ties", "della", "model_stock", "sce", "ram"}) {
        const bool base = method != "linear" && method != "karcher";
        // Three copies of one model (the base among them where the method needs one).
        const std::string c1 = m.a, c2 = model("ft_a_copy", 2, 0.05), c3 = model("ft_a_copy2", 2, 0.05);
        std::string yaml = "merge_method: " + method + "\n" + (base ? "base_model: " + c1 + "\n" : "") + "models:\n";
        for (const std::string &c : {c1, c2, c3}) yaml += "  - model: " + c + "\n    parameters: {weight: 1.0, density: 0.5}\n";
        if (method == "della") yaml += "parameters: {epsilon: 0.1}\n";
        if (method == "linear" || method == "karcher" || method == "model_stock" || method == "sce" || method == "ram")
            yaml = std::regex_replace(yaml, std::regex(", density: 0.5"), "");
        if (method == "karcher" || method == "model_stock" || method == "sce" || method == "ram")
            yaml = std::regex_replace(yaml, std::regex("\\{weight: 1.0\\}"), "{}");
        auto O = tensors(merge_yaml("same_" + method, yaml));
        for (auto &[n, t] : O) EXPECT_LT(max_diff(t, A[n]), 1e-5) << method << " " << n;
    }
}

TEST(Merge, SlerpEndpointsAndFormula) {
    Trio m;
    auto yaml = [&](const std::string &t) {
        return "merge_method: slerp\nbase_model: " + m.a + "\nmodels:\n  - model: " + m.a + "\n  - model: " + m.b +
               "\nparameters:\n  t: " + t + "\n";
    };
    auto A = tensors(m.a), B = tensors(m.b);
    auto T0 = tensors(merge_yaml("slerp0", yaml("0"))), T1 = tensors(merge_yaml("slerp1", yaml("1"))),
         Th = tensors(merge_yaml("slerph", yaml("0.3")));
    for (auto &[n, t] : T0) {
        EXPECT_LT(max_diff(t, A[n]), 1e-6) << n;
        EXPECT_LT(max_diff(T1[n], B[n]), 1e-5) << n;
        // slerp over the flattened tensor (lerp when nearly parallel).
        const at::Tensor v0 = A[n].flatten(), v1 = B[n].flatten();
        const double dot = (v0 / v0.norm() * (v1 / v1.norm())).sum().item<double>();
        at::Tensor want;
        if (std::abs(dot) > 0.9995) {
            want = 0.7 * A[n] + 0.3 * B[n];
        } else {
            const double th = std::acos(dot), s = std::sin(th);
            want = std::sin(0.7 * th) / s * A[n] + std::sin(0.3 * th) / s * B[n];
        }
        EXPECT_LT(max_diff(Th[n], want), 1e-5) << n;
    }
}

TEST(Merge, TiesFollowsTrimElectMerge) {
    Trio m;
    const std::string out = merge_yaml("ties", "merge_method: ties\nbase_model: " + m.base + "\nmodels:\n  - model: " + m.a +
                                                   "\n    parameters: {weight: 1.0, density: 0.4}\n  - model: " + m.b +
                                                   "\n    parameters: {weight: 0.5, density: 0.6}\n");
    auto Bs = tensors(m.base), A = tensors(m.a), B = tensors(m.b), O = tensors(out);
    auto trim = [](const at::Tensor &d, double density) {
        const int64_t k = int64_t(density * double(d.numel()));
        const at::Tensor thr = std::get<0>(d.abs().flatten().kthvalue(d.numel() - k + 1));
        return d * (d.abs() >= thr);
    };
    for (auto &[n, o] : O) {
        const at::Tensor da = trim(A[n] - Bs[n], 0.4) * 1.0, db = trim(B[n] - Bs[n], 0.6) * 0.5;
        const at::Tensor D = at::stack({da, db});
        const at::Tensor majority = at::where(D.sum(0) >= 0, 1.0, -1.0);
        const at::Tensor agree = (D.sign() == majority).to(at::kFloat);
        const at::Tensor w = at::tensor({1.0f, 0.5f}).view({2, 1, 1}).expand_as(D.dim() == 3 ? D : D.unsqueeze(-1)).reshape(D.sizes());
        at::Tensor div = (w * agree).sum(0);
        div = at::where(div == 0, at::ones_like(div), div);
        EXPECT_LT(max_diff(o, Bs[n] + (D * agree).sum(0) / div), 1e-5) << n;
    }
}

TEST(Merge, TiesWithDensityOneAndOneModelIsTaskArithmetic) {
    Trio m;
    const std::string models = "base_model: " + m.base + "\nmodels:\n  - model: " + m.a + "\n    parameters: {weight: 0.7}\n";
    auto ties = tensors(merge_yaml("ties1", "merge_method: ties\nparameters: {normalize: false}\n" + models));
    auto ta = tensors(merge_yaml("ta1", "merge_method: task_arithmetic\n" + models));
    auto Bs = tensors(m.base), A = tensors(m.a);
    for (auto &[n, t] : ta) {
        EXPECT_LT(max_diff(t, ties[n]), 1e-6) << n;
        EXPECT_LT(max_diff(t, Bs[n] + 0.7 * (A[n] - Bs[n])), 1e-6) << n;
    }
}

TEST(Merge, GradientsGiveEachLayerItsValue) {
    Trio m;
    // t over 3 layers: 0, 0.5, 1 -> [0, 1] interpolates to 0, 0.5, 1; lm_head and norms (t = 0) get 0.
    const std::string out =
        merge_yaml("gradient", "merge_method: linear\nparameters:\n  normalize: false\nmodels:\n  - model: " + m.a +
                                   "\n    parameters:\n      weight: [0.0, 1.0]\n  - model: " + m.b +
                                   "\n    parameters:\n      weight:\n        - filter: mlp\n          value: 2.0\n        - value: 0.0\n");
    auto A = tensors(m.a), B = tensors(m.b), O = tensors(out);
    const std::string q = ".self_attn.q_proj.weight", up = ".mlp.up_proj.weight";
    for (int l = 0; l < 3; ++l) {
        const std::string p = "model.layers." + std::to_string(l);
        EXPECT_LT(max_diff(O[p + q], A[p + q] * (l / 2.0)), 1e-6) << l;
        EXPECT_LT(max_diff(O[p + up], A[p + up] * (l / 2.0) + 2.0 * B[p + up]), 1e-6) << l;
    }
    EXPECT_LT(O["model.norm.weight"].abs().max().item<double>(), 1e-7);
}

TEST(Merge, RandomMethodsAreSeededAndReproducible) {
    Trio m;
    const std::string yaml = "merge_method: dare_ties\nbase_model: " + m.base + "\nmodels:\n  - model: " + m.a +
                             "\n    parameters: {weight: 1.0, density: 0.5}\n  - model: " + m.b +
                             "\n    parameters: {weight: 1.0, density: 0.5}\n";
    auto x = tensors(merge_yaml("dare1", yaml)), y = tensors(merge_yaml("dare2", yaml));
    merge::Options other;
    other.seed = 7;
    auto z = tensors(merge_yaml("dare3", yaml, other));
    bool differs = false;
    for (auto &[n, t] : x) {
        EXPECT_TRUE(at::equal(t, y[n])) << n;
        differs = differs || !at::equal(t, z[n]);
    }
    EXPECT_TRUE(differs) << "another seed draws other masks";
    // DARE keeps about `density` of each task vector.
    auto Bs = tensors(m.base), A = tensors(m.a);
    const std::string n = "model.layers.0.mlp.up_proj.weight";
    auto dl = tensors(merge_yaml("dare_lin", "merge_method: dare_linear\nbase_model: " + m.base + "\nmodels:\n  - model: " + m.a +
                                                 "\n    parameters: {weight: 1.0, density: 0.3}\n"));
    const double kept = ((dl[n] - Bs[n]).abs() > 0).to(at::kDouble).mean().item<double>();
    EXPECT_NEAR(kept, 0.3, 0.06);
    // rescale (default on) keeps the L1 norm of the task vector.
    EXPECT_NEAR((dl[n] - Bs[n]).abs().sum().item<double>(), (A[n] - Bs[n]).abs().sum().item<double>(), 1e-3);
}

TEST(Merge, SlicesStackLayersAndRenameThem) {
    Trio m;
    const std::string out = merge_yaml("slices", "merge_method: passthrough\nslices:\n  - sources:\n      - model: " + m.a +
                                                     "\n        layer_range: [0, 2]\n  - sources:\n      - model: " + m.b +
                                                     "\n        layer_range: [1, 3]\n        parameters:\n          scale:\n            - "
                                                     "filter: o_proj\n              value: 0.5\n            - value: 1.0\n");
    auto A = tensors(m.a), B = tensors(m.b), O = tensors(out);
    const auto cfg = nlohmann::json::parse(std::ifstream(fs::path(out) / "config.json"));
    EXPECT_EQ(cfg["num_hidden_layers"], 4);
    EXPECT_TRUE(at::equal(O["model.layers.1.mlp.up_proj.weight"], A["model.layers.1.mlp.up_proj.weight"]));
    EXPECT_TRUE(at::equal(O["model.layers.2.mlp.up_proj.weight"], B["model.layers.1.mlp.up_proj.weight"]));
    EXPECT_LT(max_diff(O["model.layers.3.self_attn.o_proj.weight"], 0.5 * B["model.layers.2.self_attn.o_proj.weight"]), 1e-7);
    EXPECT_TRUE(at::equal(O["model.embed_tokens.weight"], A["model.embed_tokens.weight"]));  // pre weights: first slice
    EXPECT_TRUE(at::equal(O["lm_head.weight"], B["lm_head.weight"]));                        // post weights: last slice
    EXPECT_EQ(Model::load(shared_plugins(), out)->info().n_layers, 4);
}

TEST(Merge, BadInputIsRefusedAndNothingIsWritten) {
    Trio m;
    const std::string models =
        "models:\n  - model: " + m.a + "\n    parameters: {weight: 1.0}\n  - model: " + m.b + "\n    parameters: {weight: 1.0}\n";
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"merge_method: tiez\n" + models, "no merge plugin named 'tiez'; did you mean 'ties'"},
        {"merge_method: linear\nmodels:\n  - model: " + m.a + "\n  - model: " + m.b + "\n", "missing required option 'weight'"},
        {"merge_method: linear\nparameters: {normalise: true}\n" + models, "has no parameter 'normalise'"},
        {"merge_method: linear\nparameters: {normalize: [{filter: x}]}\n" + models, "conditional without 'value'"},
        {"merge_method: ties\n" + models, "needs a base_model"},
        {"merge_method: linear\nmodels:\n  - model: no/such/model\n    parameters: {weight: 1}\n", "there is no model hub here"},
        {"merge_method: linear\nmodels:\n  - model: org/model@main\n    parameters: {weight: 1}\n", "model@revision"},
        {"merge_method: passthrough\nslices:\n  - sources:\n      - model: " + m.a + "\n        layer_range: [0, 9]\n", "out of bounds"},
        {"merge_method: linear\nmodels:\n  - model: " + m.a + "\n    parameters: {weight: 1.0}\n  - model: " + model("deep", 4, 0.1, 4) +
             "\n    parameters: {weight: 1.0}\n",
         "need the same depth"},
        {"merge_method: linear\nmodels: [\n", "merge_case_9.yml:"},
    };
    for (size_t i = 0; i < cases.size(); ++i) {
        const std::string e = error_of("merge_case_" + std::to_string(i), cases[i].first);
        EXPECT_NE(e.find(cases[i].second), std::string::npos) << "case " << i << ": " << e;
        EXPECT_FALSE(fs::exists(root() / ("out_merge_case_" + std::to_string(i)))) << "case " << i;
    }
    // Shapes that differ (not an embedding): both named.
    const std::string wide = model("other_vocab", 5, 0.1, 3, 80);
    auto o = merge_yaml("vocab_min", "merge_method: linear\nmodels:\n  - model: " + m.a +
                                         "\n    parameters: {weight: 1.0}\n  - model: " + wide + "\n    parameters: {weight: 1.0}\n");
    EXPECT_EQ(tensors(o)["model.embed_tokens.weight"].size(0), 64) << "embeddings: the common block (mergekit's rectify)";
    // An existing output folder is kept unless --force.
    const fs::path file = root() / "keep.yml";
    std::ofstream(file) << "merge_method: linear\n" + models;
    merge::Options keep;
    keep.progress = false;
    const fs::path out = root() / "out_vocab_min";
    const auto before = fs::last_write_time(out / "model.safetensors");
    EXPECT_THROW(merge::run(shared_plugins(), merge::load_config(file.string()), out.string(), keep), HostError);
    EXPECT_EQ(fs::last_write_time(out / "model.safetensors"), before);
}

// float16 on the CPU (LibTorch 1.13 has no half kthvalue, softmax or clamp_min there: the host runs the
// math in float32 and rounds the result) and fine-tunes whose vocabularies differ (every method cuts the
// embeddings to the common block, as mergekit's rectify_embed_sizes): each method merges, in float16.
TEST(Merge, EveryMethodTakesFloat16AndVocabulariesOfDifferentSizes) {
    Trio m;
    const std::string wide = model("wide_vocab", 6, 0.05, 3, 80);
    auto entry = [](const std::string &dir, const std::string &params) {
        return "  - model: " + dir + (params.empty() ? "" : "\n    parameters: {" + params + "}") + "\n";
    };
    const std::string two = entry(m.a, "weight: 1.0, density: 0.5") + entry(wide, "weight: 1.0, density: 0.5");
    const std::vector<std::pair<std::string, std::string>> methods = {
        {"ties", two},
        {"model_stock", entry(m.a, "") + entry(wide, "")},
        {"ram", entry(m.a, "") + entry(wide, "")},
        {"ramplus_tl", entry(m.a, "") + entry(wide, "")},
        {"sce", entry(m.a, "") + entry(wide, "")},
        {"multislerp", entry(m.a, "weight: 1.0") + entry(wide, "weight: 1.0")},
        {"nuslerp", entry(m.a, "weight: 1.0") + entry(wide, "weight: 1.0")},
        {"nearswap", entry(wide, "")},
        {"arcee_fusion", entry(wide, "")},
    };
    for (const auto &[method, models] : methods) {
        const std::string yaml = "merge_method: " + method + "\nbase_model: " + m.base + "\ndtype: float16\n" +
                                 (method == "nearswap" ? "parameters: {t: 0.5}\n" : "") + "models:\n" + models;
        const std::string e = error_of("f16_" + method, yaml);
        ASSERT_EQ(e, "") << method;
        auto out = tensors((root() / ("out_f16_" + method)).string());
        EXPECT_EQ(out["model.embed_tokens.weight"].scalar_type(), at::kHalf) << method;
        EXPECT_EQ(out["model.embed_tokens.weight"].size(0), 64) << method << ": the common block of 64 and 80 rows";
        EXPECT_EQ(out["model.layers.0.mlp.up_proj.weight"].scalar_type(), at::kHalf) << method;
    }
}

// Values mergekit would read one way and we another, or that make a method a no-op, are refused by line.
TEST(Merge, AmbiguousAndOutOfRangeParametersAreRefused) {
    Trio m;
    const std::string base = "base_model: " + m.base + "\n";
    auto two = [&](const std::string &pa, const std::string &pb) {
        return "models:\n  - model: " + m.a + "\n    parameters: {" + pa + "}\n  - model: " + m.b + "\n    parameters: {" + pb + "}\n";
    };
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"merge_method: linear\nmerge_method: ties\n" + two("weight: 1", "weight: 1"),
         "ambiguous_0.yml:2: key 'merge_method' is given twice"},
        {"merge_method: linear\n" + two("weight: 0.5, weight: 2", "weight: 1"), "key 'weight' is given twice"},
        {"merge_method: linear\n" + two("weight: 1", "weight: 1") + "---\nmerge_method: ties\n", "holds several YAML documents"},
        {"merge_method: dare_linear\n" + base + two("weight: 1, density: -0.5", "weight: 1, density: 0.5"), "expected >= 0"},
        {"merge_method: dare_ties\n" + base + two("weight: 1, density: 5", "weight: 1"), "expected <= 1"},
        {"merge_method: dare_linear\n" + base + two("weight: 1, density: 0", "weight: 1"), "keeps nothing of its task vector"},
        {"merge_method: breadcrumbs\n" + base + two("weight: 1, density: 0.5, gamma: 3", "weight: 1"), "expected <= 1"},
        {"merge_method: della\n" + base + two("weight: 1, density: 0.5, epsilon: -0.3", "weight: 1"), "expected >= 0"},
        {"merge_method: sce\n" + base + "parameters: {select_topk: 5}\n" + two("", ""), "expected <= 1"},
    };
    for (size_t i = 0; i < cases.size(); ++i) {
        const std::string e = error_of("ambiguous_" + std::to_string(i), cases[i].first);
        EXPECT_NE(e.find(cases[i].second), std::string::npos) << "case " << i << ": " << e;
        EXPECT_FALSE(fs::exists(root() / ("out_ambiguous_" + std::to_string(i)))) << "case " << i;
    }
}

// The merged folder is checked as `mango inspect` would before it replaces OUT: a config that lies
// about its sizes gives an error and no output, and a base tokenizer larger than the embedding is cut
// with its BPE merges, so that it still loads.
TEST(Merge, OutputIsALoadableModelOrNothing) {
    Trio m;
    const fs::path liar = root() / "liar";
    fs::create_directories(liar);
    fs::copy_file(fs::path(m.a) / "model.safetensors", liar / "model.safetensors");
    auto cfg = nlohmann::json::parse(std::ifstream(fs::path(m.a) / "config.json"));
    cfg["intermediate_size"] = 48;  // the tensors have 24
    std::ofstream(liar / "config.json") << cfg.dump();
    const std::string e = error_of("liar", "merge_method: linear\nmodels:\n  - model: " + liar.string() +
                                               "\n    parameters: {weight: 1.0}\n  - model: " + m.b + "\n    parameters: {weight: 1.0}\n");
    EXPECT_NE(e.find("would not load, so nothing was written"), std::string::npos) << e;
    EXPECT_NE(e.find("config.json implies [48, 16]"), std::string::npos) << e;
    EXPECT_FALSE(fs::exists(root() / "out_liar"));

    const fs::path big_tok = root() / "big_tokenizer";
    fs::create_directories(big_tok);
    for (const char *f : {"model.safetensors", "config.json"}) fs::copy_file(fs::path(m.base) / f, big_tok / f);
    const fs::path llama3 = fs::path(MANGO_SOURCE_DIR) / "tests/golden/tokenizers/llama3_style/tokenizer.json";  // 1,502 tokens
    fs::copy_file(llama3, big_tok / "tokenizer.json");
    fs::copy_file(llama3, fs::path(m.a) / "tokenizer.json", fs::copy_options::overwrite_existing);
    const std::string out =
        merge_yaml("tokenizer_base", "merge_method: task_arithmetic\nbase_model: " + big_tok.string() + "\nmodels:\n  - model: " + m.a +
                                         "\n    parameters: {weight: 1.0}\ntokenizer_source: base\n");
    EXPECT_TRUE(Model::folder_problems(shared_plugins(), out).empty());
    const auto tok = formats::Tokenizer::from_file((fs::path(out) / "tokenizer.json").string());
    for (int64_t id : tok.encode("hello world, hello tokenizer", false)) EXPECT_LT(id, 64);
}

namespace {
// A BPE tokenizer.json without merges: `tokens` take the ids 0, 1, ...
void write_word_tokenizer(const std::string &dir, const std::vector<std::string> &tokens) {
    nlohmann::json vocab = nlohmann::json::object();
    for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = i;
    const nlohmann::json tok = {{"version", "1.0"},
                                {"added_tokens", nlohmann::json::array()},
                                {"normalizer", nullptr},
                                {"pre_tokenizer", {{"type", "WhitespaceSplit"}}},
                                {"post_processor", nullptr},
                                {"decoder", nullptr},
                                {"model",
                                 {{"type", "BPE"},
                                  {"dropout", nullptr},
                                  {"unk_token", nullptr},
                                  {"continuing_subword_prefix", nullptr},
                                  {"end_of_word_suffix", nullptr},
                                  {"fuse_unk", false},
                                  {"byte_fallback", false},
                                  {"vocab", vocab},
                                  {"merges", nlohmann::json::array()}}}};
    std::ofstream(fs::path(dir) / "tokenizer.json") << tok.dump();
}
}  // namespace

// tokenizer: {source: union, tokens: ...} as mergekit's PermutedEmbeddings builds the rows
// (mergekit/tokenizer/embed.py, build.py): the union appends B's new tokens after A's; a token one
// model lacks takes the other's row; a `tokens` entry names a token's default row (a model's row for it,
// a row of a model's own embedding by id or token, or zeros), with `force` every model takes that row,
// and a token no vocabulary has is added (not_a_token: zeros); a model may be named by another path.
TEST(Merge, TokenizerUnionAndPerTokenSources) {
    Trio m;
    std::vector<std::string> va, vb;
    for (int i = 0; i < 64; ++i) va.push_back("x" + std::to_string(i));
    for (int i = 0; i < 60; ++i) vb.push_back("x" + std::to_string(i));
    for (int i = 0; i < 4; ++i) vb.push_back("y" + std::to_string(i));
    write_word_tokenizer(m.a, va);
    write_word_tokenizer(m.b, vb);
    const std::string models = "merge_method: linear\nmodels:\n  - model: " + m.a + "\n    parameters: {weight: 1.0}\n  - model: " + m.b +
                               "\n    parameters: {weight: 1.0}\n";
    const std::string out = merge_yaml("union", models +
                                                    "tokenizer:\n  source: union\n  tokens:\n"
                                                    "    x5: {source: {kind: zero}, force: true}\n"
                                                    "    x6: {source: " +
                                                    m.b +
                                                    "/., force: true}\n"
                                                    "    x7: {source: {kind: model_token, model: " +
                                                    m.a +
                                                    ", token: x9}}\n"
                                                    "    x61: {source: {kind: model_token, model: " +
                                                    m.b +
                                                    ", token_id: 2}}\n"
                                                    "    y1: {source: {kind: zero}}\n"
                                                    "    not_a_token: {source: {kind: zero}}\n");
    EXPECT_TRUE(Model::folder_problems(shared_plugins(), out).empty());
    const auto tok = formats::Tokenizer::from_file((fs::path(out) / "tokenizer.json").string());
    for (const auto &[token, id] : std::vector<std::pair<std::string, int32_t>>{{"x3", 3}, {"x63", 63}, {"y0", 64}, {"y3", 67}})
        EXPECT_EQ(tok.token_to_id(token), id) << token;
    EXPECT_EQ(tok.token_to_id("not_a_token"), 68);
    EXPECT_EQ(tok.encode("y0 y3", false), (std::vector<int32_t>{64, 67}));
    EXPECT_EQ(nlohmann::json::parse(std::ifstream(fs::path(out) / "config.json"))["vocab_size"], 69);
    auto a = tensors(m.a), b = tensors(m.b), merged = tensors(out);
    for (const char *name : {"model.embed_tokens.weight", "lm_head.weight"}) {
        const at::Tensor A = a[name], B = b[name], M = merged[name];
        ASSERT_EQ(M.size(0), 69) << name;
        at::Tensor want = at::zeros_like(M);
        for (int64_t i = 0; i < 60; ++i) want[i] = (A[i] + B[i]) / 2;  // x7 too: both have it, not forced
        want[5].zero_();                                               // forced zeros
        want[6] = B[6];                                                // forced to B's row
        for (int64_t i : {60, 62, 63}) want[i] = A[i];                 // only A has x60..x63: B takes A's row
        want[61] = (A[61] + B[2]) / 2;                                 // B lacks x61: its row 2 stands in
        for (int64_t j : {0, 2, 3}) want[64 + j] = B[60 + j];          // only B has y0..y3
        want[65] = B[61] / 2;                                          // y1: A takes zeros (not forced)
        EXPECT_LT(max_diff(M, want), 1e-6) << name;
    }
    const std::vector<std::pair<std::string, std::string>> bad = {
        {"    x5: {force: true}\n", "needs a 'source'"},
        {"    x5: {source: {kind: other}}\n", "source kind must be zero or model_token, not 'other'"},
        {"    x5: {source: {kind: model_token, model: " + m.a + "}}\n", "needs one of token_id and token"},
        {"    x5: {source: " + m.base + "}\n", "is not one of the merged models"},
        {"    x5: {source: {kind: model_token, model: " + m.b + ", token: x63}}\n", "'x63' is not a token of"},
        {"    x5: {source: {kind: model_token, model: " + m.b + ", token_id: 64}}\n", "token_id 64 is past"},
        {"    x62: {source: " + m.b + "}\n", "'x62' is not a token of"},
    };
    for (size_t i = 0; i < bad.size(); ++i) {
        const std::string e = error_of("union_bad_" + std::to_string(i), models + "tokenizer:\n  tokens:\n" + bad[i].first);
        EXPECT_NE(e.find(bad[i].second), std::string::npos) << "case " << i << ": " << e;
        EXPECT_NE(e.find(".yml:9: "), std::string::npos) << "case " << i << " names the line: " << e;
        EXPECT_FALSE(fs::exists(root() / ("out_union_bad_" + std::to_string(i)))) << "case " << i;
    }
}

namespace {
// A PEFT adapter folder: adapter_config.json (`config`) and adapter_model.safetensors (`tensors`,
// named without PEFT's "base_model.model." prefix, which is added here).
std::string adapter(const std::string &name, const nlohmann::ordered_json &config, const formats::NamedTensors &tensors) {
    const fs::path dir = root() / name;
    fs::create_directories(dir);
    std::ofstream(dir / "adapter_config.json") << config.dump();
    formats::NamedTensors prefixed;
    for (const auto &[n, t] : tensors) prefixed.push_back({"base_model.model." + n, t});
    formats::write_safetensors((dir / "adapter_model.safetensors").string(), prefixed);
    return dir.string();
}
}  // namespace

// "MODEL+LORA" (and {model: MODEL, lora: LORA}) merges the adapter into its model before the merge, as
// PEFT's merge_and_unload: W + (alpha / r) B A for a linear layer (Hu et al. 2021, eq. 3), (B A)^T for
// an embedding, alpha / sqrt(r) with use_rslora, alpha_pattern per module, modules_to_save replacing.
TEST(Merge, LoraReferencesMergeTheAdapterFirst) {
    Trio m;
    at::manual_seed(7);
    const int64_t r = 4;
    const at::Tensor qa = at::randn({r, 16}), qb = at::randn({16, r}), va = at::randn({r, 16}), vb = at::randn({8, r}),
                     ea = at::randn({r, 64}), eb = at::randn({16, r}), head = at::randn({64, 16});
    const at::Tensor embed = at::randn({64, 16});  // PEFT's save_embedding_layers: the embedding the update goes onto
    // alpha_pattern: the first key that matches, in the file's order (2, not 100).
    const std::string lora = adapter("lora",
                                     {{"peft_type", "LORA"},
                                      {"r", r},
                                      {"lora_alpha", 8},
                                      {"alpha_pattern", {{"self_attn.v_proj", 2}, {"layers.1.self_attn.v_proj", 100}}}},
                                     {{"model.layers.0.self_attn.q_proj.lora_A.weight", qa},
                                      {"model.layers.0.self_attn.q_proj.lora_B.weight", qb},
                                      {"model.layers.1.self_attn.v_proj.lora_A.weight", va},
                                      {"model.layers.1.self_attn.v_proj.lora_B.weight", vb},
                                      {"model.embed_tokens.lora_embedding_A", ea},
                                      {"model.embed_tokens.lora_embedding_B", eb},
                                      {"model.embed_tokens.base_layer.weight", embed},
                                      {"lm_head.weight", head}});
    // fan_in_fan_out is PEFT's to set by layer type: LLaMA's are nn.Linear, so it is ignored here.
    const std::string rs =
        adapter("rslora", {{"r", r}, {"lora_alpha", 8}, {"use_rslora", true}, {"fan_in_fan_out", true}},
                {{"model.layers.0.self_attn.q_proj.lora_A.weight", qa}, {"model.layers.0.self_attn.q_proj.lora_B.weight", qb}});
    auto a = tensors(m.a);
    auto one = [&](const std::string &name, const std::string &ref) {
        return tensors(merge_yaml(name, "merge_method: linear\nmodels:\n  - model: " + ref + "\n    parameters: {weight: 1.0}\n"));
    };
    for (const auto &out : {one("plus", m.a + "+" + lora), one("map", "{model: " + m.a + ", lora: {path: " + lora + "}}")}) {
        EXPECT_LT(
            max_diff(out.at("model.layers.0.self_attn.q_proj.weight"), a["model.layers.0.self_attn.q_proj.weight"] + 2.0 * qb.matmul(qa)),
            1e-5);
        EXPECT_LT(
            max_diff(out.at("model.layers.1.self_attn.v_proj.weight"), a["model.layers.1.self_attn.v_proj.weight"] + 0.5 * vb.matmul(va)),
            1e-5);
        EXPECT_LT(max_diff(out.at("model.embed_tokens.weight"), embed + 2.0 * eb.matmul(ea).t()), 1e-5);
        EXPECT_LT(max_diff(out.at("lm_head.weight"), head), 1e-6);
        EXPECT_LT(max_diff(out.at("model.layers.0.self_attn.v_proj.weight"), a["model.layers.0.self_attn.v_proj.weight"]), 1e-7);
        EXPECT_LT(max_diff(out.at("model.layers.1.self_attn.q_proj.weight"), a["model.layers.1.self_attn.q_proj.weight"]), 1e-7);
    }
    EXPECT_LT(max_diff(one("rslora", m.a + "+" + rs).at("model.layers.0.self_attn.q_proj.weight"),
                       a["model.layers.0.self_attn.q_proj.weight"] + 4.0 * qb.matmul(qa)),
              1e-5);  // 8 / sqrt(4)
    // The same model with and without its adapter are two inputs: the mean is half the update.
    const auto half =
        tensors(merge_yaml("half", "merge_method: linear\nmodels:\n  - model: " + m.a + "+" + rs +
                                       "\n    parameters: {weight: 1.0}\n  - model: " + m.a + "\n    parameters: {weight: 1.0}\n"));
    EXPECT_LT(
        max_diff(half.at("model.layers.0.self_attn.q_proj.weight"), a["model.layers.0.self_attn.q_proj.weight"] + 2.0 * qb.matmul(qa)),
        1e-5);

    const std::vector<std::pair<std::string, std::string>> bad = {
        {adapter("bad_target", {{"lora_alpha", 8}},
                 {{"model.layers.9.mlp.up_proj.lora_A.weight", qa}, {"model.layers.9.mlp.up_proj.lora_B.weight", qb}}),
         "changes 'model.layers.9.mlp.up_proj.weight', which"},
        {adapter("bad_shape", {{"lora_alpha", 8}},
                 {{"model.layers.0.mlp.up_proj.lora_A.weight", qa}, {"model.layers.0.mlp.up_proj.lora_B.weight", qb}}),
         "has shape [16, 16], but"},
        {adapter("bad_dora", {{"lora_alpha", 8}, {"use_dora", true}}, {{"lm_head.weight", head}}),
         "DoRA adapters (use_dora) are not supported"},
        {adapter("bad_half", {{"lora_alpha", 8}}, {{"model.layers.0.self_attn.q_proj.lora_A.weight", qa}}), "lora_A but no lora_B"},
        {adapter("bad_alpha", {{"r", 4}}, {{"lm_head.weight", head}}), "no 'lora_alpha'"},
        {(root() / "no_such_adapter").string(), "no folder holding adapter_config.json"},
        {adapter("bad_pissa", {{"lora_alpha", 8}, {"init_lora_weights", "pissa_niter_4"}}, {{"lm_head.weight", head}}),
         "changes the base weights"},
        {adapter("bad_alora", {{"lora_alpha", 8}, {"alora_invocation_tokens", {1, 2}}}, {{"lm_head.weight", head}}), "activated LoRA"},
    };
    for (size_t i = 0; i < bad.size(); ++i) {
        const std::string e = error_of("lora_bad_" + std::to_string(i), "merge_method: linear\nmodels:\n  - model: " + m.a + "+" +
                                                                            bad[i].first + "\n    parameters: {weight: 1.0}\n");
        EXPECT_NE(e.find(bad[i].second), std::string::npos) << "case " << i << ": " << e;
        EXPECT_NE(e.find(".yml:3: "), std::string::npos) << "case " << i << " names the line: " << e;
        EXPECT_FALSE(fs::exists(root() / ("out_lora_bad_" + std::to_string(i)))) << "case " << i;
    }
    // An adapter folder is an input: --force does not let the output replace it.
    const fs::path yml = root() / "into_adapter.yml";
    std::ofstream(yml) << "merge_method: linear\nmodels:\n  - model: " + m.a + "+" + rs + "\n    parameters: {weight: 1.0}\n";
    merge::Options o;
    o.progress = false;
    o.force = true;
    try {
        merge::run(shared_plugins(), merge::load_config(yml.string()), rs, o);
        ADD_FAILURE() << "merged into its own adapter's folder";
    } catch (const std::exception &e) {
        EXPECT_NE(std::string(e.what()).find("must not be, contain or lie inside an input"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(fs::exists(fs::path(rs) / "adapter_model.safetensors"));
}
