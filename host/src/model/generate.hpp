// Text generation over a causal Model: left-padded batches, KV cache,
// greedy or sampled (temperature, top-k, top-p), no-repeat n-grams, stop ids.
#pragma once

#include "model/model.hpp"

#include <cstdint>
#include <functional>
#include <string>
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
    // How a GPU decodes with the cache: "graph" (a static KV cache and each
    // step replayed as a CUDA graph), "static" (the static cache, eager
    // steps), "eager" (a growing cache, as on the CPU), or "auto" (graph
    // where the model allows, else eager; the MANGO_DECODE variable can
    // name one of the others, for comparisons). Whatever a model cannot do
    // falls back, and the log says why.
    std::string decode = "auto";
    // When set: the mode the decode steps actually ran in ("graph",
    // "static" or "eager"), after any fallback.
    std::string *decode_used = nullptr;
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
