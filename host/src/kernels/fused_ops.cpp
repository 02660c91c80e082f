#include "kernels/fused_ops.hpp"

#include <ATen/ATen.h>
#include <torch/library.h>
#include <torch/version.h>

#include <atomic>
#include <cfloat>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <vector>

#ifdef MANGO_WITH_CUDA
#include "kernels/fused_kernels.hpp"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace mango::kernels {
namespace {

std::atomic<bool> &enabled_flag() {
    static std::atomic<bool> on{[] {
#ifdef MANGO_WITH_CUDA
        const char *e = std::getenv("MANGO_FUSED_OPS");
        return !(e && std::strcmp(e, "0") == 0);
#else
        return false;
#endif
    }()};
    return on;
}

// ---- the operator chains (what the SDK composes where a host lacks these) ----------

at::Tensor rms_norm_chain(const at::Tensor &x, const at::Tensor &weight, double eps) {
    at::Tensor f = x.to(at::kFloat);
    at::Tensor n = f * at::rsqrt(f.pow(2.0).mean({-1}, true) + eps);
    return weight * n.to(x.scalar_type());
}

at::Tensor silu_mul_chain(const at::Tensor &gate, const at::Tensor &up) { return at::silu(gate) * up; }

at::Tensor rotate(const at::Tensor &x, const at::Tensor &cos, const at::Tensor &sin) {
    const int64_t half = x.size(-1) / 2;
    at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
    return x * cos + rotated * sin;
}

std::tuple<at::Tensor, at::Tensor> rope_chain(const at::Tensor &q, const at::Tensor &k, const at::Tensor &positions,
                                              const at::Tensor &inv_freq, double factor) {
    at::Tensor freqs = positions.to(at::kFloat).unsqueeze(-1) * inv_freq;  // [B, T, D/2]
    at::Tensor emb = at::cat({freqs, freqs}, -1).unsqueeze(1);
    at::Tensor cos = (emb.cos() * factor).to(q.scalar_type()), sin = (emb.sin() * factor).to(q.scalar_type());
    return {rotate(q, cos, sin), rotate(k, cos, sin)};
}

double lowest_for(at::ScalarType dtype) { return dtype == at::kFloat ? -FLT_MAX : -65504.0; }

at::Tensor mask_bias_chain(const at::Tensor &padding, int64_t T, int64_t window, at::ScalarType dtype) {
    const int64_t B = padding.size(0), S = padding.size(1);
    const auto longs = at::TensorOptions().dtype(at::kLong).device(padding.device());
    at::Tensor kpos = at::arange(S, longs), qpos = at::arange(S, longs).narrow(0, S - T, T).unsqueeze(1);
    at::Tensor allowed = kpos.le(qpos);
    if (window > 0) allowed = allowed.logical_and(kpos.gt(qpos + (-double(window))));
    allowed = padding.eq(0.0).logical_not().reshape({B, 1, 1, S}).logical_and(allowed);
    return at::zeros({B, 1, T, S}, at::TensorOptions().dtype(dtype).device(padding.device()))
        .masked_fill(allowed.logical_not(), lowest_for(dtype));
}

// MANGO_ATTENTION=eager: attention as the eager ATen chain (for comparisons), as the SDK does.
[[maybe_unused]] bool eager_attention() {
    const char *e = std::getenv("MANGO_ATTENTION");
    return e && std::strcmp(e, "eager") == 0;
}

at::Tensor repeat_kv(const at::Tensor &x, int64_t rep) {
    if (rep == 1) return x;
    const int64_t B = x.size(0), KV = x.size(1), S = x.size(2), D = x.size(3);
    return x.unsqueeze(2).expand({B, KV, rep, S, D}).reshape({B, KV * rep, S, D});
}

// mango/attention.hpp's attend() with the additive mask: scaled_dot_product_attention where this
// LibTorch has it, else the eager chain (float32 softmax).
at::Tensor attention_chain(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v, const at::Tensor &padding, int64_t window,
                           double scale) {
    const int64_t rep = q.size(1) / k.size(1);
    const at::Tensor keys = repeat_kv(k, rep), values = repeat_kv(v, rep);
    const at::Tensor bias = mask_bias_chain(padding, q.size(2), window, q.scalar_type());
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)  // `scale` from 2.1 on
    if (!eager_attention()) return at::scaled_dot_product_attention(q, keys, values, bias, 0.0, false, scale);
#endif
    at::Tensor scores = at::matmul(q, keys.transpose(2, 3)) * scale + bias;
    return at::matmul(at::softmax(scores.to(at::kFloat), -1).to(q.scalar_type()), values);
}

// ---- checkpoint weights ----------------------------------------------------------
// The storages of the weights the host handed to plugins (mark_weight): no
// kernel writes them while a model runs (training and merging update them
// with ATen's kernels, which never start early), so the GEMV and RMSNorm
// kernels may load them before waiting for the previous kernel. Held weakly:
// a storage that is gone (and whatever the allocator puts at its address
// later) is no weight.
struct WeightStorages {
    std::mutex mutex;
    std::unordered_map<const c10::StorageImpl *, c10::weak_intrusive_ptr<c10::StorageImpl>> live;
    size_t marks = 0;
};
WeightStorages &weight_storages() {
    static WeightStorages w;
    return w;
}

}  // namespace

