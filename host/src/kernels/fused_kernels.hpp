// CUDA kernels for the host's fused operators (kernels/fused_ops.cpp), as
// plain launchers over raw pointers: nvcc never sees a LibTorch header. Each
// reproduces, rounding step by rounding step, the chain of ATen operators it
// replaces (transformers' order of casts), so only float32 summation order
// differs. Built only with MANGO_CUDA.
#pragma once

#include <cstdint>

struct CUstream_st;

namespace mango::kernels {

enum class Dtype { f32, bf16, f16 };
using Stream = CUstream_st *;

// out[r, :] = w * to_dtype(x[r, :] * rsqrt(mean(x[r, :]^2) + eps)) over
// `rows` contiguous rows of n elements; x, w and out share `dtype`.
// gain_early: w is a checkpoint weight (no kernel writes it while a model
// runs), loaded before the wait for the previous kernel (fused_kernels.cu:
// programmatic dependent launch).
void rms_norm(Dtype dtype, const void *x, const void *w, void *out, int64_t rows, int64_t n, float eps, bool gain_early, Stream stream);

// sum = x + residual (rounded to dtype, as ATen's add) and out = rms_norm(sum)
// (as rms_norm above) over contiguous rows whose width n is a multiple of
// 16 / sizeof(dtype), all pointers 16-byte aligned.
void add_rms_norm(Dtype dtype, const void *x, const void *residual, const void *w, void *sum, void *out, int64_t rows, int64_t n, float eps,
                  bool gain_early, Stream stream);

// One decode step's entry of up to two static KV cache slots (a layer's keys
// and values) in one launch: slot[b, h, *at, :] = value[b, h, 0, :] for each
// [B, H, 1, D] value by strides and its [B, H, S, D] slot by strides, `at`
// read on the device (a CUDA graph replays it with each step's entry);
// elements of `bytes` bytes (2 or 4), the same for every entry.
struct CacheEntry {
    const void *value = nullptr;
    void *slot = nullptr;
    int64_t value_stride[4]{}, slot_stride[4]{};
    int64_t B = 0, H = 0, D = 0;
};
void cache_write(int bytes, const CacheEntry *entries, int count, const int64_t *at, Stream stream);

// out = silu(g) * u over `rows` rows of n elements of `dtype`: g's and u's
// rows start every g_row / u_row elements, out is contiguous.
void silu_mul(Dtype dtype, const void *g, int64_t g_row, const void *u, int64_t u_row, void *out, int64_t rows, int64_t n, Stream stream);

// A [B, H, T, D] tensor by its strides (elements), written contiguous to `out`.
struct Strided4 {
    const void *x = nullptr;
    void *out = nullptr;
    int64_t size[4]{}, stride[4]{};
};
// Rotary embedding (rotate-half form) of q and k in one launch: angle
// positions[b, t] * inv_freq[d mod D/2], cos and sin times `factor`, rounded
// to `dtype` before they multiply. positions: int64 [B or 1, T] by strides.
void rope(Dtype dtype, const Strided4 &q, const Strided4 &k, const int64_t *positions, int64_t pos_stride_b, int64_t pos_stride_t,
          const float *inv_freq, float factor, Stream stream);

// Additive attention bias [B, 1, T, S] (contiguous): 0 where query t (at
// position S - T + t) may see key s — causal, padding[b, s] != 0, and within
// `window` positions when window > 0 — `lowest` elsewhere. padding: int64
// [B, S] by strides.
void mask_bias(Dtype dtype, const int64_t *padding, int64_t pad_stride_b, int64_t pad_stride_s, int64_t B, int64_t T, int64_t S,
               int64_t window, float lowest, void *out, Stream stream);

// out[m, n] = sum_k x[m, k] w[n, k] (+ bias[n]) for few rows m (1 to
// kGemvMaxRows), for up to kGemvMaxWeights weights of one input in one
// launch (q, k and v; gate and up): one block per output column, two pairs
// of 16-byte loads of w in flight per thread (this pair's and the next's),
// float32 sums — a weight-streaming
// matrix-vector product for decoding, where cuBLAS's GEMM kernels leave
// bandwidth unused (tools/bench/gemv_variants.cu compares layouts);
// weights_early: every weight is a checkpoint weight, whose first loads go
// out before the wait for the previous kernel (see rms_norm). From
// about 4 rows on the CUDA cores' multiply-adds catch up with the loads and
// cuBLAS's tensor cores win. bf16 or f16 only; x and each w contiguous,
// K a multiple of 8, 16-byte aligned; a bias may be null.
constexpr int64_t kGemvMaxRows = 4;
constexpr int kGemvMaxWeights = 3;
struct GemvWeight {
    const void *w = nullptr, *bias = nullptr;
    void *out = nullptr;  // [rows, N] contiguous
    int64_t N = 0;
};
void gemv(Dtype dtype, const void *x, int64_t rows, int64_t K, const GemvWeight *weights, int n_weights, bool weights_early, Stream stream);

// The same product with the next operator of a decoder layer in its last step
// (one launch fewer per layer each; the same roundings as the chains):
// out = residual + x w^T (+ bias), the product rounded before the add
// (residual [rows, N] contiguous, `weight.out` its own buffer);
void gemv_residual(Dtype dtype, const void *x, int64_t rows, int64_t K, const GemvWeight &weight, const void *residual, bool weights_early,
                   Stream stream);
// gate.out = silu(x gate^T) * (x up^T), each block taking a gate column and
// the up column beside it (up.out unused);
void gemv_silu_mul(Dtype dtype, const void *x, int64_t rows, int64_t K, const GemvWeight &gate, const GemvWeight &up, bool weights_early,
                   Stream stream);
// and the first `rotated` weights' outputs (q, k) rotated per head of
// head_dim as mango::rope does, a block per rotary pair (columns j and
// j + head_dim / 2 of a head); row m of x is token (m / T, m % T), whose
// position is positions[b * pos_stride_b + t * pos_stride_t].
struct GemvRope {
    int rotated = 0;
    int64_t head_dim = 0, T = 1;
    const int64_t *positions = nullptr;
    int64_t pos_stride_b = 0, pos_stride_t = 0;
    const float *inv_freq = nullptr;  // [head_dim / 2]
    float factor = 1.f;
};
void gemv_rope(Dtype dtype, const void *x, int64_t rows, int64_t K, const GemvWeight *weights, int n_weights, const GemvRope &rope,
               bool weights_early, Stream stream);

// Attention of a few new queries over a KV cache, in one kernel:
// out[b, h, t] = softmax(q[b, h, t] . k[b, h / (H / KV), s] * scale + bias) v
// with bias 0 where key s is visible to query t (at position S - T + t:
// causal, padding[b, s] != 0, within `window` when window > 0) and `lowest`
// elsewhere, as the additive mask of the ATen chain; float32 softmax and
// sums, one rounding at the end. One block per (b, h, t); its shared memory
// holds the S scores. q [B, H, T, D], k and v [B, KV, S, D] by strides (last
// dimension contiguous), out contiguous [B, H, T, D]; D a multiple of 8
// and <= 256, k and v rows 16-byte aligned.
struct AttentionArgs {
    const void *q = nullptr, *k = nullptr, *v = nullptr;
    void *out = nullptr;
    int64_t B = 0, H = 0, KV = 0, T = 0, S = 0, D = 0;
    int64_t q_stride[3]{}, k_stride[3]{}, v_stride[3]{};  // b, head, position
    const int64_t *padding = nullptr;
    int64_t pad_stride_b = 0, pad_stride_s = 0;
    int64_t window = 0;
    float scale = 1.f, lowest = 0.f;
};
// A fusion layer's mix: out[b, t, :] = sum_e outs[e][b, t, :] * w[b, t, e]
// in float32 (each output read in its dtype, exactly converted), the
// products and sums rounded in the order of the ATen chain (o0 w0 + o1 w1,
// then + o2 w2, ...). outs: contiguous [B, T, H] of one dtype; weights:
// float32 [B, T or 1, E] by strides (w_stride[1] = 0 when shared by the
// positions); out: contiguous float32 [B, T, H]; out_as (may be null): out
// again, rounded to the outputs' dtype (what out.to(that dtype) holds).
constexpr int kMixMaxExperts = 8;
struct MixArgs {
    const void *outs[kMixMaxExperts] = {};
    int experts = 0;
    const float *weights = nullptr;
    int64_t w_stride[3]{};
    float *out = nullptr;
    void *out_as = nullptr;
    int64_t B = 0, T = 0, H = 0;
};
void mix_experts(Dtype dtype, const MixArgs &a, Stream stream);

// A router's gate over pooled tokens, in float32: for each sequence b,
// p = sum_t h[b, t, :] keep[b, t] / max(sum_t keep[b, t], 1) (keep: the mask
// as float, 1 without one), out[b, :] = softmax(scale (W p + bias)).
// hidden: contiguous [B, T, H]; mask: [B, T] by strides, float32, int32,
// int64, bool or uint8 (mask_bytes 4, 8 or 1; null: none); W: contiguous
// [E, H], E <= kGateMaxExperts; bias: [E] or null; out: contiguous [B, E].
// A decode step's few tokens take one block per sequence
// (mean_pool_gate_blocks(T, H) == 1); more spread over that many blocks per
// sequence, each adding its share of every logit to `partials` ([B, blocks,
// E] floats), and the last block of a sequence to finish (counters: B ints,
// zero before the launch) sums them in block order (the same result every
// run) and takes the softmax.
constexpr int64_t kGateMaxExperts = 64;
int64_t mean_pool_gate_blocks(int64_t T, int64_t H);
struct GateArgs {
    const float *hidden = nullptr;
    const void *mask = nullptr;
    int mask_bytes = 0;
    bool mask_float = false;  // with mask_bytes 4: float32 (else int32)
    int64_t mask_stride[2]{};
    const float *weight = nullptr, *bias = nullptr;
    float scale = 1.f;
    float *out = nullptr;
    float *partials = nullptr;
    int *counters = nullptr;
    int64_t B = 0, T = 0, H = 0, E = 0;
};
void mean_pool_gate(const GateArgs &a, Stream stream);

// out[r] = the index of row r's largest element (n elements from x + r *
// row_stride), as ATen's argmax picks it: NaN first, ties to the smaller
// index. One block per row.
void argmax_rows(Dtype dtype, const void *x, int64_t row_stride, int64_t rows, int64_t n, int64_t *out, Stream stream);

// Largest S decode_attention takes (its scores live in shared memory).
int64_t decode_attention_max_keys(int64_t D);
void decode_attention(Dtype dtype, const AttentionArgs &a, Stream stream);

}  // namespace mango::kernels
