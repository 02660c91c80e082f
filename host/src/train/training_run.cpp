#include "train/training_run.hpp"

#include "train/evaluate.hpp"
#include "dist/process_group.hpp"
#include "abi/host_api.hpp"
#include "util/logging.hpp"
#include "util/progress.hpp"

#include "formats/safetensors.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <iostream>

namespace mango {
namespace {

std::string rate(double tokens_per_s) {
    return tokens_per_s >= 1000 ? format_fixed(tokens_per_s / 1000, 1) + "k tok/s" : format_fixed(tokens_per_s, 0) + " tok/s";
}

// Scalar statistics averaged over layers, the first two names: " entropy 0.69".
std::string short_stats(const std::map<std::string, std::vector<double>> &stats) {
    std::map<std::string, std::pair<double, int>> by_name;
    for (const auto &[key, v] : stats) {
        if (v.size() != 1) continue;
        const std::string name = key.substr(key.find('.') + 1);
        by_name[name].first += v[0];
        by_name[name].second += 1;
    }
    std::string out;
    int shown = 0;
    for (const auto &[name, sum] : by_name) {
        if (shown++ == 2) break;
        out += " " + name + " " + format_fixed(sum.first / sum.second, 3);
    }
    return out;
}

// Keeps the lines of a JSONL metrics log up to step `last` (and lines
// without a step), except the end-of-run validation line, which the resumed
// run writes again.
void cut_log(const std::string &path, int64_t last) {
    std::ifstream in(path);
    if (!in) return;
    std::string kept, line;
    while (std::getline(in, line)) {
        try {
            const auto j = nlohmann::json::parse(line);
            if (j.contains("step") && j["step"].get<int64_t>() > last) continue;
            if (j.contains("validation_perplexity") && !j.contains("loss")) continue;
        } catch (const std::exception &) {
            continue;  // a line cut short by a kill
        }
        kept += line + "\n";
    }
    formats::write_file_atomic(path, kept);
}

}  // namespace

TrainRunResult run_training(CausalLM &model, const at::Tensor &data, const TrainRunOptions &o_in) {
    if (data.dim() != 2 || data.size(0) == 0) throw HostError("training needs at least one packed sequence");
    // Data parallel: every rank takes its slice of each global batch; rank 0 alone logs and saves.
    const dist::Group &group = dist::current();
    if (group.distributed() && o_in.train.batch_size % group.world() != 0)
        throw HostError(o_in.label + ": batch_size " + std::to_string(o_in.train.batch_size) + " does not split over " +
                        std::to_string(group.world()) + " ranks (it must be a multiple of the number of processes)");
    TrainRunOptions o = o_in;
    if (!group.writer()) o.log_path.clear(), o.progress = false;
    Trainer trainer(model, o.train);
    TrainRunResult r;
    if (!o.state_path.empty() && std::filesystem::exists(o.state_path)) {
        // Another run's state (other model, data or options) is kept aside, not resumed.
        const auto meta = formats::SafetensorsFile::open(o.state_path)->header().metadata;
        auto it = meta.find("fingerprint");
        if (it == meta.end() || it->second != o.fingerprint) {
            r.set_aside = o.state_path + ".previous";
            if (group.writer()) std::filesystem::rename(o.state_path, r.set_aside);
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
        std::filesystem::create_directories(
            std::filesystem::path(o.log_path).parent_path().empty() ? "." : std::filesystem::path(o.log_path).parent_path());
        // A resumed run redoes the steps after its saved state: drop their lines first.
        if (r.resumed_from > 0) cut_log(o.log_path, r.resumed_from);
        log.open(o.log_path, r.resumed_from > 0 ? std::ios::app : std::ios::trunc);
        if (!log) throw HostError(o.log_path + ": cannot write the metrics log");
    }
    auto save_state = [&] {
        if (!o.state_path.empty() && group.writer()) trainer.save_state(o.state_path, {{"fingerprint", o.fingerprint}});
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
        at::Tensor ids = trainer.batch_rows(data, s);
        if (group.distributed()) {
            const int64_t share = o.train.batch_size / group.world();
            ids = ids.narrow(0, share * group.rank(), share);
        }
        ids = ids.to(model.device());
        at::Tensor mask = at::ones_like(ids);
        const TrainStepResult st = trainer.step(ids, mask);
        tokens += st.tokens;
        const bool first_lm = s == start || s == o.train.align_steps;
        smoothed = first_lm ? st.lm_loss : 0.9 * smoothed + 0.1 * st.lm_loss;
        const double tps = double(tokens) / std::max(1e-9, bar.elapsed_s());
        const bool save_now = o.save_state_every > 0 && (s + 1) % o.save_state_every == 0 && s + 1 < o.train.steps;
        const bool eval = o.eval_every > 0 && (s + 1) % o.eval_every == 0 && s + 1 < o.train.steps;
        const double vppl = eval ? validate() : 0;
        if (log) {
            nlohmann::json j = {
                {"step", s + 1},       {"loss", st.loss},           {"lr", st.lr}, {"grad_norm", st.grad_norm}, {"tokens", st.tokens},
                {"tokens_per_s", tps}, {"seconds", bar.elapsed_s()}};
            if (st.aligning)
                j["alignment_loss"] = st.lm_loss;
            else
                j["lm_loss"] = st.lm_loss, j["perplexity"] = std::exp(st.lm_loss);
            if (eval) j["validation_perplexity"] = vppl;
            if (!st.aux.empty()) j["aux_losses"] = st.aux;
            if (!st.stats.empty()) {
                nlohmann::json stats = nlohmann::json::object();
                for (const auto &[name, v] : st.stats) stats[name] = v.size() == 1 ? nlohmann::json(v[0]) : nlohmann::json(v);
                j["stats"] = stats;
            }
            log << j.dump() << "\n" << std::flush;
        }
        if (save_now) save_state();
        if (cancel_requested()) {  // Ctrl-C: keep every finished step, then stop
            save_state();
            bar.finish("interrupted at step " + std::to_string(s + 1));
            throw HostError(
                "training interrupted at step " + std::to_string(s + 1) + " of " + std::to_string(o.train.steps) +
                (o.state_path.empty() ? "" : "; its state is in " + o.state_path + ", and running the pipeline again resumes there"));
        }
        bar.update(s + 1, (st.aligning ? "aligning adapters, relative error " + format_fixed(smoothed, 3)
                                       : "loss " + format_fixed(smoothed, 3) + " ppl " + format_fixed(std::exp(smoothed), 1)) +
                              short_stats(st.stats) + "  " + rate(tps));
        r.last_loss = st.lm_loss;
    }
    r.seconds = bar.elapsed_s();  // the training steps; the final state's write (GBs for a full model) is not in it
    if (trainer.steps_done() > start) save_state();
    r.steps = trainer.steps_done();
    r.tokens = tokens;
    r.tokens_per_s = double(tokens) / std::max(1e-9, r.seconds);
    r.validation_perplexity = validate();
    model.train(false);
    if (log && r.validation_perplexity > 0)
        log << nlohmann::json{{"step", r.steps}, {"validation_perplexity", r.validation_perplexity}}.dump() << "\n";
    bar.finish(start == o.train.steps
                   ? "already trained (" + o.state_path + ")"
                   : "loss " + format_fixed(smoothed, 3) + "  " + rate(r.tokens_per_s) +
                         (r.validation_perplexity > 0 ? "  validation ppl " + format_fixed(r.validation_perplexity, 2) : ""));
    return r;
}

}  // namespace mango
