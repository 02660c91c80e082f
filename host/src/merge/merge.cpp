#include "merge/merge.hpp"

#include "abi/device.hpp"
#include "formats/atomic_file.hpp"
#include "formats/shard_writer.hpp"
#include "merge/lora.hpp"
#include "merge/tokenizer_merge.hpp"
#include "model/model.hpp"
#include "util/logging.hpp"
#include "util/progress.hpp"

#include <mango/registry/options.hpp>

#include <ATen/ATen.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>

namespace mango::merge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct InputModel {
    std::string ref, dir;
    std::shared_ptr<const LoraAdapter> lora;  // "MODEL+LORA": applied to each tensor as it is read
    std::string label() const { return lora ? dir + "+" + lora->dir() : dir; }
    formats::HfConfig config;
    std::shared_ptr<formats::Checkpoint> ckpt;
    std::map<std::pair<int32_t, std::string>, TensorDecl> by_role;
};

// One output tensor and where its values come from.
struct Planned {
    std::string name, role;
    int32_t layer = -1;
    bool is_embed = false, optional = false;
    bool float32 = false;                                 // MANGO_TENSOR_F32: merged and written in float32 whatever the dtypes asked
    std::vector<std::pair<size_t, std::string>> sources;  // (model, input tensor name)
    std::vector<const Source *> source_defs;              // their configuration entries
    int32_t base = -1;                                    // index into sources
    double t = 0;
    const Slice *slice = nullptr;
};

at::ScalarType dtype_named(const std::string &d) {
    if (d == "float32") return at::kFloat;
    if (d == "bfloat16") return at::kBFloat16;
    return at::kHalf;
}

std::string dtype_text(at::ScalarType t) {
    return t == at::kFloat ? "float32" : t == at::kBFloat16 ? "bfloat16" : t == at::kHalf ? "float16" : c10::toString(t);
}

bool is_vocab_role(const std::string &role) { return role == "embed.tokens.weight" || role == "lm_head.weight"; }

json schema_of(const std::string &text) {
    return text.empty() ? json{{"type", "object"}, {"properties", json::object()}} : json::parse(text);
}

// A value as the schema's type expects it, with mergekit's leniency: booleans
// and numbers stand for each other (true = 1.0), integral floats for integers.
json coerce(const json &v, const json &spec) {
    const std::string type = spec.value("type", "");
    if (type == "boolean" && v.is_number()) return v.get<double>() != 0;
    if (type == "number" && v.is_boolean()) return v.get<bool>() ? 1.0 : 0.0;
    if (type == "integer" && v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()) return int64_t(v.get<double>());
    return v;
}

class Planner {
public:
    Planner(const PluginHost &host, const Config &c, const Options &o) : host_(host), c_(c), o_(o) {}

