// Training: a resumed run continues bit-exactly; gradient checkpointing gives
// the same gradients as keeping activations; a whole model trains from random
// initialisation; AdamW matches its formula (Loshchilov & Hutter, decoupled
// weight decay) on a hand-computed step; a finished run restored from its
// state does no more steps.
#include "fusion/fusion.hpp"
#include "model/generate.hpp"
#include "train/train.hpp"
#include "train/training_run.hpp"

#include "test_plugins.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
using namespace mango;

namespace {

std::shared_ptr<Model> llama(int64_t hidden, uint64_t seed, at::Device device = at::kCPU) { return random_llama(hidden, seed, 64, device); }

// Two models of different sizes; bottleneck adapters with dropout, so the
// random state matters; token-level routers.
std::unique_ptr<FusedModel> fusion() {
    FusionSpec spec;
    spec.adapter = named("bottleneck", {{"bottleneck_size", 8}, {"dropout", 0.2}});
    spec.always_adapt = true;
    for (int32_t l = 0; l < 2; ++l) spec.layers.push_back({{{0, l}, {1, l}}, named("token_level", {{"top_k", 2}})});
    return FusedModel::build(shared_plugins(), {llama(32, 1), llama(48, 2)}, spec);
}

at::Tensor data() { return (at::arange(24 * 10).reshape({24, 10}) * 7 + 3) % 61 + 2; }

TrainOptions options() {
    TrainOptions o;
    o.steps = 6;
    o.batch_size = 4;
    o.lr = 5e-3;
    o.router_lr = 2e-2;
    o.warmup_steps = 2;
    o.seed = 11;
    o.adapter_weight = 0.1;
    return o;
}

void steps(Trainer &t, const at::Tensor &d, int64_t from, int64_t to) {
    for (int64_t s = from; s < to; ++s) {
        at::Tensor ids = t.batch_rows(d, s);
        t.step(ids, at::ones_like(ids));
    }
}

}  // namespace

TEST(Training, ResumeFromAStateFileIsBitExact) {
    const at::Tensor d = data();
    auto straight = fusion();
    Trainer a(*straight, options());
    steps(a, d, 0, 6);

    const std::string state = (fs::path(MANGO_TEST_TMP) / "resume.state.safetensors").string();
    {
        auto first = fusion();
        Trainer b(*first, options());
        steps(b, d, 0, 3);
        b.save_state(state, {{"fingerprint", "x"}});
    }  // "the process dies" after its checkpoint
    auto resumed = fusion();
    Trainer c(*resumed, options());
    const auto meta = c.load_state(state);
    EXPECT_EQ(meta.at("fingerprint"), "x");
    ASSERT_EQ(c.steps_done(), 3);
    steps(c, d, 3, 6);

    const auto want = straight->trainable(), got = resumed->trainable();
    ASSERT_EQ(want.size(), got.size());
    for (size_t i = 0; i < want.size(); ++i) EXPECT_TRUE(at::equal(want[i].second, got[i].second)) << want[i].first;
    // And the batches are the seeded order, not the data order.
    EXPECT_FALSE(at::equal(a.batch_rows(d, 0), d.narrow(0, 0, 4)));
    EXPECT_TRUE(at::equal(a.batch_rows(d, 5), c.batch_rows(d, 5)));
}

TEST(Training, StateFromAnotherModelIsRefused) {
    auto f = fusion();
    Trainer t(*f, options());
    const std::string state = (fs::path(MANGO_TEST_TMP) / "other.state.safetensors").string();
    t.save_state(state);
    auto m = llama(32, 3);
    m->set_trainable(true);
    Trainer other(*m, options());
    try {
        other.load_state(state);
        FAIL();
    } catch (const HostError &e) {
        EXPECT_NE(std::string(e.what()).find("trained tensors with their two moments"), std::string::npos) << e.what();
    }
}

TEST(Training, GradientCheckpointingGivesTheSameGradients) {
    at::manual_seed(0);
    const at::Tensor ids = data().narrow(0, 0, 3), mask = at::ones_like(ids);
    const at::Tensor pos = at::arange(ids.size(1)).unsqueeze(0).expand_as(ids);
    for (bool whole_model : {false, true}) {
        std::shared_ptr<Model> whole = whole_model ? llama(32, 5) : nullptr;
        if (whole) whole->set_trainable(true);
        auto f = whole_model ? nullptr : fusion();
        CausalLM &m = whole_model ? static_cast<CausalLM &>(*whole) : static_cast<CausalLM &>(*f);
        m.train(false);  // no dropout: both runs must see the same function
        std::vector<at::Tensor> plain_grads;
        for (bool recompute : {false, true}) {
            m.set_recompute_blocks(recompute);
            for (auto &[_, p] : m.trainable()) p.mutable_grad() = at::Tensor();
            lm_loss(m.logits(ids, mask, pos, false), ids, mask).backward();
            size_t i = 0, with_grad = 0;
            for (auto &[name, p] : m.trainable()) {
                if (!recompute) {
                    plain_grads.push_back(p.grad().defined() ? p.grad().clone() : at::Tensor());
                    continue;
                }
                ASSERT_EQ(p.grad().defined(), plain_grads[i].defined()) << name;
                if (p.grad().defined()) {
                    ++with_grad;
                    EXPECT_TRUE(at::allclose(p.grad(), plain_grads[i], 1e-5, 1e-6)) << name;
                }
                ++i;
            }
            if (recompute) {
                EXPECT_GT(with_grad, 4u);
            }
        }
        m.set_recompute_blocks(false);
    }
}

