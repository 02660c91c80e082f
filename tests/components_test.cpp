// The shipped adapter and router plugins, loaded through the registry and
// run through the host API: identity-like start, the math against the same
// formula written directly in LibTorch, masks, options, gradients reaching
// every parameter, plugin failures as errors, and no leaked handles.
#include "abi/host_api.hpp"
#include "abi/plugins.hpp"

#include "test_plugins.hpp"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <cmath>

using mango::AdapterInstance;
using mango::InstanceSpec;
using mango::RouterInstance;

namespace {

const mango::PluginHost &plugins() {
    static const mango::PluginHost host =
        make_test_plugin_host({std::string(MANGO_FIXTURE_DIR) + "/good", std::string(MANGO_FIXTURE_DIR) + "/throwing"});
    return host;
}

InstanceSpec spec(const std::string &name, nlohmann::json options = nlohmann::json::object()) {
    InstanceSpec s;
    s.name = name;
    s.options = std::move(options);
    s.where = "test";
    return s;
}

at::Tensor param(const mango::Instance &inst, const std::string &name) {
    for (const auto &p : inst.parameters())
        if (p.name == name) return p.value;
    throw std::runtime_error("no parameter " + name);
}

// Sets every parameter to random values so no gradient is zero by symmetry.
void randomize(mango::Instance &inst) {
    at::NoGradGuard no_grad;
    for (const auto &p : inst.parameters()) p.value.copy_(at::randn_like(p.value) * 0.5);
}

void expect_all_gradients(mango::Instance &inst, const at::Tensor &out) {
    (out * at::randn_like(out)).sum().backward();
    for (const auto &p : inst.parameters()) {
        ASSERT_TRUE(p.value.grad().defined()) << p.name << " got no gradient";
        EXPECT_GT(p.value.grad().abs().sum().item<double>(), 0) << p.name << " has a zero gradient";
    }
}

class Components : public ::testing::Test {
protected:
    void SetUp() override {
        at::manual_seed(0);
        live_ = mango::live_tensor_handles();
    }
    void TearDown() override { EXPECT_EQ(mango::live_tensor_handles(), live_) << "tensor handles leaked"; }
    long live_ = 0;
};

}  // namespace

TEST_F(Components, LinearAdapterIsIdentityAtInitWhenSizesMatch) {
    auto a = AdapterInstance::create(plugins(), spec("linear"), 16, 16);
    at::Tensor x = at::randn({2, 5, 16});
    EXPECT_TRUE(at::equal(a->forward(x), x));
    EXPECT_EQ(a->parameters().size(), 4u);
}

TEST_F(Components, LinearAdapterMatchesFormula) {
    auto a = AdapterInstance::create(plugins(), spec("linear", {{"eps", 1e-6}}), 8, 12);
    randomize(*a);
    at::Tensor x = at::randn({3, 4, 8});
    at::Tensor want = at::layer_norm(at::linear(x, param(*a, "proj.weight"), param(*a, "proj.bias")), {12}, param(*a, "norm.weight"),
                                     param(*a, "norm.bias"), 1e-6);
    EXPECT_TRUE(at::allclose(a->forward(x), want, 1e-5, 1e-6));
    expect_all_gradients(*a, a->forward(x));
}

TEST_F(Components, LinearAdapterStartsAsRectangularIdentity) {
    auto a = AdapterInstance::create(plugins(), spec("linear", {{"layer_norm", false}}), 4, 6);
    at::Tensor x = at::randn({2, 3, 4});
    at::Tensor y = a->forward(x);
    EXPECT_TRUE(at::equal(y.narrow(-1, 0, 4), x));
    EXPECT_TRUE(at::equal(y.narrow(-1, 4, 2), at::zeros({2, 3, 2})));
}

TEST_F(Components, BottleneckAdapterIdentityAtInitAndFormula) {
    auto a = AdapterInstance::create(plugins(), spec("bottleneck", {{"bottleneck_size", 4}, {"dropout", 0.0}}), 10, 10);
    at::Tensor x = at::randn({2, 3, 10});
    EXPECT_TRUE(at::allclose(a->forward(x), x));
    randomize(*a);
    at::Tensor h = at::gelu(at::linear(x, param(*a, "down.weight"), param(*a, "down.bias")));
    at::Tensor want = x + at::layer_norm(at::linear(h, param(*a, "up.weight"), param(*a, "up.bias")), {10}, param(*a, "norm.weight"),
                                         param(*a, "norm.bias"));
    EXPECT_TRUE(at::allclose(a->forward(x), want, 1e-5, 1e-6));
    expect_all_gradients(*a, a->forward(x));
}