    void plan() {
        try {
            method_ = &host_.require("merge", c_.method);
        } catch (const HostError &e) {
            throw HostError(c_.method_where + ": merge_method: " + e.what());
        }
        global_schema_ = schema_of(method_->options_schema);
        model_schema_ = schema_of(method_->model_options_schema);
        model_schema_base_ = model_schema_;
        model_schema_base_.erase("required");  // the base model is never required to give per-model parameters
        check_parameter_names();
        // Models, in the order the configuration names them.
        if (!c_.base_model.empty()) base_ = model(c_.base_model, c_.base_where);
        for (const Slice &s : c_.slices)
            for (const Source &src : s.sources) model(src.model, src.where);
        if (method_->needs_base && c_.base_model.empty())
            throw HostError(c_.method_where + ": merge method '" + c_.method +
                            "' needs a base_model (the model the others are fine-tunes of)");
        // `models:` syntax: every layer of every model; the base joins as a source when it is not listed (as in mergekit).
        slices_ = c_.slices;
        if (!c_.slices_syntax) {
            Slice &s = slices_[0];
            if (!c_.base_model.empty() &&
                std::none_of(s.sources.begin(), s.sources.end(), [&](const Source &x) { return int64_t(index_of(x.model)) == base_; })) {
                Source b;
                b.model = c_.base_model;
                b.where = c_.base_where;
                s.sources.push_back(b);
            }
            for (Source &src : s.sources) {
                src.start = 0;
                src.end = models_[index_of(src.model)].config.num_layers;
            }
            for (const Source &src : s.sources)
                if (src.end != s.sources[0].end)
                    throw HostError(src.where + ": " + src.model + " has " + std::to_string(src.end) + " layers and " + s.sources[0].model +
                                    " " + std::to_string(s.sources[0].end) +
                                    "; models merged layer by layer need the same depth (use slices for others)");
        }
        for (const Slice &s : slices_)
            for (const Source &src : s.sources) {
                const InputModel &m = models_[index_of(src.model)];
                if (src.end > m.config.num_layers)
                    throw HostError(src.where + ": layer_range [" + std::to_string(src.start) + ", " + std::to_string(src.end) +
                                    ") is out of bounds for " + m.dir + " (" + std::to_string(m.config.num_layers) + " layers: 0.." +
                                    std::to_string(m.config.num_layers - 1) + ")");
            }
        donor_ = base_ >= 0 ? size_t(base_) : index_of(slices_[0].sources[0].model);
        const InputModel &donor = models_[donor_];
        for (const InputModel &m : models_)
            if (m.config.model_type != donor.config.model_type)
                throw HostError(c_.file + ": the models have different architectures: " + donor.dir + " is " + donor.config.model_type +
                                ", " + m.dir + " is " + m.config.model_type);
        // The output's config and tensor table.
        out_config_ = donor.config.raw;
        out_layers_ = 0;
        for (const Slice &s : slices_) out_layers_ += s.sources[0].end - s.sources[0].start;
        if (c_.slices_syntax) {
            bool set = false;
            for (const char *k : {"num_hidden_layers", "n_layer", "num_layers", "n_layers"})
                if (out_config_.contains(k)) out_config_[k] = out_layers_, set = true;
            if (!set) out_config_["num_hidden_layers"] = out_layers_;
        }
        const formats::HfConfig out_cfg = formats::parse_hf_config(out_config_.dump(), "the merged model's config.json");
        const std::vector<TensorDecl> out_table = Model::tensor_table(host_, out_cfg, nullptr, "the merged model");
        // Output layer -> (slice, offset).
        std::vector<std::pair<const Slice *, int64_t>> at_layer;
        for (const Slice &s : slices_)
            for (int64_t o = 0; o < s.sources[0].end - s.sources[0].start; ++o) at_layer.push_back({&s, o});
        std::vector<const TensorDecl *> pre, layers, post;
        for (const TensorDecl &d : out_table) {
            if (d.flags & MANGO_TENSOR_TIED) continue;  // the output config says it is tied: not stored
            if (d.layer >= 0)
                layers.push_back(&d);
            else
                (d.role.rfind("embed.", 0) == 0 ? pre : post).push_back(&d);
        }
        std::stable_sort(layers.begin(), layers.end(), [](auto *a, auto *b) { return a->layer < b->layer; });
        for (auto *d : pre) add(*d, &slices_.front(), 0, 0);
        for (auto *d : layers) {
            const auto [s, offset] = at_layer.at(size_t(d->layer));
            const int64_t L = s->sources[0].end - s->sources[0].start;
            add(*d, s, offset, L > 1 ? double(offset) / double(L - 1) : 1.0);
        }
        for (auto *d : post) add(*d, &slices_.back(), 0, 0);
    }

