// `mixtral` architecture: LLaMA-style attention (GQA, rotary, optional
// sliding window) with a sparse MoE feed-forward in every layer: softmax over
// the experts, top-k, always renormalised; router_jitter_noise in training.
// Checkpoints in the per-expert layout (block_sparse_moe.experts.E.w1/w3/w2,
// what transformers saves) or transformers 5's fused mlp.experts.gate_up_proj
// / down_proj. Reference: transformers' modeling_mixtral.py.
#include <mango/component.hpp>
#include <mango/moe_decoder.hpp>

namespace {

using mango::Context;
using mango::moe::MoeDecoder;

MoeDecoder::Config read(Context &ctx) {
    MoeDecoder::Config c;
    mango::moe::read_common(ctx, c, 1e-5, 8);
    c.default_theta = 1e6;
    c.attn.windows.assign(size_t(c.layers), ctx.config_int("sliding_window", 0));  // every layer
    c.experts = ctx.config_int("num_local_experts", ctx.config_int("num_experts", 8));
    c.top_k = ctx.config_int("num_experts_per_tok", 2);
    c.moe_inter = ctx.config_int("intermediate_size", 0);
    c.renormalize = true;
    c.jitter = ctx.config_double("router_jitter_noise", 0.0);
    c.fused =
        ctx.weight_exists("model.layers.0.mlp.experts.gate_up_proj") && !ctx.weight_exists("model.layers.0.block_sparse_moe.gate.weight");
    c.moe_prefix = c.fused ? "mlp." : "block_sparse_moe.";
    c.expert_names = {"w1", "w3", "w2"};
    return c;
}

struct Mixtral : MoeDecoder {
    explicit Mixtral(Context &ctx) : MoeDecoder(ctx, read(ctx)) {}
    static mango::TensorTable tensor_table(Context &ctx) { return table(read(ctx)); }
};

const char *const kModelTypes[] = {"mixtral", nullptr};

}  // namespace

MANGO_PLUGIN("mixtral", "1.0.0", "Mixtral sparse mixture-of-experts decoders",
             mango::architecture<Mixtral>(
                 "mixtral", "1.0.0", "Mixtral: GQA + rotary attention, softmax top-k MoE in every layer (per-expert or fused checkpoints)",
                 nullptr, kModelTypes))