TEST_F(Components, BottleneckAdapterBetweenSizesWithDropout) {
    auto a = AdapterInstance::create(plugins(), spec("bottleneck", {{"activation", "silu"}, {"dropout", 0.5}}), 6, 9);
    at::Tensor x = at::randn({2, 3, 6});
    at::Tensor y0 = a->forward(x);
    EXPECT_TRUE(at::allclose(y0, at::linear(x, at::eye(9, 6))));  // skip projection only, at init
    randomize(*a);
    a->train(false);
    EXPECT_TRUE(at::equal(a->forward(x), a->forward(x)));  // no dropout in eval
    a->train(true);
    EXPECT_FALSE(at::equal(a->forward(x), a->forward(x)));  // dropout in training
    expect_all_gradients(*a, a->forward(x));
}

TEST_F(Components, SimpleRouterUniformAtInitWithReports) {
    auto r = RouterInstance::create(plugins(), spec("simple"), 8, 3);
    EXPECT_TRUE(r->route(at::randn({4, 5, 8}), at::Tensor()).losses.empty());  // reports are for training
    r->train(true);
    auto out = r->route(at::randn({4, 5, 8}), at::Tensor());
    ASSERT_EQ(out.weights.sizes(), at::IntArrayRef({4, 3}));
    EXPECT_TRUE(at::allclose(out.weights, at::full({4, 3}, 1.0 / 3)));
    std::map<std::string, at::Tensor> losses(out.losses.begin(), out.losses.end());
    EXPECT_NEAR(losses.at("load_balance").item<double>(), 1.0, 1e-6);       // balanced
    EXPECT_NEAR(losses.at("entropy").item<double>(), std::log(3.0), 1e-5);  // maximal
    std::map<std::string, at::Tensor> stats(out.stats.begin(), out.stats.end());
    EXPECT_EQ(stats.at("load").sizes(), at::IntArrayRef({3}));
}

TEST_F(Components, SimpleRouterMaskedPoolingIgnoresPadding) {
    for (const char *pooling : {"mean", "max", "attention"}) {
        auto r = RouterInstance::create(plugins(), spec("simple", {{"pooling", pooling}, {"temperature", 0.5}}), 8, 2);
        randomize(*r);
        at::Tensor h = at::randn({2, 4, 8});
        at::Tensor mask = at::tensor({1, 1, 1, 0, 1, 1, 0, 0}, at::kLong).reshape({2, 4});
        at::Tensor h2 = h.clone();
        h2.index_put_({0, 3}, 100.0);
        h2.index_put_({1, 2}, -100.0);
        auto a = r->route(h, mask), b = r->route(h2, mask);
        EXPECT_TRUE(at::allclose(a.weights, b.weights)) << pooling;
        EXPECT_TRUE(at::allclose(a.weights.sum(-1), at::ones({2}))) << pooling;
        // Mean pooling reference: softmax((W mean(h[:n]) + b) / T).
        if (std::string(pooling) == "mean") {
            at::Tensor pooled = at::stack({h[0].narrow(0, 0, 3).mean(0), h[1].narrow(0, 0, 2).mean(0)});
            at::Tensor want = at::softmax(at::linear(pooled, param(*r, "gate.weight"), param(*r, "gate.bias")) / 0.5, -1);
            EXPECT_TRUE(at::allclose(a.weights, want, 1e-5, 1e-6));
        }
        expect_all_gradients(*r, r->route(h, mask).weights);
    }
}

TEST_F(Components, SimpleRouterOnOneTokenPoolsItAlone) {  // a decoding step: one new token per sequence
    auto r = RouterInstance::create(plugins(), spec("simple"), 8, 3);
    randomize(*r);
    at::Tensor h = at::randn({3, 2, 8});
    at::Tensor one = at::tensor({1, 0, 1}, at::kLong).reshape({3, 1});  // the second sequence's token masked out
    at::Tensor two = at::cat({one, at::zeros({3, 1}, at::kLong)}, 1);   // the same with a masked second position
    auto a = r->route(h.narrow(1, 0, 1), one), b = r->route(h, two);
    EXPECT_TRUE(at::allclose(a.weights, b.weights, 1e-6, 1e-7)) << a.weights << b.weights;
    at::Tensor pooled = h.select(1, 0) * one.to(at::kFloat);
    EXPECT_TRUE(at::allclose(a.weights, at::softmax(at::linear(pooled, param(*r, "gate.weight"), param(*r, "gate.bias")), -1), 1e-6, 1e-7));
    expect_all_gradients(*r, r->route(h.narrow(1, 0, 1), one).weights);
}

TEST_F(Components, OptionErrorsNameComponentAndKey) {
    try {
        AdapterInstance::create(plugins(), spec("bottleneck", {{"activaton", "relu"}}), 4, 4);
        FAIL() << "accepted an unknown option";
    } catch (const mango::HostError &e) {
        EXPECT_NE(std::string(e.what()).find("test: adapter 'bottleneck': unknown option 'activaton'"), std::string::npos) << e.what();
    }
    EXPECT_THROW(RouterInstance::create(plugins(), spec("simple", {{"pooling", "median"}}), 4, 2), mango::HostError);
}

