// Pipeline::run: builds models when a step first needs them, tokenises and
// packs data once, and runs the steps in order.
#include "pipeline/pipeline.hpp"

#include "abi/crash_guard.hpp"
#include "dist/process_group.hpp"

#include "merge/merge.hpp"
#include "train/evaluate.hpp"
#include "util/logging.hpp"
#include "util/progress.hpp"

#include "formats/safetensors.hpp"

#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>

namespace mango {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// FNV-1a, stable across runs and builds: identifies a training run's inputs.
struct Fingerprint {
    uint64_t h = 1469598103934665603ULL;
    void add(const void *p, size_t n) {
        for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<const unsigned char *>(p)[i]) * 1099511628211ULL;
    }
    void add(const std::string &s) { add(s.data(), s.size()); }
    void add(const at::Tensor &t) {
        const at::Tensor c = t.to(at::kCPU).contiguous();
        add(c.data_ptr(), size_t(c.numel()) * c.element_size());
    }
    std::string hex() const {
        char buf[20];
        std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
        return buf;
    }
};

class Runner {
public:
    Runner(const PluginHost &host, const PipelineSpec &spec, const RunSettings &settings) : host_(host), spec_(spec), settings_(settings) {}

    json run() {
        fs::create_directories(spec_.output);
        if (!spec_.tokenizer.empty()) tok_.emplace(formats::Tokenizer::from_file(spec_.tokenizer));
        eos_ = spec_.eos_id.value_or(-1);
        json steps = json::array();
        for (size_t i = 0; i < spec_.steps.size(); ++i) {
            const StepDef &s = spec_.steps[i];
            say("\n== step " + std::to_string(i + 1) + "/" + std::to_string(spec_.steps.size()) + ": " + s.kind);
            set_crash_context("step " + std::to_string(i + 1) + "/" + std::to_string(spec_.steps.size()) + ": " + s.kind + " (" + s.where +
                              ")");
            // Distributed: train and eval run on every rank at once (train's
            // all-reduce needs them all); any other step runs on rank 0 first,
            // then on the others, which read what it wrote and write nothing.
            dist::Group &group = dist::current();
            // An expert-parallel model's generation needs every rank too.
            const bool together = s.kind == "train" || s.kind == "eval" || (s.kind == "generate" && any_expert_parallel());
            if (!together && !group.writer()) group.barrier();
            json r = std::visit([&](const auto &st) { return this->step(st, i); }, s.step);
            if (!together && group.writer()) group.barrier();
            group.barrier();
            r["run"] = s.kind;
            steps.push_back(r);
            summary_["steps"] = steps;
            formats::write_file_atomic((fs::path(spec_.output) / "summary.json").string(), summary_.dump(2) + "\n");
        }
        summary_["output"] = spec_.output;
        formats::write_file_atomic((fs::path(spec_.output) / "summary.json").string(), summary_.dump(2) + "\n");
        return summary_;
    }

private:
    // Where a model's weights live: its own `device`, else the pipeline's;
    // under NCCL a bare "cuda" is this rank's GPU.
    at::Device device_of(const std::string &name) const {
        const ModelDef *d = def(name);
        return dist::current().place(d && d->device ? *d->device : spec_.device);
    }
    bool any_expert_parallel() const {
        for (const auto &m : spec_.models)
            if (m.expert_parallel) return true;
        return false;
    }
    void say(const std::string &line) {
        if (!settings_.json) std::cout << line << "\n" << std::flush;
    }

    const ModelDef *def(const std::string &name) const {
        for (const auto &m : spec_.models)
            if (m.name == name) return &m;
        return nullptr;
    }

