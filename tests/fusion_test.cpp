// The fused model (MoL): an untrained fusion of one model reproduces it
// exactly (against transformers' own logits and tokens); two models of
// different hidden sizes join through adapters and a router; router
// statistics; gradients reach only adapters and routers; bad specs are
// refused before anything is created.
#include "fusion/fusion.hpp"
#include "model/generate.hpp"
#include "train/train.hpp"

#include "test_plugins.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

namespace fs = std::filesystem;
using namespace mango;

namespace {

std::string golden(const std::string &name) { return (fs::path(MANGO_SOURCE_DIR) / "tests/golden/models" / name).string(); }

struct Batch {
    at::Tensor ids, mask, pos;
};
Batch batch() {
    at::Tensor ids = at::randint(3, 128, {2, 7}), mask = at::ones({2, 7}, at::kLong);
    mask[1].narrow(0, 0, 3).fill_(0);
    return {ids, mask, (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)};
}

}  // namespace

TEST(Fusion, OneModelFusionReproducesTheModel) {
    auto m = std::shared_ptr<Model>(Model::load(shared_plugins(), golden("llama")));
    FusionSpec spec;
    for (int32_t l = 0; l < m->info().n_layers; ++l) spec.layers.push_back({{{0, l}}, named("simple")});
    auto fused = FusedModel::build(shared_plugins(), {m}, spec);
    at::NoGradGuard no_grad;
    const Batch b = batch();
    EXPECT_TRUE(at::equal(fused->logits(b.ids, b.mask, b.pos, false), m->forward(b.ids, b.mask, b.pos)));
    ASSERT_EQ(fused->layer_reports().size(), 2u);
    EXPECT_TRUE(at::equal(fused->layer_reports()[0].weights, at::ones({2, 1})));
    // Generation through the fusion gives transformers' greedy tokens.
    const auto g = nlohmann::json::parse(std::ifstream(fs::path(golden("llama")) / "golden.json"));
    std::vector<std::vector<int64_t>> prompts;
    for (size_t r = 0; r < 2; ++r) {
        std::vector<int64_t> p;
        for (size_t t = 0; t < g["input_ids"][r].size(); ++t)
            if (g["attention_mask"][r][t] == 1) p.push_back(g["input_ids"][r][t]);
        prompts.push_back(p);
    }
    GenerateOptions o;
    o.max_new_tokens = 20;
    EXPECT_EQ(generate(*fused, prompts, o), g["generated"].get<std::vector<std::vector<int64_t>>>());
}

