#include "moe/moe_format.hpp"

#include "util/error.hpp"

#include <ATen/ATen.h>

#include <set>

namespace mango::moe {

using json = nlohmann::json;

at::Tensor DenseModel::find(int32_t layer, const std::string &role) const {
    for (const TensorDecl &d : table)
        if (d.layer == layer && d.role == role) {
            auto it = tensors.find(d.flags & MANGO_TENSOR_TIED ? d.tied_to : d.name);
            return it == tensors.end() ? at::Tensor() : it->second;
        }
    return {};
}

const std::vector<std::string> &known_formats() {
    static const std::vector<std::string> f = {"mixtral", "qwen2_moe", "deepseek_v3", "mango"};
    return f;
}

at::Tensor ffn_weight(const DenseModel &d, int32_t layer, const std::string &part) {
    at::Tensor w = d.find(layer, "mlp." + part + ".weight");
    if (w.defined()) return w;
    w = d.find(layer, "mlp." + part + ".weight.T");
    return w.defined() ? w.t() : w;
}

namespace {

const std::set<std::string> kSources = {"llama", "mistral", "qwen2"};

std::string layer_list(const std::vector<bool> &sparse, bool want) {
    std::string s;
    for (size_t l = 0; l < sparse.size(); ++l)
        if (sparse[l] == want) s += (s.empty() ? "" : ", ") + std::to_string(l);
    return s;
}

// The one window every layer of the source attends over (0: none), as the
// llama plugin reads it. Qwen2 slides only the layers layer_types marks, or
// without it those from max_window_layers (default 28) on; the families
// written here have one window for all layers, so a mix is refused.
int64_t sliding_window(const DenseModel &d) {
    const json &r = d.config.raw;
    if (d.config.model_type == "llama") return 0;
    if (d.config.model_type == "qwen2" && !r.value("use_sliding_window", false)) return 0;
    // A missing key is the config class's default: 4096 for Mistral and Qwen2.
    const json w_key = r.contains("sliding_window") ? r["sliding_window"] : json(4096);
    if (!w_key.is_number_integer() || w_key.get<int64_t>() <= 0) return 0;
    const int64_t w = w_key.get<int64_t>();
    if (d.config.model_type == "qwen2") {
        const json from_key = r.value("max_window_layers", json(28)), types = r.value("layer_types", json());
        const int64_t layers = d.config.num_layers, from = from_key.is_number_integer() ? from_key.get<int64_t>() : 28;
        int64_t sliding = 0;
        for (int64_t l = 0; l < layers; ++l)
            sliding += types.is_array() && size_t(l) < types.size() ? types[size_t(l)] == "sliding_attention" : l >= from;
        if (sliding == 0) return 0;
        if (sliding < layers)
            throw HostError(d.dir + ": " + std::to_string(sliding) + " of its " + std::to_string(layers) +
                            " layers attend over a sliding window of " + std::to_string(w) +
                            " tokens and the others over everything (layer_types / max_window_layers); the MoE formats "
                            "convert-moe writes give every layer the same attention");
    }
    return d.config.max_positions <= 0 || w < d.config.max_positions ? w : 0;
}

bool has_qkv_bias(const DenseModel &d) {
    for (const TensorDecl &t : d.table)
        if (t.role == "attn.q.bias" || t.role == "attn.k.bias" || t.role == "attn.v.bias") return true;
    return false;
}

}  // namespace

bool llama_style(const DenseModel &d) { return kSources.count(d.config.model_type) > 0; }

void check_source(const DenseModel &d) {
    const bool llama = llama_style(d);
    for (int32_t l = 0; l < int32_t(d.config.num_layers); ++l)
        for (const char *part : {"gate", "up", "down"}) {
            if (!llama && std::string(part) == "gate") continue;
            if (!ffn_weight(d, l, part).defined())
                throw HostError(d.dir + ": layer " + std::to_string(l) + " has no FFN tensor with role 'mlp." + part +
                                ".weight' (convert-moe needs " + (llama ? "a gated FFN" : "an FFN") +
                                " in every layer; see `mango inspect --roles " + d.dir + "`)");
        }
}

std::string choose_format(const std::string &requested, const DenseModel &d, const std::vector<bool> &sparse) {
    if (!llama_style(d)) {
        if (requested.empty() || requested == "mango") return "mango";
        throw HostError("format " + clip(requested) + " has LLaMA-style layers (RMSNorm, rotary attention, gated FFN), which a " +
                        d.config.model_type +
                        " model does not have; its experts go in the Mango MoE format (--format mango, the default "
                        "for it), which `mango` runs");
    }
    if (requested == "mango")
        throw HostError("format mango is for decoders that no transformers MoE family expresses; " + d.dir + " (" + d.config.model_type +
                        ") converts to --format mixtral (every layer) or qwen2_moe (any layers), which transformers loads too");
    const bool all_sparse = std::find(sparse.begin(), sparse.end(), false) == sparse.end();
    const bool bias = has_qkv_bias(d);
    const int64_t window = sliding_window(d);
    std::string f = requested;
    if (f.empty()) f = all_sparse && !bias ? "mixtral" : "qwen2_moe";
    if (f == "mixtral") {
        if (!all_sparse)
            throw HostError("format mixtral puts experts in every layer, but layers " + layer_list(sparse, false) +
                            " stay dense (not chosen, or reverted by the test); use --format qwen2_moe, which keeps dense layers "
                            "between sparse ones");
        if (bias)
            throw HostError("format mixtral has no q/k/v biases, but " + d.dir + " (" + d.config.model_type +
                            ") has them; use --format qwen2_moe");
        return f;
    }
    if (f == "qwen2_moe") {
        if (window > 0)
            throw HostError("format qwen2_moe (as written here) has no sliding-window attention, but " + d.dir +
                            " attends over a window of " + std::to_string(window) +
                            " tokens; convert every layer and use --format mixtral, which has sliding_window");
        return f;
    }
    if (f == "deepseek_v3")
        throw HostError(
            "format deepseek_v3 uses multi-head latent attention (compressed, normalised keys and values); the attention "
            "of a " +
            d.config.model_type +
            " model cannot be written in it exactly; use --format mixtral (every layer "
            "converted) or --format qwen2_moe (any layers)");
    std::string known;
    for (const std::string &k : known_formats()) known += (known.empty() ? "" : ", ") + k;
    throw HostError("unknown MoE format '" + clip(f) + "' (known: " + known + ")");
}

json moe_config(const std::string &format, const DenseModel &d, const std::vector<bool> &sparse, int64_t experts, int64_t top_k,
                int64_t expert_intermediate) {
    const json &r = d.config.raw;
    if (format == "mango") {  // the source's config, plus where the experts are
        json c = r;
        json layers = json::array();
        for (size_t l = 0; l < sparse.size(); ++l)
            if (sparse[l]) layers.push_back(l);
        c["mango_moe"] = {{"num_experts", experts},
                          {"num_experts_per_tok", top_k},
                          {"expert_intermediate_size", expert_intermediate},
                          {"layers", layers},
                          {"norm_topk_prob", true}};
        return c;
    }
    json c = json::object();
    for (const char *k :
         {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "rope_scaling", "rope_parameters", "bos_token_id",
          "eos_token_id", "pad_token_id", "initializer_range", "attention_dropout", "torch_dtype", "dtype", "transformers_version"})
        if (r.contains(k) && !r[k].is_null()) c[k] = r[k];
    const int64_t head_dim = d.config.head_dim > 0 ? d.config.head_dim : d.config.hidden_size / std::max<int64_t>(1, d.config.num_heads);
    // From k_proj's rows: a source config without the key has its class's default (MistralConfig: 8), not all heads.
    const at::Tensor k = d.find(0, "attn.k.weight");
    c["num_key_value_heads"] = k.defined() && head_dim > 0 ? k.size(0) / head_dim : d.config.num_kv_heads;
    c["head_dim"] = head_dim;
    c["hidden_act"] = r.value("hidden_act", std::string("silu"));
    c["rms_norm_eps"] = r.value("rms_norm_eps", 1e-6);
    c["rope_theta"] = d.config.rope_theta;  // the families' defaults differ (Mixtral: 1e6)
    c["tie_word_embeddings"] = d.config.tie_word_embeddings;
    if (d.config.max_positions > 0) c["max_position_embeddings"] = d.config.max_positions;
    c["output_router_logits"] = false;
    c["num_experts_per_tok"] = top_k;
    if (format == "mixtral") {
        c["model_type"] = "mixtral";
        c["architectures"] = {"MixtralForCausalLM"};
        c["intermediate_size"] = expert_intermediate;
        c["num_local_experts"] = experts;
        c["router_aux_loss_coef"] = 0.02;
        c["router_jitter_noise"] = 0.0;
        const int64_t w = sliding_window(d);
        c["sliding_window"] = w > 0 ? json(w) : json(nullptr);
    } else {
        c["model_type"] = "qwen2_moe";
        c["architectures"] = {"Qwen2MoeForCausalLM"};
        c["intermediate_size"] = d.config.intermediate_size;
        c["moe_intermediate_size"] = expert_intermediate;
        c["num_experts"] = experts;
        c["decoder_sparse_step"] = 1;
        json dense = json::array();
        for (size_t l = 0; l < sparse.size(); ++l)
            if (!sparse[l]) dense.push_back(l);
        c["mlp_only_layers"] = dense;
        c["shared_expert_intermediate_size"] = 0;  // no shared expert: its tensors are written empty
        c["norm_topk_prob"] = true;                // renormalised top-k, as the conversion assumes
        c["qkv_bias"] = true;
        c["use_sliding_window"] = false;
        c["router_aux_loss_coef"] = 0.001;
    }
    return c;
}

std::vector<std::pair<std::string, at::Tensor>> moe_tensors(const PluginHost &host, const json &config, const DenseModel &d,
                                                            const std::map<int32_t, LayerExperts> &converted) {
    const std::string where = d.dir + " converted to " + config.value("model_type", std::string());
    const formats::HfConfig cfg = formats::parse_hf_config(config.dump(), where + "/config.json");
    const std::vector<TensorDecl> table = Model::tensor_table(host, cfg, nullptr, where);
    const at::ScalarType ffn_dtype = ffn_weight(d, 0, "up").scalar_type();
    const at::Tensor any_attn = d.find(0, "attn.q.weight");
    const at::ScalarType attn_dtype = any_attn.defined() ? any_attn.scalar_type() : ffn_dtype;
    bool has_moe_roles = converted.empty();
    std::vector<std::pair<std::string, at::Tensor>> out;
    std::set<std::pair<int32_t, std::string>> used;
    for (const TensorDecl &t : table) {
        if (t.flags & MANGO_TENSOR_TIED) continue;
        at::Tensor v = d.find(t.layer, t.role);
        if (v.defined()) {
            used.insert({t.layer, t.role});
        } else if (t.role == "attn.q.bias" || t.role == "attn.k.bias" || t.role == "attn.v.bias") {
            v = at::zeros(t.shape, at::TensorOptions().dtype(attn_dtype));  // Qwen2-MoE always has them; zero = none
        } else if (auto it = converted.find(t.layer); it != converted.end() && t.role.rfind("moe.", 0) == 0) {
            const LayerExperts &x = it->second;
            has_moe_roles = true;
            if (t.role == "moe.router.weight") {
                v = x.router;
            } else if (t.role.rfind("moe.experts.", 0) == 0) {
                const size_t dot = t.role.find('.', 12);
                const size_t e = size_t(std::stoul(t.role.substr(12, dot - 12)));
                std::string part = t.role.substr(dot + 1);
                const bool transposed = part.size() > 2 && part.compare(part.size() - 2, 2, ".T") == 0;
                if (transposed) part.resize(part.size() - 2);
                const std::vector<at::Tensor> *from = part == "gate.weight"   ? &x.gate
                                                      : part == "up.weight"   ? &x.up
                                                      : part == "down.weight" ? &x.down
                                                      : part == "up.bias"     ? &x.up_bias
                                                      : part == "down.bias"   ? &x.down_bias
                                                                              : nullptr;
                if (from && e < from->size()) v = (*from)[e];
                if (v.defined() && transposed) v = v.t();
            }
            if (v.defined()) v = v.to(ffn_dtype).contiguous();
        }
        if (!v.defined())
            throw HostError(where + ": no value for tensor '" + t.name + "' (role '" + t.role + "', layer " + std::to_string(t.layer) +
                            ")");
        if (!t.shape.empty() && v.sizes().vec() != t.shape)
            throw HostError(where + ": tensor '" + t.name + "' has shape " + c10::str(v.sizes()) + ", the format expects " +
                            c10::str(at::IntArrayRef(t.shape)));
        out.emplace_back(t.name, v);
        // Qwen2-MoE always builds a shared expert: written with no neurons (and a zero gate) it adds nothing.
        if (t.role == "moe.router.weight" && config.value("model_type", std::string()) == "qwen2_moe" &&
            config.value("shared_expert_intermediate_size", 0) == 0) {
            const int64_t H = v.size(1);
            const std::string p = t.name.substr(0, t.name.size() - std::string("gate.weight").size());
            const auto o = at::TensorOptions().dtype(ffn_dtype);
            out.emplace_back(p + "shared_expert.gate_proj.weight", at::zeros({0, H}, o));
            out.emplace_back(p + "shared_expert.up_proj.weight", at::zeros({0, H}, o));
            out.emplace_back(p + "shared_expert.down_proj.weight", at::zeros({H, 0}, o));
            out.emplace_back(p + "shared_expert_gate.weight", at::zeros({1, H}, o));
        }
    }
    if (!has_moe_roles)
        throw HostError(where + ": the architecture plugin for " + d.config.model_type +
                        " declares no experts for the converted layers (its tensor table has no moe.* roles; an architecture "
                        "runs the Mango MoE format by reading the \"mango_moe\" key, see mango/plain_moe.hpp)");
    // Whatever the dense model has beyond the converted FFNs must have found a place.
    std::string lost;
    for (const TensorDecl &t : d.table) {
        if (t.flags & MANGO_TENSOR_TIED || used.count({t.layer, t.role})) continue;
        if (converted.count(t.layer) && t.role.rfind("mlp.", 0) == 0) continue;
        if (!d.tensors.count(t.name)) continue;  // optional and absent
        lost += (lost.empty() ? "" : ", ") + t.name;
    }
    if (!lost.empty())
        throw HostError(where + " cannot hold these tensors of " + d.dir + ": " + clip(lost, 300) +
                        (config.value("model_type", std::string()) == "mixtral" ? " (try --format qwen2_moe)" : ""));
    return out;
}

}  // namespace mango::moe
