// The host's own operators (kernels/fused_ops.hpp): found through the host
// API as plugins find them, equal to the formulas they stand for (RMSNorm,
// Zhang & Sennrich 2019; rotary embeddings, Su et al. 2021, rotate-half form
// as transformers writes it; SwiGLU; the causal / sliding-window mask), and
// on a GPU the CUDA kernels equal the ATen chains they replace.
#include "abi/host_api.hpp"
#include "kernels/fused_ops.hpp"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <tuple>
#include <vector>

namespace {

using RmsNorm = at::Tensor(const at::Tensor &, const at::Tensor &, double);
using AddRmsNorm = std::tuple<at::Tensor, at::Tensor>(const at::Tensor &, const at::Tensor &, const at::Tensor &, double);
using SiluMul = at::Tensor(const at::Tensor &, const at::Tensor &);
using Rope = std::tuple<at::Tensor, at::Tensor>(const at::Tensor &, const at::Tensor &, const at::Tensor &, const at::Tensor &, double);
using Linear = at::Tensor(const at::Tensor &, const at::Tensor &, const c10::optional<at::Tensor> &);
using Linears = std::vector<at::Tensor>(const at::Tensor &, at::TensorList, at::TensorList);
using DecodeAttention = at::Tensor(const at::Tensor &, const at::Tensor &, const at::Tensor &, const at::Tensor &, int64_t, double);
using MaskBias = at::Tensor(const at::Tensor &, int64_t, int64_t, at::ScalarType);
using LinearResidual = at::Tensor(const at::Tensor &, const at::Tensor &, const c10::optional<at::Tensor> &, const at::Tensor &);
using Swiglu = at::Tensor(const at::Tensor &, const at::Tensor &, const at::Tensor &);
using MeanPoolGate = at::Tensor(const at::Tensor &, const c10::optional<at::Tensor> &, const at::Tensor &,
                                const c10::optional<at::Tensor> &, double);
using LinearsRope = std::vector<at::Tensor>(const at::Tensor &, at::TensorList, at::TensorList, const at::Tensor &, const at::Tensor &,
                                            double, int64_t, int64_t);

template <class F>
c10::TypedOperatorHandle<F> typed(const char *name) {
    mango::kernels::register_fused_ops();
    return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<F>();
}

at::Tensor rms_norm(const at::Tensor &x, const at::Tensor &w, double eps) { return typed<RmsNorm>("mango::rms_norm").call(x, w, eps); }
std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor &x, const at::Tensor &r, const at::Tensor &w, double eps) {
    return typed<AddRmsNorm>("mango::add_rms_norm").call(x, r, w, eps);
}
at::Tensor silu_mul(const at::Tensor &g, const at::Tensor &u) { return typed<SiluMul>("mango::silu_mul").call(g, u); }
std::tuple<at::Tensor, at::Tensor> rope(const at::Tensor &q, const at::Tensor &k, const at::Tensor &pos, const at::Tensor &inv_freq,
                                        double factor) {
    return typed<Rope>("mango::rope").call(q, k, pos, inv_freq, factor);
}
at::Tensor host_linear(const at::Tensor &x, const at::Tensor &w, const at::Tensor &b = at::Tensor()) {
    return typed<Linear>("mango::linear").call(x, w, b.defined() ? c10::optional<at::Tensor>(b) : c10::nullopt);
}
std::vector<at::Tensor> linears(const at::Tensor &x, std::vector<at::Tensor> ws, std::vector<at::Tensor> bs = {}) {
    return typed<Linears>("mango::linears").call(x, ws, bs);
}
at::Tensor decode_attention(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v, const at::Tensor &padding, int64_t window,
                            double scale) {
    return typed<DecodeAttention>("mango::decode_attention").call(q, k, v, padding, window, scale);
}
at::Tensor mask_bias(const at::Tensor &padding, int64_t T, int64_t window, at::ScalarType dtype) {
    return typed<MaskBias>("mango::attention_mask_bias").call(padding, T, window, dtype);
}

at::Tensor linear_residual(const at::Tensor &x, const at::Tensor &w, const at::Tensor &b, const at::Tensor &residual) {
    return typed<LinearResidual>("mango::linear_residual").call(x, w, b.defined() ? c10::optional<at::Tensor>(b) : c10::nullopt, residual);
}
at::Tensor swiglu(const at::Tensor &x, const at::Tensor &g, const at::Tensor &u) { return typed<Swiglu>("mango::swiglu").call(x, g, u); }
std::vector<at::Tensor> linears_rope(const at::Tensor &x, std::vector<at::Tensor> ws, std::vector<at::Tensor> bs, const at::Tensor &pos,
                                     const at::Tensor &inv_freq, double factor, int64_t heads, int64_t kv_heads) {
    return typed<LinearsRope>("mango::linears_rope").call(x, ws, bs, pos, inv_freq, factor, heads, kv_heads);
}

at::Tensor mean_pool_gate(const at::Tensor &h, const at::Tensor &mask, const at::Tensor &w, const at::Tensor &b, double scale) {
    const auto opt = [](const at::Tensor &t) { return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt; };
    return typed<MeanPoolGate>("mango::mean_pool_gate").call(h, opt(mask), w, opt(b), scale);
}

