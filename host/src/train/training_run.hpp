// A training run: batches drawn by the Trainer's seeded order, a progress
// bar (loss, perplexity, tokens/s, ETA, short plugin statistics), a JSONL
// metrics log (with every reported auxiliary loss and statistic), periodic
// validation, and the training state saved atomically every N steps.
// Started again with the same state file, it resumes where the last saved
// state left off (and does nothing if that run had finished); the metrics
// log is cut back to that step first.
#pragma once

#include "train/train.hpp"

#include <functional>
#include <string>

namespace mango {

struct TrainRunOptions {
    TrainOptions train;
    std::string state_path;        // "" = no saved state, no resume
    int64_t save_state_every = 0;  // steps; 0 = only at the end
    std::string log_path;          // JSONL metrics log ("" = none); on resume, cut to the resumed step, then appended to
    at::Tensor validation;         // [M, T] or undefined
    int64_t eval_every = 0;        // steps; 0 = only at the end
    std::string label = "train";   // progress bar label
    bool progress = true;
    // Identifies the run (model, data, options); a state file written by a
    // different run is not resumed: it is renamed to STATE.previous.
    std::string fingerprint;
};

struct TrainRunResult {
    int64_t steps = 0, resumed_from = 0, tokens = 0;
    double last_loss = 0, seconds = 0, tokens_per_s = 0;
    double validation_perplexity = 0;  // 0 when no validation data
    std::string set_aside;             // where another run's state file was moved, if one was
};

TrainRunResult run_training(CausalLM &model, const at::Tensor &train_data, const TrainRunOptions &options);

}  // namespace mango