TEST(Fusion, TwoModelsOfDifferentSizesJoinThroughAdapters) {
    auto small = random_llama(64, 1), large = random_llama(96, 2);
    FusionSpec spec;
    spec.adapter = named("linear");
    for (int32_t l = 0; l < 2; ++l) spec.layers.push_back({{{0, l}, {1, l}}, named("simple", {{"pooling", "mean"}})});
    auto fused = FusedModel::build(shared_plugins(), {small, large}, spec);
    EXPECT_EQ(fused->target_hidden(), 96);
    const Batch b = batch();
    fused->train(true);  // routers report their losses only when training
    at::Tensor logits = fused->logits(b.ids, b.mask, b.pos, false);
    EXPECT_EQ(logits.sizes(), at::IntArrayRef({2, 7, 128}));
    for (const auto &s : fused->layer_reports()) {
        EXPECT_TRUE(at::allclose(s.weights.sum(-1), at::ones({2})));
        EXPECT_NEAR(s.entropy().item<double>(), std::log(2.0), 1e-5);  // uniform at init
        EXPECT_TRUE(at::allclose(s.load(), at::full({2}, 0.5)));
        EXPECT_FALSE(s.losses.empty());
    }
    // Only adapters and routers learn; the models' weights stay frozen.
    const auto trainable = fused->trainable();
    ASSERT_FALSE(trainable.empty());
    logits.pow(2).mean().backward();
    size_t with_grad = 0;
    for (const auto &[name, t] : trainable) with_grad += t.grad().defined();
    EXPECT_GT(with_grad, trainable.size() / 2);
    for (const auto &[name, w] : small->named_weights()) EXPECT_FALSE(w.requires_grad()) << name;
    // KV cache inside every expert block: cached generation equals recomputation.
    GenerateOptions o;
    o.max_new_tokens = 8;
    const std::vector<std::vector<int64_t>> prompts = {{5, 6, 7, 8}, {9, 10}};
    const auto cached = generate(*fused, prompts, o);
    o.use_cache = false;
    EXPECT_EQ(generate(*fused, prompts, o), cached);
    // Every member decodes over its static cache (entries written in place, the mask hides the rest).
    o.use_cache = true;
    o.decode = "static";
    std::string used;
    o.decode_used = &used;
    EXPECT_EQ(generate(*fused, prompts, o), cached);
    EXPECT_EQ(used, "static");
    // Routers that do depend on what they pool (random weights, mean over the new tokens' mask): the
    // static cache's mask has a column per entry, and a router must still see only this step's token.
    {
        at::NoGradGuard no_grad;
        at::manual_seed(3);
        for (auto &[name, t] : fused->trainable()) t.copy_(at::randn_like(t) * 0.5);
    }
    fused->train(false);
    o.decode = "eager";
    const auto growing = generate(*fused, prompts, o);
    o.decode = "static";
    EXPECT_EQ(generate(*fused, prompts, o), growing);
    {  // one decode step's logits, growing cache vs static cache (a padded batch)
        at::NoGradGuard no_grad;
        const Batch p = batch();
        const int64_t L = p.ids.size(1), capacity = L + 4;
        const at::Tensor next = at::randint(3, 128, {2, 1}), pos = p.pos.narrow(1, L - 1, 1) + 1;
        fused->clear_cache();
        fused->logits(p.ids, p.mask, p.pos, true);
        const at::Tensor want = fused->logits(next, at::cat({p.mask, at::ones({2, 1}, p.mask.options())}, 1), pos, true);
        fused->begin_static_cache(capacity);
        fused->logits(p.ids, p.mask, p.pos, true);
        ASSERT_TRUE(fused->static_cache_ready());
        at::Tensor mask = at::zeros({2, capacity}, p.mask.options());
        mask.narrow(1, 0, L + 1).narrow(1, 0, L).copy_(p.mask);
        mask.narrow(1, L, 1).fill_(1);
        fused->decode_at(L);
        const at::Tensor got = fused->logits(next, mask, pos, true);
        fused->clear_cache();
        EXPECT_LT((got - want).abs().max().item<double>(), 1e-4);
    }
}

TEST(Fusion, AnAdaptedBlockAddsOnlyItsUpdate) {
    // Expert B's blocks are the identity (attention and MLP outputs zeroed),
    // so its path y = h + out(block(in h)) - out(in h) must give back h
    // exactly, whatever the adapters do, and the fused stream is
    // 0.5 * A.block(h) + 0.5 * h at every layer (the router starts uniform).
    auto a = random_llama(96, 1), b = random_llama(64, 2);
    {
        at::NoGradGuard no_grad;
        for (auto &[name, w] : b->named_weights())
            if (name.find("o_proj") != std::string::npos || name.find("down_proj") != std::string::npos) w.zero_();
    }
    FusionSpec spec;
    spec.adapter = named("linear");
    for (int32_t l = 0; l < 2; ++l) spec.layers.push_back({{{0, l}, {1, l}}, named("simple")});
    auto fused = FusedModel::build(shared_plugins(), {a, b}, spec);
    at::NoGradGuard no_grad;
    const Batch x = batch();
    at::Tensor h = a->embed(x.ids, x.pos);
    for (int32_t l = 0; l < 2; ++l) h = 0.5 * a->block(l, h, x.mask, x.pos, false) + 0.5 * h;
    EXPECT_TRUE(at::allclose(fused->logits(x.ids, x.mask, x.pos, false), a->head(h), 1e-5, 1e-6));
}