bool is_weight(const at::Tensor &t) {
    if (!t.defined() || !t.has_storage()) return false;
    WeightStorages &w = weight_storages();
    const std::lock_guard<std::mutex> lock(w.mutex);
    const auto it = w.live.find(t.storage().unsafeGetStorageImpl());
    return it != w.live.end() && !it->second.expired();
}

namespace {

[[maybe_unused]] bool all_weights(at::TensorList ts) {
    for (const at::Tensor &t : ts)
        if (!is_weight(t)) return false;
    return true;
}

// ---- where a kernel replaces the chain ----------------------------------------------

#ifdef MANGO_WITH_CUDA
bool wants_grad(std::initializer_list<const at::Tensor *> ts) {
    if (!at::GradMode::is_enabled()) return false;
    for (const at::Tensor *t : ts)
        if (t->requires_grad()) return true;
    return false;
}

bool kernel_dtype(at::ScalarType s, Dtype &out) {
    if (s == at::kFloat)
        out = Dtype::f32;
    else if (s == at::kBFloat16)
        out = Dtype::bf16;
    else if (s == at::kHalf)
        out = Dtype::f16;
    else
        return false;
    return true;
}

bool on_one_gpu(std::initializer_list<const at::Tensor *> ts) {
    const at::Device d = (*ts.begin())->device();
    for (const at::Tensor *t : ts)
        if (!t->is_cuda() || t->device() != d) return false;
    return true;
}

bool aligned16(const at::Tensor &t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

Stream stream_of(const at::Tensor &t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

// The element stride between rows when t is [rows, size(-1)] with contiguous
// rows at a uniform stride (a narrow() of the last dimension is), else -1.
int64_t row_stride(const at::Tensor &t) {
    if (t.dim() == 0 || t.stride(-1) != 1) return -1;
    int64_t row = -1, expect = -1;  // stride the dimension above must have
    for (int64_t d = t.dim() - 2; d >= 0; --d) {
        if (t.size(d) == 1) continue;
        if (row < 0)
            row = t.stride(d), expect = row * t.size(d);
        else if (t.stride(d) != expect)
            return -1;
        else
            expect *= t.size(d);
    }
    return row < 0 ? t.size(-1) : row;
}

Strided4 strided(const at::Tensor &x, at::Tensor &out) {
    Strided4 s;
    s.x = x.data_ptr();
    s.out = out.data_ptr();
    for (int i = 0; i < 4; ++i) s.size[i] = x.size(i), s.stride[i] = x.stride(i);
    return s;
}
#endif

at::Tensor rms_norm_op(const at::Tensor &x, const at::Tensor &weight, double eps) {
#ifdef MANGO_WITH_CUDA
    Dtype dt;
    if (fused_kernels_enabled() && on_one_gpu({&x, &weight}) && !wants_grad({&x, &weight}) && x.scalar_type() == weight.scalar_type() &&
        kernel_dtype(x.scalar_type(), dt) && x.dim() >= 1 && weight.dim() == 1 && weight.size(0) == x.size(-1)) {
        const c10::cuda::CUDAGuard guard(x.device());
        const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
        at::Tensor out = at::empty_like(xc);
        const int64_t n = x.size(-1);
        kernels::rms_norm(dt, xc.data_ptr(), wc.data_ptr(), out.data_ptr(), n ? xc.numel() / n : 0, n, static_cast<float>(eps),
                          is_weight(wc), stream_of(x));
        return out;
    }
#endif
    return rms_norm_chain(x, weight, eps);
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm_op(const at::Tensor &x, const at::Tensor &residual, const at::Tensor &weight, double eps) {
#ifdef MANGO_WITH_CUDA
    Dtype dt;
    const int64_t n = x.dim() ? x.size(-1) : 0;
    if (fused_kernels_enabled() && on_one_gpu({&x, &residual, &weight}) && !wants_grad({&x, &residual, &weight}) && x.dim() >= 1 &&
        x.sizes() == residual.sizes() && x.scalar_type() == residual.scalar_type() && x.scalar_type() == weight.scalar_type() &&
        kernel_dtype(x.scalar_type(), dt) && weight.dim() == 1 && weight.size(0) == n && n % (16 / x.element_size()) == 0 &&
        x.is_contiguous() && residual.is_contiguous() && weight.is_contiguous() && aligned16(x) && aligned16(residual) &&
        aligned16(weight)) {
        const c10::cuda::CUDAGuard guard(x.device());
        at::Tensor sum = at::empty_like(x), out = at::empty_like(x);
        kernels::add_rms_norm(dt, x.data_ptr(), residual.data_ptr(), weight.data_ptr(), sum.data_ptr(), out.data_ptr(),
                              n ? x.numel() / n : 0, n, static_cast<float>(eps), is_weight(weight), stream_of(x));
        return {sum, out};
    }
#endif
    at::Tensor sum = x + residual;
    return {sum, rms_norm_chain(sum, weight, eps)};
}

at::Tensor silu_mul_op(const at::Tensor &gate, const at::Tensor &up) {
#ifdef MANGO_WITH_CUDA
    Dtype dt;
    if (fused_kernels_enabled() && on_one_gpu({&gate, &up}) && !wants_grad({&gate, &up}) && gate.dim() >= 1 && gate.sizes() == up.sizes() &&
        gate.scalar_type() == up.scalar_type() && kernel_dtype(gate.scalar_type(), dt)) {
        const c10::cuda::CUDAGuard guard(gate.device());
        const at::Tensor g = row_stride(gate) < 0 ? gate.contiguous() : gate, u = row_stride(up) < 0 ? up.contiguous() : up;
        at::Tensor out = at::empty(gate.sizes(), gate.options());
        const int64_t n = gate.size(-1);
        kernels::silu_mul(dt, g.data_ptr(), row_stride(g), u.data_ptr(), row_stride(u), out.data_ptr(), n ? g.numel() / n : 0, n,
                          stream_of(gate));
        return out;
    }
#endif
    return silu_mul_chain(gate, up);
}

std::tuple<at::Tensor, at::Tensor> rope_op(const at::Tensor &q, const at::Tensor &k, const at::Tensor &positions,
                                           const at::Tensor &inv_freq, double factor) {
#ifdef MANGO_WITH_CUDA
    Dtype dt;
    if (fused_kernels_enabled() && on_one_gpu({&q, &k, &positions, &inv_freq}) && !wants_grad({&q, &k}) &&
        q.scalar_type() == k.scalar_type() && kernel_dtype(q.scalar_type(), dt) && q.dim() == 4 && k.dim() == 4 && q.size(3) % 2 == 0 &&
        k.size(3) == q.size(3) && k.size(0) == q.size(0) && k.size(2) == q.size(2) && positions.scalar_type() == at::kLong &&
        positions.dim() == 2 && positions.size(1) == q.size(2) && (positions.size(0) == q.size(0) || positions.size(0) == 1) &&
        inv_freq.scalar_type() == at::kFloat && inv_freq.dim() == 1 && inv_freq.size(0) == q.size(3) / 2 && inv_freq.is_contiguous()) {
        const c10::cuda::CUDAGuard guard(q.device());
        at::Tensor qo = at::empty(q.sizes(), q.options()), ko = at::empty(k.sizes(), k.options());
        const int64_t psb = positions.size(0) == 1 ? 0 : positions.stride(0);
        kernels::rope(dt, strided(q, qo), strided(k, ko), positions.data_ptr<int64_t>(), psb, positions.stride(1),
                      inv_freq.data_ptr<float>(), static_cast<float>(factor), stream_of(q));
        return {qo, ko};
    }
#endif
    return rope_chain(q, k, positions, inv_freq, factor);
}

#ifdef MANGO_WITH_CUDA
// Whether x W^T + b can take the GEMV kernel: a few rows of bf16 / f16 on one GPU, no gradient wanted.
bool gemv_fits(const at::Tensor &x, const at::Tensor &weight, const at::Tensor &bias) {
    return fused_kernels_enabled() && x.dim() >= 1 && weight.dim() == 2 && x.size(-1) == weight.size(1) && weight.size(1) % 8 == 0 &&
           on_one_gpu({&x, &weight}) && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf) &&
           weight.scalar_type() == x.scalar_type() && weight.is_contiguous() && aligned16(weight) &&
           (!bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0) && bias.scalar_type() == x.scalar_type() &&
                                bias.is_contiguous() && bias.device() == x.device() && !bias.requires_grad())) &&
           !wants_grad({&x, &weight}) && x.numel() > 0 && x.numel() / x.size(-1) <= kGemvMaxRows;
}

// x as the GEMV kernels take it: contiguous and 16-byte aligned (undefined where its copy is not).
at::Tensor gemv_input(const at::Tensor &x) {
    const at::Tensor xc = x.contiguous();
    return aligned16(xc) ? xc : at::Tensor();
}

std::vector<int64_t> output_shape(const at::Tensor &x, int64_t N) {
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = N;
    return shape;
}

GemvWeight gemv_weight(const at::Tensor &w, const at::Tensor &bias, const at::Tensor &out) {
    GemvWeight g;
    g.w = w.data_ptr(), g.bias = bias.defined() ? bias.data_ptr() : nullptr, g.out = out.defined() ? out.data_ptr() : nullptr;
    g.N = w.size(0);
    return g;
}

// x W_i^T + b_i for each weight in one GEMV launch (the caller checked gemv_fits for each); empty
// when x's contiguous copy is not 16-byte aligned.
std::vector<at::Tensor> gemv_all(const at::Tensor &x, at::TensorList weights, at::TensorList biases) {
    Dtype dt;
    kernel_dtype(x.scalar_type(), dt);
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor xc = gemv_input(x);
    if (!xc.defined()) return {};
    std::vector<at::Tensor> outs;
    GemvWeight g[kGemvMaxWeights];
    for (size_t i = 0; i < weights.size(); ++i) {
        outs.push_back(at::empty(output_shape(x, weights[i].size(0)), x.options()));
        g[i] = gemv_weight(weights[i], biases.empty() ? at::Tensor() : biases[i], outs.back());
    }
    kernels::gemv(dt, xc.data_ptr(), xc.numel() / x.size(-1), x.size(-1), g, static_cast<int>(weights.size()), all_weights(weights),
                  stream_of(x));
    return outs;
}
#endif

// x W^T + b; a few rows in bfloat16 / float16 on a GPU go through the
// weight-streaming GEMV kernel, everything else through at::linear.
at::Tensor linear_op(const at::Tensor &x, const at::Tensor &weight, const c10::optional<at::Tensor> &bias_in) {
#ifdef MANGO_WITH_CUDA
    const at::Tensor bias = bias_in.has_value() ? *bias_in : at::Tensor();
    if (gemv_fits(x, weight, bias)) {
        std::vector<at::Tensor> out = gemv_all(x, {weight}, {bias});
        if (!out.empty()) return out[0];
    }
#endif
    return at::linear(x, weight, bias_in);
}

// x W_i^T + b_i for 1 to 3 weights of one input (biases: none, or one per
// weight): one GEMV launch where each fits it, else linear_op for each.
std::vector<at::Tensor> linears_op(const at::Tensor &x, at::TensorList weights, at::TensorList biases) {
    TORCH_CHECK(!weights.empty(), "mango::linears: no weights");
    TORCH_CHECK(biases.empty() || biases.size() == weights.size(), "mango::linears: ", biases.size(), " biases for ", weights.size(),
                " weights (give none or one each)");
#ifdef MANGO_WITH_CUDA
    bool fits = weights.size() <= static_cast<size_t>(kGemvMaxWeights);
    for (size_t i = 0; fits && i < weights.size(); ++i) fits = gemv_fits(x, weights[i], biases.empty() ? at::Tensor() : biases[i]);
    if (fits) {
        std::vector<at::Tensor> out = gemv_all(x, weights, biases);
        if (!out.empty()) return out;
    }
#endif
    std::vector<at::Tensor> out;
    for (size_t i = 0; i < weights.size(); ++i)
        out.push_back(linear_op(x, weights[i], biases.empty() ? c10::optional<at::Tensor>() : c10::optional<at::Tensor>(biases[i])));
    return out;
}

// residual + (x W^T + b): a decoder layer's last projection and its residual
// add (the product rounded to the dtype first, as the two operators do), one
// GEMV launch on a GPU.
at::Tensor linear_residual_op(const at::Tensor &x, const at::Tensor &weight, const c10::optional<at::Tensor> &bias_in,
                              const at::Tensor &residual) {
#ifdef MANGO_WITH_CUDA
    const at::Tensor bias = bias_in.has_value() ? *bias_in : at::Tensor();
    if (gemv_fits(x, weight, bias) && residual.scalar_type() == x.scalar_type() && residual.device() == x.device() &&
        residual.is_contiguous() && !wants_grad({&residual}) && residual.sizes() == at::IntArrayRef(output_shape(x, weight.size(0)))) {
        Dtype dt;
        kernel_dtype(x.scalar_type(), dt);
        const c10::cuda::CUDAGuard guard(x.device());
        if (const at::Tensor xc = gemv_input(x); xc.defined()) {
            at::Tensor out = at::empty(residual.sizes(), x.options());
            kernels::gemv_residual(dt, xc.data_ptr(), xc.numel() / x.size(-1), x.size(-1), gemv_weight(weight, bias, out),
                                   residual.data_ptr(), is_weight(weight), stream_of(x));
            return out;
        }
    }
#endif
    return residual + linear_op(x, weight, bias_in);
}

// silu(x G^T) * (x U^T): the SwiGLU half of a gated MLP, one GEMV launch on a GPU.
at::Tensor swiglu_op(const at::Tensor &x, const at::Tensor &gate, const at::Tensor &up) {
#ifdef MANGO_WITH_CUDA
    if (gemv_fits(x, gate, at::Tensor()) && gemv_fits(x, up, at::Tensor()) && gate.size(0) == up.size(0)) {
        Dtype dt;
        kernel_dtype(x.scalar_type(), dt);
        const c10::cuda::CUDAGuard guard(x.device());
        if (const at::Tensor xc = gemv_input(x); xc.defined()) {
            at::Tensor out = at::empty(output_shape(x, gate.size(0)), x.options());
            kernels::gemv_silu_mul(dt, xc.data_ptr(), xc.numel() / x.size(-1), x.size(-1), gemv_weight(gate, at::Tensor(), out),
                                   gemv_weight(up, at::Tensor(), at::Tensor()), all_weights({gate, up}), stream_of(x));
            return out;
        }
    }
#endif
    const std::vector<at::Tensor> gu = linears_op(x, {gate, up}, {});
    return silu_mul_op(gu[0], gu[1]);
}

// q, k, v = x W_q^T, x W_k^T, x W_v^T (+ biases) split into heads
// ([B, heads, T, D] views of [B, T, heads * D]), q and k rotated as
// mango::rope does: the attention's input projections and its rotary
// embedding, one GEMV launch on a GPU.
std::vector<at::Tensor> linears_rope_op(const at::Tensor &x, at::TensorList weights, at::TensorList biases, const at::Tensor &positions,
                                        const at::Tensor &inv_freq, double factor, int64_t heads, int64_t kv_heads) {
    TORCH_CHECK(weights.size() == 3, "mango::linears_rope: takes the q, k and v weights, got ", weights.size());
    TORCH_CHECK(x.dim() == 3, "mango::linears_rope: input must be [B, T, hidden], got ", x.dim(), " dimensions");
    TORCH_CHECK(heads > 0 && kv_heads > 0 && weights[0].dim() == 2 && weights[1].dim() == 2 && weights[2].dim() == 2 &&
                    weights[0].size(0) % heads == 0 && weights[1].size(0) % kv_heads == 0 && weights[2].size(0) % kv_heads == 0,
                "mango::linears_rope: weights of ", weights[0].size(0), ", ", weights[1].size(0), " and ", weights[2].size(0), " rows for ",
                heads, " query and ", kv_heads, " key/value heads");
    const int64_t B = x.size(0), T = x.size(1), D = weights[0].size(0) / heads;
    TORCH_CHECK(weights[1].size(0) / kv_heads == D, "mango::linears_rope: query heads of ", D, ", key heads of ",
                weights[1].size(0) / kv_heads);
    const auto heads_of = [&](const at::Tensor &t, int64_t h) { return t.view({B, T, h, t.size(-1) / h}).transpose(1, 2); };
#ifdef MANGO_WITH_CUDA
    bool fits = positions.scalar_type() == at::kLong && positions.dim() == 2 && positions.size(1) == T &&
                (positions.size(0) == B || positions.size(0) == 1) && positions.device() == x.device() &&
                inv_freq.scalar_type() == at::kFloat && inv_freq.dim() == 1 && inv_freq.size(0) * 2 == D && inv_freq.is_contiguous() &&
                inv_freq.device() == x.device() && (biases.empty() || biases.size() == 3);
    for (size_t i = 0; fits && i < 3; ++i) fits = gemv_fits(x, weights[i], biases.empty() ? at::Tensor() : biases[i]);
    if (fits) {
        Dtype dt;
        kernel_dtype(x.scalar_type(), dt);
        const c10::cuda::CUDAGuard guard(x.device());
        if (const at::Tensor xc = gemv_input(x); xc.defined()) {
            std::vector<at::Tensor> outs;
            GemvWeight g[3];
            for (size_t i = 0; i < 3; ++i) {
                outs.push_back(at::empty(output_shape(x, weights[i].size(0)), x.options()));
                g[i] = gemv_weight(weights[i], biases.empty() ? at::Tensor() : biases[i], outs.back());
            }
            GemvRope r;
            r.rotated = 2, r.head_dim = D, r.T = T, r.positions = positions.data_ptr<int64_t>();
            r.pos_stride_b = positions.size(0) == 1 ? 0 : positions.stride(0), r.pos_stride_t = positions.stride(1);
            r.inv_freq = inv_freq.data_ptr<float>(), r.factor = static_cast<float>(factor);
            kernels::gemv_rope(dt, xc.data_ptr(), B * T, x.size(-1), g, 3, r, all_weights(weights), stream_of(x));
            return {heads_of(outs[0], heads), heads_of(outs[1], kv_heads), heads_of(outs[2], kv_heads)};
        }
    }
#endif
    const std::vector<at::Tensor> qkv = linears_op(x, weights, biases);
    auto [q, k] = rope_op(heads_of(qkv[0], heads), heads_of(qkv[1], kv_heads), positions, inv_freq, factor);
    return {q, k, heads_of(qkv[2], kv_heads)};
}

at::Tensor attention_mask_bias_op(const at::Tensor &padding, int64_t T, int64_t window, at::ScalarType dtype) {
    TORCH_CHECK(padding.dim() == 2, "mango::attention_mask_bias: padding must be [B, S], got ", padding.dim(), " dimensions");
    TORCH_CHECK(T >= 0 && T <= padding.size(1), "mango::attention_mask_bias: T = ", T, " queries for ", padding.size(1), " keys");
#ifdef MANGO_WITH_CUDA
    Dtype dt;
    if (fused_kernels_enabled() && padding.is_cuda() && padding.scalar_type() == at::kLong && kernel_dtype(dtype, dt)) {
        const c10::cuda::CUDAGuard guard(padding.device());
        const int64_t B = padding.size(0), S = padding.size(1);
        at::Tensor out = at::empty({B, 1, T, S}, at::TensorOptions().dtype(dtype).device(padding.device()));
        kernels::mask_bias(dt, padding.data_ptr<int64_t>(), padding.stride(0), padding.stride(1), B, T, S, window,
                           static_cast<float>(lowest_for(dtype)), out.data_ptr(), stream_of(padding));
        return out;
    }
#endif
    return mask_bias_chain(padding, T, window, dtype);
}

at::Tensor decode_attention_op(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v, const at::Tensor &padding, int64_t window,
                               double scale) {
    TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && padding.dim() == 2,
                "mango::decode_attention: q, k, v must be [B, heads, positions, D] and padding [B, S]");
    TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, "mango::decode_attention: ", q.size(1), " query heads for ", k.size(1),
                " key/value heads");
    TORCH_CHECK(q.size(2) <= k.size(2) && padding.size(1) == k.size(2), "mango::decode_attention: ", q.size(2), " queries, ", k.size(2),
                " keys, a padding mask of ", padding.size(1));
