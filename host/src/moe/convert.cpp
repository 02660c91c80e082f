#include "moe/convert.hpp"

#include "formats/atomic_file.hpp"
#include "moe/moe_format.hpp"
#include "moe/router_data.hpp"
#include "train/data.hpp"
#include "train/evaluate.hpp"
#include "util/error.hpp"
#include "util/progress.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iomanip>
#include <set>
#include <sstream>

namespace mango::moe {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Tensors = std::map<std::string, at::Tensor>;

namespace {

DenseModel read_dense(const PluginHost &host, const std::string &dir) {
    DenseModel d;
    d.dir = dir;
    d.config = formats::load_hf_config(dir);
    d.table = Model::tensor_table(host, dir, true);
    const formats::Checkpoint ckpt = formats::Checkpoint::open(dir);
    for (const TensorDecl &t : d.table)
        if (!(t.flags & MANGO_TENSOR_TIED) && ckpt.contains(t.name)) d.tensors[t.name] = ckpt.tensor(t.name);
    check_source(d);
    return d;
}

// The largest mixtures have hundreds of experts a layer (DeepSeek-V3 256, Kimi K2 384).
constexpr int64_t kMaxExperts = 4096;

void check_options(const ConvertOptions &o) {
    const std::string at = " (" + o.where + ")";
    if (o.experts < 2) throw HostError("a mixture needs at least 2 experts, not " + std::to_string(o.experts) + at);
    if (o.experts > kMaxExperts)
        throw HostError("at most " + std::to_string(kMaxExperts) + " experts per layer, not " + std::to_string(o.experts) + at);
    if (o.top_k < 1 || o.top_k > o.experts)
        throw HostError("top-k must be between 1 and the number of experts (" + std::to_string(o.experts) + "), not " +
                        std::to_string(o.top_k) + at);
    if (o.every < 1) throw HostError("every must be at least 1, not " + std::to_string(o.every) + at);
    if (o.metric != "perplexity" && o.metric != "kl") throw HostError("metric must be perplexity or kl, not '" + clip(o.metric) + "'" + at);
    if (!(o.max_increase >= 0)) throw HostError("max increase must be >= 0" + at);
    if (o.rest != "base" && o.rest != "average") throw HostError("rest must be base or average, not '" + clip(o.rest) + "'" + at);
    if (o.test_sequences < 1 || o.seq_len < 2) throw HostError("test sequences must be >= 1 and the sequence length >= 2" + at);
    // Checked whether or not this run reads them (a typo must not wait for the run that uses it).
    if (!o.gate_mode.empty()) check_gate_mode(o.gate_mode, at);
    if (!o.tokenizer.empty() && !fs::exists(o.tokenizer)) throw HostError("tokenizer " + clip(o.tokenizer) + " does not exist" + at);
}

// The converted model is built in memory: the dense tensors, and each chosen layer's FFN (mlp.*) up to
// once per expert (upcycling copies it; splitting divides it). Refused before any work when that is
// more than the machine has.
void check_fits_in_memory(const DenseModel &d, const std::vector<bool> &chosen, int64_t experts) {
    double bytes = 0;
    for (const TensorDecl &t : d.table) {
        auto it = d.tensors.find(t.name);
        if (it == d.tensors.end()) continue;
        const double b = double(it->second.numel()) * double(it->second.element_size());
        const bool expert = t.role.rfind("mlp.", 0) == 0 && t.layer >= 0 && size_t(t.layer) < chosen.size() && chosen[size_t(t.layer)];
        bytes += expert ? b * double(experts) : b;
    }
    const double ram = Model::physical_memory();
    if (ram > 0 && bytes > ram)
        throw HostError(d.dir + " with " + std::to_string(experts) + " experts in each converted layer needs about " + format_bytes(bytes) +
                        " of memory, more than this machine's " + format_bytes(ram) + "; convert fewer layers or use fewer experts");
}

std::vector<bool> chosen_layers(const ConvertOptions &o, int64_t L, const std::string &dir) {
    std::vector<bool> chosen(static_cast<size_t>(L), false);
    if (!o.layers.empty()) {
        for (int32_t l : o.layers) {
            if (l < 0 || l >= L)
                throw HostError("layer " + std::to_string(l) + " is out of range: " + dir + " has " + std::to_string(L) + " layers (0.." +
                                std::to_string(L - 1) + ")");
            chosen[size_t(l)] = true;
        }
    } else {
        for (int64_t l = 0; l < L; ++l) chosen[size_t(l)] = (l + 1) % o.every == 0;
    }
    if (std::find(chosen.begin(), chosen.end(), true) == chosen.end())
        throw HostError("no layer to convert: every " + std::to_string(o.every) + " of " + std::to_string(L) + " layers chooses none");
    return chosen;
}

// Test or calibration sequences from a text file.
// Token ids for `d` must index its embedding: a tokenizer of another model gives ids past vocab_size.
const at::Tensor &check_ids(const at::Tensor &ids, const DenseModel &d, const std::string &what) {
    if (ids.numel() == 0) return ids;
    const int64_t top = ids.max().item<int64_t>(), low = ids.min().item<int64_t>();
    if (low < 0 || (d.config.vocab_size > 0 && top >= d.config.vocab_size))
        throw HostError(what + ": token ids run from " + std::to_string(low) + " to " + std::to_string(top) + ", but " + d.dir +
                        " has vocab_size " + std::to_string(d.config.vocab_size) + " (ids 0.." + std::to_string(d.config.vocab_size - 1) +
                        "); is the tokenizer this model's?");
    return ids;
}

at::Tensor sequences(const formats::Tokenizer &tok, const DenseModel &d, const std::string &path, int64_t seq_len, int64_t max_sequences) {
    DataOptions o;
    o.seq_len = seq_len;
    o.validation_fraction = 0;
    if (!d.config.eos_token_ids.empty()) o.eos_id = d.config.eos_token_ids[0];
    const PackedData p = pack(tok, read_documents(path, o), o, path);
    if (p.train.size(0) == 0)
        throw HostError(path + ": too little text for one sequence of " + std::to_string(seq_len) + " tokens (" + std::to_string(p.tokens) +
                        " tokens)");
    return check_ids(p.train.narrow(0, 0, std::min(max_sequences, p.train.size(0))), d, path);
}

// The metric of a model on the test sequences: perplexity, or the mean KL
// divergence (nats per token) from the dense model's next-token distribution.
class Tester {
public:
    Tester(at::Tensor seqs, std::string metric) : seqs_(std::move(seqs)), metric_(std::move(metric)) {}