    std::shared_ptr<Model> plain(const std::string &name) {
        if (auto it = plain_.find(name); it != plain_.end()) return it->second;
        const ModelDef *d = def(name);
        std::shared_ptr<Model> m;
        ExpertShard shard;
        if (d->expert_parallel) shard = {dist::current().rank(), dist::current().world()};
        const std::string sharing = shard.world > 1 ? " (expert-parallel over " + std::to_string(shard.world) + " ranks)" : "";
        if (d->kind == ModelDef::Kind::RandomInit) {
            say("model " + name + ": random initialisation from " + d->path + "/config.json (seed " + std::to_string(d->seed) + ")" +
                sharing);
            m = Model::init_random(host_, d->path, d->seed, spec_.dtype, device_of(name), shard);
        } else {
            say("model " + name + ": " + d->path + sharing);
            m = Model::load(host_, d->path, spec_.dtype, device_of(name), shard);
        }
        if (d->offload) {
            const int64_t bytes = m->offload();
            say("model " + name + ": offloaded, " + format_bytes(double(bytes)) + " of per-layer weights in " +
                (m->device().is_cuda() ? "pinned host memory" : "host memory") + " between blocks");
        }
        plain_[name] = m;
        live_[name] = m;
        return m;
    }

    CausalLM &model(const std::string &name) {
        if (auto it = live_.find(name); it != live_.end()) return *it->second;
        const ModelDef *d = def(name);
        if (d->kind == ModelDef::Kind::SavedFusion) {
            say("model " + name + ": saved fusion " + d->path);
            live_[name] = FusedModel::load(host_, d->path, spec_.dtype, spec_.device);
        } else if (d->kind == ModelDef::Kind::Fusion) {
            const FusionDef &f = d->fusion;
            std::vector<std::shared_ptr<Model>> members;
            for (const auto &m : f.members) members.push_back(plain(m));
            auto fused = FusedModel::build(host_, members, fusion_spec(f, d->seed));
            say("model " + name + ": fusion of " + std::to_string(f.members.size()) + " models, " + std::to_string(f.layers.size()) +
                " fusion layers, hidden size " + std::to_string(fused->target_hidden()));
            live_[name] = std::move(fused);
        } else {
            plain(name);
        }
        return *live_[name];
    }

    // Packed sequences of a data set (a mix concatenates its members').
    const PackedData &data(const std::string &name) {
        if (auto it = packed_.find(name); it != packed_.end()) return it->second;
        const DataDef *d = nullptr;
        for (const auto &x : spec_.data)
            if (x.name == name) d = &x;
        PackedData p;
        if (!d->mix.empty()) {
            std::vector<at::Tensor> tr, va;
            for (const auto &m : d->mix) {
                const PackedData &q = data(m);
                tr.push_back(q.train);
                va.push_back(q.validation);
                p.documents += q.documents;
                p.tokens += q.tokens;
            }
            p.train = at::cat(tr);
            p.validation = at::cat(va);
        } else {
            DataOptions o = d->options;
            o.eos_id = eos_;
            p = pack(*tok_, d->documents, o, d->where);
            say("data " + name + ": " + std::to_string(p.documents) + " documents, " + std::to_string(p.tokens) + " tokens, " +
                std::to_string(p.train.size(0)) + " training + " + std::to_string(p.validation.size(0)) + " validation sequences of " +
                std::to_string(o.seq_len));
        }
        return packed_[name] = p;
    }

    at::Tensor joined(const std::vector<std::string> &names, bool validation) {
        std::vector<at::Tensor> parts;
        for (const auto &n : names) parts.push_back(validation ? data(n).validation : data(n).train);
        for (size_t i = 1; i < parts.size(); ++i)
            if (parts[i].size(1) != parts[0].size(1))
                throw PipelineError("data sets " + names[0] + " and " + names[i] + " have different seq_len; one training step needs one");
        return at::cat(parts);
    }