#ifdef MANGO_WITH_CUDA
    Dtype dt;
    const int64_t D = q.size(3);
    const auto rows_aligned = [](const at::Tensor &t) {
        return t.stride(3) == 1 && t.stride(0) % 8 == 0 && t.stride(1) % 8 == 0 && t.stride(2) % 8 == 0 &&
               reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
    };
    if (fused_kernels_enabled() && !eager_attention() && on_one_gpu({&q, &k, &v, &padding}) && !wants_grad({&q, &k, &v}) &&
        q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type() && kernel_dtype(q.scalar_type(), dt) &&
        padding.scalar_type() == at::kLong && D % 8 == 0 && D <= 256 && k.size(3) == D && v.sizes() == k.sizes() &&
        k.size(2) <= kernels::decode_attention_max_keys(D) && q.stride(3) == 1 && rows_aligned(k) && rows_aligned(v) &&
        k.size(0) == q.size(0) && padding.size(0) == q.size(0)) {
        const c10::cuda::CUDAGuard guard(q.device());
        at::Tensor out = at::empty(q.sizes(), q.options());
        kernels::AttentionArgs a;
        a.q = q.data_ptr(), a.k = k.data_ptr(), a.v = v.data_ptr(), a.out = out.data_ptr();
        a.B = q.size(0), a.H = q.size(1), a.KV = k.size(1), a.T = q.size(2), a.S = k.size(2), a.D = D;
        for (int i = 0; i < 3; ++i) a.q_stride[i] = q.stride(i), a.k_stride[i] = k.stride(i), a.v_stride[i] = v.stride(i);
        a.padding = padding.data_ptr<int64_t>(), a.pad_stride_b = padding.stride(0), a.pad_stride_s = padding.stride(1);
        a.window = window, a.scale = static_cast<float>(scale), a.lowest = static_cast<float>(lowest_for(q.scalar_type()));
        kernels::decode_attention(dt, a, stream_of(q));
        return out;
    }
