// What routers of a converted model are initialised from, computed with the
// dense model itself: the FFN inputs of every layer on calibration text (for
// k-means router rows), and per-expert router rows from prompts in the ways
// mergekit-moe's gate_mode names (hidden, hidden_avg, cheap_embed, random,
// uniform_random).
#pragma once

#include "formats/tokenizer.hpp"
#include "moe/moe_format.hpp"

#include <string>
#include <vector>

namespace mango::moe {

// Per layer, the inputs of its FFN (post-attention norm output) on `seqs`
// ([N, T] token ids), at most `max_tokens` rows each ([n, H], float32).
std::vector<at::Tensor> ffn_inputs(const PluginHost &host, const DenseModel &dense, const at::Tensor &seqs, int64_t max_tokens);

// One expert's prompts (mergekit-moe: positive_prompts, negative_prompts),
// and the model it comes from when the file names one (source_model).
struct ExpertPrompts {
    std::vector<std::string> positive, negative;
    std::string source_model;
};
// A YAML or JSON file: a list of experts, or mergekit-moe's configuration
// (a map with an `experts` list); errors name the file and entry.
std::vector<ExpertPrompts> read_prompts(const std::string &path);

// Throws "unknown gate mode ...", naming the known ones and ending with `at`,
// unless `mode` is one of them.
void check_gate_mode(const std::string &mode, const std::string &at = "");
// Router rows per layer ([E, H] float32 each) for `gate_mode`:
// hidden / hidden_avg: the residual stream entering each layer at a prompt's
//   last token / averaged over its tokens, mean over the positive prompts
//   minus the mean over the negative ones, unit length;
// cheap_embed: the sum of the prompts' token embeddings, unit length,
//   positive minus negative, unit length, the same for every layer;
// random: N(0, 1); uniform_random: U(-1/sqrt(H), 1/sqrt(H)) (seeded).
std::vector<at::Tensor> prompt_router_rows(const PluginHost &host, const DenseModel &dense, const formats::Tokenizer *tok,
                                           const std::vector<ExpertPrompts> &prompts, const std::string &gate_mode, int64_t experts,
                                           uint64_t seed);

}  // namespace mango::moe
