// The host's own operators, registered with LibTorch's dispatcher in the
// `mango::` namespace, so plugins find them as they find ATen's (find_op):
//
//   mango::linear(Tensor input, Tensor weight, Tensor? bias=None) -> Tensor
//   mango::linears(Tensor input, Tensor[] weights, Tensor[] biases) -> Tensor[]
//   mango::linears_rope(Tensor input, Tensor[] weights, Tensor[] biases, Tensor positions, Tensor inv_freq,
//                       float factor, int heads, int kv_heads) -> Tensor[]        (q, k, v in heads; q, k rotated)
//   mango::swiglu(Tensor input, Tensor gate, Tensor up) -> Tensor                  (silu(x G^T) * x U^T)
//   mango::linear_residual(Tensor input, Tensor weight, Tensor? bias, Tensor residual) -> Tensor
//   mango::rms_norm(Tensor x, Tensor weight, float eps) -> Tensor
//   mango::add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)
//   mango::silu_mul(Tensor gate, Tensor up) -> Tensor
//   mango::rope(Tensor q, Tensor k, Tensor positions, Tensor inv_freq, float factor) -> (Tensor, Tensor)
//   mango::attention_mask_bias(Tensor padding, int T, int window, ScalarType dtype) -> Tensor
//   mango::decode_attention(Tensor q, Tensor k, Tensor v, Tensor padding, int window, float scale) -> Tensor
//   mango::mean_pool_gate(Tensor hidden, Tensor? mask, Tensor weight, Tensor? bias, float scale) -> Tensor
//                                        (softmax(scale (masked mean of hidden over T) W^T + b)): a router's gate
//
// Each is the chain of ATen operators the SDK composes for it (mango/ops.hpp,
// mango/layers.hpp, mango/attention.hpp), and on a GPU, when no gradient is
// wanted, one CUDA kernel instead of that chain (4 to 12 kernels) — what
// decoding, a few tokens at a time, spends its time launching; linear is
// at::linear but for up to 4 rows in bf16/f16, where a weight-streaming GEMV
// replaces cuBLAS's GEMM; decode_attention is the SDK's attend() (repeat the
// k/v heads, additive mask, scaled_dot_product_attention) for the new
// queries over a KV cache, one kernel that reads the grouped k/v heads in
// place (no repeated copies); linears_rope, swiglu and linear_residual are
// the GEMV with the next step of a decoder layer folded into its last step;
// mean_pool_gate is the simple router's pooling, gate and softmax (8 kernels
// at a decode step, on the fusion's critical path) in one, equal to its chain
// within float32 rounding (its sums go in another order), not bit for bit.
// MANGO_FUSED_OPS=0 keeps the chains; MANGO_PDL=0 launches the kernels
// without programmatic dependent launch (fused_kernels.cu).
#pragma once

#include <ATen/core/Tensor.h>

namespace mango::kernels {

// One decode step's entry of a cache slot: slot.index_copy_(dim, at, value),
// value [B, H, 1, D] at dim 2.
struct CacheSlotWrite {
    at::Tensor slot;
    int64_t dim;
    at::Tensor value;
};
// Writes one or two entries (a layer's keys and values, `at` one index on the
// device) with one small kernel on a GPU; false where that does not apply to
// all of them (nothing written: the caller copies each as before).
bool write_cache_entries(const CacheSlotWrite *writes, size_t count, const at::Tensor &at);

// Records t's storage as a checkpoint weight handed to a plugin: no kernel
// writes it while a model runs, so the GPU kernels may start loading it
// before the previous kernel has finished (programmatic dependent launch).
// Held weakly; CPU tensors are not recorded.
void mark_weight(const at::Tensor &t);
// Whether t lies in a storage mark_weight recorded that is still alive.
bool is_weight(const at::Tensor &t);

// logits.argmax(-1) for [B, V] logits: one kernel on a GPU (ATen's reduction
// takes several times as long on a decode step's one row), else ATen's.
at::Tensor greedy_pick(const at::Tensor &logits);

// A fusion layer's output from its experts' outputs outs[e] ([B, T, H], any
// one dtype) and the router's weights w ([B, T or 1, E]):
// sum_e outs[e].to(dtype) * w[..., e].to(dtype), the products and sums in
// the chain's order. One kernel on a GPU for float32 (the casts fold into
// it), else the ATen chain. as_outs (may be null): where the kernel ran, set
// to the result rounded to the outputs' dtype as well (what .to() gives),
// written by the same kernel; else left undefined.
at::Tensor mix_experts(const std::vector<at::Tensor> &outs, const at::Tensor &w, at::ScalarType dtype, at::Tensor *as_outs = nullptr);

// Makes sure the operators are registered (their object file is linked);
// cheap, call it before resolving operators.
void register_fused_ops();

// Whether the CUDA kernels are used where they apply (false without a CUDA
// build or with MANGO_FUSED_OPS=0); tests switch them to compare.
bool fused_kernels_enabled();
void set_fused_kernels_enabled(bool on);

}  // namespace mango::kernels