#endif
    return attention_chain(q, k, v, padding, window, scale);
}

}  // namespace

#ifdef MANGO_WITH_CUDA
namespace {
// Whether value [B, H, 1, D] goes to slot [B, H, S, D] at dim 2 through cache_write, and how.
bool cache_entry(const at::Tensor &slot, int64_t dim, const at::Tensor &at, const at::Tensor &value, CacheEntry &e) {
    if (!fused_kernels_enabled() || dim != 2 || slot.dim() != 4 || value.dim() != 4 || value.size(2) != 1 || at.numel() != 1 ||
        at.scalar_type() != at::kLong || !on_one_gpu({&slot, &value, &at}) || slot.scalar_type() != value.scalar_type() ||
        (value.element_size() != 2 && value.element_size() != 4) || slot.size(0) != value.size(0) || slot.size(1) != value.size(1) ||
        slot.size(3) != value.size(3) || wants_grad({&value}))
        return false;
    e.value = value.data_ptr(), e.slot = slot.data_ptr();
    for (int i = 0; i < 4; ++i) e.value_stride[i] = value.stride(i), e.slot_stride[i] = slot.stride(i);
    e.B = value.size(0), e.H = value.size(1), e.D = value.size(3);
    return true;
}
}  // namespace
#endif

bool write_cache_entries(const CacheSlotWrite *writes, size_t count, const at::Tensor &at) {
#ifdef MANGO_WITH_CUDA
    CacheEntry e[2];
    if (count < 1 || count > 2) return false;
    for (size_t i = 0; i < count; ++i) {
        const CacheSlotWrite &w = writes[i];
        if (!cache_entry(w.slot, w.dim, at, w.value, e[i]) || w.value.element_size() != writes[0].value.element_size() ||
            w.slot.device() != writes[0].slot.device())
            return false;
    }
    const c10::cuda::CUDAGuard guard(writes[0].slot.device());
    kernels::cache_write(static_cast<int>(writes[0].value.element_size()), e, static_cast<int>(count), at.data_ptr<int64_t>(),
                         stream_of(writes[0].slot));
    return true;
#else
    (void)writes, (void)count, (void)at;
    return false;
#endif
}