// The rotate-half rotary embedding of x [B, H, T, D] (double) by positions [B, T], written out
// element by element: pairs (j, j + D/2) turn by positions * inv_freq[j], cos and sin times factor.
at::Tensor rotated(const at::Tensor &x, const at::Tensor &pos, const at::Tensor &inv_freq, double factor) {
    const int64_t D = x.size(3);
    at::Tensor out = at::empty(x.sizes(), x.options());
    auto a = x.accessor<double, 4>();
    auto o = out.accessor<double, 4>();
    auto p = pos.accessor<int64_t, 2>();
    auto f = inv_freq.accessor<double, 1>();
    for (int64_t b = 0; b < x.size(0); ++b)
        for (int64_t h = 0; h < x.size(1); ++h)
            for (int64_t t = 0; t < x.size(2); ++t)
                for (int64_t j = 0; j < D / 2; ++j) {
                    const double angle = double(p[b][t]) * f[j], c = std::cos(angle) * factor, s = std::sin(angle) * factor;
                    o[b][h][t][j] = a[b][h][t][j] * c - a[b][h][t][j + D / 2] * s;
                    o[b][h][t][j + D / 2] = a[b][h][t][j + D / 2] * c + a[b][h][t][j] * s;
                }
    return out;
}

TEST(FusedOps, PluginsFindThemThroughTheHostApi) {
    for (const char *name : {"mango::linear", "mango::linears", "mango::rms_norm", "mango::add_rms_norm", "mango::silu_mul", "mango::rope",
                             "mango::attention_mask_bias", "mango::decode_attention", "mango::linear_residual", "mango::swiglu",
                             "mango::linears_rope", "mango::mean_pool_gate"}) {
        const mango_op *op = nullptr;
        EXPECT_EQ(mango::host_api()->find_op(name, "", &op), MANGO_OK) << name << ": " << mango::host_api()->last_error();
        EXPECT_NE(op, nullptr) << name;
    }
}

TEST(FusedOps, LinearIsTheFormula) {
    at::manual_seed(5);
    at::Tensor x = at::randn({2, 3, 16}, at::kDouble), w = at::randn({5, 16}, at::kDouble), b = at::randn({5}, at::kDouble);
    at::Tensor want = at::einsum("btk,nk->btn", {x, w}) + b;
    EXPECT_TRUE(at::allclose(host_linear(x.to(at::kFloat), w.to(at::kFloat), b.to(at::kFloat)).to(at::kDouble), want, 1e-5, 1e-5));
    EXPECT_TRUE(at::allclose(host_linear(x.to(at::kFloat), w.to(at::kFloat)).to(at::kDouble), want - b, 1e-5, 1e-5));
}

TEST(FusedOps, LinearsAreOneLinearEach) {
    at::manual_seed(7);
    at::Tensor x = at::randn({2, 16}), q = at::randn({8, 16}), k = at::randn({4, 16}), v = at::randn({4, 16}), b = at::randn({8});
    std::vector<at::Tensor> out = linears(x, {q, k, v});
    ASSERT_EQ(out.size(), 3u);
    EXPECT_TRUE(at::allclose(out[0], at::matmul(x, q.t()), 1e-5, 1e-5));
    EXPECT_TRUE(at::allclose(out[2], at::matmul(x, v.t()), 1e-5, 1e-5));
    std::vector<at::Tensor> with_bias = linears(x, {q, q}, {b, b});
    EXPECT_TRUE(at::allclose(with_bias[1], at::matmul(x, q.t()) + b, 1e-5, 1e-5));
    EXPECT_THROW(linears(x, {q, k}, {b}), c10::Error);  // biases: none or one per weight
}

TEST(FusedOps, RmsNormIsTheFormula) {
    at::manual_seed(1);
    at::Tensor x = at::randn({3, 5, 16}, at::kDouble), w = at::randn({16}, at::kDouble);
    const double eps = 1e-5;
    at::Tensor got = rms_norm(x.to(at::kFloat), w.to(at::kFloat), eps);
    at::Tensor want = w * x / at::sqrt((x * x).mean({-1}, true) + eps);
    EXPECT_TRUE(at::allclose(got.to(at::kDouble), want, 1e-5, 1e-6)) << (got.to(at::kDouble) - want).abs().max();
    EXPECT_EQ(rms_norm(x.to(at::kBFloat16), w.to(at::kBFloat16), eps).scalar_type(), at::kBFloat16);
    at::Tensor r = at::randn({3, 5, 16}, at::kDouble);
    auto [sum, normed] = add_rms_norm(x.to(at::kFloat), r.to(at::kFloat), w.to(at::kFloat), eps);
    EXPECT_TRUE(at::allclose(sum.to(at::kDouble), x + r, 1e-6, 1e-6));
    EXPECT_TRUE(at::allclose(normed.to(at::kDouble), w * (x + r) / at::sqrt(((x + r) * (x + r)).mean({-1}, true) + eps), 1e-5, 1e-6));
}

