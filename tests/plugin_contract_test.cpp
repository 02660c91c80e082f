// What the host promises a third-party plugin, and what it checks of one:
// buffers (trainable = 0) are saved with the fusion and the training state
// and restored exactly; reported losses are weighted by name, and an
// unweighted name stops training with the router named; statistics reach the
// metrics log and evaluation; position ids reach route() in cached
// generation; outputs that break the contract are refused naming the plugin
// and place; a plugin failing without a message is reported as such; a
// plugin built with today's header runs on a host that offers only the first
// revision of the API table.
#include "abi/host_api.hpp"
#include "fusion/fusion.hpp"
#include "model/generate.hpp"
#include "train/evaluate.hpp"
#include "train/training_run.hpp"

#include "test_plugins.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "abi/crash_guard.hpp"

#include <csignal>

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
using namespace mango;

namespace {

const PluginHost &plugins() {
    static const PluginHost host =
        make_test_plugin_host({std::string(MANGO_FIXTURE_DIR) + "/contract", std::string(MANGO_FIXTURE_DIR) + "/silent"});
    return host;
}

std::string tmp(const std::string &name) {
    const auto d = fs::path(MANGO_TEST_TMP) / "contract";
    fs::create_directories(d);
    return (d / name).string();
}

// Two random LLaMAs (64 and 96 wide) fused layer by layer with `router`.
std::unique_ptr<FusedModel> fusion(const InstanceSpec &router) {
    std::vector<std::shared_ptr<Model>> models = {random_llama(64, 1), random_llama(96, 2)};
    FusionSpec spec;
    spec.adapter = named("linear");
    spec.seed = 3;
    for (int32_t l = 0; l < 2; ++l) spec.layers.push_back({{{0, l}, {1, l}}, router});
    return FusedModel::build(plugins(), models, spec);
}

InstanceSpec balanced() {
    InstanceSpec r = named("balanced");
    r.where = "p.toml:7";
    return r;
}

at::Tensor data() {
    at::manual_seed(11);
    return at::randint(3, 128, {12, 9});
}

TrainRunOptions run_options(const std::string &stem, int64_t steps) {
    TrainRunOptions o;
    o.train.steps = steps;
    o.train.batch_size = 4;
    o.train.lr = 1e-2;
    o.train.aux_weights["z_loss"] = 0.01;
    o.state_path = tmp(stem + ".state.safetensors");
    o.log_path = tmp(stem + ".metrics.jsonl");
    o.fingerprint = stem;
    o.progress = false;
    fs::remove(o.state_path);
    return o;
}

at::Tensor logits_of(CausalLM &m, const at::Tensor &ids) {
    at::NoGradGuard g;
    m.train(false);
    const at::Tensor mask = at::ones_like(ids), pos = at::arange(ids.size(1)).unsqueeze(0).expand_as(ids);
    return m.logits(ids, mask, pos, false);
}

at::Tensor buffer_of(const FusedModel &f, const std::string &name) {
    for (const auto &[n, t] : f.buffers())
        if (n == name) return t;
    throw std::runtime_error("no buffer " + name);
}

}  // namespace