    double measure(Model &m, bool reference = false) {
        if (metric_ == "perplexity") return evaluate(m, seqs_, kBatch).perplexity;
        at::NoGradGuard no_grad;
        m.train(false);
        double sum = 0;
        int64_t n = 0;
        for (int64_t s = 0, b = 0; s < seqs_.size(0); s += kBatch, ++b) {
            const at::Tensor ids = seqs_.narrow(0, s, std::min(kBatch, seqs_.size(0) - s));
            const at::Tensor pos = at::arange(ids.size(1), ids.options()).unsqueeze(0).expand_as(ids);
            at::Tensor logp = at::log_softmax(m.forward(ids, at::ones_like(ids), pos).to(at::kFloat), -1);
            if (reference) {
                ref_.push_back(logp);
                continue;
            }
            const at::Tensor &r = ref_.at(size_t(b));
            sum += (r.exp() * (r - logp)).sum(-1).clamp_min(0).sum().item<double>();  // >= 0 up to rounding
            n += ids.numel();
        }
        return reference ? 0.0 : sum / double(n);
    }
    // How much worse `after` is than `before`: relative for perplexity, absolute for KL.
    double increase(double before, double after) const { return metric_ == "perplexity" ? (after - before) / before : after - before; }

private:
    static constexpr int64_t kBatch = 8;
    at::Tensor seqs_;
    std::string metric_;
    std::vector<at::Tensor> ref_;
};

LayerExperts take_experts(std::map<std::string, at::Tensor> emitted, const ConvertCall &call, const std::string &where) {
    LayerExperts x;
    const int64_t H = call.up.size(1);
    auto take = [&](const std::string &name, bool required) -> at::Tensor {
        auto it = emitted.find(name);
        if (it == emitted.end()) {
            if (required) throw HostError(where + " emitted no '" + name + "'");
            return {};
        }
        at::Tensor t = it->second;
        emitted.erase(it);
        check_finite_floating(t, where, "'" + name + "'");
        return t;
    };
    x.router = take("router", true);
    if (x.router.sizes() != at::IntArrayRef{call.experts, H})
        throw HostError(where + ": router has shape " + c10::str(x.router.sizes()) + ", expected [" + std::to_string(call.experts) + ", " +
                        std::to_string(H) + "]");
    int64_t F_e = -1;
    for (int64_t e = 0; e < call.experts; ++e) {
        const std::string p = "experts." + std::to_string(e) + ".";
        at::Tensor g = take(p + "gate", call.gate.defined()), u = take(p + "up", true), dn = take(p + "down", true);
        if (F_e < 0) F_e = u.size(0);
        const bool ok = u.dim() == 2 && u.size(0) == F_e && u.size(1) == H && dn.dim() == 2 && dn.size(0) == H && dn.size(1) == F_e &&
                        (!g.defined() || g.sizes() == u.sizes()) && g.defined() == call.gate.defined();
        if (!ok)
            throw HostError(where + ": expert " + std::to_string(e) + " has gate/up/down shapes " +
                            (g.defined() ? c10::str(g.sizes()) : "-") + " " + c10::str(u.sizes()) + " " + c10::str(dn.sizes()) +
                            "; expected [F_e, " + std::to_string(H) + "] and [" + std::to_string(H) +
                            ", F_e] with one F_e for every expert");
        x.gate.push_back(g), x.up.push_back(u), x.down.push_back(dn);
        at::Tensor ub = take(p + "up_bias", call.up_bias.defined()), db = take(p + "down_bias", call.down_bias.defined());
        if ((ub.defined() && ub.sizes() != at::IntArrayRef{F_e}) || (db.defined() && db.sizes() != at::IntArrayRef{H}))
            throw HostError(where + ": expert " + std::to_string(e) + " has biases of shapes " +
                            (ub.defined() ? c10::str(ub.sizes()) : "-") + " " + (db.defined() ? c10::str(db.sizes()) : "-") +
                            "; expected [" + std::to_string(F_e) + "] and [" + std::to_string(H) + "]");
        x.up_bias.push_back(ub), x.down_bias.push_back(db);
    }
    if (!emitted.empty()) throw HostError(where + " emitted an unexpected tensor '" + clip(emitted.begin()->first) + "'");
    return x;
}

// Copies the model folder's other files (tokenizer, generation config, chat template, ...).
void copy_side_files(const std::string &from, const std::string &to) {
    for (const auto &e : fs::directory_iterator(from)) {
        if (!e.is_regular_file()) continue;
        const std::string name = e.path().filename().string();
        auto ends = [&](const std::string &tail) {
            return name.size() >= tail.size() && name.compare(name.size() - tail.size(), tail.size(), tail) == 0;
        };
        const bool weights = name.find(".safetensors") != std::string::npos || ends(".bin") || ends(".pt") || ends(".pth");
        if (weights || name == "config.json" || name == "conversion_report.json" || name[0] == '.' ||
            name.find(".mango-tmp-") != std::string::npos)
            continue;
        formats::copy_file_atomic(e.path().string(), (fs::path(to) / name).string());
    }
}

}  // namespace

ConvertResult convert(const PluginHost &host, const std::string &model_dir, const std::string &out_dir, const ConvertOptions &o) {
    const auto started = std::chrono::steady_clock::now();
    check_options(o);
    DenseModel d = read_dense(host, model_dir);
    const int64_t L = d.config.num_layers;
    const std::vector<bool> chosen = chosen_layers(o, L, model_dir);
    choose_format(o.format, d, chosen);  // fail early when the request cannot be expressed
    check_fits_in_memory(d, chosen, o.experts);

    InstanceSpec spec;
    spec.name = o.converter;
    spec.options = o.converter_options;
    spec.where = o.where;
    auto converter = MoeConverterInstance::create(host, spec);

    // Prompts, and from them the source models when none are given.
    std::vector<ExpertPrompts> prompts;
    if (!o.prompts.empty()) prompts = read_prompts(o.prompts);
    std::vector<std::string> source_dirs = o.sources;
    if (source_dirs.empty() && o.converter == "from_models")
        for (const auto &p : prompts)
            if (!p.source_model.empty()) source_dirs.push_back(p.source_model);
    std::vector<DenseModel> sources;
    for (const std::string &s : source_dirs) {
        sources.push_back(read_dense(host, s));
        for (const TensorDecl &t : d.table) {
            at::Tensor a = d.find(t.layer, t.role), b = sources.back().find(t.layer, t.role);
            if (a.defined() != b.defined() || (a.defined() && a.sizes() != b.sizes()))
                throw HostError(s + " is not a fine-tune of " + model_dir + ": tensor '" + t.name + "' differs in shape or presence");
        }
    }
    if (o.rest == "average" && !sources.empty()) {
        // BTX: everything but the experts is the mean of the source models.
        for (const TensorDecl &t : d.table) {
            if (t.flags & MANGO_TENSOR_TIED || t.role.rfind("mlp.", 0) == 0 || !d.tensors.count(t.name)) continue;
            at::Tensor sum = at::zeros_like(d.tensors[t.name], at::kFloat);
            for (const DenseModel &s : sources) sum += s.find(t.layer, t.role).to(at::kFloat);
            d.tensors[t.name] = (sum / double(sources.size())).to(d.tensors[t.name].scalar_type());
        }
    }

    std::optional<formats::Tokenizer> tok;
    const bool tested = !o.test_data.empty() || o.test_ids.defined();
    if ((!o.test_data.empty() && !o.test_ids.defined()) || (!o.calibration_data.empty() && !o.calibration_ids.defined()) ||
        !o.prompts.empty()) {
        const std::string path = o.tokenizer.empty() ? model_dir : o.tokenizer;
        tok.emplace(formats::Tokenizer::from_file(path));
    }
    std::vector<at::Tensor> calibration, directions;
    if (o.calibration_ids.defined()) {
        calibration = ffn_inputs(host, d, check_ids(o.calibration_ids, d, "calibration data"), o.calibration_tokens);
    } else if (!o.calibration_data.empty()) {
        const int64_t n = (o.calibration_tokens + o.seq_len - 1) / o.seq_len;
        calibration = ffn_inputs(host, d, sequences(*tok, d, o.calibration_data, o.seq_len, n), o.calibration_tokens);
    }
    const std::string gate_mode = o.gate_mode.empty() ? "hidden" : o.gate_mode;
    if (!prompts.empty() || gate_mode == "random" || gate_mode == "uniform_random")
        directions = prompt_router_rows(host, d, tok ? &*tok : nullptr, prompts, gate_mode, o.experts, o.seed);

    // Convert every chosen layer.
    std::map<int32_t, LayerExperts> experts;
    int64_t F_e = -1;
    {
        int64_t total = std::count(chosen.begin(), chosen.end(), true), done = 0;
        Progress bar("convert", total, o.progress);
        for (int32_t l = 0; l < L; ++l) {
            if (!chosen[size_t(l)]) continue;
            ConvertCall c;
            c.layer = l;
            c.activation = d.config.raw.value("hidden_act", d.config.raw.value("activation_function", std::string("silu")));
            auto f32 = [](const at::Tensor &t) { return t.defined() ? t.to(at::kFloat).contiguous() : t; };
            c.gate = f32(ffn_weight(d, l, "gate"));
            c.up = f32(ffn_weight(d, l, "up"));
            c.down = f32(ffn_weight(d, l, "down"));
            c.up_bias = f32(d.find(l, "mlp.up.bias"));
            c.down_bias = f32(d.find(l, "mlp.down.bias"));
            c.experts = o.experts;
            c.top_k = o.top_k;
            if (!calibration.empty()) c.hidden_states = calibration[size_t(l)];
            if (!directions.empty()) c.expert_directions = directions[size_t(l)];
            for (const DenseModel &s : sources) {
                c.source_gate.push_back(f32(ffn_weight(s, l, "gate")));
                c.source_up.push_back(f32(ffn_weight(s, l, "up")));
                c.source_down.push_back(f32(ffn_weight(s, l, "down")));
            }
            c.seed = o.seed * 1000003ULL + uint64_t(l);
            const std::string where = "converter '" + o.converter + "' on layer " + std::to_string(l) + " of " + model_dir;
            LayerExperts x = take_experts(converter->convert(c), c, where);
            if (F_e < 0) F_e = x.up[0].size(0);
            if (x.up[0].size(0) != F_e)
                throw HostError(where + ": experts have " + std::to_string(x.up[0].size(0)) + " neurons, other layers' " +
                                std::to_string(F_e) + " (a MoE config has one expert size)");
            experts[l] = std::move(x);
            bar.update(++done, "layer " + std::to_string(l));
        }
        bar.finish(std::to_string(total) + " layers converted");
    }

    // A model of the dense one with `sparse` layers converted, in memory.
    auto build = [&](const std::vector<bool> &sparse, const std::string &format) {
        std::map<int32_t, LayerExperts> use;
        for (const auto &[l, x] : experts)
            if (sparse[size_t(l)]) use[l] = x;
        const json cfg = moe_config(format, d, sparse, o.experts, o.top_k, F_e);
        auto tensors = moe_tensors(host, cfg, d, use);
        return std::make_pair(cfg, tensors);
    };

    ConvertResult r;
    r.experts = o.experts;
    r.top_k = o.top_k;
    r.metric = tested ? o.metric : "";
    std::vector<bool> sparse(static_cast<size_t>(L), false);
    if (!tested) {
        sparse = chosen;
        for (int32_t l = 0; l < L; ++l)
            if (chosen[size_t(l)]) r.layers.push_back({l, true, 0, 0});
    } else {
        Tester tester(o.test_ids.defined()
                          ? check_ids(o.test_ids.narrow(0, 0, std::min(o.test_sequences, o.test_ids.size(0))), d, "test data")
                          : sequences(*tok, d, o.test_data, o.seq_len, o.test_sequences),
                      o.metric);
        auto dense_model = Model::from_tensors(host, d.config.raw, std::make_shared<const Tensors>(d.tensors), model_dir);
        r.dense_metric = o.metric == "kl" ? (tester.measure(*dense_model, true), 0.0) : tester.measure(*dense_model);
        dense_model.reset();
        double current = r.dense_metric;
        int64_t total = std::count(chosen.begin(), chosen.end(), true), done = 0;
        Progress bar("test", total, o.progress);
        for (int32_t l = 0; l < L; ++l) {
            if (!chosen[size_t(l)]) continue;
            std::vector<bool> candidate = sparse;
            candidate[size_t(l)] = true;
            // Layers in between are tested as Qwen2-MoE (dense layers allowed), whatever the final format.
            const bool all = std::find(candidate.begin(), candidate.end(), false) == candidate.end();
            const std::string format = all ? choose_format(o.format, d, candidate) : llama_style(d) ? "qwen2_moe" : "mango";
            auto [cfg, named] = build(candidate, format);
            auto model = Model::from_tensors(host, cfg, std::make_shared<const Tensors>(named.begin(), named.end()),
                                             out_dir + " (layer " + std::to_string(l) + " converted)");
            const double after = tester.measure(*model);
            const bool keep = tester.increase(current, after) <= o.max_increase;
            r.layers.push_back({l, keep, current, after});
            if (keep) {
                sparse = candidate;
                current = after;
            }
            bar.update(++done, "layer " + std::to_string(l) + (keep ? " kept" : " reverted"));
        }
        r.final_metric = current;
        bar.finish(std::to_string(std::count(sparse.begin(), sparse.end(), true)) + " of " + std::to_string(total) + " layers kept");
    }
    if (std::find(sparse.begin(), sparse.end(), true) == sparse.end())
        throw HostError("every converted layer was reverted by the test (" + o.metric + " rose by more than " +
                        format_fixed(o.max_increase, 4) + " each time): nothing written; raise --max-increase or change the converter\n" +
                        outcome_table(r));
    r.format = choose_format(o.format, d, sparse);
    auto [cfg, named] = build(sparse, r.format);

    std::vector<std::string> inputs = {model_dir};
    for (const auto &s : source_dirs) inputs.push_back(s);
    formats::OutputFolder folder(out_dir, o.force, inputs);
    if (o.keep_other_files) folder.keep_other_files();
    r.out_dir = folder.target();
    formats::write_checkpoint(folder.path(), named, uint64_t(5e9), {{"format", "pt"}, {"mango", "convert-moe"}});
    copy_side_files(model_dir, folder.path());
    formats::write_file_atomic((fs::path(folder.path()) / "config.json").string(), cfg.dump(2) + "\n");
    json report = {{"source", model_dir},
                   {"converter", o.converter},
                   {"converter_options", o.converter_options},
                   {"format", r.format},
                   {"experts", o.experts},
                   {"top_k", o.top_k},
                   {"expert_intermediate_size", F_e},
                   {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count()},
                   {"layers", json::array()}};
    if (tested)
        report.update({{"metric", o.metric}, {"max_increase", o.max_increase}, {"dense", r.dense_metric}, {"final", r.final_metric}});
    for (const LayerOutcome &x : r.layers)
        report["layers"].push_back(!tested
                                       ? json{{"layer", x.layer}, {"converted", x.converted}}
                                       : json{{"layer", x.layer}, {"converted", x.converted}, {"before", x.before}, {"after", x.after}});
    formats::write_file_atomic((fs::path(folder.path()) / "conversion_report.json").string(), report.dump(2) + "\n");
    Model::refuse_unloadable(host, folder.path(), r.out_dir, "converted");
    folder.commit();
    return r;
}

std::string outcome_table(const ConvertResult &r) {
    std::ostringstream s;
    const bool tested = !r.metric.empty();
    s << std::left << std::setw(7) << "layer" << std::setw(11) << "outcome";
    if (tested) s << std::right << std::setw(12) << (r.metric + " before") << std::setw(12) << "after";
    s << "\n";
    for (const LayerOutcome &x : r.layers) {
        s << std::left << std::setw(7) << x.layer << std::setw(11) << (x.converted ? "converted" : "reverted");
        if (tested) s << std::right << std::setw(12) << format_fixed(x.before, 4) << std::setw(12) << format_fixed(x.after, 4);
        s << "\n";
    }
    if (tested)
        s << (r.metric == "kl" ? "KL from the dense model: " : "perplexity: dense ") + format_fixed(r.dense_metric, 4) + ", converted " +
                 format_fixed(r.final_metric, 4) + "\n";
    return s.str();
}

}  // namespace mango::moe