    // Parameters of one output tensor: the globals, and each source's.
    std::pair<json, std::vector<json>> parameters(const Planned &p) const {
        const Slice &s = *p.slice;
        auto first = [&](const std::vector<const Settings *> &levels, const std::string &key, const std::string &tensor) -> json {
            for (const Settings *level : levels) {
                if (!level) continue;
                auto it = level->find(key);
                if (it == level->end()) continue;
                json v = evaluate(it->second, tensor, p.t);
                if (!v.is_null()) return v;
            }
            return nullptr;
        };
        const std::string where = s.where + ": tensor '" + p.name + "'";
        json globals = json::object();
        for (const auto &[key, spec] : global_schema_["properties"].items()) {
            json v = first({&s.parameters, &c_.parameters}, key, p.name);
            if (!v.is_null()) globals[key] = coerce(v, spec);
        }
        json resolved;
        try {
            resolved = registry::resolve_options(method_->options_schema, globals, where + ": merge method '" + c_.method + "'");
        } catch (const std::invalid_argument &e) {
            throw HostError(e.what());
        }
        std::vector<json> per_model;
        for (size_t i = 0; i < p.sources.size(); ++i) {
            const Source *src = p.source_defs[i];
            const std::string &input = p.sources[i].second;
            json given = json::object();
            for (const auto &[key, spec] : model_schema_["properties"].items()) {
                json v = first({src ? &src->parameters : nullptr, &s.parameters, &c_.parameters}, key, input);
                if (!v.is_null()) given[key] = coerce(v, spec);
            }
            const bool is_base = int32_t(i) == p.base;
            try {
                per_model.push_back(registry::resolve_options(
                    is_base ? model_schema_base_.dump() : model_schema_.dump(), given,
                    (src ? src->where : s.where) + ": tensor '" + p.name + "' of " + models_[p.sources[i].first].ref));
            } catch (const std::invalid_argument &e) {
                throw HostError(e.what());
            }
        }
        return {resolved, per_model};
    }

    int64_t base_index() const { return base_; }
    const registry::ComponentInfo &method() const { return *method_; }
    std::vector<InputModel> models_;
    std::vector<Planned> planned_;
    std::vector<Slice> slices_;
    json out_config_;
    int64_t out_layers_ = 0;
    size_t donor_ = 0;
    int64_t skipped_ = 0;

    // The input model `ref` names, however it is written (another relative path, an absolute one,
    // an alias of the same folder); -1 when it is none of them.
    int64_t find(const std::string &ref) const {
        if (auto it = refs_.find(ref); it != refs_.end()) return int64_t(it->second);
        try {
            const auto [dir, lora_dir] = resolve(ref, "");
            return opened(dir, lora_dir);
        } catch (const HostError &) {
            return -1;
        }
    }

private:
    size_t index_of(const std::string &ref) const {
        auto it = refs_.find(ref);
        if (it == refs_.end()) throw HostError("internal: model '" + ref + "' was not opened");
        return it->second;
    }

    // The first of REF and the YAML's folder / REF that is a folder holding `marker`, made absolute; "" if none.
    std::string find_folder(const std::string &ref, const char *marker) const {
        for (const fs::path &p : {fs::path(ref), fs::path(c_.dir) / ref}) {
            if (!fs::is_directory(p) || !fs::exists(p / marker)) continue;
            fs::path dir = fs::absolute(p).lexically_normal();
            if (!dir.has_filename()) dir = dir.parent_path();  // "a/" and "a/." are "a": one model, however written
            return dir.string();
        }
        return "";
    }

    // A model reference's folder, and its LoRA adapter's for "MODEL+LORA" (mergekit's syntax).
    std::pair<std::string, std::string> resolve(const std::string &ref, const std::string &where) const {
        if (auto it = o_.aliases.find(ref); it != o_.aliases.end()) return {it->second, ""};
        if (std::string dir = find_folder(ref, "config.json"); !dir.empty()) return {dir, ""};
        const size_t plus = ref.find('+');
        if (plus != std::string::npos && plus > 0 && ref.find('+', plus + 1) == std::string::npos) {
            const std::string lora = ref.substr(plus + 1), lora_dir = find_folder(lora, "adapter_config.json");
            if (lora_dir.empty())
                throw HostError(where + ": LoRA '" + clip(lora) + "' of '" + clip(ref) +
                                "': no folder holding adapter_config.json (looked in " + fs::absolute(lora).lexically_normal().string() +
                                " and " + (fs::path(c_.dir) / lora).lexically_normal().string() + ")");
            return {resolve(ref.substr(0, plus), where).first, lora_dir};
        }
        for (const fs::path &p : {fs::path(ref), fs::path(c_.dir) / ref})
            if (fs::is_directory(p))
                throw HostError(where + ": " + fs::absolute(p).lexically_normal().string() +
                                " is not a model folder (it has no config.json)");
        std::string hint = ref.find('@') != std::string::npos ? " (model@revision references need the hub; give a local folder)" : "";
        throw HostError(where + ": model '" + clip(ref) + "': no such folder (looked in " + fs::absolute(ref).lexically_normal().string() +
                        " and " + (fs::path(c_.dir) / ref).lexically_normal().string() +
                        "); Mango merges local Hugging Face folders, there is no model hub here" + hint);
    }