TEST(PluginContract, BuffersAreSavedLoadedAndResumedExactly) {
    auto f = fusion(balanced());
    ASSERT_EQ(f->buffers().size(), 2u);  // one balancing bias per fusion layer
    for (const auto &[name, _] : f->trainable()) EXPECT_EQ(name.find("balance.bias"), std::string::npos) << name << " must not be trained";
    run_training(*f, data(), run_options("buffers", 6));
    const at::Tensor bias = buffer_of(*f, "layers.0.router.balance.bias").clone();
    EXPECT_GT(bias.abs().sum().item<double>(), 0) << "the router moved its buffer while training";

    // Saved and reloaded: the buffer and the logits are the same.
    const std::string dir = tmp("buffers_fusion");
    f->save(dir);
    auto loaded = FusedModel::load(plugins(), dir);
    EXPECT_TRUE(at::equal(buffer_of(*loaded, "layers.0.router.balance.bias"), bias));
    const at::Tensor ids = data().narrow(0, 0, 2);
    EXPECT_TRUE(at::equal(logits_of(*loaded, ids), logits_of(*f, ids)));

    // Resumed: 3 steps, the state saved, a fresh fusion restored from it and
    // 3 more steps, equals 6 in one go (buffers included).
    const at::Tensor d = data();
    TrainOptions o = run_options("resume", 6).train;
    auto a = fusion(balanced());
    {
        Trainer t(*a, o);
        for (int64_t s = 0; s < 6; ++s) t.step(t.batch_rows(d, s), at::ones({4, 9}, at::kLong));
    }
    const std::string state = tmp("resume.state.safetensors");
    {
        auto b = fusion(balanced());
        Trainer t(*b, o);
        for (int64_t s = 0; s < 3; ++s) t.step(t.batch_rows(d, s), at::ones({4, 9}, at::kLong));
        t.save_state(state);
    }
    auto c = fusion(balanced());
    {
        Trainer t(*c, o);
        t.load_state(state);
        for (int64_t s = 3; s < 6; ++s) t.step(t.batch_rows(d, s), at::ones({4, 9}, at::kLong));
    }
    EXPECT_TRUE(at::equal(buffer_of(*a, "layers.1.router.balance.bias"), buffer_of(*c, "layers.1.router.balance.bias")));
    EXPECT_TRUE(at::equal(logits_of(*a, ids), logits_of(*c, ids)));
}

TEST(PluginContract, ResumedRunLogsEachStepOnce) {
    // A run that finished 6 steps, whose state is then replaced by the one of
    // step 3 (as if it had been killed after step 5 with its last state at 3):
    // the rerun redoes 4..6 and the log holds each step once.
    auto f = fusion(balanced());
    TrainRunOptions o = run_options("relog", 6);
    run_training(*f, data(), o);
    {
        auto g = fusion(balanced());
        Trainer t(*g, o.train);
        for (int64_t s = 0; s < 3; ++s) t.step(t.batch_rows(data(), s), at::ones({4, 9}, at::kLong));
        t.save_state(o.state_path, {{"fingerprint", o.fingerprint}});
    }
    auto h = fusion(balanced());
    EXPECT_EQ(run_training(*h, data(), o).resumed_from, 3);
    std::ifstream log(o.log_path);
    std::string line;
    std::vector<int64_t> steps;
    while (std::getline(log, line)) {
        auto j = nlohmann::json::parse(line);
        if (j.contains("loss")) steps.push_back(j["step"].get<int64_t>());
    }
    EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));
}

TEST(PluginContract, ReportedLossesAreWeightedByNameAndStatsAreLogged) {
    auto f = fusion(balanced());
    TrainRunOptions o = run_options("stats", 2);
    run_training(*f, data(), o);
    std::ifstream log(o.log_path);
    std::string line;
    std::getline(log, line);
    const auto j = nlohmann::json::parse(line);
    ASSERT_TRUE(j.contains("aux_losses")) << line;
    EXPECT_TRUE(j["aux_losses"].contains("z_loss"));
    ASSERT_TRUE(j.contains("stats")) << line;
    EXPECT_EQ(j["stats"]["layer0.load"].size(), 2u);
    EXPECT_TRUE(j["stats"]["layer1.bias_norm"].is_number());

    // Evaluation collects the statistics too (metrics.json).
    const EvalResult e = evaluate(*f, data().narrow(0, 0, 4), 2);
    ASSERT_TRUE(e.stats.count("layer0.load"));
    EXPECT_NEAR(e.stats.at("layer0.load")[0] + e.stats.at("layer0.load")[1], 1.0, 1e-5);

    // A loss without a weight: an error at the first step naming the router and its place.
    auto g = fusion(balanced());
    TrainRunOptions unweighted = run_options("unweighted", 2);
    unweighted.train.aux_weights.erase("z_loss");
    try {
        run_training(*g, data(), unweighted);
        FAIL() << "an unweighted loss must stop training";
    } catch (const HostError &e) {
        const std::string m = e.what();
        EXPECT_NE(m.find("p.toml:7"), std::string::npos) << m;
        EXPECT_NE(m.find("router 'balanced'"), std::string::npos) << m;
        EXPECT_NE(m.find("'z_loss' that has no weight"), std::string::npos) << m;
        EXPECT_NE(m.find("aux_weights"), std::string::npos) << m;
    }
}

