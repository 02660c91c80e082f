// A PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors)
// applied to a model's weights as they are read: mergekit's "MODEL+LORA"
// references, which merge the adapter into its model (PEFT's
// merge_and_unload) before the merge sees it.
//   linear:    W + s * B @ A              (Hu et al. 2021, eq. 3; W is [out, in])
//   Conv1D:    W + s * (B @ A)^T          (W stored [in, out], GPT-2; PEFT's
//                                          fan_in_fan_out, which it sets by layer type)
//   embedding: W + s * (B @ A)^T          (lora_embedding_A [r, vocab], _B [dim, r])
// with s = alpha / r, or alpha / sqrt(r) with use_rslora (Kalajdzievski 2023);
// r is A's row count and alpha is lora_alpha unless an alpha_pattern key (the
// first that matches, in the file's order) names the module. Plain tensors in
// the adapter (modules_to_save, saved embedding layers, trained biases; PEFT's
// "X.base_layer.weight" is X.weight) replace the model's, before any LoRA
// update of the same tensor. Refused by name: DoRA, LoRA biases, aLoRA,
// trainable tokens, and initialisations that change the base weights (PiSSA,
// OLoRA, CorDA, LoftQ).
#pragma once

#include "formats/safetensors.hpp"

#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <memory>
#include <string>

namespace mango::merge {

class LoraAdapter {
public:
    // Reads DIR; throws naming the file and key of anything missing or not supported.
    // stored_in_out(name): the model stores weight `name` as [in, out] (a Conv1D).
    static std::shared_ptr<const LoraAdapter> open(const std::string &dir, const std::function<bool(const std::string &)> &stored_in_out);

    // Throws unless every tensor the adapter changes is in `model` with a shape the change fits.
    void check_fits(const formats::Checkpoint &model, const std::string &model_dir) const;

    // `weight` (the model's tensor `name`) with the adapter applied, in weight's dtype and device;
    // `weight` itself when the adapter does not change it.
    at::Tensor apply(const std::string &name, const at::Tensor &weight) const;

    const std::string &dir() const { return dir_; }
    size_t changes() const { return changes_.size(); }

private:
    struct Change {
        std::string replacement;  // an adapter tensor that replaces the weight, and/or
        std::string a, b;         // the LoRA pair added to it
        double scale = 0;
        bool transposed = false;  // the update is (B @ A)^T: embeddings, fan_in_fan_out
    };
    std::string dir_;
    std::shared_ptr<formats::Checkpoint> file_;
    std::map<std::string, Change> changes_;  // model tensor name -> change
};

}  // namespace mango::merge