    json step(const TrainStep &s, size_t index) {
        CausalLM &m = model(s.model);
        const ModelDef *d = def(s.model);
        m.begin_training(s.all_weights);
        TrainRunOptions o = s.run;
        const at::Tensor train = joined(s.data, false);
        o.validation = joined(s.data, true);
        o.progress = settings_.progress && !settings_.json;
        if (o.fingerprint != "no-resume") {
            Fingerprint f;
            json what = {{"model", s.model}, {"train", s.all_weights}, {"step", index}, {"opts", json::array()}};
            const TrainOptions &t = o.train;
            for (double v : {double(t.steps), double(t.batch_size), t.lr, t.router_lr, t.weight_decay, double(t.warmup_steps),
                             t.min_lr_ratio, t.clip_norm, t.adapter_weight, double(t.seed), double(t.align_steps)})
                what["opts"].push_back(v);
            what["aux_weights"] = t.aux_weights;
            what["aux_ramp"] = t.aux_ramp_steps;
            if (d) what["def"] = {d->path, d->seed, int(d->kind)};
            if (d && d->kind == ModelDef::Kind::Fusion) {
                what["adapter"] = spec_json(d->fusion.adapter);
                for (const auto &r : d->fusion.routers) what["routers"].push_back(spec_json(r));
                what["layers"] = d->fusion.layers;
            }
            f.add(what.dump());
            f.add(train);
            for (const auto &[name, t] : m.trainable()) f.add(name + c10::str(t.sizes()));
            o.fingerprint = f.hex();
        } else {
            fs::remove(o.state_path);
            o.fingerprint = "";
        }
        std::string names;
        for (const auto &n : s.data) names += (names.empty() ? "" : ", ") + n;
        int64_t n_params = 0;
        for (const auto &[_, t] : m.trainable()) n_params += t.numel();
        say("training " + s.model + " (" + std::to_string(n_params) + " trainable parameters) on " + names + ": " +
            std::to_string(o.train.steps) + " steps of " + std::to_string(o.train.batch_size) + " x " + std::to_string(train.size(1)) +
            " tokens");
        const TrainRunResult r = run_training(m, train, o);
        if (fs::exists(o.log_path)) {                                                      // the curves beside the metrics log
            const std::string svg = o.log_path.substr(0, o.log_path.size() - 6) + ".svg";  // .jsonl -> .svg
            formats::write_file_atomic(svg, training_curves_svg("Training " + s.model, o.log_path));
        }
        json out = {{"model", s.model},
                    {"steps", r.steps},
                    {"resumed_from", r.resumed_from},
                    {"tokens", r.tokens},
                    {"seconds", r.seconds},
                    {"tokens_per_s", r.tokens_per_s},
                    {"last_loss", r.last_loss},
                    {"validation_perplexity", r.validation_perplexity},
                    {"state", o.state_path},
                    {"log", o.log_path}};
        if (r.resumed_from == r.steps && r.steps > 0) say("(restored from " + o.state_path + ": already trained)");
        m.end_training();
        // A trained plain model is written out, so fusions can refer to it by path and content hash.
        if (auto it = plain_.find(s.model); it != plain_.end()) {
            const std::string dir = (fs::path(spec_.output) / "models" / s.model).string();
            it->second->save(dir, false, tokenizer_files());
            dist::current().barrier();  // distributed: rank 0 wrote it, every rank reads it
            auto reloaded = std::shared_ptr<Model>(Model::load(host_, dir, spec_.dtype, device_of(s.model)));
            plain_[s.model] = reloaded;
            live_[s.model] = reloaded;
            out["saved"] = dir;
        }
        return out;
    }

