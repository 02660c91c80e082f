#include "mango/host/training_run.hpp"

#include "mango/host/evaluate.hpp"
#include "mango/host/host_api.hpp"
#include "mango/host/logging.hpp"
#include "mango/host/progress.hpp"

#include <mango/formats/safetensors.hpp>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>

namespace mango {
namespace {

std::string rate(double tokens_per_s) {
    return tokens_per_s >= 1000 ? format_fixed(tokens_per_s / 1000, 1) + "k tok/s" : format_fixed(tokens_per_s, 0) + " tok/s";
}

}  // namespace

TrainRunResult run_training(CausalLM &model, const at::Tensor &data, const TrainRunOptions &o) {
    if (data.dim() != 2 || data.size(0) == 0) throw Error("training needs at least one packed sequence");
    Trainer trainer(model, o.train);
    TrainRunResult r;
    if (!o.state_path.empty() && std::filesystem::exists(o.state_path)) {
        // Another run's state (other model, data or options) is kept aside, not resumed.
        const auto meta = formats::SafetensorsFile::open(o.state_path)->header().metadata;
        auto it = meta.find("fingerprint");
        if (it == meta.end() || it->second != o.fingerprint) {
            r.set_aside = o.state_path + ".previous";
            std::filesystem::rename(o.state_path, r.set_aside);
            log_message(3, o.state_path + " was written by another run (different model, data or options); kept as " + r.set_aside +
                     ", training from the start");
        } else {
            trainer.load_state(o.state_path);
            r.resumed_from = trainer.steps_done();
            if (o.progress && r.resumed_from < o.train.steps)
                std::cerr << o.label << ": resuming at step " << r.resumed_from << " from " << o.state_path << "\n";
        }
    }
    std::ofstream log;
    if (!o.log_path.empty()) {
        std::filesystem::create_directories(std::filesystem::path(o.log_path).parent_path().empty() ? "." : std::filesystem::path(o.log_path).parent_path());
        log.open(o.log_path, r.resumed_from > 0 ? std::ios::app : std::ios::trunc);
        if (!log) throw Error(o.log_path + ": cannot write the metrics log");
    }
    auto checkpoint = [&] {
        if (!o.state_path.empty()) trainer.save_state(o.state_path, {{"fingerprint", o.fingerprint}});
    };
    auto validate = [&]() -> double {
        if (!o.validation.defined() || o.validation.size(0) == 0) return 0;
        const double ppl = evaluate(model, o.validation, o.train.batch_size).perplexity;
        model.train(true);
        return ppl;
    };

    Progress bar(o.label, o.train.steps, o.progress);
    const int64_t start = trainer.steps_done();
    double smoothed = 0;
    int64_t tokens = 0;
    for (int64_t s = start; s < o.train.steps; ++s) {
        at::Tensor ids = trainer.batch_rows(data, s).to(model.device());
        at::Tensor mask = at::ones_like(ids);
        const TrainStepResult st = trainer.step(ids, mask);
        tokens += st.tokens;
        const bool first_lm = s == start || s == o.train.align_steps;
        smoothed = first_lm ? st.lm_loss : 0.9 * smoothed + 0.1 * st.lm_loss;
        const double tps = double(tokens) / std::max(1e-9, bar.elapsed_s());
        const bool ckpt = o.checkpoint_every > 0 && (s + 1) % o.checkpoint_every == 0 && s + 1 < o.train.steps;
        const bool eval = o.eval_every > 0 && (s + 1) % o.eval_every == 0 && s + 1 < o.train.steps;
        const double vppl = eval ? validate() : 0;
        if (log) {
            nlohmann::json j = {{"step", s + 1}, {"loss", st.loss}, {"lr", st.lr}, {"grad_norm", st.grad_norm}, {"tokens", st.tokens},
                                {"tokens_per_s", tps}};
            if (st.aligning) j["alignment_loss"] = st.lm_loss;
            else j["lm_loss"] = st.lm_loss, j["perplexity"] = std::exp(st.lm_loss);
            if (eval) j["validation_perplexity"] = vppl;
            log << j.dump() << "\n" << std::flush;
        }
        if (ckpt) checkpoint();
        if (cancel_requested()) {  // Ctrl-C: keep every finished step, then stop
            checkpoint();
            bar.finish("interrupted at step " + std::to_string(s + 1));
            throw Error("training interrupted at step " + std::to_string(s + 1) + " of " + std::to_string(o.train.steps) +
                        (o.state_path.empty() ? "" : "; its state is in " + o.state_path + ", and running the pipeline again resumes there"));
        }
        bar.update(s + 1, (st.aligning ? "aligning adapters, relative error " + format_fixed(smoothed, 3)
                                        : "loss " + format_fixed(smoothed, 3) + " ppl " + format_fixed(std::exp(smoothed), 1)) + "  " + rate(tps));
        r.last_loss = st.lm_loss;
    }
    if (trainer.steps_done() > start) checkpoint();
    r.steps = trainer.steps_done();
    r.tokens = tokens;
    r.seconds = bar.elapsed_s();
    r.tokens_per_s = double(tokens) / std::max(1e-9, r.seconds);
    r.validation_perplexity = validate();
    model.train(false);
    if (log && r.validation_perplexity > 0 && trainer.steps_done() > start)
        log << nlohmann::json{{"step", r.steps}, {"validation_perplexity", r.validation_perplexity}}.dump() << "\n";
    bar.finish(start == o.train.steps ? "already trained (" + o.state_path + ")"
                                      : "loss " + format_fixed(smoothed, 3) + "  " + rate(r.tokens_per_s) +
                                            (r.validation_perplexity > 0 ? "  validation ppl " + format_fixed(r.validation_perplexity, 2) : ""));
    return r;
}

}  // namespace mango
