// Writing a converted model in a transformers MoE family: which family can
// express it (Mixtral: every layer sparse, no attention biases; Qwen2-MoE:
// dense layers kept by mlp_only_layers, q/k/v biases zero where the source
// has none), its config.json, and its tensors assembled by role from the
// family's own tensor table: whatever the dense model has under the same
// (layer, role) is copied as stored, converted layers get the experts and
// router. LLaMA-style decoders (llama, mistral, qwen2) convert to those
// families; other decoders whose architecture plugin reads the "mango_moe"
// key (mango/plain_moe.hpp: gpt2, gptj, gpt_neo) convert to the Mango format: the source's
// own config and tensors with experts in the converted layers.
#pragma once

#include "model/model.hpp"

#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

namespace mango::moe {

// The dense model as stored: its config, tensor table and tensors (stored dtype).
struct DenseModel {
    std::string dir;
    formats::HfConfig config;
    std::vector<TensorDecl> table;
    std::map<std::string, at::Tensor> tensors;  // by checkpoint name

    // The tensor with this role in this layer (-1: model-level); undefined when absent.
    at::Tensor find(int32_t layer, const std::string &role) const;
    bool has(int32_t layer, const std::string &role) const { return find(layer, role).defined(); }
};

// One converted layer: router [E, H] and per expert gate/up [F_e, H], down
// [H, F_e] (linear layout; gate undefined for a plain MLP) and, when the FFN
// has them, biases [F_e] and [H].
struct LayerExperts {
    at::Tensor router;
    std::vector<at::Tensor> gate, up, down, up_bias, down_bias;
};

// A dense FFN tensor of `layer` in linear layout: "gate", "up" ([F, H]) or
// "down" ([H, F]), from role mlp.<part>.weight or its transposed twin
// mlp.<part>.weight.T (GPT-2's Conv1D); undefined when absent.
at::Tensor ffn_weight(const DenseModel &dense, int32_t layer, const std::string &part);
// Whether the source is a LLaMA-style decoder (llama, mistral, qwen2), which
// the transformers families express; any other converts to the Mango format.
bool llama_style(const DenseModel &dense);

// Formats convert-moe writes, and the one it would choose.
const std::vector<std::string> &known_formats();
// The format for `requested` ("" = choose) given which layers are sparse;
// throws explaining why a requested one cannot express the model, naming
// the alternatives.
std::string choose_format(const std::string &requested, const DenseModel &dense, const std::vector<bool> &sparse);
// Throws unless the dense model is one convert-moe can read (LLaMA-style
// decoder with gated FFNs in every layer).
void check_source(const DenseModel &dense);

// config.json of the MoE model.
nlohmann::json moe_config(const std::string &format, const DenseModel &dense, const std::vector<bool> &sparse, int64_t experts,
                          int64_t top_k, int64_t expert_intermediate);

// Every tensor of the MoE model by checkpoint name, in the family's table
// order. Throws when the dense model has tensors the family cannot hold.
std::vector<std::pair<std::string, at::Tensor>> moe_tensors(const PluginHost &host, const nlohmann::json &config, const DenseModel &dense,
                                                            const std::map<int32_t, LayerExperts> &converted);

}  // namespace mango::moe