    // The opened model of this folder and adapter ("" for none), or -1.
    int64_t opened(const std::string &dir, const std::string &lora_dir) const {
        for (size_t i = 0; i < models_.size(); ++i)
            if (models_[i].dir == dir && (models_[i].lora ? models_[i].lora->dir() : "") == lora_dir) return int64_t(i);
        return -1;
    }

    int64_t model(const std::string &ref, const std::string &where) {
        if (auto it = refs_.find(ref); it != refs_.end()) return int64_t(it->second);
        InputModel m;
        m.ref = ref;
        const auto [dir, lora_dir] = resolve(ref, where);
        m.dir = dir;
        if (const int64_t i = opened(dir, lora_dir); i >= 0) return int64_t(refs_[ref] = size_t(i));
        try {
            m.config = formats::load_hf_config(m.dir);
            m.ckpt = std::make_shared<formats::Checkpoint>(formats::Checkpoint::open(m.dir));
        } catch (const std::exception &e) {
            throw HostError(where + ": " + e.what());
        }
        auto ckpt = m.ckpt;
        std::set<std::string> in_out;  // weights stored [in, out] (a ".T" role: GPT-2's Conv1D)
        for (TensorDecl &d : Model::tensor_table(
                 host_, m.config, [ckpt](const std::string &n) { return ckpt->contains(n); }, m.dir)) {
            if (d.role.size() > 2 && d.role.compare(d.role.size() - 2, 2, ".T") == 0) in_out.insert(d.name);
            m.by_role[{d.layer, d.role}] = d;
        }
        if (!lora_dir.empty()) try {
                m.lora = LoraAdapter::open(lora_dir, [&](const std::string &name) { return in_out.count(name) > 0; });
                m.lora->check_fits(*m.ckpt, m.dir);
            } catch (const std::exception &e) {
                throw HostError(where + ": " + e.what());
            }
        refs_[ref] = models_.size();
        models_.push_back(std::move(m));
        return int64_t(models_.size() - 1);
    }

    void check_parameter_names() const {
        std::set<std::string> known;
        for (const auto &[k, _] : global_schema_["properties"].items()) known.insert(k);
        std::set<std::string> per_model;
        for (const auto &[k, _] : model_schema_["properties"].items()) known.insert(k), per_model.insert(k);
        auto check = [&](const Settings &s, const std::string &where, bool model_level) {
            for (const auto &[k, _] : s) {
                if (!known.count(k)) {
                    std::string list;
                    for (const auto &x : known) list += (list.empty() ? "" : ", ") + x;
                    throw HostError(where + ": merge method '" + c_.method + "' has no parameter '" + clip(k) +
                                    "' (its parameters: " + (list.empty() ? "none" : list) + ")");
                }
                if (model_level && !per_model.count(k))
                    throw HostError(where + ": '" + k + "' is a global parameter of '" + c_.method +
                                    "'; set it under the top-level or the slice's parameters, not per model");
            }
        };
        check(c_.parameters, c_.file, false);
        for (const Slice &s : c_.slices) {
            check(s.parameters, s.where, false);
            for (const Source &src : s.sources) check(src.parameters, src.where, true);
        }
    }

