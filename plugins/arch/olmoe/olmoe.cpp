// `olmoe` architecture: attention with q/k RMSNorm over the whole projection
// (one variance per token), then clip_qkv clamping of q, k and v, then
// rotary; optional biases (attention_bias: q, k, v, o); a sparse MoE in every
// layer, softmax top-k renormalised when norm_topk_prob.
// Reference: transformers' modeling_olmoe.py.
#include <mango/component.hpp>
#include <mango/moe_decoder.hpp>

namespace {

using mango::Context;
using mango::moe::MoeDecoder;

MoeDecoder::Config read(Context &ctx) {
    MoeDecoder::Config c;
    mango::moe::read_common(ctx, c, 1e-5, 0);
    c.attn.qkv_bias = c.attn.o_bias = ctx.config_bool("attention_bias", false);
    c.attn.qk_norm = mango::decoder::QkNorm::whole;
    c.attn.clip_qkv = ctx.config_double("clip_qkv", 0.0);
    c.experts = ctx.config_int("num_experts", ctx.config_int("num_local_experts", 64));
    c.top_k = ctx.config_int("num_experts_per_tok", 8);
    c.moe_inter = ctx.config_int("intermediate_size", 2048);
    c.renormalize = ctx.config_bool("norm_topk_prob", false);
    c.fused = mango::moe::fused_experts(ctx, "mlp.", 0);
    return c;
}

struct Olmoe : MoeDecoder {
    explicit Olmoe(Context &ctx) : MoeDecoder(ctx, read(ctx)) {}
    static mango::TensorTable tensor_table(Context &ctx) { return table(read(ctx)); }
};

const char *const kModelTypes[] = {"olmoe", nullptr};

}  // namespace

MANGO_PLUGIN("olmoe", "1.0.0", "OLMoE decoders",
             mango::architecture<Olmoe>("olmoe", "1.0.0",
                                        "OLMoE: whole-projection q/k norm, clip_qkv, softmax top-k experts in every layer", nullptr,
                                        kModelTypes))
