// `qwen3_moe` architecture: attention with per-head q/k RMSNorm before
// rotary (head_dim may differ from hidden / heads), optional biases
// (attention_bias: q, k, v and o); sparse layers by decoder_sparse_step and
// mlp_only_layers, softmax top-k renormalised when norm_topk_prob, no shared
// expert; sliding window on every layer when use_sliding_window.
// Reference: transformers' modeling_qwen3_moe.py.
#include <mango/component.hpp>
#include <mango/moe_decoder.hpp>

#include <algorithm>

namespace {

using mango::Context;
using mango::Error;
using mango::moe::MoeDecoder;

MoeDecoder::Config read(Context &ctx) {
    MoeDecoder::Config c;
    mango::moe::read_common(ctx, c, 1e-6, 4);
    c.attn.qkv_bias = c.attn.o_bias = ctx.config_bool("attention_bias", false);
    c.attn.qk_norm = mango::decoder::QkNorm::per_head;
    if (ctx.config_bool("use_sliding_window", false))  // Qwen3MoeConfig's window: 4096 when absent, none when null
        c.attn.windows.assign(size_t(c.layers), ctx.config_int("sliding_window", 4096, 0));
    c.experts = ctx.config_int("num_experts", ctx.config_int("num_local_experts", 128));
    c.top_k = ctx.config_int("num_experts_per_tok", 8);
    c.moe_inter = ctx.config_int("moe_intermediate_size", 768);
    c.dense_inter = ctx.config_int("intermediate_size", 6144);
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

struct Qwen3Moe : MoeDecoder {
    explicit Qwen3Moe(Context &ctx) : MoeDecoder(ctx, read(ctx)) {}
    static mango::TensorTable tensor_table(Context &ctx) { return table(read(ctx)); }
};

const char *const kModelTypes[] = {"qwen3_moe", nullptr};

}  // namespace

MANGO_PLUGIN("qwen3_moe", "1.0.0", "Qwen3-MoE decoders",
             mango::architecture<Qwen3Moe>("qwen3_moe", "1.0.0",
                                           "Qwen3-MoE: per-head q/k norm, softmax top-k experts, dense layers between", nullptr,
                                           kModelTypes))