    // The input tensor of model m for role `role` at input layer `layer` ("" when it has none).
    std::string input_name(const InputModel &m, int32_t layer, const std::string &role) const {
        auto it = m.by_role.find({layer, role});
        if (it == m.by_role.end()) return "";
        const TensorDecl &d = it->second;
        const std::string name = (d.flags & MANGO_TENSOR_TIED) ? d.tied_to : d.name;  // a tied head reads the embedding
        return m.ckpt->contains(name) ? name : "";
    }

    void add(const TensorDecl &d, const Slice *s, int64_t offset, double t) {
        Planned p;
        p.name = d.name;
        p.role = d.role;
        p.layer = d.layer;
        p.is_embed = is_vocab_role(d.role);
        p.optional = (d.flags & MANGO_TENSOR_OPTIONAL) != 0 || d.role == "lm_head.weight";
        p.float32 = (d.flags & MANGO_TENSOR_F32) != 0;
        p.t = t;
        p.slice = s;
        const std::string &base_ref = s->base_model.empty() ? c_.base_model : s->base_model;
        const int64_t base = base_ref.empty() ? -1 : refs_.at(base_ref);
        for (const Source &src : s->sources) {
            const size_t mi = index_of(src.model);
            const int32_t in_layer = d.layer < 0 ? -1 : int32_t(src.start + offset);
            const std::string name = input_name(models_[mi], in_layer, d.role);
            if (name.empty()) {
                if (p.optional) continue;
                throw HostError(src.where + ": " + models_[mi].dir + " has no tensor for '" + d.name + "' (role " + d.role +
                                (in_layer >= 0 ? ", layer " + std::to_string(in_layer) : "") + ")");
            }
            if (int64_t(mi) == base) p.base = int32_t(p.sources.size());
            p.sources.push_back({mi, name});
            p.source_defs.push_back(&src);
        }
        if (p.sources.empty()) {
            ++skipped_;  // optional, and no model has it (e.g. every model ties its head)
            return;
        }
        if (method_->needs_base && p.base < 0)
            throw HostError(s->where + ": tensor '" + d.name + "': the base model " + base_ref +
                            " is not among the sources that hold it; merge method '" + c_.method + "' needs it");
        planned_.push_back(std::move(p));
    }

    const PluginHost &host_;
    const Config &c_;
    const Options &o_;
    const registry::ComponentInfo *method_ = nullptr;
    json global_schema_, model_schema_, model_schema_base_;
    std::map<std::string, size_t> refs_;
    int64_t base_ = -1;
};

// FNV-1a of the seed and a tensor name: the random stream of that tensor.
uint64_t tensor_seed(uint64_t seed, const std::string &name) {
    uint64_t h = 1469598103934665603ULL ^ seed;
    for (unsigned char ch : name) h = (h ^ ch) * 1099511628211ULL;
    return h;
}

// The merged tokenizer's vocabulary and each model's rows on it (tokenizer.tokens resolved).
VocabPlan vocabulary_plan(const Planner &plan, const Config &config) {
    std::vector<VocabModel> models;
    for (const InputModel &m : plan.models_) models.push_back({m.dir, m.config.vocab_size});
    return plan_vocabulary(config, models, plan.base_index(), plan.donor_, [&](const std::string &ref) { return plan.find(ref); });
}

}  // namespace

Result check(const PluginHost &host, const Config &config, const Options &options) {
    Planner p(host, config, options);
    p.plan();
    for (const Planned &t : p.planned_) p.parameters(t);  // every parameter of every tensor resolves
    vocabulary_plan(p, config);                           // and every tokenizer.tokens entry
    Result r;
    r.method = config.method;
    r.tensors = int64_t(p.planned_.size());
    r.skipped = p.skipped_;
    r.layers = p.out_layers_;
    for (const auto &m : p.models_) r.models.push_back(m.label());
    return r;
}