TEST(FusedOps, SiluMulIsTheFormula) {
    at::manual_seed(2);
    at::Tensor g = at::randn({4, 24}, at::kDouble) * 3, u = at::randn({4, 24}, at::kDouble);
    at::Tensor want = g / (1 + at::exp(-g)) * u;
    EXPECT_TRUE(at::allclose(silu_mul(g.to(at::kFloat), u.to(at::kFloat)).to(at::kDouble), want, 1e-5, 1e-6));
    // halves of one [4, 48] projection, as a fused gate-up projection is split
    at::Tensor gu = at::cat({g, u}, -1).to(at::kFloat);
    EXPECT_TRUE(at::allclose(silu_mul(gu.narrow(-1, 0, 24), gu.narrow(-1, 24, 24)).to(at::kDouble), want, 1e-5, 1e-6));
}

TEST(FusedOps, RopeRotatesPairsHalfADimensionApart) {
    at::manual_seed(3);
    const int64_t B = 2, H = 3, KV = 1, T = 4, D = 8;
    at::Tensor q = at::randn({B, T, H, D}, at::kDouble).transpose(1, 2);  // the [B, H, T, D] view split_heads gives
    at::Tensor k = at::randn({B, KV, T, D}, at::kDouble);
    at::Tensor pos = at::tensor({3, 4, 5, 6, 0, 1, 2, 3}, at::kLong).reshape({B, T});
    at::Tensor inv_freq = at::tensor({1.0, 0.1, 0.01, 0.001}, at::kDouble);
    const double factor = 1.25;
    auto [qr, kr] = rope(q.to(at::kFloat), k.to(at::kFloat), pos, inv_freq.to(at::kFloat), factor);
    EXPECT_TRUE(at::allclose(qr.to(at::kDouble), rotated(q, pos, inv_freq, factor), 1e-5, 1e-5))
        << (qr.to(at::kDouble) - rotated(q, pos, inv_freq, factor)).abs().max();
    EXPECT_TRUE(at::allclose(kr.to(at::kDouble), rotated(k, pos, inv_freq, factor), 1e-5, 1e-5));
}

TEST(FusedOps, LinearResidualIsTheFormula) {
    at::manual_seed(8);
    at::Tensor x = at::randn({2, 3, 16}, at::kDouble), w = at::randn({5, 16}, at::kDouble), b = at::randn({5}, at::kDouble);
    at::Tensor r = at::randn({2, 3, 5}, at::kDouble);
    at::Tensor want = r + at::einsum("btk,nk->btn", {x, w}) + b;
    const auto f = [](const at::Tensor &t) { return t.to(at::kFloat); };
    EXPECT_TRUE(at::allclose(linear_residual(f(x), f(w), f(b), f(r)).to(at::kDouble), want, 1e-5, 1e-5));
    EXPECT_TRUE(at::allclose(linear_residual(f(x), f(w), at::Tensor(), f(r)).to(at::kDouble), want - b, 1e-5, 1e-5));
}

TEST(FusedOps, SwigluIsSiluOfTheGateTimesTheUpProjection) {
    at::manual_seed(9);
    at::Tensor x = at::randn({3, 16}, at::kDouble), g = at::randn({24, 16}, at::kDouble), u = at::randn({24, 16}, at::kDouble);
    at::Tensor gate = at::matmul(x, g.t()), want = gate / (1 + at::exp(-gate)) * at::matmul(x, u.t());
    EXPECT_TRUE(at::allclose(swiglu(x.to(at::kFloat), g.to(at::kFloat), u.to(at::kFloat)).to(at::kDouble), want, 1e-5, 1e-5));
}

TEST(FusedOps, LinearsRopeProjectsSplitsAndRotates) {
    at::manual_seed(10);
    const int64_t B = 2, T = 3, H = 4, KV = 2, D = 8, hidden = 16;
    at::Tensor x = at::randn({B, T, hidden}, at::kDouble), wq = at::randn({H * D, hidden}, at::kDouble),
               wk = at::randn({KV * D, hidden}, at::kDouble), wv = at::randn({KV * D, hidden}, at::kDouble);
    at::Tensor bq = at::randn({H * D}, at::kDouble), bk = at::randn({KV * D}, at::kDouble), bv = at::randn({KV * D}, at::kDouble);
    at::Tensor pos = at::tensor({7, 8, 9, 0, 1, 2}, at::kLong).reshape({B, T});
    at::Tensor inv_freq = at::tensor({1.0, 0.3, 0.01, 0.002}, at::kDouble);
    const auto heads = [&](const at::Tensor &t, int64_t h) { return t.reshape({B, T, h, D}).transpose(1, 2); };
    const auto f = [](const at::Tensor &t) { return t.to(at::kFloat); };
    for (bool bias : {false, true}) {
        const std::vector<at::Tensor> got =
            bias ? linears_rope(f(x), {f(wq), f(wk), f(wv)}, {f(bq), f(bk), f(bv)}, pos, f(inv_freq), 0.9, H, KV)
                 : linears_rope(f(x), {f(wq), f(wk), f(wv)}, {}, pos, f(inv_freq), 0.9, H, KV);
        ASSERT_EQ(got.size(), 3u);
        const auto proj = [&](const at::Tensor &w, const at::Tensor &b) { return at::matmul(x, w.t()) + (bias ? b : at::zeros_like(b)); };
        EXPECT_TRUE(at::allclose(got[0].to(at::kDouble), rotated(heads(proj(wq, bq), H), pos, inv_freq, 0.9), 1e-4, 1e-4))
            << "q, bias " << bias;
        EXPECT_TRUE(at::allclose(got[1].to(at::kDouble), rotated(heads(proj(wk, bk), KV), pos, inv_freq, 0.9), 1e-4, 1e-4))
            << "k, bias " << bias;
        EXPECT_TRUE(at::allclose(got[2].to(at::kDouble), heads(proj(wv, bv), KV), 1e-4, 1e-4)) << "v (not rotated), bias " << bias;
    }
    EXPECT_THROW(linears_rope(f(x), {f(wq), f(wk), f(wv)}, {}, pos, f(inv_freq), 1.0, 3, KV), c10::Error);  // 32 rows in 3 heads
}