void mark_weight(const at::Tensor &t) {
    if (!t.defined() || !t.is_cuda() || !t.has_storage()) return;  // only the GPU kernels ask
    WeightStorages &w = weight_storages();
    const std::lock_guard<std::mutex> lock(w.mutex);
    if (++w.marks % 4096 == 0)  // forget storages that are gone
        for (auto it = w.live.begin(); it != w.live.end();) it = it->second.expired() ? w.live.erase(it) : std::next(it);
    w.live.insert_or_assign(t.storage().unsafeGetStorageImpl(), t.storage().getWeakStorageImpl());
}

at::Tensor mix_experts(const std::vector<at::Tensor> &outs, const at::Tensor &w, at::ScalarType dtype, at::Tensor *as_outs) {
    if (as_outs) *as_outs = at::Tensor();
    TORCH_CHECK(!outs.empty() && w.dim() == 3 && w.size(-1) == static_cast<int64_t>(outs.size()), "mix_experts: ", outs.size(),
                " expert outputs for router weights of shape ", w.sizes());
#ifdef MANGO_WITH_CUDA
    Dtype dt;
    bool fits = fused_kernels_enabled() && dtype == at::kFloat && outs.size() <= static_cast<size_t>(kMixMaxExperts) &&
                outs[0].dim() == 3 && kernel_dtype(outs[0].scalar_type(), dt) && w.scalar_type() == at::kFloat &&
                w.size(0) == outs[0].size(0) && (w.size(1) == 1 || w.size(1) == outs[0].size(1)) && !wants_grad({&w});
    for (const at::Tensor &o : outs)
        fits = fits && on_one_gpu({&outs[0], &o, &w}) && o.sizes() == outs[0].sizes() && o.scalar_type() == outs[0].scalar_type() &&
               o.is_contiguous() && !wants_grad({&o});
    if (fits) {
        const c10::cuda::CUDAGuard guard(w.device());
        at::Tensor out = at::empty(outs[0].sizes(), outs[0].options().dtype(at::kFloat));
        MixArgs a;
        for (size_t e = 0; e < outs.size(); ++e) a.outs[e] = outs[e].data_ptr();
        a.experts = static_cast<int>(outs.size()), a.weights = w.data_ptr<float>(), a.out = out.data_ptr<float>();
        a.w_stride[0] = w.stride(0), a.w_stride[1] = w.size(1) == 1 ? 0 : w.stride(1), a.w_stride[2] = w.stride(2);
        a.B = outs[0].size(0), a.T = outs[0].size(1), a.H = outs[0].size(2);
        if (as_outs && outs[0].scalar_type() != at::kFloat) {
            *as_outs = at::empty(outs[0].sizes(), outs[0].options());
            a.out_as = as_outs->data_ptr();
        }
        kernels::mix_experts(dt, a, stream_of(w));
        return out;
    }
#endif
    const at::Tensor wd = w.to(dtype);
    at::Tensor h = outs[0].to(dtype) * wd.narrow(-1, 0, 1);
    for (size_t e = 1; e < outs.size(); ++e) h = h + outs[e].to(dtype) * wd.narrow(-1, static_cast<int64_t>(e), 1);
    return h;
}

