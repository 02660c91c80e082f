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
};

// seqs: [N, T] int64, every token real. Runs in batches without gradients.
EvalResult evaluate(CausalLM &model, const at::Tensor &seqs, int64_t batch_size = 8);

// A heatmap of router weights as a self-contained SVG: one band per fusion
// layer, one row per expert, one column per sequence; columns grouped and
// labelled by data set.
struct HeatmapGroup {
    std::string label;   // data set name
    at::Tensor weights;  // [layers, sequences, experts]
};
std::string router_heatmap_svg(const std::string &title, const std::vector<std::string> &expert_names,
                               const std::vector<HeatmapGroup> &groups);

}  // namespace mango