Result run(const PluginHost &host, const Config &config, const std::string &out_dir_in, const Options &options) {
    const auto started = std::chrono::steady_clock::now();
    const at::Device device = parse_device(options.device, "merge");
    require_device(device, "merge");
    Planner plan(host, config, options);
    plan.plan();
    for (const Planned &t : plan.planned_) plan.parameters(t);  // fail before writing anything

    std::vector<std::string> inputs;  // folders the output must not replace or lie in
    for (const InputModel &m : plan.models_) {
        inputs.push_back(m.dir);
        if (m.lora) inputs.push_back(m.lora->dir());
    }
    formats::OutputFolder folder(out_dir_in, options.force, inputs);
    if (options.keep_other_files) folder.keep_other_files();
    const fs::path out = folder.target();
    const std::string tmp = folder.path();

    Result r;
    r.out_dir = out.string();
    r.method = config.method;
    r.layers = plan.out_layers_;
    r.skipped = plan.skipped_;
    for (const auto &m : plan.models_) r.models.push_back(m.label());
    {
        const std::string dtype_name = options.dtype.empty() ? config.dtype : options.dtype;
        InstanceSpec spec;
        spec.name = config.method;
        spec.where = config.method_where;
        auto method = MergeInstance::create(host, spec);
        const VocabPlan vocab = vocabulary_plan(plan, config);
        std::vector<formats::ShardWriter::Planned> names;
        for (const Planned &p : plan.planned_)
            names.push_back({p.name, plan.models_[p.sources[0].first].ckpt->entry(p.sources[0].second).shape.size()});
        formats::ShardWriter writer(tmp, options.max_shard_bytes, names, {{"format", "pt"}, {"mango", "merge"}});
        Progress bar("merge " + config.method, int64_t(plan.planned_.size()), options.progress);
        at::ScalarType out_dtype = at::kFloat;
        bool out_dtype_set = false;
        int64_t embed_rows = -1;
        for (size_t i = 0; i < plan.planned_.size(); ++i) {
            if (cancel_requested()) throw HostError("merge cancelled; nothing was written to " + out.string());
            const Planned &p = plan.planned_[i];
            auto [globals, per_model] = plan.parameters(p);
            MergeCall call;
            call.name = p.name;
            call.role = p.role;
            call.layer = p.layer;
            call.is_embed = p.is_embed;
            call.base = p.base;
            call.options = globals;
            call.model_options = per_model;
            call.seed = tensor_seed(options.seed, p.name);
            const size_t first = p.base >= 0 ? size_t(p.base) : 0;
            at::ScalarType compute = at::kFloat;
            for (size_t k = 0; k < p.sources.size(); ++k) {
                const InputModel &m = plan.models_[p.sources[k].first];
                at::Tensor t = m.ckpt->tensor(p.sources[k].second);
                if (m.lora) t = m.lora->apply(p.sources[k].second, t);
                if (!t.is_floating_point())
                    throw HostError(m.dir + ": tensor '" + p.sources[k].second + "' has dtype " + c10::toString(t.scalar_type()) +
                                    "; merging takes floating-point weights");
                r.bytes_read += t.nbytes();
                call.models.push_back(t);
            }
            compute = p.float32 ? at::kFloat : dtype_name.empty() ? call.models[first].scalar_type() : dtype_named(dtype_name);
            // LibTorch's CPU kernels lack float16 versions of ops several methods use (kthvalue, softmax,
            // clamp_min): there the math runs in float32, and the result is rounded to float16 as it is written.
            const at::ScalarType math = compute == at::kHalf && device.is_cpu() ? at::kFloat : compute;
            for (at::Tensor &t : call.models) t = t.to(device, math);
            if (p.is_embed && vocab.active) {  // every model's rows on the merged tokenizer's ids
                std::vector<size_t> ids;
                for (const auto &src : p.sources) ids.push_back(src.first);
                call.models = permute_rows(vocab, call.models, ids, p.base, p.name);
            }
            if (!p.is_embed)
                for (size_t k = 1; k < call.models.size(); ++k)
                    if (!call.models[k].sizes().equals(call.models[0].sizes()))
                        throw HostError("tensor '" + p.name + "' has shape " + c10::str(call.models[0].sizes()) + " in " +
                                        plan.models_[p.sources[0].first].dir + " and " + c10::str(call.models[k].sizes()) + " in " +
                                        plan.models_[p.sources[k].first].dir);
            at::Tensor merged;
            const auto tensor_start = std::chrono::steady_clock::now();
            {
                at::NoGradGuard no_grad;
                merged = method->merge(call);
            }
            log_message(
                1, "merge: " + p.name + " " + c10::str(call.models[0].sizes()) + " in " +
                       format_fixed(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - tensor_start).count(), 1) +
                       " ms");
            if (!merged.defined()) {
                if (p.optional) {
                    ++r.skipped;
                    bar.update(int64_t(i + 1), p.name + " (no value: skipped)");
                    continue;
                }
                throw HostError(config.method_where + ": merge method '" + config.method + "' gave no value for tensor '" + p.name + "' (" +
                                std::to_string(p.sources.size()) + " models hold it)");
            }
            check_finite_floating(merged, config.method_where + ": merge method '" + config.method + "'", "tensor '" + p.name + "'");
            if (!p.is_embed && !merged.sizes().equals(call.models[0].sizes()))
                throw HostError(config.method_where + ": merge method '" + config.method + "' returned shape " + c10::str(merged.sizes()) +
                                " for '" + p.name + "', expected " + c10::str(call.models[0].sizes()));
            const at::ScalarType target = p.float32 || config.out_dtype.empty() ? compute : dtype_named(config.out_dtype);
            if (!out_dtype_set && !p.float32) out_dtype = target, out_dtype_set = true;
            if (p.role == "embed.tokens.weight" && merged.dim() == 2) embed_rows = merged.size(0);
            writer.add(p.name, merged.to(at::kCPU, target));
            ++r.tensors;
            if (options.on_tensor) options.on_tensor(p.name, r.bytes_read, writer.bytes());
            const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
            bar.update(int64_t(i + 1), format_fixed(double(r.bytes_read) / 1e9 / std::max(s, 1e-9), 2) + " GB/s in");
        }
        r.files = writer.finish();
        r.bytes_written = writer.bytes();
        // config.json: the donor's, with the merged depth, dtype and vocabulary.
        json cfg = plan.out_config_;
        if (out_dtype_set && (!config.out_dtype.empty() || !dtype_name.empty())) {
            if (cfg.contains("dtype")) cfg["dtype"] = dtype_text(out_dtype);
            if (cfg.contains("torch_dtype") || !cfg.contains("dtype")) cfg["torch_dtype"] = dtype_text(out_dtype);
        }
        const InputModel &donor = plan.models_[plan.donor_];
        if (embed_rows > 0 && cfg.value("vocab_size", embed_rows) != embed_rows) cfg["vocab_size"] = embed_rows;
        formats::write_file_atomic((fs::path(tmp) / "config.json").string(), cfg.dump(2) + "\n");
        write_tokenizer(vocab, donor.dir, tmp);
        if (fs::exists(fs::path(donor.dir) / "generation_config.json"))
            formats::copy_file_atomic((fs::path(donor.dir) / "generation_config.json").string(),
                                      (fs::path(tmp) / "generation_config.json").string());
        apply_chat_template(config, tmp, [&] {
            std::vector<std::string> dirs;
            for (const InputModel &m : plan.models_) dirs.push_back(m.dir);
            return dirs;
        }());
        formats::write_file_atomic((fs::path(tmp) / "mergekit_config.yml").string(), config.text);
        r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        bar.finish(std::to_string(r.tensors) + " tensors, " + format_fixed(double(r.bytes_written) / 1e9, 2) + " GB written in " +
                   format_duration(r.seconds));
    }
    Model::refuse_unloadable(host, tmp, out.string(), "merged");
    folder.commit();
    for (std::string &f : r.files) f = (out / fs::path(f).filename()).string();
    return r;
}

}  // namespace mango::merge