TEST_F(Components, UnknownComponentSuggestsCloseNames) {
    try {
        RouterInstance::create(plugins(), spec("simpel"), 4, 2);
        FAIL();
    } catch (const mango::HostError &e) {
        EXPECT_STREQ(e.what(), "no router plugin named 'simpel'; did you mean 'simple'? (installed routers: simple, token_level)");
    }
}

TEST_F(Components, PluginWrittenInCWorks) {
    auto a = AdapterInstance::create(plugins(), spec("c_identity"), 4, 4);
    at::Tensor x = at::randn({2, 4});
    EXPECT_TRUE(at::equal(a->forward(x), x));
    // Its table has the 0.1 size, without is_affine: the host does not read past it.
    EXPECT_FALSE(a->affine());
    EXPECT_TRUE(at::equal(a->difference(x, 2 * x), -x));
    try {
        AdapterInstance::create(plugins(), spec("c_identity"), 4, 5);
        FAIL();
    } catch (const mango::HostError &e) {
        EXPECT_NE(std::string(e.what()).find("c_identity needs d_in == d_out"), std::string::npos) << e.what();
    }
}

TEST_F(Components, PluginExceptionBecomesHostError) {
    auto a = AdapterInstance::create(plugins(), spec("thrower"), 4, 4);
    try {
        a->forward(at::randn({1, 4}));
        FAIL();
    } catch (const mango::HostError &e) {
        EXPECT_STREQ(e.what(), "test: adapter 'thrower': forward: deliberate failure in forward");
    }
    EXPECT_THROW(a->forward(at::randn({1, 5})), mango::HostError);  // wrong size caught by the host
}

TEST_F(Components, SavedParametersAreRestored) {
    InstanceSpec s = spec("linear");
    s.saved["proj.weight"] = at::full({4, 4}, 2.0);
    auto a = AdapterInstance::create(plugins(), s, 4, 4);
    EXPECT_TRUE(at::equal(param(*a, "proj.weight"), at::full({4, 4}, 2.0)));
}

TEST_F(Components, TokenLevelRouterTopKMatchesFormula) {
    auto r = RouterInstance::create(plugins(), spec("token_level", {{"top_k", 2}, {"temperature", 0.7}}), 8, 4);
    at::Tensor h = at::randn({2, 5, 8});
    at::Tensor mask = at::ones({2, 5}, at::kLong);
    mask[1].narrow(0, 3, 2).fill_(0);
    r->train(true);
    auto out = r->route(h, mask);
    ASSERT_EQ(out.weights.sizes(), at::IntArrayRef({2, 5, 4}));
    EXPECT_TRUE(at::allclose(out.weights.sum(-1), at::ones({2, 5})));
    EXPECT_TRUE(at::equal((out.weights > 0).sum(-1), at::full({2, 5}, 2, at::kLong)));
    // Reference: softmax(W h / T), top-2 renormalised.
    at::Tensor p = at::softmax(at::linear(h, param(*r, "gate.weight")) / param(*r, "log_temperature").exp(), -1);
    auto [top, idx] = p.topk(2, -1);
    at::Tensor want = at::zeros_like(p).scatter(-1, idx, top / top.sum(-1, true));
    EXPECT_TRUE(at::allclose(out.weights, want, 1e-5, 1e-6));
    // Switch load balance over real tokens: E * sum_e f_e * P_e.
    at::Tensor keep = mask.to(at::kFloat).unsqueeze(-1);
    at::Tensor P = (p * keep).sum(at::IntArrayRef{0, 1}) / keep.sum();
    at::Tensor f = (at::zeros_like(p).scatter(-1, idx, 1.0) * keep).sum(at::IntArrayRef{0, 1}) / (keep.sum() * 2);
    std::map<std::string, at::Tensor> losses(out.losses.begin(), out.losses.end());
    EXPECT_NEAR(losses.at("load_balance").item<double>(), (4 * (f * P).sum()).item<double>(), 1e-5);
    // Padding does not change the statistics.
    at::Tensor h2 = h.clone();
    h2[1].narrow(0, 3, 2).fill_(50);
    auto out2 = r->route(h2, mask);
    std::map<std::string, at::Tensor> stats(out.stats.begin(), out.stats.end()), stats2(out2.stats.begin(), out2.stats.end());
    EXPECT_TRUE(at::allclose(stats.at("load"), stats2.at("load")));
    randomize(*r);
    expect_all_gradients(*r, r->route(h, mask).weights);
}