namespace {

// softmax(scale (mean-pooled hidden W^T + b)): the simple router's chain (mango/ops.hpp's mean_pool_gate).
at::Tensor mean_pool_gate_chain(const at::Tensor &hidden, const at::Tensor &mask, const at::Tensor &weight, const at::Tensor &bias,
                                double scale) {
    at::Tensor pooled;
    if (!mask.defined()) {
        pooled = hidden.mean({1});
    } else {
        const at::Tensor keep = mask.to(hidden.scalar_type()).unsqueeze(-1);  // [B, T, 1]
        if (hidden.size(1) == 1) {                                            // one token: without the sums over one position
            const at::Tensor k = keep.select(1, 0);
            pooled = hidden.select(1, 0) * k / k.clamp_min(1.0);
        } else {
            pooled = (hidden * keep).sum({1}) / keep.sum({1}).clamp_min(1.0);
        }
    }
    at::Tensor logits = at::linear(pooled, weight, bias.defined() ? c10::optional<at::Tensor>(bias) : c10::nullopt);
    if (scale != 1.0) logits = logits * scale;
    return at::softmax(logits, -1);
}

// A router's gate: softmax(scale (p W^T + b)) for p the mean of hidden [B, T,
// H] over the tokens mask [B, T] keeps (its values weigh them), one kernel on
// a GPU (float32, no gradient wanted; up to kGateMaxExperts experts).
at::Tensor mean_pool_gate_op(const at::Tensor &hidden, const c10::optional<at::Tensor> &mask_in, const at::Tensor &weight,
                             const c10::optional<at::Tensor> &bias_in, double scale) {
    const at::Tensor mask = mask_in.has_value() ? *mask_in : at::Tensor(), bias = bias_in.has_value() ? *bias_in : at::Tensor();
    TORCH_CHECK(hidden.dim() == 3 && weight.dim() == 2 && weight.size(1) == hidden.size(2), "mango::mean_pool_gate: hidden states ",
                hidden.sizes(), " and a gate weight ", weight.sizes(), " (expected [B, T, H] and [E, H])");
    TORCH_CHECK(!mask.defined() || (mask.dim() == 2 && mask.size(0) == hidden.size(0) && mask.size(1) == hidden.size(1)),
                "mango::mean_pool_gate: mask ", mask.sizes(), " for hidden states ", hidden.sizes(), " (expected [B, T])");
#ifdef MANGO_WITH_CUDA
    const auto m = mask.defined() ? mask.scalar_type() : at::kFloat;
    const bool mask_fits = !mask.defined() || (mask.device() == hidden.device() &&
                                               (m == at::kFloat || m == at::kLong || m == at::kInt || m == at::kBool || m == at::kByte));
    const bool bias_fits = !bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0) && bias.scalar_type() == at::kFloat &&
                                               bias.is_contiguous() && bias.device() == hidden.device());
    if (fused_kernels_enabled() && on_one_gpu({&hidden, &weight}) && hidden.scalar_type() == at::kFloat &&
        weight.scalar_type() == at::kFloat && hidden.is_contiguous() && weight.is_contiguous() && mask_fits && bias_fits &&
        hidden.size(1) >= 1 && hidden.size(2) >= 1 && hidden.size(0) <= 65535 && weight.size(0) >= 1 && weight.size(0) <= kGateMaxExperts &&
        !wants_grad({&hidden, &weight}) && !(bias.defined() && wants_grad({&bias}))) {
        const c10::cuda::CUDAGuard guard(hidden.device());
        const int64_t B = hidden.size(0), E = weight.size(0), blocks = mean_pool_gate_blocks(hidden.size(1), hidden.size(2));
        at::Tensor out = at::empty({B, E}, hidden.options()), partials, counters;  // a decode step's one block per sequence needs neither
        if (blocks > 1)
            partials = at::empty({B * blocks * E}, hidden.options()), counters = at::zeros({B}, hidden.options().dtype(at::kInt));
        GateArgs a;
        a.hidden = hidden.data_ptr<float>(), a.weight = weight.data_ptr<float>();
        a.bias = bias.defined() ? bias.data_ptr<float>() : nullptr;
        if (mask.defined()) {
            a.mask = mask.data_ptr(), a.mask_bytes = static_cast<int>(mask.element_size()), a.mask_float = m == at::kFloat;
            a.mask_stride[0] = mask.stride(0), a.mask_stride[1] = mask.stride(1);
        }
        a.scale = static_cast<float>(scale), a.out = out.data_ptr<float>();
        if (blocks > 1) a.partials = partials.data_ptr<float>(), a.counters = counters.data_ptr<int>();
        a.B = B, a.T = hidden.size(1), a.H = hidden.size(2), a.E = E;
        kernels::mean_pool_gate(a, stream_of(hidden));
        return out;
    }