    json step(const EvalStep &s, size_t index) {
        std::vector<json> rows;
        std::map<std::string, std::map<std::string, double>> ppl;
        std::string heat = s.heatmap;
        std::vector<HeatmapGroup> groups;
        json router = json::object();
        for (const auto &name : s.models) {
            CausalLM &m = model(name);
            for (const auto &dn : s.data) {
                at::Tensor seqs = data(dn).validation;
                if (seqs.size(0) == 0)
                    throw PipelineError("data set " + dn + " has no validation sequences (raise its 'validation' fraction)");
                if (s.max_sequences > 0 && seqs.size(0) > s.max_sequences)  // evenly spaced, so a mix keeps its proportions
                    seqs = seqs.index_select(0, at::linspace(0, double(seqs.size(0) - 1), s.max_sequences).round().to(at::kLong));
                const EvalResult r = evaluate(m, seqs, s.batch_size);
                if (heat.empty() && (r.router_weights.defined() || r.expert_shares.defined())) heat = name;
                ppl[name][dn] = r.perplexity;
                json row = {{"model", name}, {"data", dn},         {"perplexity", r.perplexity},
                            {"nll", r.nll},  {"tokens", r.tokens}, {"sequences", r.sequences}};
                if (!r.stats.empty()) {
                    json stats = json::object();
                    for (const auto &[k, v] : r.stats) stats[k] = v.size() == 1 ? json(v[0]) : json(v);
                    row["stats"] = stats;
                }
                if (r.router_weights.defined()) {
                    const at::Tensor mean = r.router_weights.mean(1);  // [layers, E]
                    json layers = json::array();
                    for (int64_t l = 0; l < mean.size(0); ++l) {
                        json w = json::array();
                        for (int64_t e = 0; e < mean.size(1); ++e) w.push_back(mean[l][e].item<double>());
                        layers.push_back(w);
                    }
                    row["router_mean_weights"] = layers;
                    if (name == heat) groups.push_back({dn, mean});
                } else if (r.expert_shares.defined() && name == heat) {
                    groups.push_back({dn, r.expert_shares});
                }
                rows.push_back(row);
            }
        }
        // The table: models x data sets; * marks the best per column.
        std::ostringstream t;
        size_t w = 12;
        for (const auto &m : s.models) w = std::max(w, m.size() + 2);
        t << "\nperplexity" << std::string(w > 10 ? w - 10 : 1, ' ');
        for (const auto &dn : s.data) t << std::string(dn.size() < 12 ? 12 - dn.size() : 1, ' ') << dn;
        t << "\n";
        for (const auto &m : s.models) {
            t << m << std::string(w - m.size(), ' ');
            for (const auto &dn : s.data) {
                bool best = true;
                for (const auto &o : s.models) best = best && ppl[o][dn] >= ppl[m][dn];
                const std::string cell = format_fixed(ppl[m][dn], 2) + (best && s.models.size() > 1 ? "*" : " ");
                t << std::string(cell.size() < 12 ? 12 - cell.size() : 1, ' ') << cell;
            }
            t << "\n";
        }
        say(t.str());
        json out = {{"results", rows}};
        for (auto &r : rows) metrics_["evaluations"].push_back(r);
        if (!groups.empty()) {
            const ModelDef *d = def(heat);
            std::vector<std::string> experts;
            const int64_t E = groups[0].shares.size(1);
            for (int64_t e = 0; e < E; ++e) experts.push_back("expert " + std::to_string(e));
            if (d && d->kind == ModelDef::Kind::Fusion) {
                // Name experts by model when every layer lists the models in the same order.
                bool same = true;
                for (const auto &l : d->fusion.layers) same = same && int64_t(l.size()) == E;
                if (same)
                    for (int64_t e = 0; e < E; ++e) experts[size_t(e)] = d->fusion.layers[0][size_t(e)].first;
            }
            const fs::path svg = fs::path(spec_.output) / "router_heatmap.svg";
            formats::write_file_atomic(
                svg.string(),
                expert_share_svg("Expert shares of " + heat + " (eval step " + std::to_string(index + 1) + ")", experts, groups));
            say("router heatmap: " + svg.string());
            for (const auto &g : groups) {
                const at::Tensor mean = g.shares.mean(0);
                std::string line = "  router of " + heat + " on " + g.label + ": mean weight";
                for (int64_t e = 0; e < E; ++e) line += " " + experts[size_t(e)] + " " + format_fixed(mean[e].item<double>(), 2);
                say(line);
            }
            out["heatmap"] = svg.string();
        }
        metrics_["output"] = spec_.output;
        formats::write_file_atomic((fs::path(spec_.output) / "metrics.json").string(), metrics_.dump(2) + "\n");
        out["metrics"] = (fs::path(spec_.output) / "metrics.json").string();
        return out;
    }