TEST(PluginContract, PositionIdsReachTheRouterInCachedGeneration) {
    auto f = fusion(balanced());
    GenerateOptions o;
    o.max_new_tokens = 8;
    const std::vector<std::vector<int64_t>> prompts = {{5, 6, 7}, {9, 10, 11, 12, 13}};
    const auto cached = generate(*f, prompts, o);
    o.use_cache = false;
    EXPECT_EQ(generate(*f, prompts, o), cached);
}

TEST(PluginContract, BrokenRouterOutputsAreRefusedNamingRouterAndPlace) {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"nan", "non-finite"},           {"double", "must sum to 1"},     {"int", "expected a floating-point tensor"},
        {"negative", "negative values"}, {"shape", "weights have shape"}, {"none", "returned OK but no tensor"}};
    const at::Tensor ids = data().narrow(0, 0, 2);
    for (const auto &[mode, expect] : cases) {
        InstanceSpec r = named("broken", {{"mode", mode}});
        r.where = "p.toml:9";
        auto f = fusion(r);
        try {
            logits_of(*f, ids);  // the first forward after a clear is checked, even in inference
            ADD_FAILURE() << mode << ": accepted";
        } catch (const HostError &e) {
            const std::string m = e.what();
            EXPECT_NE(m.find(expect), std::string::npos) << mode << ": " << m;
            EXPECT_NE(m.find("p.toml:9"), std::string::npos) << mode << ": " << m;
            EXPECT_NE(m.find("fusion layer 0"), std::string::npos) << mode << ": " << m;
            EXPECT_NE(m.find("router 'broken'"), std::string::npos) << mode << ": " << m;
        }
    }
}

// A plugin that crashes takes the process down (nothing is isolated), but
// the message names the call, the fusion layer, its TOML line, the library
// and what the host was doing, and the exit status is the signal's.
TEST(PluginContractDeathTest, ACrashingRouterIsNamedWithItsLibraryAndPlace) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    InstanceSpec r = named("broken", {{"mode", "crash"}});
    r.where = "p.toml:9";
    auto f = fusion(r);
    const at::Tensor ids = data().narrow(0, 0, 2);
    EXPECT_EXIT(
        {
            install_crash_handlers();
            set_crash_context("step 2/3: eval (p.toml:14)");
            logits_of(*f, ids);
        },
        ::testing::KilledBySignal(SIGSEGV),
        "fatal signal 11 \\(Segmentation fault\\) in a plugin call: p.toml:9: router of fusion layer 0: router 'broken'(.|\n)*"
        "plugin library: .*fixture_contract.so(.|\n)*while: step 2/3: eval \\(p.toml:14\\)");
}

TEST(PluginContract, FailureWithoutMessageIsReportedAsSuch) {
    host_api()->set_error("an old message from an unrelated call");
    auto a = AdapterInstance::create(plugins(), named("silent"), 4, 4);
    try {
        a->forward(at::ones({1, 4}));
        FAIL() << "the adapter failed";
    } catch (const HostError &e) {
        const std::string m = e.what();
        EXPECT_NE(m.find("adapter 'silent': forward: returned status 7 (INTERNAL) without a message"), std::string::npos) << m;
        EXPECT_EQ(m.find("old message"), std::string::npos) << m;
    }
}

TEST(PluginContract, TodaysPluginsRunOnAHostWithTheFirstApiRevision) {
    const std::string dir = (fs::path(MANGO_SOURCE_DIR) / "tests/golden/models/llama").string();
    const at::Tensor ids = at::randint(3, 100, {1, 6});
    at::Tensor want, got;
    {
        auto m = Model::load(plugins(), dir);
        want = logits_of(*m, ids);
    }
    // A host whose table ends at declare_tensor (revision 1): no weight_shaped,
    // no weight_exists, no declare_tensor_v2. The plugin falls back.
    set_host_api_size_for_testing(offsetof(mango_host_api, declare_tensor) + sizeof(void *));
    try {
        auto m = Model::load(plugins(), dir);
        got = logits_of(*m, ids);
        EXPECT_FALSE(m->roles().empty()) << "roles come through declare_tensor on an old host";
    } catch (...) {
        set_host_api_size_for_testing(0);
        throw;
    }
    set_host_api_size_for_testing(0);
    EXPECT_TRUE(at::equal(got, want));
}