#endif
    return mean_pool_gate_chain(hidden, mask, weight, bias, scale);
}

}  // namespace

at::Tensor greedy_pick(const at::Tensor &logits) {
#ifdef MANGO_WITH_CUDA
    Dtype dt;
    if (fused_kernels_enabled() && logits.is_cuda() && logits.dim() == 2 && logits.stride(1) == 1 && logits.size(1) > 0 &&
        kernel_dtype(logits.scalar_type(), dt) && !wants_grad({&logits})) {
        const c10::cuda::CUDAGuard guard(logits.device());
        at::Tensor out = at::empty({logits.size(0)}, logits.options().dtype(at::kLong));
        kernels::argmax_rows(dt, logits.data_ptr(), logits.stride(0), logits.size(0), logits.size(1), out.data_ptr<int64_t>(),
                             stream_of(logits));
        return out;
    }
#endif
    return logits.argmax(-1);
}

bool fused_kernels_enabled() { return enabled_flag().load(); }

void set_fused_kernels_enabled(bool on) {
#ifdef MANGO_WITH_CUDA
    enabled_flag().store(on);
#else
    (void)on;
#endif
}

void register_fused_ops() {}  // the TORCH_LIBRARY block below registers them when this file is linked

}  // namespace mango::kernels

TORCH_LIBRARY(mango, m) {
    namespace k = mango::kernels;
    m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor", &k::rms_norm_op);
    m.def("add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)", &k::add_rms_norm_op);
    m.def("silu_mul(Tensor gate, Tensor up) -> Tensor", &k::silu_mul_op);
    m.def("rope(Tensor q, Tensor k, Tensor positions, Tensor inv_freq, float factor) -> (Tensor, Tensor)", &k::rope_op);
    m.def("linear(Tensor input, Tensor weight, Tensor? bias=None) -> Tensor", &k::linear_op);
    m.def("linears(Tensor input, Tensor[] weights, Tensor[] biases) -> Tensor[]", &k::linears_op);
    m.def("linear_residual(Tensor input, Tensor weight, Tensor? bias, Tensor residual) -> Tensor", &k::linear_residual_op);
    m.def("swiglu(Tensor input, Tensor gate, Tensor up) -> Tensor", &k::swiglu_op);
    m.def(
        "linears_rope(Tensor input, Tensor[] weights, Tensor[] biases, Tensor positions, Tensor inv_freq, float factor, int heads, "
        "int kv_heads) -> Tensor[]",
        &k::linears_rope_op);
    m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor padding, int window, float scale) -> Tensor", &k::decode_attention_op);
    m.def("attention_mask_bias(Tensor padding, int T, int window, ScalarType dtype) -> Tensor", &k::attention_mask_bias_op);
    m.def("mean_pool_gate(Tensor hidden, Tensor? mask, Tensor weight, Tensor? bias, float scale) -> Tensor", &k::mean_pool_gate_op);
}