    json step(const GenerateStep &s, size_t) {
        CausalLM &m = model(s.model);
        if (!tok_) throw PipelineError("generate needs a tokenizer");
        std::vector<std::vector<int64_t>> prompts;
        for (const auto &p : s.prompts) {
            auto ids = tok_->encode(p, false);
            if (ids.empty()) throw PipelineError("generate: the prompt \"" + clip(p) + "\" has no tokens");
            prompts.emplace_back(ids.begin(), ids.end());
        }
        GenerateOptions o = s.options;
        if (eos_ >= 0) o.stop_ids = {eos_};
        const ModelDef *d = def(s.model);
        if (o.stop_ids.empty() && d && d->kind == ModelDef::Kind::Folder) o.stop_ids = plain(s.model)->config().eos_token_ids;
        at::NoGradGuard no_grad;
        m.train(false);
        std::string decode;
        o.decode_used = &decode;
        const auto started = std::chrono::steady_clock::now();
        const auto out = generate(m, prompts, o);
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        int64_t new_tokens = 0;
        for (const auto &row : out) new_tokens += int64_t(row.size());
        json samples = json::array();
        for (size_t i = 0; i < out.size(); ++i) {
            std::vector<int32_t> ids(out[i].begin(), out[i].end());
            const std::string text = tok_->decode(ids, true);
            say(s.model + ": " + s.prompts[i] + "\u2192" + text);
            samples.push_back({{"prompt", s.prompts[i]}, {"text", text}, {"ids", out[i]}});
        }
        return {{"model", s.model}, {"samples", samples}, {"seconds", seconds}, {"new_tokens", new_tokens}, {"decode", decode}};
    }

    json step(const SaveStep &s, size_t) {
        model(s.model).save(s.path, s.self_contained, tokenizer_files());
        say("saved " + s.model + " to " + s.path);
        return {{"model", s.model}, {"path", s.path}};
    }

    json step(const LoadStep &s, size_t) {
        if (fs::exists(fs::path(s.path) / "fusion.json")) {
            live_[s.model] = FusedModel::load(host_, s.path, spec_.dtype, spec_.device);
            plain_.erase(s.model);
        } else {
            auto m = std::shared_ptr<Model>(Model::load(host_, s.path, spec_.dtype, device_of(s.model)));
            plain_[s.model] = m;
            live_[s.model] = m;
        }
        say("loaded " + s.model + " from " + s.path);
        return {{"model", s.model}, {"path", s.path}};
    }

    json step(const MergeStep &s, size_t) {
        merge::Config c = merge::parse_config(s.yaml, s.yaml_file, s.yaml_dir);
        merge::Options o;
        o.progress = settings_.progress && !settings_.json;
        o.force = true;  // a folder of the pipeline's, or a model it may replace (parse.cpp's check_step_output)
        o.keep_other_files = true;
        o.dtype = s.dtype;
        o.seed = s.seed;
        o.device = spec_.device.str();
        // Pipeline model names stand for their folders: given ones, trained ones (saved), earlier merges and loads.
        for (const auto &m : spec_.models)
            if (m.kind == ModelDef::Kind::Folder) o.aliases[m.name] = m.path;
        for (const auto &[name, m] : plain_)
            if (m->from_checkpoint()) o.aliases[name] = m->dir();
        const merge::Result r = merge::run(host_, c, s.output, o);
        auto m = std::shared_ptr<Model>(Model::load(host_, r.out_dir, spec_.dtype, device_of(s.model)));
        plain_[s.model] = m;
        live_[s.model] = m;
        say("merged " + std::to_string(r.models.size()) + " models with " + r.method + " into " + r.out_dir + " (" +
            std::to_string(r.tensors) + " tensors, " + format_fixed(r.seconds, 1) + " s); it is model '" + s.model + "'");
        return {{"model", s.model}, {"method", r.method}, {"output", r.out_dir}, {"tensors", r.tensors}, {"seconds", r.seconds}};
    }