TEST(Training, AdamWStepMatchesTheFormula) {
    // One tensor, one step by hand: m = (1-b1) g, v = (1-b2) g^2,
    // p <- p (1 - lr wd) - lr * (m / (1-b1)) / (sqrt(v / (1-b2)) + eps).
    auto m = llama(32, 7);
    m->set_trainable(true);
    TrainOptions o;
    o.steps = 1;
    o.batch_size = 2;
    o.lr = 1e-2;
    o.weight_decay = 0.1;
    o.clip_norm = 0;
    o.aux_weights["load_balance"] = 0;
    Trainer t(*m, o);
    const at::Tensor ids = data().narrow(0, 0, 2), mask = at::ones_like(ids);
    std::vector<at::Tensor> before, grads;
    for (auto &[_, p] : m->trainable()) before.push_back(p.detach().clone());
    // The gradient the trainer will see, computed the same way first.
    {
        for (auto &[_, p] : m->trainable()) p.mutable_grad() = at::Tensor();
        const at::Tensor pos = at::arange(ids.size(1)).unsqueeze(0).expand_as(ids);
        lm_loss(m->logits(ids, mask, pos, false), ids, mask).backward();
        for (auto &[_, p] : m->trainable()) grads.push_back(p.grad().clone());
    }
    t.step(ids, mask);
    size_t i = 0;
    for (auto &[name, p] : m->trainable()) {
        const at::Tensor g = grads[i], p0 = before[i];
        const double decay = p0.dim() >= 2 ? 0.1 : 0.0;
        const at::Tensor mh = g * 0.1 / 0.1, vh = g * g * 0.001 / 0.001;
        const at::Tensor want = p0 * (1 - 1e-2 * decay) - 1e-2 * mh / (vh.sqrt() + 1e-8);
        EXPECT_TRUE(at::allclose(p.detach(), want, 1e-5, 1e-6)) << name;
        ++i;
    }
}

TEST(Training, WholeModelFromRandomInitLearnsAndRestoredRunDoesNothing) {
    auto m = llama(32, 9);
    m->set_trainable(true);
    TrainRunOptions o;
    o.train = options();
    o.train.steps = 30;
    o.train.lr = 1e-2;
    o.state_path = (fs::path(MANGO_TEST_TMP) / "whole.state.safetensors").string();
    o.log_path = (fs::path(MANGO_TEST_TMP) / "whole.metrics.jsonl").string();
    o.save_state_every = 10;
    o.fingerprint = "whole";
    o.validation = data().narrow(0, 20, 4);
    o.progress = false;
    fs::remove(o.state_path);
    const at::Tensor d = data().narrow(0, 0, 20);
    const double before = [&] {
        at::NoGradGuard g;
        const at::Tensor v = o.validation, pos = at::arange(v.size(1)).unsqueeze(0).expand_as(v);
        return std::exp(lm_loss(m->logits(v, at::ones_like(v), pos, false), v, at::ones_like(v)).item<double>());
    }();
    const TrainRunResult r = run_training(*m, d, o);
    EXPECT_EQ(r.steps, 30);
    EXPECT_LT(r.validation_perplexity, before * 0.5) << "before " << before;
    // The log holds one line per step plus the final validation.
    std::ifstream log(o.log_path);
    int lines = 0;
    for (std::string line; std::getline(log, line);) {
        const auto j = nlohmann::json::parse(line);
        EXPECT_TRUE(j.contains("step"));
        ++lines;
    }
    EXPECT_EQ(lines, 31);
    // Running again with the same state: restored, no steps, same weights.
    auto again = llama(32, 9);
    again->set_trainable(true);
    const TrainRunResult r2 = run_training(*again, d, o);
    EXPECT_EQ(r2.resumed_from, 30);
    EXPECT_EQ(r2.tokens, 0);
    const auto a = m->trainable(), b = again->trainable();
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::equal(a[i].second, b[i].second)) << a[i].first;
    // Another run's state is not resumed: it is kept aside and training starts over.
    o.fingerprint = "something else";
    o.train.steps = 2;
    const TrainRunResult r3 = run_training(*again, d, o);
    EXPECT_EQ(r3.resumed_from, 0);
    EXPECT_EQ(r3.steps, 2);
    EXPECT_EQ(r3.set_aside, o.state_path + ".previous");
    EXPECT_TRUE(fs::exists(r3.set_aside));
}

