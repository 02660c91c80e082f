// mango/decoder.hpp — the self-attention LLaMA-style decoders share (GQA,
// rotary, optional q/k/v and o biases, q/k RMSNorm per head (Qwen3) or over
// the whole projection (OLMoE), clip_qkv, sliding window), as a tensor-table
// fragment, its weights, and its forward with the KV cache.
#pragma once

#include "mango/attention.hpp"
#include "mango/layers.hpp"
#include "mango/tensors.hpp"

#include <cmath>
#include <string>
#include <tuple>

namespace mango::decoder {

enum class QkNorm { none, per_head, whole };

struct Attention {
    int64_t hidden = 0, heads = 0, kv_heads = 0, head_dim = 0;
    std::vector<int64_t> windows;  // each layer's sliding window (0 or missing: none)
    double eps = 1e-6;             // q/k norms
    QkNorm qk_norm = QkNorm::none;
    double clip_qkv = 0;  // 0 = none
    bool qkv_bias = false, o_bias = false;

    // Declares the layer's attention tensors under `prefix` ("model.layers.{L}.self_attn.").
    void add(TensorTable &t, int64_t n_layers, const std::string &prefix) const {
        const int64_t qd = heads * head_dim, kvd = kv_heads * head_dim;
        t.layers(n_layers, "attn.q.weight", prefix + "q_proj.weight", {qd, hidden});
        t.layers(n_layers, "attn.k.weight", prefix + "k_proj.weight", {kvd, hidden});
        t.layers(n_layers, "attn.v.weight", prefix + "v_proj.weight", {kvd, hidden});
        if (qkv_bias) {
            t.layers(n_layers, "attn.q.bias", prefix + "q_proj.bias", {qd});
            t.layers(n_layers, "attn.k.bias", prefix + "k_proj.bias", {kvd});
            t.layers(n_layers, "attn.v.bias", prefix + "v_proj.bias", {kvd});
        }
        t.layers(n_layers, "attn.o.weight", prefix + "o_proj.weight", {hidden, qd});
        if (o_bias) t.layers(n_layers, "attn.o.bias", prefix + "o_proj.bias", {hidden});
        if (qk_norm == QkNorm::per_head) {
            t.layers(n_layers, "attn.q_norm.weight", prefix + "q_norm.weight", {head_dim});
            t.layers(n_layers, "attn.k_norm.weight", prefix + "k_norm.weight", {head_dim});
        } else if (qk_norm == QkNorm::whole) {
            t.layers(n_layers, "attn.q_norm.weight", prefix + "q_norm.weight", {qd});
            t.layers(n_layers, "attn.k_norm.weight", prefix + "k_norm.weight", {kvd});
        }
    }

    struct Weights {
        Tensor q, k, v, o, qb, kb, vb, ob, q_norm, k_norm;
    };
    Weights load(const mango::Weights &w, int32_t layer) const {
        Weights a;
        a.q = w.at(layer, "attn.q.weight");
        a.k = w.at(layer, "attn.k.weight");
        a.v = w.at(layer, "attn.v.weight");
        a.o = w.at(layer, "attn.o.weight");
        if (qkv_bias) a.qb = w.at(layer, "attn.q.bias"), a.kb = w.at(layer, "attn.k.bias"), a.vb = w.at(layer, "attn.v.bias");
        if (o_bias) a.ob = w.at(layer, "attn.o.bias");
        if (qk_norm != QkNorm::none) a.q_norm = w.at(layer, "attn.q_norm.weight"), a.k_norm = w.at(layer, "attn.k_norm.weight");
        return a;
    }

    // Attention of the normalised input h [B, T, H]; returns o(attn) [B, T, H].
    Tensor forward(Context &ctx, int32_t layer, const Weights &a, const Tensor &h, const Tensor &mask, const Tensor &pos,
                   const Tensor &inv_freq, double rope_factor, bool use_cache) const {
        namespace attn = mango::attention;
        const std::vector<Tensor> biases = qkv_bias ? std::vector<Tensor>{a.qb, a.kb, a.vb} : std::vector<Tensor>{};
        const attn::Qkv p = qk_norm == QkNorm::none && clip_qkv <= 0  // the projections and the rotation in one step
                                ? attn::project_qkv_rope(h, {a.q, a.k, a.v}, biases, heads, kv_heads, head_dim, inv_freq, pos, rope_factor)
                                : project_normed(a, h, biases, pos, inv_freq, rope_factor);
        const int64_t window = size_t(layer) < windows.size() ? windows[size_t(layer)] : 0;
        auto [keys, values] = attn::cached_kv(ctx, layer, p.k, p.v, use_cache, window);
        Tensor out = attn::attend(ctx, p.q, keys, values, mask, window, 1.0 / std::sqrt(double(head_dim)));
        return ops::linear(attn::merge_heads(out), a.o, a.ob);
    }

private:
    // q, k, v in heads with the q/k norms and clipping between the projections and the rotation.
    attention::Qkv project_normed(const Weights &a, const Tensor &h, const std::vector<Tensor> &biases, const Tensor &pos,
                                  const Tensor &inv_freq, double rope_factor) const {
        namespace attn = mango::attention;
        const std::vector<Tensor> qkv = ops::linears(h, {a.q, a.k, a.v}, biases);
        Tensor q = qkv[0], k = qkv[1], v = qkv[2];
        if (qk_norm == QkNorm::whole) {
            q = layers::rms_norm(q, a.q_norm, eps);
            k = layers::rms_norm(k, a.k_norm, eps);
        }
        if (clip_qkv > 0) {
            q = ops::clamp(q, -clip_qkv, clip_qkv);
            k = ops::clamp(k, -clip_qkv, clip_qkv);
            v = ops::clamp(v, -clip_qkv, clip_qkv);
        }
        q = attn::split_heads(q, heads, head_dim);
        k = attn::split_heads(k, kv_heads, head_dim);
        v = attn::split_heads(v, kv_heads, head_dim);
        if (qk_norm == QkNorm::per_head) {
            q = layers::rms_norm(q, a.q_norm, eps);
            k = layers::rms_norm(k, a.k_norm, eps);
        }
        std::tie(q, k) = attn::rope_qk(q, k, inv_freq, pos, rope_factor);
        return {q, k, v};
    }
};

}  // namespace mango::decoder