    json step(const ConvertMoeStep &s, size_t) {
        // A pipeline model name stands for its folder (given, trained and saved, merged, loaded, converted).
        auto folder = [&](const std::string &name) {
            if (auto it = plain_.find(name); it != plain_.end()) {
                if (!it->second->from_checkpoint())
                    throw PipelineError("convert_moe: model '" + name + "' has no weights in a folder yet (train it first)");
                return it->second->dir();
            }
            for (const auto &m : spec_.models)
                if (m.name == name) {
                    if (m.kind != ModelDef::Kind::Folder)
                        throw PipelineError("convert_moe: model '" + name + "' is not a dense model folder (train or save it first)");
                    return m.path;
                }
            return name;
        };
        moe::ConvertOptions o = s.options;
        o.progress = settings_.progress && !settings_.json;
        o.force = true;  // a folder of the pipeline's, or a model it may replace (parse.cpp's check_step_output)
        o.keep_other_files = true;
        o.tokenizer = spec_.tokenizer;
        for (const auto &src : s.sources) o.sources.push_back(folder(src));
        if (!s.test_data.empty()) {
            const PackedData &p = data(s.test_data);
            o.test_ids = p.validation.size(0) > 0 ? p.validation : p.train;
        }
        if (!s.calibration_data.empty()) o.calibration_ids = data(s.calibration_data).train;
        const moe::ConvertResult r = moe::convert(host_, folder(s.from), s.output, o);
        say(moe::outcome_table(r));
        auto m = std::shared_ptr<Model>(Model::load(host_, r.out_dir, spec_.dtype, device_of(s.model)));
        plain_[s.model] = m;
        live_[s.model] = m;
        json layers = json::array();
        int64_t kept = 0;
        for (const auto &x : r.layers) {
            layers.push_back({{"layer", x.layer}, {"converted", x.converted}, {"before", x.before}, {"after", x.after}});
            kept += x.converted;
        }
        say("converted " + s.from + " to a " + r.format + " model with " + std::to_string(r.experts) + " experts (top-" +
            std::to_string(r.top_k) + ") in " + std::to_string(kept) + " layers, " + r.out_dir + "; it is model '" + s.model + "'");
        json out = {{"model", s.model}, {"output", r.out_dir}, {"format", r.format}, {"layers", layers}};
        if (!r.metric.empty()) out.update({{"metric", r.metric}, {"dense", r.dense_metric}, {"final", r.final_metric}});
        return out;
    }

    // The pipeline's tokenizer.json, saved beside every model it writes.
    std::map<std::string, std::string> tokenizer_files() const {
        if (!tok_) return {};
        return {{"tokenizer.json",
                 (fs::is_directory(spec_.tokenizer) ? fs::path(spec_.tokenizer) / "tokenizer.json" : fs::path(spec_.tokenizer)).string()}};
    }

    const PluginHost &host_;
    const PipelineSpec &spec_;
    const RunSettings &settings_;
    std::optional<formats::Tokenizer> tok_;
    int64_t eos_ = -1;
    std::map<std::string, std::shared_ptr<CausalLM>> live_;
    std::map<std::string, std::shared_ptr<Model>> plain_;
    std::map<std::string, PackedData> packed_;
    json summary_ = json::object(), metrics_ = {{"evaluations", json::array()}};
};

}  // namespace

json Pipeline::run(const PluginHost &host, const PipelineSpec &spec, const RunSettings &settings) {
    // Under NCCL `device = "cuda"` means this rank's GPU; "cuda:N" stays N.
    const at::Device placed_on = dist::current().place(spec.device);
    if (placed_on == spec.device) return Runner(host, spec, settings).run();
    PipelineSpec placed = spec;
    placed.device = placed_on;
    return Runner(host, placed, settings).run();
}

}  // namespace mango