TEST(FusedOps, MixExpertsIsTheWeightedSum) {
    at::manual_seed(11);
    for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
        std::vector<at::Tensor> outs = {at::randn({2, 3, 16}).to(dt), at::randn({2, 3, 16}).to(dt), at::randn({2, 3, 16}).to(dt)};
        for (int64_t T : {1, 3}) {  // one weight vector per sequence, or per position
            at::Tensor w = at::softmax(at::randn({2, T, 3}), -1);
            at::Tensor want = at::zeros({2, 3, 16}, at::kDouble);
            for (int64_t e = 0; e < 3; ++e) want = want + outs[size_t(e)].to(at::kDouble) * w.narrow(-1, e, 1).to(at::kDouble);
            const at::Tensor got = mango::kernels::mix_experts(outs, w, at::kFloat);
            EXPECT_EQ(got.scalar_type(), at::kFloat);
            EXPECT_TRUE(at::allclose(got.to(at::kDouble), want, 1e-6, 1e-6)) << dt << " T " << T;
        }
    }
    EXPECT_THROW(mango::kernels::mix_experts({at::ones({1, 1, 4})}, at::ones({1, 1, 2}), at::kFloat), c10::Error);  // 1 output, 2 weights
}

// The simple router's gate written out in doubles: p_b = sum_t h[b,t] keep[b,t] / max(sum_t keep[b,t], 1),
// w_b = softmax(scale (W p_b + bias)).
at::Tensor gate_formula(const at::Tensor &h, const at::Tensor &mask, const at::Tensor &w, const at::Tensor &b, double scale) {
    const int64_t B = h.size(0), T = h.size(1), H = h.size(2), E = w.size(0);
    const at::Tensor hd = h.to(at::kDouble).cpu(), wd = w.to(at::kDouble).cpu();
    const at::Tensor kd = mask.defined() ? mask.to(at::kDouble).cpu() : at::ones({B, T}, at::kDouble);
    const at::Tensor bd = b.defined() ? b.to(at::kDouble).cpu() : at::zeros({E}, at::kDouble);
    auto x = hd.accessor<double, 3>();
    auto wa = wd.accessor<double, 2>();
    auto keep = kd.accessor<double, 2>();
    auto ba = bd.accessor<double, 1>();
    at::Tensor out = at::empty({B, E}, at::kDouble);
    auto o = out.accessor<double, 2>();
    for (int64_t i = 0; i < B; ++i) {
        double count = 0;
        for (int64_t t = 0; t < T; ++t) count += keep[i][t];
        std::vector<double> p(static_cast<size_t>(H), 0.0), logit(static_cast<size_t>(E), 0.0);
        for (int64_t c = 0; c < H; ++c) {
            for (int64_t t = 0; t < T; ++t) p[size_t(c)] += x[i][t][c] * keep[i][t];
            p[size_t(c)] /= std::max(count, 1.0);
        }
        double top = -1e300, total = 0;
        for (int64_t e = 0; e < E; ++e) {
            double dot = 0;
            for (int64_t c = 0; c < H; ++c) dot += p[size_t(c)] * wa[e][c];
            logit[size_t(e)] = scale * (dot + ba[e]);
            top = std::max(top, logit[size_t(e)]);
        }
        for (int64_t e = 0; e < E; ++e) total += std::exp(logit[size_t(e)] - top);
        for (int64_t e = 0; e < E; ++e) o[i][e] = std::exp(logit[size_t(e)] - top) / total;
    }
    return out;
}

TEST(FusedOps, MeanPoolGateIsTheRoutersFormula) {
    at::manual_seed(13);
    const at::Tensor w = at::randn({3, 8}), b = at::randn({3});
    for (int64_t T : {1, 4}) {
        const at::Tensor h = at::randn({2, T, 8});
        at::Tensor mask = at::ones({2, T}, at::kLong);
        mask[1][0] = 0;  // the second sequence's first token is padding (with T = 1: a sequence with no token)
        for (const at::Tensor &m : {at::Tensor(), mask, mask.to(at::kFloat), mask.to(at::kBool)})
            for (double scale : {1.0, 0.5})
                for (const at::Tensor &bias : {at::Tensor(), b}) {
                    const at::Tensor got = mean_pool_gate(h, m, w, bias, scale);
                    ASSERT_EQ(got.sizes(), (at::IntArrayRef{2, 3}));
                    EXPECT_TRUE(at::allclose(got.to(at::kDouble), gate_formula(h, m, w, bias, scale), 1e-5, 1e-6))
                        << "T " << T << " mask " << (m.defined() ? c10::toString(m.scalar_type()) : "none") << " scale " << scale;
                }
    }
    // gradients reach the gate's weight and bias through the operator
    const at::Tensor wg = w.clone().requires_grad_(true), bg = b.clone().requires_grad_(true);
    mean_pool_gate(at::randn({2, 3, 8}), at::ones({2, 3}, at::kLong), wg, bg, 1.0).select(1, 0).sum().backward();
    ASSERT_TRUE(wg.grad().defined() && bg.grad().defined());
    EXPECT_GT(wg.grad().abs().sum().item<double>(), 0.0);
    EXPECT_THROW(mean_pool_gate(at::randn({2, 3, 8}), at::ones({2, 4}, at::kLong), w, b, 1.0), c10::Error);  // mask of another length
}