TEST(Cuda, FusionTrainsOnGpuWithBf16AutocastAndCheckpointing) {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device (or a CPU-only LibTorch)";
    auto build = [] {
        std::shared_ptr<Model> a = llama(32, 1, at::kCUDA), b = llama(48, 2, at::kCUDA);
        FusionSpec spec;
        spec.adapter = named("linear");
        for (int32_t l = 0; l < 2; ++l) spec.layers.push_back({{{0, l}, {1, l}}, named("simple")});
        return FusedModel::build(shared_plugins(), {a, b}, spec);
    };
    const at::Tensor d = data().cuda();
    double first_fp32 = 0;
    {
        auto f = build();
        Trainer t(*f, options());
        at::Tensor ids = t.batch_rows(d, 0);
        first_fp32 = t.step(ids, at::ones_like(ids)).lm_loss;
    }
    auto f = build();
    TrainOptions o = options();
    o.steps = 30;
    o.lr = 1e-2;
    o.bf16_autocast = true;
    o.recompute = true;
    Trainer t(*f, o);
    double first = 0, last = 0;
    for (int64_t s = 0; s < o.steps; ++s) {
        at::Tensor ids = t.batch_rows(d, s);
        const double loss = t.step(ids, at::ones_like(ids)).lm_loss;
        if (s == 0) first = loss;
        last = loss;
    }
    EXPECT_NE(first, first_fp32);          // autocast changed the arithmetic...
    EXPECT_NEAR(first, first_fp32, 0.05);  // ...by bf16 rounding only
    EXPECT_LT(last, first * 0.9) << "first " << first << " last " << last;
    for (const auto &[name, p] : f->trainable()) {
        EXPECT_TRUE(p.is_cuda()) << name;
        EXPECT_EQ(p.scalar_type(), at::kFloat) << name;  // master weights stay fp32
    }
}

// Mixed precision: bfloat16 members stay bfloat16 and untouched while the
// adapters and routers are float32 master weights that train; the fused
// logits are the float32 fusion's up to bfloat16 rounding.
TEST(Training, Bfloat16MembersWithFloat32AdaptersAndRouters) {
    auto build = [](at::ScalarType dtype) {
        FusionSpec spec;
        spec.adapter = named("linear");
        spec.always_adapt = true;
        for (int32_t l = 0; l < 2; ++l) spec.layers.push_back({{{0, l}, {1, l}}, named("token_level", {{"top_k", 2}})});
        std::vector<std::shared_ptr<Model>> models;
        for (auto [hidden, seed] : {std::pair<int64_t, uint64_t>{32, 1}, {48, 2}}) {
            llama(hidden, seed);  // writes the config
            const auto dir = std::filesystem::path(MANGO_TEST_TMP) / ("llama_" + std::to_string(hidden) + "_v64");
            models.push_back(Model::init_random(shared_plugins(), dir.string(), seed, dtype, at::kCPU));
        }
        return FusedModel::build(shared_plugins(), models, spec);
    };
    auto full = build(at::kFloat), half = build(at::kBFloat16);
    for (const auto &[name, p] : half->trainable()) EXPECT_EQ(p.scalar_type(), at::kFloat) << name;
    const at::Tensor ids = data().narrow(0, 0, 4), mask = at::ones_like(ids);
    const at::Tensor pos = at::arange(ids.size(1)).expand_as(ids).contiguous();
    {
        at::NoGradGuard no_grad;
        const at::Tensor a = full->logits(ids, mask, pos, false), b = half->logits(ids, mask, pos, false);
        EXPECT_EQ(b.scalar_type(), at::kBFloat16);  // the base model's head
        EXPECT_LT((a - b.to(at::kFloat)).abs().max().item<double>(), 0.05 * a.abs().max().item<double>());
    }
    std::vector<at::Tensor> before;
    for (const auto &m : half->models())
        for (const auto &[name, w] : m->named_weights()) before.push_back(w.clone());
    TrainOptions o = options();
    o.steps = 3;
    Trainer t(*half, o);
    steps(t, data(), 0, 3);
    size_t i = 0;
    for (const auto &m : half->models())
        for (const auto &[name, w] : m->named_weights()) {
            EXPECT_EQ(w.scalar_type(), at::kBFloat16) << name;
            EXPECT_TRUE(at::equal(w, before[i++])) << name;
        }
    for (const auto &[name, p] : half->trainable()) {
        EXPECT_EQ(p.scalar_type(), at::kFloat) << name;
        EXPECT_TRUE(p.grad().defined()) << name;
    }
}

