// mango/attention.hpp — pieces most decoder architectures share, built on
// mango/ops.hpp: the additive attention mask from a padding mask, rotary
// embeddings, grouped-query head repetition, and eager attention with a
// per-layer KV cache kept in the host's cache slots.
#pragma once

#include "mango/ops.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

namespace mango::attention {

// Additive mask [B, 1, T, S] for T new queries after `S - T` cached keys:
// 0 where query i may see key j (causal, key not padding, and within
// `window` positions when window > 0), the lowest float elsewhere.
// One host operator where the host has it (one kernel on a GPU).
inline Tensor mask_bias(const Tensor &padding, int64_t T, int64_t window, mango_dtype dtype) {
    static const std::optional<Op> fused = Op::find("mango::attention_mask_bias");
    if (fused) return (*fused)({padding, T, window, Dtype{dtype}});
    const int64_t B = padding.size(0), S = padding.size(1);
    const mango_device dev = padding.device();
    Tensor kpos = ops::arange(S, MANGO_DTYPE_I64, dev);                                               // [S]
    Tensor qpos = ops::unsqueeze(ops::narrow(ops::arange(S, MANGO_DTYPE_I64, dev), 0, S - T, T), 1);  // [T, 1]
    Tensor allowed = ops::le(kpos, qpos);                                                             // [T, S]
    if (window > 0) allowed = ops::logical_and(allowed, ops::gt(kpos, ops::add_scalar(qpos, -double(window))));
    Tensor keys = ops::reshape(ops::logical_not(ops::eq_scalar(padding, 0.0)), {B, 1, 1, S});
    allowed = ops::logical_and(keys, allowed);  // [B, 1, T, S]
    Tensor bias = ops::zeros({B, 1, T, S}, dtype, dev);
    return ops::masked_fill(bias, ops::logical_not(allowed), dtype == MANGO_DTYPE_F32 ? -FLT_MAX : -65504.0);
}

// Inverse frequencies for rotary embeddings of `dim` channels.
inline std::vector<double> rope_inv_freq(int64_t dim, double theta) {
    std::vector<double> f;
    for (int64_t i = 0; i < dim; i += 2) f.push_back(1.0 / std::pow(theta, double(i) / double(dim)));
    return f;
}

// Each layer's sliding window (0: full attention), for the models whose
// configs say per layer (Qwen2, Qwen2-MoE): `layer_types` where the config has
// it (transformers >= 4.53 writes it; "sliding_attention" layers get `window`,
// "full_attention" ones none), else `slides(layer)`, the model's own rule for
// configs without it. `window` <= 0: no layer slides.
template <class Rule>
std::vector<int64_t> layer_windows(Context &ctx, int64_t layers, int64_t window, Rule slides) {
    std::vector<int64_t> out(size_t(std::max<int64_t>(layers, 0)), 0);
    if (window <= 0) return out;
    const bool listed = ctx.config("layer_types.0").has_value();
    if (listed && ctx.config(("layer_types." + std::to_string(layers)).c_str()))
        throw Error(MANGO_ERR_INVALID_ARGUMENT, "layer_types has more entries than num_hidden_layers (" + std::to_string(layers) + ")");
    for (int64_t i = 0; i < layers; ++i) {
        bool slide = false;
        if (listed) {
            const std::string key = "layer_types." + std::to_string(i);
            const std::string type = ctx.config_string(key.c_str(), "");
            if (type != "sliding_attention" && type != "full_attention")
                throw Error(MANGO_ERR_INVALID_ARGUMENT,
                            key + " is '" + type.substr(0, 200) + "', expected sliding_attention or full_attention (one entry per layer)");
            slide = type == "sliding_attention";
        } else {
            slide = slides(i);
        }
        out[size_t(i)] = slide ? window : 0;
    }
    return out;
}

// Deprecated (SDK 0.4 plugins): Qwen's `sliding_window`, 4096 when absent.
[[deprecated("use ctx.config_int(\"sliding_window\", 4096, 0)")]] inline int64_t qwen_window(Context &ctx) {
    return ctx.config_int("sliding_window", 4096, 0);
}

// Rotary frequencies for `dim` channels with the config's rope scaling
// (rope_scaling / 5.x rope_parameters): default, "linear", "llama3", "yarn"
// (transformers' _compute_yarn_parameters); `attention_factor` multiplies
// cos and sin (yarn's mscale ratio; 1 otherwise). Other types are refused.
struct Rope {
    std::vector<double> inv_freq;
    double attention_factor = 1.0;
    std::string type = "default";
};
inline Rope rope_from_config(Context &ctx, int64_t dim, double default_theta = 10000.0) {
    Rope r;
    const double theta = ctx.config_double("rope_theta", default_theta);
    r.inv_freq = rope_inv_freq(dim, theta);
    r.type = ctx.config_string("rope_scaling.rope_type", ctx.config_string("rope_scaling.type", "default"));
    if (r.type == "default") return r;
    const double factor = ctx.config_double("rope_scaling.factor", 1.0);
    if (r.type == "linear") {
        for (double &x : r.inv_freq) x /= factor;
        return r;
    }
    if (r.type == "llama3") {
        const double low = ctx.config_double("rope_scaling.low_freq_factor", 1.0);
        const double high = ctx.config_double("rope_scaling.high_freq_factor", 4.0);
        const double old_ctx = static_cast<double>(ctx.config_int("rope_scaling.original_max_position_embeddings", 8192));
        const double low_wavelen = old_ctx / low, high_wavelen = old_ctx / high;
        for (double &x : r.inv_freq) {
            const double wavelen = 2 * M_PI / x;
            if (wavelen > low_wavelen) {
                x /= factor;
            } else if (wavelen >= high_wavelen) {  // medium band: interpolate
                const double smooth = (old_ctx / wavelen - low) / (high - low);
                x = (1 - smooth) * x / factor + smooth * x;
            }
        }
        return r;
    }
    if (r.type == "yarn") {
        const double orig =
            double(ctx.config_int("rope_scaling.original_max_position_embeddings", ctx.config_int("max_position_embeddings", 2048)));
        const double mscale = ctx.config_double("rope_scaling.mscale", 0), mscale_all = ctx.config_double("rope_scaling.mscale_all_dim", 0);
        auto get_mscale = [](double s, double m) { return s <= 1 ? 1.0 : 0.1 * m * std::log(s) + 1.0; };
        // null as transformers reads None: attention_factor null is computed, truncate null does not truncate.
        const auto attention_factor = ctx.config("rope_scaling.attention_factor");
        r.attention_factor =
            attention_factor && attention_factor->kind != MANGO_VALUE_NONE
                ? ctx.config_double("rope_scaling.attention_factor", 1.0)
                : (mscale != 0 && mscale_all != 0 ? get_mscale(factor, mscale) / get_mscale(factor, mscale_all) : get_mscale(factor, 1.0));
        double beta_fast = ctx.config_double("rope_scaling.beta_fast", 32), beta_slow = ctx.config_double("rope_scaling.beta_slow", 1);
        if (beta_fast == 0) beta_fast = 32;
        if (beta_slow == 0) beta_slow = 1;
        auto correction_dim = [&](double rotations) {
            return double(dim) * std::log(orig / (rotations * 2 * M_PI)) / (2 * std::log(theta));
        };
        double low = correction_dim(beta_fast), high = correction_dim(beta_slow);
        const auto truncate_key = ctx.config("rope_scaling.truncate");
        const bool truncate = !truncate_key || (truncate_key->kind != MANGO_VALUE_NONE && ctx.config_bool("rope_scaling.truncate", true));
        if (truncate) low = std::floor(low), high = std::ceil(high);
        low = std::max(low, 0.0);
        high = std::min(high, double(dim - 1));
        if (low == high) high += 0.001;
        for (size_t j = 0; j < r.inv_freq.size(); ++j) {
            const double ramp = std::min(1.0, std::max(0.0, (double(j) - low) / (high - low)));
            const double extra = r.inv_freq[j], inter = r.inv_freq[j] / factor;
            r.inv_freq[j] = inter * ramp + extra * (1 - ramp);
        }
        return r;
    }
    throw Error(MANGO_ERR_UNSUPPORTED, "rope_scaling type '" + r.type + "' is not supported (default, linear, llama3, yarn)");
}

inline Tensor to_tensor(const std::vector<double> &v, mango_device dev) {
    std::vector<float> f(v.begin(), v.end());
    const int64_t n = static_cast<int64_t>(f.size());
    mango_tensor t = nullptr;
    check(host().tensor_from_data(f.data(), MANGO_DTYPE_F32, &n, 1, dev, &t));
    return Tensor(t);
}

// cos and sin [B, 1, T, 2 * len(inv_freq)] for position_ids [B, T] (float32
// math, as transformers does), in `dtype`.
inline std::pair<Tensor, Tensor> rope_cos_sin(const Tensor &inv_freq, const Tensor &positions, mango_dtype dtype) {
    Tensor freqs = ops::mul(ops::unsqueeze(ops::to_dtype(positions, MANGO_DTYPE_F32), -1), inv_freq);  // [B, T, D/2]
    Tensor emb = ops::unsqueeze(ops::cat({freqs, freqs}, -1), 1);
    return {ops::to_dtype(ops::cos(emb), dtype), ops::to_dtype(ops::sin(emb), dtype)};
}

// cos and sin times a factor (yarn's attention_factor), in `dtype`.
inline std::pair<Tensor, Tensor> rope_cos_sin_scaled(const Tensor &inv_freq, const Tensor &positions, mango_dtype dtype, double factor) {
    Tensor freqs = ops::mul(ops::unsqueeze(ops::to_dtype(positions, MANGO_DTYPE_F32), -1), inv_freq);
    Tensor emb = ops::unsqueeze(ops::cat({freqs, freqs}, -1), 1);
    return {ops::to_dtype(ops::mul(ops::cos(emb), factor), dtype), ops::to_dtype(ops::mul(ops::sin(emb), factor), dtype)};
}

// DeepSeek's interleaved rope: pairs (x[2i], x[2i+1]) rotate by angle i; the
// result comes out de-interleaved (evens' then odds'), as transformers does.
inline Tensor apply_rope_interleaved(const Tensor &x, const Tensor &cos, const Tensor &sin) {
    const int64_t d = x.size(-1);
    Tensor evens = ops::slice(x, -1, 0, d, 2), odds = ops::slice(x, -1, 1, d, 2);
    Tensor c = ops::narrow(cos, -1, 0, d / 2), s = ops::narrow(sin, -1, 0, d / 2);
    return ops::cat({ops::sub(ops::mul(evens, c), ops::mul(odds, s)), ops::add(ops::mul(odds, c), ops::mul(evens, s))}, -1);
}

// x * cos + rotate_half(x) * sin over the last dim (x: [B, H, T, D]).
inline Tensor apply_rope(const Tensor &x, const Tensor &cos, const Tensor &sin) {
    const int64_t half = x.size(-1) / 2;
    Tensor rotated = ops::cat({ops::neg(ops::narrow(x, -1, half, half)), ops::narrow(x, -1, 0, half)}, -1);
    return ops::add(ops::mul(x, cos), ops::mul(rotated, sin));
}

// q [B, H, T, D] and k [B, KV, T, D] rotated by positions [B, T]:
// apply_rope with rope_cos_sin_scaled(inv_freq, positions, q's dtype, factor),
// in one host operator where the host has it (one kernel on a GPU).
inline std::pair<Tensor, Tensor> rope_qk(const Tensor &q, const Tensor &k, const Tensor &inv_freq, const Tensor &positions, double factor) {
    static const std::optional<Op> fused = Op::find("mango::rope");
    if (fused) {
        Results r;
        fused->call({q, k, positions, inv_freq, factor}, r);
        return {r.tensor(0), r.tensor(1)};
    }
    auto [cos, sin] = rope_cos_sin_scaled(inv_freq, positions, q.dtype(), factor);
    return {apply_rope(q, cos, sin), apply_rope(k, cos, sin)};
}

// [B, T, heads * D] -> [B, heads, T, D]
inline Tensor split_heads(const Tensor &x, int64_t heads, int64_t head_dim) {
    return ops::transpose(ops::reshape(x, {x.size(0), x.size(1), heads, head_dim}), 1, 2);
}
// [B, heads, T, D] -> [B, T, heads * D]
inline Tensor merge_heads(const Tensor &x) { return ops::reshape(ops::transpose(x, 1, 2), {x.size(0), x.size(2), x.size(1) * x.size(3)}); }

// The attention's inputs from the normalised hidden state h [B, T, H]: q, k,
// v = h W^T (+ b; biases: none or three) split into heads ([B, heads, T,
// D]), q and k rotated as rope_qk does. One kernel on a GPU where the host
// has mango::linears_rope (the products, the biases and the rotation in one
// launch), else linears, split_heads and rope_qk.
struct Qkv {
    Tensor q, k, v;
};
inline Qkv project_qkv_rope(const Tensor &h, const std::vector<Tensor> &weights, const std::vector<Tensor> &biases, int64_t heads,
                            int64_t kv_heads, int64_t head_dim, const Tensor &inv_freq, const Tensor &positions, double factor) {
    static const std::optional<Op> fused = Op::find("mango::linears_rope");
    if (fused && ops::all_defined(biases) && weights.size() == 3 && (biases.empty() || biases.size() == 3)) {
        Results r;
        fused->call({h, weights, biases, positions, inv_freq, factor, heads, kv_heads}, r);
        if (r.n != 3) throw Error(MANGO_ERR_INTERNAL, "mango::linears_rope returned " + std::to_string(r.n) + " results for 3");
        return {r.tensor(0), r.tensor(1), r.tensor(2)};
    }
    const std::vector<Tensor> qkv = ops::linears(h, weights, biases);
    Qkv out{split_heads(qkv[0], heads, head_dim), split_heads(qkv[1], kv_heads, head_dim), split_heads(qkv[2], kv_heads, head_dim)};
    std::tie(out.q, out.k) = rope_qk(out.q, out.k, inv_freq, positions, factor);
    return out;
}

// [B, KV, S, D] -> [B, KV * rep, S, D]
inline Tensor repeat_kv(const Tensor &x, int64_t rep) {
    if (rep == 1) return x;
    const int64_t B = x.size(0), KV = x.size(1), S = x.size(2), D = x.size(3);
    return ops::reshape(ops::expand(ops::unsqueeze(x, 2), {B, KV, rep, S, D}), {B, KV * rep, S, D});
}

// `t` appended along `dim` to cache slot `key` by get, concatenate, set:
// the growing cache, which the host keeps as it is given.
inline Tensor grow_cache(Context &ctx, const std::string &key, const Tensor &t, int32_t dim) {
    Tensor all = t;
    if (Tensor before = ctx.cache_get(key)) all = ops::cat({before, t}, dim);
    ctx.cache_set(key, all);
    return all;
}

// `t` appended along `dim` to cache slot `key`; returns the slot's entries
// so far. With a host that keeps a static cache (host API revision 6) the
// whole preallocated slot comes back, its unwritten entries hidden by the
// padding mask, which then has as many columns; older hosts: grow_cache.
inline Tensor cache_append(Context &ctx, const std::string &key, const Tensor &t, int32_t dim) {
    if (!MANGO_HOST_HAS(cache_append)) return grow_cache(ctx, key, t, dim);
    mango_tensor out = nullptr;
    check(host().cache_append(ctx.get(), key.c_str(), t.get(), dim, &out));
    return Tensor(out);
}

// Appends k, v ([B, KV, T, D]) to this layer's cache slots and returns the
// full keys and values; without a cache returns them as they are. A sliding
// `window` is counted back from the last key, which a static cache's keys
// are not: such layers keep the growing cache (and the host decodes them
// without a static one), unless the window is at least as long as the
// static cache, so that it masks nothing.
inline std::pair<Tensor, Tensor> cached_kv(Context &ctx, int32_t layer, Tensor k, Tensor v, bool use_cache, int64_t window = 0) {
    if (!use_cache) return {k, v};
    const std::string kk = "layer" + std::to_string(layer) + ".k", vk = "layer" + std::to_string(layer) + ".v";
    if (window > 0) {
        const int64_t capacity = ctx.cache_capacity();
        if (capacity == 0 || capacity > window) return {grow_cache(ctx, kk, k, 2), grow_cache(ctx, vk, v, 2)};
    }
    if (!MANGO_HOST_HAS(cache_append_pair)) return {cache_append(ctx, kk, k, 2), cache_append(ctx, vk, v, 2)};
    mango_tensor ko = nullptr, vo = nullptr;  // both in one call: one launch at a static decode step (host API revision 7)
    check(host().cache_append_pair(ctx.get(), kk.c_str(), k.get(), vk.c_str(), v.get(), 2, &ko, &vo));
    return {Tensor(ko), Tensor(vo)};
}

// softmax(q k^T * scale + bias) v, softmax in float32 (q: [B, H, T, D]).
inline Tensor eager(const Tensor &q, const Tensor &k, const Tensor &v, const Tensor &bias, double scale) {
    Tensor scores = ops::add(ops::mul(ops::matmul(q, ops::transpose(k, 2, 3)), scale), bias);
    Tensor probs = ops::to_dtype(ops::softmax(ops::to_dtype(scores, MANGO_DTYPE_F32), -1), q.dtype());
    return ops::matmul(probs, v);
}

// Whether this LibTorch has aten::scaled_dot_product_attention (2.0 and
// later: flash, cuDNN and memory-efficient kernels) and it is not turned off
// with MANGO_ATTENTION=eager (for comparisons).
inline bool has_sdpa() {
    static const bool available = [] {
        const mango_op *op = nullptr;
        return host().find_op("aten::scaled_dot_product_attention", "", &op) == MANGO_OK;
    }();
    const char *env = std::getenv("MANGO_ATTENTION");
    return available && !(env && std::string(env) == "eager");
}

// Causal attention of q [B, H, T, D] over the keys and values [B, KV, S, D]
// (KV divides H; the last T of the S positions are the queries') under the
// padding mask [B, S] and an optional sliding `window` (0 = none). Through
// scaled_dot_product_attention where the LibTorch has it: without any mask
// when the host says the batch has no padding (prefill: is_causal, which
// flash takes; one new token: no mask at all), with the additive mask
// otherwise; eager math (eager() above) where it has not. One new token with
// a padding mask as wide as the keys goes to the host's decode_attention
// where the host has it (the same computation; one kernel on a GPU).
inline Tensor attend(Context &ctx, const Tensor &q, const Tensor &k, const Tensor &v, const Tensor &padding, int64_t window, double scale) {
    const int64_t T = q.size(2), S = k.size(2), rep = q.size(1) / k.size(1);
    if (T == 1 && padding && padding.size(1) == S) {  // one new token over the cache: the host's decode_attention (one kernel on a GPU)
        static const std::optional<Op> decode = Op::find("mango::decode_attention");
        if (decode) return (*decode)({q, k, v, padding, window, scale});
    }
    const Tensor keys = repeat_kv(k, rep), values = repeat_kv(v, rep);
    if (!has_sdpa()) return eager(q, keys, values, mask_bias(padding, T, window, q.dtype()), scale);
    static const Op sdpa("aten::scaled_dot_product_attention");
    if ((window <= 0 || window >= S) && (T == S || T == 1) && ctx.attention_mask_full())
        return sdpa({q, keys, values, nullptr, 0.0, T > 1, scale});
    return sdpa({q, keys, values, mask_bias(padding, T, window, q.dtype()), 0.0, false, scale});
}

}  // namespace mango::attention