TEST(FusedOps, MaskBiasIsCausalPaddedAndWindowed) {
    // batch 0 has a padded first key; 3 new queries after 2 cached keys
    at::Tensor padding = at::tensor({0, 1, 1, 1, 1, 1, 1, 1, 1, 1}, at::kLong).reshape({2, 5});
    const int64_t T = 3, S = 5;
    for (int64_t window : {0, 2})
        for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
            at::Tensor m = mask_bias(padding, T, window, dt).to(at::kFloat);
            ASSERT_EQ(m.sizes(), (at::IntArrayRef{2, 1, T, S}));
            const float lowest = dt == at::kFloat ? -FLT_MAX : -65536.f;  // -65504 rounds to -65536 in bfloat16
            for (int64_t b = 0; b < 2; ++b)
                for (int64_t t = 0; t < T; ++t)
                    for (int64_t s = 0; s < S; ++s) {
                        const int64_t q = S - T + t;
                        const bool seen = s <= q && (window == 0 || s > q - window) && padding[b][s].item<int64_t>() != 0;
                        EXPECT_EQ(m[b][0][t][s].item<float>(), seen ? 0.f : lowest)
                            << "b " << b << " t " << t << " s " << s << " w " << window;
                    }
        }
}

TEST(FusedOps, DecodeAttentionIsSoftmaxOverTheVisibleKeys) {
    at::manual_seed(6);
    const int64_t B = 2, H = 4, KV = 2, T = 2, S = 7, D = 8;
    at::Tensor q = at::randn({B, H, T, D}, at::kDouble), k = at::randn({B, KV, S, D}, at::kDouble),
               v = at::randn({B, KV, S, D}, at::kDouble);
    at::Tensor padding = at::ones({B, S}, at::kLong);
    padding[1][0] = 0;
    padding[1][1] = 0;  // batch 1 is left-padded
    const double scale = 0.3;
    for (int64_t window : {0, 3}) {
        at::Tensor got = decode_attention(q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat), padding, window, scale).to(at::kDouble);
        for (int64_t b = 0; b < B; ++b)
            for (int64_t h = 0; h < H; ++h)
                for (int64_t t = 0; t < T; ++t) {
                    const int64_t g = h / (H / KV), at_pos = S - T + t;
                    std::vector<double> w;
                    double total = 0;
                    for (int64_t s = 0; s <= at_pos; ++s) {
                        const bool seen = padding[b][s].item<int64_t>() != 0 && (window == 0 || s > at_pos - window);
                        const double e = seen ? std::exp((q[b][h][t] * k[b][g][s]).sum().item<double>() * scale) : 0.0;
                        w.push_back(e);
                        total += e;
                    }
                    at::Tensor want = at::zeros({D}, at::kDouble);
                    for (int64_t s = 0; s <= at_pos; ++s) want += v[b][g][s] * (w[static_cast<size_t>(s)] / total);
                    EXPECT_TRUE(at::allclose(got[b][h][t], want, 1e-5, 1e-5))
                        << "b " << b << " h " << h << " t " << t << " window " << window;
                }
    }
}

// On a GPU: each kernel against the ATen chain it replaces, in each dtype.
class FusedKernels : public ::testing::Test {
protected:
    void SetUp() override {
        if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device (or a CPU-only LibTorch)";
        if (!mango::kernels::fused_kernels_enabled()) GTEST_SKIP() << "fused kernels are off (MANGO_FUSED_OPS=0)";
    }
    void TearDown() override { mango::kernels::set_fused_kernels_enabled(true); }
    template <class F>
    static auto both(F &&f) {
        mango::kernels::set_fused_kernels_enabled(false);
        auto chain = f();
        mango::kernels::set_fused_kernels_enabled(true);
        return std::make_pair(chain, f());
    }
    // Equal but for rare last-place differences (float32 summation order, cos/sin rounding).
    static void expect_near(const at::Tensor &chain, const at::Tensor &fused, double min_equal, const char *what) {
        ASSERT_EQ(chain.sizes(), fused.sizes()) << what;
        ASSERT_EQ(chain.scalar_type(), fused.scalar_type()) << what;
        const at::Tensor a = chain.to(at::kFloat).cpu(), b = fused.to(at::kFloat).cpu();
        const double equal = a.eq(b).to(at::kDouble).mean().item<double>();
        const double tol = chain.scalar_type() == at::kFloat ? 1e-5 : 1e-2;
        EXPECT_TRUE(at::allclose(a, b, tol, tol))
            << what << " " << chain.scalar_type() << ": max diff " << (a - b).abs().max().item<float>();
        if (chain.scalar_type() != at::kFloat) {  // float32: summation order alone moves last places
            EXPECT_GE(equal, min_equal) << what << " " << chain.scalar_type() << ": " << equal * 100 << "% of elements equal";
        }
    }
};

