// Evaluation: perplexity of a causal model over packed sequences, and for a
// fused model the router's expert weights per fusion layer and sequence.
#pragma once

#include "model/model.hpp"

#include <map>
#include <string>
#include <vector>

namespace mango {

struct EvalResult {
    double nll = 0;  // mean next-token negative log-likelihood (nats)
    double perplexity = 0;
    int64_t tokens = 0;  // predicted tokens
    int64_t sequences = 0;
    // Fused models: [layers, sequences, experts], each row the sequence's mean
    // expert weights; undefined for other models.
    at::Tensor router_weights;
    // Statistics plugins reported ("layer1.load" -> values), mean over batches.
    std::map<std::string, std::vector<double>> stats;
    // MoE models: [sparse layers, experts], each expert's share of the routed
    // slots (from the "expert_share" statistics); undefined for other models.
    at::Tensor expert_shares;
};

// seqs: [N, T] int64, every token real. Runs in batches without gradients.
EvalResult evaluate(CausalLM &model, const at::Tensor &seqs, int64_t batch_size = 8);

// Expert shares as one self-contained SVG a reader takes in at a glance: one
// panel per data set, a row per layer and a column per expert, each cell
// coloured by the expert's share of that layer's routing (white = an even
// share 1/E, orange = more, blue = less) with the value written in it.
struct HeatmapGroup {
    std::string label;  // data set name
    at::Tensor shares;  // [layers, experts], rows summing to 1
};
std::string expert_share_svg(const std::string &title, const std::vector<std::string> &expert_names,
                             const std::vector<HeatmapGroup> &groups);

// Training curves from a JSONL metrics log (loss, perplexity, the
// load-balancing loss and validation perplexity when present), as an SVG.
std::string training_curves_svg(const std::string &title, const std::string &metrics_jsonl);

}  // namespace mango
