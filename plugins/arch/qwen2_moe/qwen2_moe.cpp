// `qwen2_moe` architecture (Qwen1.5-MoE, Qwen2-MoE): attention with q/k/v
// biases; sparse layers where (layer + 1) % decoder_sparse_step == 0 and the
// layer is not in mlp_only_layers, dense MLPs (intermediate_size) elsewhere;
// softmax top-k (renormalised when norm_topk_prob) plus a shared expert
// weighted by sigmoid(shared_expert_gate(x)); with use_sliding_window, a
// sliding window on the layers layer_types marks (without it: even layers
// below max_window_layers, as transformers' Qwen2MoeConfig).
// Reference: transformers' modeling_qwen2_moe.py.
#include <mango/component.hpp>
#include <mango/moe_decoder.hpp>

#include <algorithm>

namespace {

using mango::Context;
using mango::Error;
using mango::moe::MoeDecoder;

MoeDecoder::Config read(Context &ctx) {
    MoeDecoder::Config c;
    mango::moe::read_common(ctx, c, 1e-6, 16);
    c.attn.qkv_bias = ctx.config_bool("qkv_bias", true);
    // As transformers' Qwen2MoeConfig: without layer_types, the even layers below max_window_layers slide.
    if (ctx.config_bool("use_sliding_window", false)) {
        const int64_t below = ctx.config_int("max_window_layers", 28);
        c.attn.windows = mango::attention::layer_windows(ctx, c.layers, ctx.config_int("sliding_window", 4096, 0),
                                                         [&](int64_t i) { return i % 2 == 0 && i < below; });
    }
    c.experts = ctx.config_int("num_experts", 60);
    c.top_k = ctx.config_int("num_experts_per_tok", 4);
    c.moe_inter = ctx.config_int("moe_intermediate_size", 1408);
    c.dense_inter = ctx.config_int("intermediate_size", 5632);
    c.shared_inter = ctx.config_int("shared_expert_intermediate_size", 5632);
    c.shared_expert_gate = true;
    c.renormalize = ctx.config_bool("norm_topk_prob", false);
    const int64_t step = ctx.config_int("decoder_sparse_step", 1);
    if (step <= 0) throw Error(MANGO_ERR_INVALID_ARGUMENT, "decoder_sparse_step must be positive");
    std::vector<int64_t> mlp_only;
    for (int64_t i = 0; auto v = ctx.config(("mlp_only_layers." + std::to_string(i)).c_str()); ++i) mlp_only.push_back(v->u.i);
    for (int64_t l = 0; l < c.layers; ++l)
        c.sparse[size_t(l)] = std::find(mlp_only.begin(), mlp_only.end(), l) == mlp_only.end() && c.experts > 0 && (l + 1) % step == 0;
    for (int64_t l = 0; l < c.layers; ++l)
        if (c.sparse[size_t(l)]) {
            c.fused = mango::moe::fused_experts(ctx, "mlp.", l);
            break;
        }
    return c;
}

struct Qwen2Moe : MoeDecoder {
    explicit Qwen2Moe(Context &ctx) : MoeDecoder(ctx, read(ctx)) {}
    static mango::TensorTable tensor_table(Context &ctx) { return table(read(ctx)); }
};

const char *const kModelTypes[] = {"qwen2_moe", nullptr};

}  // namespace

MANGO_PLUGIN("qwen2_moe", "1.0.0", "Qwen2-MoE decoders",
             mango::architecture<Qwen2Moe>(
                 "qwen2_moe", "1.0.0", "Qwen1.5/2-MoE: QKV bias, softmax top-k experts + sigmoid-gated shared expert, dense layers between",
                 nullptr, kModelTypes))