TEST_F(FusedKernels, MatchTheChainsInEachDtype) {
    at::manual_seed(4);
    for (at::ScalarType dt : {at::kFloat, at::kBFloat16, at::kHalf}) {
        const auto on = at::TensorOptions().dtype(dt).device(at::kCUDA);
        at::Tensor x = at::randn({2, 7, 2048}, on), w = at::randn({2048}, on);
        auto [n0, n1] = both([&] { return rms_norm(x, w, 1e-6); });
        expect_near(n0, n1, 0.95, "rms_norm");
        at::Tensor res = at::randn({2, 7, 2048}, on);
        auto [ar0, ar1] = both([&] { return add_rms_norm(x, res, w, 1e-6); });
        expect_near(std::get<0>(ar0), std::get<0>(ar1), 1.0, "add_rms_norm (sum)");
        expect_near(std::get<1>(ar0), std::get<1>(ar1), 0.95, "add_rms_norm (norm)");
        at::Tensor odd = at::randn({3, 100}, on), odd_w = at::randn({100}, on);  // rows not in 16-byte vectors
        auto [o0, o1] = both([&] { return rms_norm(odd, odd_w, 1e-6); });
        expect_near(o0, o1, 0.95, "rms_norm (odd width)");

        at::Tensor gu = at::randn({3, 5, 2 * 704}, on) * 4;
        auto [s0, s1] = both([&] { return silu_mul(gu.narrow(-1, 0, 704), gu.narrow(-1, 704, 704)); });
        expect_near(s0, s1, 0.999, "silu_mul");

        const int64_t B = 2, T = 5, D = 64;
        at::Tensor q = at::randn({B, T, 8, D}, on).transpose(1, 2), k = at::randn({B, 2, T, D}, on);
        at::Tensor pos = at::arange(100, 100 + T, at::TensorOptions().dtype(at::kLong).device(at::kCUDA)).unsqueeze(0);  // [1, T]
        at::Tensor inv_freq = at::pow(10000.0, -at::arange(0, D, 2, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA)) / double(D));
        auto [r0, r1] = both([&] { return rope(q, k, pos.expand({B, T}), inv_freq, 1.0); });
        expect_near(std::get<0>(r0), std::get<0>(r1), 0.99, "rope q");
        expect_near(std::get<1>(r0), std::get<1>(r1), 0.99, "rope k");
        auto [y0, y1] = both([&] { return rope(q, k, pos, inv_freq, 0.7); });
        expect_near(std::get<0>(y0), std::get<0>(y1), 0.99, "rope q (yarn factor, broadcast positions)");

        if (dt != at::kFloat)  // the GEMV takes bf16 / f16 with up to 4 rows (8: cuBLAS, the same either way)
            for (int64_t rows : {1, 3, 4, 8})
                for (bool bias : {false, true}) {
                    at::Tensor xs = at::randn({rows, 1, 2048}, on), ws = at::randn({5632, 2048}, on) * 0.02, bs = at::randn({5632}, on);
                    auto [l0, l1] = both([&] { return host_linear(xs, ws, bias ? bs : at::Tensor()); });
                    expect_near(l0, l1, 0.8, "linear (GEMV)");
                    // q, k, v of different widths in one launch
                    at::Tensor wk = at::randn({256, 2048}, on) * 0.02, wv = at::randn({512, 2048}, on) * 0.02, bk = at::randn({256}, on),
                               bv = at::randn({512}, on);
                    auto [m0, m1] = both([&] { return bias ? linears(xs, {ws, wk, wv}, {bs, bk, bv}) : linears(xs, {ws, wk, wv}); });
                    for (size_t i = 0; i < 3; ++i) expect_near(m0[i], m1[i], 0.8, "linears (one GEMV launch)");
                    // the products with the next step of a decoder layer in their last step
                    at::Tensor res = at::randn({rows, 1, 5632}, on);
                    auto [lr0, lr1] = both([&] { return linear_residual(xs, ws, bias ? bs : at::Tensor(), res); });
                    expect_near(lr0, lr1, 0.8, "linear_residual");
                    at::Tensor wu = at::randn({5632, 2048}, on) * 0.02;
                    auto [sw0, sw1] = both([&] { return swiglu(xs, ws, wu); });
                    expect_near(sw0, sw1, 0.8, "swiglu");
                    // q, k, v with rotary of head size 64: batch `rows` of one token, and one sequence of `rows` tokens
                    at::Tensor wq = at::randn({1024, 2048}, on) * 0.02, bq = at::randn({1024}, on);
                    at::Tensor inv_freq =
                        at::pow(10000.0, -at::arange(0, 64, 2, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA)) / 64.0);
                    const auto longs = at::TensorOptions().dtype(at::kLong).device(at::kCUDA);
                    for (bool one_sequence : {false, true}) {
                        at::Tensor xr = one_sequence ? xs.reshape({1, rows, 2048}) : xs;
                        at::Tensor pos =
                            one_sequence ? at::arange(40, 40 + rows, longs).unsqueeze(0) : at::arange(rows, longs).mul(7).unsqueeze(1);
                        auto [q0, q1] = both([&] {
                            return bias ? linears_rope(xr, {wq, wk, wk}, {bq, bk, bk}, pos, inv_freq, 1.0, 16, 4)
                                        : linears_rope(xr, {wq, wk, wk}, {}, pos, inv_freq, 1.0, 16, 4);
                        });
                        for (size_t i = 0; i < 3; ++i) expect_near(q0[i], q1[i], 0.8, "linears_rope");
                    }
                }

        for (int64_t T : {1, 3}) {  // GQA 8 query heads over 2, a padded batch, a cache of 45 entries (some not yet written)
            at::Tensor aq = at::randn({2, T, 8, 64}, on).transpose(1, 2), ak = at::randn({2, 2, 45, 64}, on),
                       av = at::randn({2, 2, 45, 64}, on);
            at::Tensor apad = at::ones({2, 45}, at::TensorOptions().dtype(at::kLong).device(at::kCUDA));
            apad.narrow(1, 40, 5).zero_();
            apad[1].narrow(0, 0, 6).zero_();
            for (int64_t window : {0, 16}) {
                auto [a0, a1] = both(
                    [&] { return decode_attention(aq, ak.narrow(2, 0, 40), av.narrow(2, 0, 40), apad.narrow(1, 0, 40), window, 0.125); });
                expect_near(a0, a1, 0.5, "decode_attention");
                auto [c0, c1] = both([&] { return decode_attention(aq, ak, av, apad, window, 0.125); });
                expect_near(c0, c1, 0.5, "decode_attention (unwritten cache entries masked)");
            }
        }

        at::Tensor padding = (at::rand({3, 40}, at::TensorOptions().device(at::kCUDA)) > 0.2).to(at::kLong);
        for (int64_t window : {0, 9}) {
            auto [m0, m1] = both([&] { return mask_bias(padding, 6, window, dt); });
            expect_near(m0, m1, 1.0, "attention_mask_bias");
        }
    }
}

