// Text generation over a causal Model: left-padded batches, KV cache,
// greedy or sampled (temperature, top-k, top-p), no-repeat n-grams, stop ids.
#pragma once

#include "model/model.hpp"

#include <cstdint>
#include <functional>
#include <vector>

namespace mango {

struct GenerateOptions {
    int64_t max_new_tokens = 32;
    bool greedy = true;
    double temperature = 1.0;
    int64_t top_k = 0;   // 0 = off
    double top_p = 1.0;  // 1 = off
    uint64_t seed = 0;
    int64_t no_repeat_ngram_size = 0;
    std::vector<int64_t> stop_ids;  // a row ends after emitting one of these
    int64_t pad_id = 0;
    bool use_cache = true;
    // Called with (prompt index, token) as each new token is chosen (streaming).
    std::function<void(size_t, int64_t)> on_token;
};

// Ids of the new tokens per prompt (a stop id included, nothing after it).
std::vector<std::vector<int64_t>> generate(CausalLM &model, const std::vector<std::vector<int64_t>> &prompts,
                                           const GenerateOptions &options);

// Greedy/sampling helper, exposed for tests: next token per row from logits
// [B, V] given the ids so far (for no-repeat n-grams).
std::vector<int64_t> choose_next(const at::Tensor &logits, const std::vector<std::vector<int64_t>> &history, const GenerateOptions &options,
                                 at::Generator &gen);

}  // namespace mango