TEST(Fusion, AffineAdaptersMapTheUpdateWithOneProjection) {
    // linear without its norm is affine: the fusion computes out(u) - out(v)
    // as out(u - v) - out(0). Written out here with plain at::linear, the
    // fused stream is 0.5 * A.block(h) + 0.5 * (h + out(B.block(in h)) - out(in h)).
    auto a = random_llama(96, 1), b = random_llama(64, 2);
    FusionSpec spec;
    spec.adapter = named("linear", {{"layer_norm", false}});
    for (int32_t l = 0; l < 2; ++l) spec.layers.push_back({{{0, l}, {1, l}}, named("simple", {{"pooling", "mean"}})});
    auto fused = FusedModel::build(shared_plugins(), {a, b}, spec);
    at::NoGradGuard no_grad;
    std::map<std::string, at::Tensor> p;
    for (auto &[name, t] : fused->trainable()) {
        if (name.find("adapters.") == 0) t.add_(at::randn(t.sizes()) * 0.1);  // away from the identity start
        p[name] = t;
    }
    ASSERT_TRUE(p.count("adapters.m1.in.proj.weight") && p.count("adapters.m1.out.proj.bias"));
    auto in = [&](const at::Tensor &x) { return at::linear(x, p["adapters.m1.in.proj.weight"], p["adapters.m1.in.proj.bias"]); };
    auto out = [&](const at::Tensor &x) { return at::linear(x, p["adapters.m1.out.proj.weight"], p["adapters.m1.out.proj.bias"]); };
    const Batch x = batch();
    at::Tensor h = a->embed(x.ids, x.pos);
    for (int32_t l = 0; l < 2; ++l) {
        const at::Tensor inner = in(h);
        h = 0.5 * a->block(l, h, x.mask, x.pos, false) + 0.5 * (h + out(b->block(l, inner, x.mask, x.pos, false)) - out(inner));
    }
    EXPECT_TRUE(at::allclose(fused->logits(x.ids, x.mask, x.pos, false), a->head(h), 1e-4, 1e-5));
    // With the norm, the same adapter is not affine.
    auto affine = [&](nlohmann::json options) {
        InstanceSpec s = named("linear", std::move(options));
        return AdapterInstance::create(shared_plugins(), s, 64, 96)->affine();
    };
    EXPECT_TRUE(affine({{"layer_norm", false}}));
    EXPECT_FALSE(affine({{"layer_norm", true}}));
    EXPECT_FALSE(AdapterInstance::create(shared_plugins(), named("bottleneck"), 64, 96)->affine());
}

TEST(Fusion, InitialValuesDependOnlyOnTheSeed) {
    auto small = random_llama(64, 1), large = random_llama(96, 2);
    FusionSpec spec;
    spec.adapter = named("bottleneck");  // random matrices
    for (int32_t l = 0; l < 2; ++l) spec.layers.push_back({{{0, l}, {1, l}}, named("simple", {{"pooling", "attention"}})});
    spec.seed = 7;
    const auto first = FusedModel::build(shared_plugins(), {small, large}, spec)->trainable();
    at::randn({1000});  // whatever ran before must not matter
    const auto again = FusedModel::build(shared_plugins(), {small, large}, spec)->trainable();
    spec.seed = 8;
    const auto other = FusedModel::build(shared_plugins(), {small, large}, spec)->trainable();
    ASSERT_EQ(first.size(), again.size());
    size_t differs = 0;
    for (size_t i = 0; i < first.size(); ++i) {
        EXPECT_EQ(first[i].first, again[i].first);
        EXPECT_TRUE(at::equal(first[i].second, again[i].second)) << first[i].first;
        differs += !at::equal(first[i].second, other[i].second);
    }
    EXPECT_GT(differs, 0u);
}

TEST(Fusion, BadSpecsAreRefusedBeforeAnythingRuns) {
    auto small = random_llama(64, 1), large = random_llama(96, 2);
    auto error = [&](FusionSpec spec) {
        try {
            FusedModel::build(shared_plugins(), {small, large}, spec);
        } catch (const HostError &e) {
            return std::string(e.what());
        }
        return std::string();
    };
    FusionSpec s;
    s.layers = {{{{0, 0}, {1, 0}}, named("simple")}};
    EXPECT_NE(error(s).find("has hidden size 64 and the fused model 96; configure an adapter"), std::string::npos) << error(s);
    s.adapter = named("linear");
    s.layers = {{{{0, 5}}, named("simple")}};
    EXPECT_NE(error(s).find("fusion layer 0: layer 5 of"), std::string::npos) << error(s);
    s.layers = {{{{1, 0}}, named("simple")}, {{{1, 0}}, named("simple")}};
    EXPECT_NE(error(s).find("fusion layer 1: layer 0 of"), std::string::npos) << error(s);
    s.layers = {{{{1, 0}}, named("simpel")}};
    EXPECT_NE(error(s).find("did you mean 'simple'"), std::string::npos) << error(s);
    s.layers = {{{{2, 0}}, named("simple")}};
    EXPECT_NE(error(s).find("model #2 does not exist"), std::string::npos) << error(s);
}