TEST_F(FusedKernels, GreedyPickIsAtensArgmax) {
    at::manual_seed(6);
    for (at::ScalarType dt : {at::kFloat, at::kBFloat16, at::kHalf}) {
        at::Tensor logits = at::randn({6, 32000}).to(dt);
        logits[1].fill_(-INFINITY);                                // all equal: the first
        logits[2][17] = 1e4, logits[2][30001] = 1e4;               // a tie: the smaller index
        logits[3][5000] = NAN, logits[3][9] = 1e4;                 // NaN above every number
        logits[4][31999] = 1e4;                                    // the last element
        logits[5].narrow(0, 100, 10).fill_(NAN);                   // several NaN: the first
        const at::Tensor want = logits.to(at::kFloat).argmax(-1);  // ATen on the CPU
        const at::Tensor got = mango::kernels::greedy_pick(logits.cuda()).cpu();
        EXPECT_TRUE(got.equal(want)) << dt << ": " << got << " vs " << want;
        // a [B, V] view with a row stride (the last position of [B, T, V] logits)
        const at::Tensor wide = at::randn({3, 4, 1000}).to(dt).cuda();
        EXPECT_TRUE(mango::kernels::greedy_pick(wide.select(1, 3)).cpu().equal(wide.select(1, 3).cpu().to(at::kFloat).argmax(-1))) << dt;
    }
}

TEST_F(FusedKernels, MixExpertsEqualsTheChainExactly) {
    at::manual_seed(12);
    for (at::ScalarType dt : {at::kFloat, at::kBFloat16, at::kHalf}) {
        const auto on = at::TensorOptions().dtype(dt).device(at::kCUDA);
        std::vector<at::Tensor> outs = {at::randn({2, 5, 2048}, on), at::randn({2, 5, 2048}, on), at::randn({2, 5, 2048}, on)};
        for (int64_t T : {1, 5}) {
            at::Tensor w = at::softmax(at::randn({2, T, 3}, at::TensorOptions().device(at::kCUDA)), -1);
            auto [c, f] = both([&] { return mango::kernels::mix_experts(outs, w, at::kFloat); });
            EXPECT_TRUE(c.equal(f)) << dt << " T " << T << ": max diff " << (c - f).abs().max().item<float>();
        }
    }
}

TEST_F(FusedKernels, MixExpertsAlsoWritesTheMembersDtype) {
    at::manual_seed(14);
    for (at::ScalarType dt : {at::kBFloat16, at::kHalf}) {
        const auto on = at::TensorOptions().dtype(dt).device(at::kCUDA);
        std::vector<at::Tensor> outs = {at::randn({2, 3, 2048}, on), at::randn({2, 3, 2048}, on)};
        const at::Tensor w = at::softmax(at::randn({2, 1, 2}, at::TensorOptions().device(at::kCUDA)), -1);
        at::Tensor copy;
        const at::Tensor h = mango::kernels::mix_experts(outs, w, at::kFloat, &copy);
        ASSERT_TRUE(copy.defined()) << dt;
        EXPECT_EQ(copy.scalar_type(), dt);
        EXPECT_TRUE(copy.equal(h.to(dt))) << dt;
    }
}