// Placement: members of a fusion on other devices than its base (the
// adapters and routers live with the base) give the one-device fusion's
// logits and gradients; the hidden states travel to each member and back.
TEST(Cuda, FusionWithMembersOnSeveralDevicesEqualsOneDevice) {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device (or a CPU-only LibTorch)";
    const at::Device other = torch::cuda::device_count() > 1 ? at::Device(at::kCUDA, 1) : at::Device(at::kCPU);
    auto build = [](at::Device base, at::Device second) {
        FusionSpec spec;
        spec.adapter = named("linear");
        spec.always_adapt = true;
        for (int32_t l = 0; l < 2; ++l) spec.layers.push_back({{{0, l}, {1, l}}, named("token_level", {{"top_k", 2}})});
        return FusedModel::build(shared_plugins(), {llama(32, 1, base), llama(48, 2, second)}, spec);
    };
    auto one = build(at::kCPU, at::kCPU), placed = build(at::Device(at::kCUDA, 0), other);
    {
        at::NoGradGuard no_grad;  // the same adapter and router values on both
        auto from = one->trainable();
        auto to = placed->trainable();
        ASSERT_EQ(from.size(), to.size());
        for (size_t i = 0; i < from.size(); ++i) to[i].second.copy_(from[i].second);
    }
    const at::Tensor ids = data().narrow(0, 0, 4);
    auto run = [&](FusedModel &f, at::Device d) {
        const at::Tensor x = ids.to(d), mask = at::ones_like(x), pos = at::arange(x.size(1), x.options()).expand_as(x).contiguous();
        at::Tensor logits = f.logits(x, mask, pos, false);
        logits.pow(2).mean().backward();
        return logits.cpu();
    };
    const at::Tensor a = run(*one, at::kCPU), b = run(*placed, at::Device(at::kCUDA, 0));
    EXPECT_LT((a - b).abs().max().item<double>(), 1e-4);
    const auto ga = one->trainable(), gb = placed->trainable();
    for (size_t i = 0; i < ga.size(); ++i) {
        ASSERT_TRUE(gb[i].second.grad().defined()) << gb[i].first;
        EXPECT_LT((ga[i].second.grad() - gb[i].second.grad().cpu()).abs().max().item<double>(), 1e-4) << ga[i].first;
    }
}

// "cuda" without an index is the current GPU, and the model says so: the fusion compares a member's
// device with its hidden states' to choose its inference path.
TEST(Cuda, ModelOnUnindexedCudaReportsItsTensorsDevice) {
    if (!at::hasCUDA()) {
        try {
            llama(32, 1, at::kCUDA);
            FAIL() << "a model on 'cuda' loaded without CUDA";
        } catch (const HostError &e) {
            EXPECT_NE(std::string(e.what()).find("device 'cuda' asked for, but this LibTorch has no CUDA or sees no GPU"),
                      std::string::npos)
                << e.what();
        }
        return;
    }
    const auto m = llama(32, 1, at::kCUDA);
    const at::Tensor ids = at::full({1, 3}, 5, at::TensorOptions().dtype(at::kLong).device(at::kCUDA));
    const at::Tensor h = m->embed(ids, at::arange(3, ids.options()).unsqueeze(0));
    EXPECT_TRUE(m->device().has_index());
    EXPECT_EQ(m->device(), h.device());
}

// A fusion decodes on the GPU over every member's static KV cache with its
// steps replayed as a CUDA graph (adapters and routers inside the graph): the
// eager decoder's tokens, for a padded batch.
TEST(Cuda, FusionGraphDecodeEqualsEagerDecode) {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device (or a CPU-only LibTorch)";
    FusionSpec spec;
    spec.adapter = named("linear");
    spec.always_adapt = true;
    for (int32_t l = 0; l < 2; ++l) spec.layers.push_back({{{0, l}, {1, l}}, named("token_level", {{"top_k", 2}})});
    auto fused = FusedModel::build(shared_plugins(), {llama(32, 1, at::kCUDA), llama(48, 2, at::kCUDA)}, spec);
    const std::vector<std::vector<int64_t>> prompts = {{5, 6, 7, 8, 9}, {10, 11}};
    GenerateOptions o;
    o.max_new_tokens = 16;
    std::string used;
    o.decode_used = &used;
    o.decode = "eager";
    const auto eager = generate(*fused, prompts, o);
    o.decode = "graph";
    EXPECT_EQ(generate(*fused, prompts, o), eager);
    EXPECT_EQ(used, "graph");
}