TEST(Fusion, TrainingLowersTheLossAndLeavesExpertsBitwiseUnchanged) {
    auto small = random_llama(64, 1), large = random_llama(96, 2);
    FusionSpec spec;
    spec.adapter = named("linear");
    for (int32_t l = 0; l < 2; ++l) spec.layers.push_back({{{0, l}, {1, l}}, named("simple")});
    auto fused = FusedModel::build(shared_plugins(), {small, large}, spec);
    std::vector<std::pair<std::string, at::Tensor>> before;
    for (const auto &m : {small, large})
        for (const auto &[n, w] : m->named_weights()) before.emplace_back(n, w.clone());
    // A fixed batch with a learnable pattern: token t+1 = token t + 1.
    at::Tensor ids = (at::arange(12).unsqueeze(0) + at::arange(4).unsqueeze(1) * 7) % 120 + 3;
    at::Tensor mask = at::ones_like(ids);
    TrainOptions o;
    o.steps = 40;
    o.lr = 3e-3;
    o.router_lr = 1e-2;
    o.warmup_steps = 5;
    Trainer t(*fused, o);
    const double first = t.step(ids, mask).lm_loss;
    double last = first;
    for (int i = 1; i < o.steps; ++i) last = t.step(ids, mask).lm_loss;
    EXPECT_LT(last, first * 0.8) << "first " << first << " last " << last;
    size_t i = 0;
    for (const auto &m : {small, large})
        for (const auto &[n, w] : m->named_weights()) EXPECT_TRUE(at::equal(w, before[i++].second)) << n << " changed";
    // Schedule: warmup rises linearly, then cosine decays to min_lr_ratio.
    EXPECT_NEAR(t.lr_factor(0), 0.2, 1e-12);
    EXPECT_NEAR(t.lr_factor(4), 1.0, 1e-12);
    EXPECT_NEAR(t.lr_factor(39), 0.1, 0.01);
}

TEST(Fusion, SaveAndLoadGiveIdenticalLogitsAndDetectChangedBaseModels) {
    auto small = random_llama(64, 1), large = random_llama(96, 2);
    const fs::path base_dir = fs::path(MANGO_TEST_TMP) / "fusion_saved_base";
    fs::remove_all(base_dir);
    small->save((base_dir / "small").string());
    large->save((base_dir / "large").string());
    auto a = std::shared_ptr<Model>(Model::load(shared_plugins(), (base_dir / "small").string()));
    auto b = std::shared_ptr<Model>(Model::load(shared_plugins(), (base_dir / "large").string()));
    FusionSpec spec;
    spec.adapter = named("bottleneck", {{"bottleneck_size", 8}, {"dropout", 0.0}});
    spec.layers = {{{{0, 0}, {1, 0}}, named("simple", {{"pooling", "attention"}})}, {{{1, 1}}, named("simple")}};
    auto fused = FusedModel::build(shared_plugins(), {a, b}, spec);
    at::Tensor ids = (at::arange(10).unsqueeze(0) + at::arange(2).unsqueeze(1) * 5) % 120 + 3, mask = at::ones_like(ids);
    Trainer t(*fused, TrainOptions{});
    for (int i = 0; i < 3; ++i) t.step(ids, mask);  // move the weights away from their start
    fused->train(false);
    const Batch x = batch();
    at::NoGradGuard no_grad;
    const at::Tensor want = fused->logits(x.ids, x.mask, x.pos, false);
    const fs::path saved = fs::path(MANGO_TEST_TMP) / "fusion_saved";
    fs::remove_all(saved);
    fused->save(saved.string());
    auto back = FusedModel::load(shared_plugins(), saved.string());
    EXPECT_TRUE(at::equal(back->logits(x.ids, x.mask, x.pos, false), want));
    // A changed base model is detected by its content hash.
    std::ofstream(base_dir / "large" / "config.json", std::ios::app) << " ";
    try {
        FusedModel::load(shared_plugins(), saved.string());
        FAIL();
    } catch (const HostError &e) {
        EXPECT_NE(std::string(e.what()).find("changed since the fusion was saved (config.json has another sha256)"), std::string::npos)
            << e.what();
    }
}