TEST_F(FusedKernels, MeanPoolGateMatchesTheChain) {
    at::manual_seed(15);
    const auto f32 = at::TensorOptions().device(at::kCUDA);
    // one block per sequence (T <= 4, H <= 8192), or several (more tokens, wider) whose shares the last adds
    for (int64_t H : {100, 2048, 12000})
        for (int64_t E : {2, 8})
            for (int64_t T : {1, 3, 17, 130}) {
                const at::Tensor h = at::randn({3, T, H}, f32), w = at::randn({E, H}, f32) * 0.05, b = at::randn({E}, f32);
                at::Tensor mask = at::ones({3, T}, f32.dtype(at::kLong));
                mask[2][0] = 0;
                for (const at::Tensor &m : {at::Tensor(), mask, mask.to(at::kFloat), mask.to(at::kBool), mask.to(at::kInt)})
                    for (const at::Tensor &bias : {at::Tensor(), b}) {
                        auto [c, f] = both([&] { return mean_pool_gate(h, m, w, bias, 0.7); });
                        expect_near(c, f, 1.0, "mean_pool_gate");
                        EXPECT_TRUE(f.equal(mean_pool_gate(h, m, w, bias, 0.7))) << "not the same twice: " << H << " " << E << " " << T;
                        EXPECT_TRUE(at::allclose(f.to(at::kDouble).cpu(), gate_formula(h, m, w, bias, 0.7), 1e-5, 1e-6))
                            << H << " " << E << " " << T;
                    }
            }
}

TEST_F(FusedKernels, CacheEntriesAreIndexCopies) {
    at::manual_seed(16);
    for (at::ScalarType dt : {at::kBFloat16, at::kFloat}) {
        const auto on = at::TensorOptions().dtype(dt).device(at::kCUDA);
        const at::Tensor at_ = at::full({1}, 5, on.dtype(at::kLong));
        // keys and values of different shapes (MLA), each a [B, T, H, D] projection seen as [B, H, T, D]
        const at::Tensor k = at::randn({2, 1, 2, 64}, on).transpose(1, 2), v = at::randn({2, 1, 1, 32}, on).transpose(1, 2);
        at::Tensor ks = at::randn({2, 2, 8, 64}, on), vs = at::randn({2, 1, 8, 32}, on);
        const at::Tensor k_want = ks.clone().index_copy_(2, at_, k), v_want = vs.clone().index_copy_(2, at_, v);
        const mango::kernels::CacheSlotWrite pair[] = {{ks, 2, k}, {vs, 2, v}};
        ASSERT_TRUE(mango::kernels::write_cache_entries(pair, 2, at_)) << dt;
        EXPECT_TRUE(ks.equal(k_want)) << dt;
        EXPECT_TRUE(vs.equal(v_want)) << dt;
        at::Tensor one = at::randn({2, 2, 8, 64}, on);
        const at::Tensor one_want = one.clone().index_copy_(2, at_, k);
        const mango::kernels::CacheSlotWrite single{one, 2, k};
        ASSERT_TRUE(mango::kernels::write_cache_entries(&single, 1, at_)) << dt;
        EXPECT_TRUE(one.equal(one_want)) << dt;
    }
    // entries of different element sizes: not one launch (the caller writes each)
    const auto bf = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
    const at::Tensor at_ = at::full({1}, 0, bf.dtype(at::kLong));
    const mango::kernels::CacheSlotWrite mixed[] = {
        {at::zeros({1, 1, 4, 8}, bf), 2, at::ones({1, 1, 1, 8}, bf)},
        {at::zeros({1, 1, 4, 8}, bf.dtype(at::kFloat)), 2, at::ones({1, 1, 1, 8}, bf.dtype(at::kFloat))}};
    EXPECT_FALSE(mango::kernels::write_cache_entries(mixed, 2, at_));
}

TEST_F(FusedKernels, CheckpointWeightsAreKnownWhileTheyLive) {
    at::Tensor w = at::randn({64, 32}, at::TensorOptions().device(at::kCUDA));
    EXPECT_FALSE(mango::kernels::is_weight(w));
    mango::kernels::mark_weight(w);
    EXPECT_TRUE(mango::kernels::is_weight(w));
    EXPECT_TRUE(mango::kernels::is_weight(w.narrow(0, 8, 8)));  // a slice of a weight
    EXPECT_FALSE(mango::kernels::is_weight(w.clone()));         // a copy: written by a kernel
    w.reset();
    at::Tensor other = at::randn({64, 32}, at::TensorOptions().device(at::kCUDA));  // may reuse the memory
    EXPECT_FALSE(mango::kernels::is_weight(other));
}

TEST_F(FusedKernels, GradientsKeepTheChain) {
    at::Tensor x = at::randn({4, 32}, at::TensorOptions().device(at::kCUDA)).requires_grad_(true);
    at::Tensor w = at::ones({32}, at::TensorOptions().device(at::kCUDA)).requires_grad_(true);
    rms_norm(x, w, 1e-6).sum().backward();
    ASSERT_TRUE(x.grad().defined());
    ASSERT_TRUE(w.grad().defined());
    EXPECT_GT(w.grad().abs().sum().item<float>(), 0.f);
}

}  // namespace
