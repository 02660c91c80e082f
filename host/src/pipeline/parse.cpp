// Pipeline::parse: TOML -> PipelineSpec, validated before anything runs.
#include "toml_reader.hpp"

#include "abi/device.hpp"
#include "formats/hf_config.hpp"
#include "formats/tokenizer.hpp"
#include <mango/registry/options.hpp>

#include "merge/merge_config.hpp"

#include <fstream>
#include <map>
#include <set>
#include <sstream>

namespace mango {

using namespace pipeline;
namespace fs = std::filesystem;

namespace {

// fs::exists without throwing: a name too long or a path through a file is
// simply not there (the message that follows names it).
bool path_exists(const fs::path &p) {
    std::error_code ec;
    return fs::exists(p, ec);
}

// A step that names its `output` replaces that folder when it runs. One that holds a model (an earlier
// run's output: config.json) is replaced, its other files kept; any other existing path is refused, so
// a mistyped output never deletes a user's folder.
void check_step_output(const Table &t, const std::string &path) {
    const fs::path p(path);
    if (!path_exists(p)) return;
    std::error_code ec;
    if (fs::is_directory(p, ec) && (path_exists(p / "config.json") || fs::is_empty(p, ec))) return;
    throw PipelineError(t.at("output") + ": output \"" + clip(path) +
                        "\" exists and holds no model (no config.json); a step replaces its output folder, so name a new folder "
                        "or remove this one");
}

InstanceSpec plugin_spec(const PluginHost &host, Table t, const std::string &kind) {
    InstanceSpec s;
    s.where = t.here();
    s.name = t.required_string("name");
    if (const toml::node *o = t.get("options")) {
        if (!o->is_table()) throw PipelineError(t.at("options") + ": expected a table of options");
        s.options = to_json(*o);
    } else {
        s.options = nlohmann::json::object();
    }
    t.finish();
    const registry::ComponentInfo *info = nullptr;
    try {
        info = &host.require(kind, s.name);
    } catch (const std::exception &e) {
        throw PipelineError(t.at("name") + ": " + e.what());
    }
    try {
        registry::resolve_options(info->options_schema, s.options, t.at("options") + ": " + kind + " '" + s.name + "'");
    } catch (const std::exception &e) {
        throw PipelineError(e.what());
    }
    return s;
}

at::Device device_named(const std::string &s, const std::string &where) {
    try {
        return mango::parse_device(s, where);
    } catch (const HostError &e) {
        throw PipelineError(e.what());
    }
}

at::ScalarType parse_dtype(const std::string &s, const std::string &where) {
    if (s == "float32") return at::kFloat;
    if (s == "bfloat16") return at::kBFloat16;
    if (s == "float16") return at::kHalf;
    throw PipelineError(where + ": dtype must be float32, bfloat16 or float16, not \"" + clip(s) + "\"");
}

// "defined: a, b, c", for errors about a name that is not one of them.
std::string defined(const std::vector<std::string> &known) {
    std::string all;
    for (const auto &k : known) all += (all.empty() ? "" : ", ") + k;
    return all.empty() ? "none are defined" : "defined: " + all;
}

struct Names {
    std::vector<std::string> models, data;
    std::map<std::string, const ModelDef *> defs;
};

// Data sets: [data.NAME] path = FILE | mix = [NAMES].
void read_data(PipelineSpec &spec, Table data) {
    std::vector<std::string> names = data.keys();
    for (const std::string &name : names) {
        Table t = *data.table(name);
        DataDef d;
        d.name = name;
        d.where = t.here();
        d.options.seq_len = t.integer("seq_len", 128, 2);
        d.options.validation_fraction = t.number("validation", 0.1, 0, 0.99);
        d.options.line_documents = t.boolean("line_documents", false);
        d.options.jsonl_field = t.string("jsonl_field", "text");
        d.max_documents = t.integer("max_documents", 0, 0);
        d.mix = t.strings("mix");
        auto path = t.path("path");
        if (path.has_value() == !d.mix.empty())
            throw PipelineError(t.here() + ": give exactly one of 'path' (a .txt or .jsonl file) or 'mix' (names of other data sets)");
        if (path) {
            d.path = *path;
            if (!path_exists(d.path)) throw PipelineError(t.at("path") + ": " + d.path + " does not exist");
            try {
                d.documents = read_documents(d.path, d.options);
            } catch (const std::exception &e) {
                throw PipelineError(t.at("path") + ": " + e.what());
            }
            if (d.max_documents > 0 && int64_t(d.documents.size()) > d.max_documents) d.documents.resize(size_t(d.max_documents));
        }
        for (const auto &m : d.mix) {
            auto it = std::find(names.begin(), names.end(), m);
            if (it == names.end() || m == name) throw PipelineError(t.at("mix") + ": no data set '" + m + "' (" + defined(names) + ")");
        }
        t.finish();
        spec.data.push_back(std::move(d));
    }
    for (const auto &d : spec.data)
        for (const auto &m : d.mix)
            for (const auto &o : spec.data)
                if (o.name == m && !o.mix.empty()) throw PipelineError(d.where + ": mix of '" + m + "', which is itself a mix");
}

void read_hf_sizes(ModelDef &m, const std::string &dir, const PluginHost &host, const std::string &where) {
    formats::HfConfig c;
    try {
        c = formats::load_hf_config(dir);
    } catch (const std::exception &e) {
        throw PipelineError(where + ": " + e.what());
    }
    if (!host.registry().architecture_for(c.model_type))
        throw PipelineError(where + ": " + c.path + ": no installed architecture plugin handles model_type \"" + c.model_type +
                            "\" (mango plugins list)");
    m.hidden_size = c.hidden_size;
    m.n_layers = c.num_layers;
}

// "name:3" -> (name, 3)
std::pair<std::string, int32_t> expert_ref(const std::string &s, const std::string &where) {
    const size_t c = s.rfind(':');
    try {
        if (c == std::string::npos || c == 0) throw std::invalid_argument("");
        size_t used = 0;
        const int v = std::stoi(s.substr(c + 1), &used);
        if (used != s.size() - c - 1) throw std::invalid_argument("");
        return {s.substr(0, c), v};
    } catch (const std::exception &) {
        throw PipelineError(where + ": expected \"MODEL:LAYER\" (e.g. \"a:0\"), found \"" + clip(s) + "\"");
    }
}

void read_fusion(const PluginHost &host, ModelDef &m, Table &t) {
    FusionDef &f = m.fusion;
    f.members = t.strings("fuse");
    f.base = t.string("base", f.members.empty() ? "" : f.members[0]);
    f.target_hidden = t.integer("target_hidden", 0, 0);
    f.always_adapt = t.boolean("always_adapt", false);
    if (auto a = t.table("adapter")) f.adapter = plugin_spec(host, *a, "adapter");
    if (auto r = t.table("router")) f.router = plugin_spec(host, *r, "router");
    const toml::node *layers = t.get("layers");
    if (!layers || (layers->is_string() && layers->as_string()->get() == "zip")) {
        f.layers.clear();  // filled once member sizes are known: layer i of every member
    } else if (layers->is_array()) {
        size_t i = 0;
        for (const toml::node &l : *layers->as_array()) {
            const std::string name = t.name() + ".layers[" + std::to_string(i++) + "]";
            const std::string w = where(t.source(), &l, name);
            InstanceSpec own_router;
            const toml::array *list = l.as_array();
            if (l.is_table()) {
                Table lt(t.source(), *l.as_table(), name);
                const toml::node *e = lt.get("experts");
                if (!e || !e->is_array()) throw PipelineError(w + ": expected experts = [\"MODEL:LAYER\", ...]");
                list = e->as_array();
                if (auto r = lt.table("router")) own_router = plugin_spec(host, *r, "router");
                lt.finish();
            }
            if (!list) throw PipelineError(w + ": expected an array of \"MODEL:LAYER\" or a table with experts = [...]");
            std::vector<std::pair<std::string, int32_t>> experts;
            for (const toml::node &e : *list) {
                if (!e.is_string()) throw PipelineError(w + ": expected \"MODEL:LAYER\" strings");
                experts.push_back(expert_ref(e.as_string()->get(), w));
            }
            if (experts.empty()) throw PipelineError(w + ": a fusion layer needs at least one expert");
            if (own_router.name.empty() && f.router.name.empty())
                throw PipelineError(w + ": no router (set " + t.name() + ".router, or a router for this layer)");
            f.layers.push_back(std::move(experts));
            f.routers.push_back(own_router.name.empty() ? f.router : own_router);
            f.layer_where.push_back(w);
        }
    } else {
        throw PipelineError(t.at("layers") + ": expected \"zip\" or an array of fusion layers");
    }
    if (f.layers.empty() && f.router.name.empty()) throw PipelineError(t.here() + ": missing key 'router' (a table: name, options)");
}

// Members exist and are plain models; then the checks every fusion passes
// (check_fusion), with the pipeline's names and TOML lines in the messages.
void check_fusion_def(ModelDef &m, const Names &names, const std::string &where) {
    FusionDef &f = m.fusion;
    if (f.members.empty()) throw PipelineError(where + ".fuse: name at least one model");
    std::vector<FusionMember> members;
    for (const auto &name : f.members) {
        auto it = names.defs.find(name);
        if (it == names.defs.end()) throw PipelineError(where + ".fuse: no model '" + name + "' (" + defined(names.models) + ")");
        if (it->second->kind == ModelDef::Kind::Fusion || it->second->kind == ModelDef::Kind::SavedFusion)
            throw PipelineError(where + ".fuse: '" + name + "' is a fusion; fusions take plain models");
        members.push_back({"'" + name + "'", it->second->hidden_size, it->second->n_layers, true});
    }
    auto index = [&](const std::string &name, const std::string &w) {
        auto it = std::find(f.members.begin(), f.members.end(), name);
        if (it == f.members.end()) throw PipelineError(w + ": '" + name + "' is not one of this fusion's models (fuse = [...])");
    };
    index(f.base, where + ".base");
    if (f.layers.empty()) {  // zip
        const int64_t n = members[0].n_layers;
        for (size_t i = 0; i < members.size(); ++i)
            if (members[i].n_layers != n)
                throw PipelineError(where + ".layers: \"zip\" pairs layer i of every model, but " + f.members[0] + " has " +
                                    std::to_string(n) + " layers and " + f.members[i] + " " + std::to_string(members[i].n_layers) +
                                    "; list the fusion layers explicitly");
        for (int32_t l = 0; l < n; ++l) {
            std::vector<std::pair<std::string, int32_t>> experts;
            for (const auto &name : f.members) experts.push_back({name, l});
            f.layers.push_back(experts);
        }
        f.routers.assign(f.layers.size(), f.router);
        f.layer_where.assign(f.layers.size(), where + ".layers");
    }
    for (size_t li = 0; li < f.layers.size(); ++li)
        for (const auto &[name, layer] : f.layers[li]) index(name, f.layer_where[li]);
    FusionPlaces places;
    places.fusion = where;
    places.layer = [&f](size_t l) { return f.layer_where[l]; };
    try {
        check_fusion(members, fusion_spec(f, 0), places);
    } catch (const HostError &e) {
        throw PipelineError(e.what());
    }
}

void read_models(const PluginHost &host, PipelineSpec &spec, Table models) {
    for (const std::string &name : models.keys()) {
        Table t = *models.table(name);
        ModelDef m;
        m.name = name;
        m.where = t.here();
        auto path = t.path("path");
        auto config = t.path("config");
        const bool fuse = t.has("fuse");
        if (int(path.has_value()) + int(config.has_value()) + int(fuse) != 1)
            throw PipelineError(t.here() +
                                ": give exactly one of 'path' (a model folder or a saved fusion), 'config' (a folder "
                                "with config.json: random initialisation) or 'fuse' (models to fuse)");
        if (path) {
            m.path = *path;
            if (path_exists(fs::path(m.path) / "fusion.json"))
                m.kind = ModelDef::Kind::SavedFusion;
            else
                read_hf_sizes(m, m.path, host, t.at("path"));
        } else if (config) {
            m.kind = ModelDef::Kind::RandomInit;
            m.path = *config;
            if (std::error_code ec; fs::is_regular_file(m.path, ec)) {
                if (fs::path(m.path).filename() != "config.json")
                    throw PipelineError(t.at("config") + ": expected a folder holding config.json, found the file " + m.path);
                m.path = fs::path(m.path).parent_path().string();
            }
            read_hf_sizes(m, m.path, host, t.at("config"));
            m.seed = static_cast<uint64_t>(t.integer("seed", 0, 0));
        } else {
            m.kind = ModelDef::Kind::Fusion;
            read_fusion(host, m, t);
            m.seed = static_cast<uint64_t>(t.integer("seed", 0, 0));
        }
        if (m.kind == ModelDef::Kind::Folder || m.kind == ModelDef::Kind::RandomInit) {
            m.expert_parallel = t.boolean("expert_parallel", false);
            // Each rank would draw only its experts, so the other weights' random values would differ between ranks.
            if (m.expert_parallel && m.kind == ModelDef::Kind::RandomInit)
                throw PipelineError(t.at("expert_parallel") +
                                    ": expert parallelism needs a checkpoint (`path`); a model drawn at random from "
                                    "`config` cannot be spread over the ranks");
            if (t.has("device")) m.device = device_named(t.string("device", ""), t.at("device"));
            m.offload = t.boolean("offload", false);
        }
        t.finish();
        spec.models.push_back(std::move(m));
    }
}

TrainStep read_train(Table &t, const PipelineSpec &spec, size_t index, std::string model, std::vector<std::string> data) {
    TrainStep s;
    s.model = std::move(model);
    s.data = std::move(data);
    TrainOptions &o = s.run.train;
    o.steps = t.integer("steps", 100, 1);
    o.batch_size = t.integer("batch_size", 8, 1);
    o.lr = t.number("lr", 1e-3, 0);
    o.router_lr = t.number("router_lr", 0, 0);
    o.weight_decay = t.number("weight_decay", 0.01, 0);
    o.warmup_steps = t.integer("warmup_steps", 0, 0);
    o.min_lr_ratio = t.number("min_lr_ratio", 0.1, 0, 1);
    o.clip_norm = t.number("clip_norm", 1.0, 0);
    // Auxiliary losses: aux_weights = { NAME = weight, ... } over the defaults;
    // balance_weight / entropy_weight are short for load_balance / entropy.
    o.aux_weights = default_aux_weights();
    if (t.has("balance_weight")) o.aux_weights["load_balance"] = t.number("balance_weight", 0.01);
    if (t.has("entropy_weight")) o.aux_weights["entropy"] = t.number("entropy_weight", 0.0);
    o.aux_ramp_steps = t.integer("aux_loss_ramp_steps", 0, 0);
    if (auto w = t.table("aux_weights")) {
        for (const std::string &name : w->keys()) o.aux_weights[name] = w->number(name, 0.0);
        w->finish();
    }
    o.adapter_weight = t.number("adapter_weight", 0.0, 0);
    o.seed = static_cast<uint64_t>(t.integer("seed", 0, 0));
    o.recompute = t.boolean("gradient_checkpointing", false);
    o.align_steps = t.integer("align_steps", 0, 0);
    o.bf16_autocast = t.boolean("bf16", false);
    if (t.has("save_state_every") && t.has("checkpoint_every"))
        throw PipelineError(t.at("checkpoint_every") + ": give save_state_every only (checkpoint_every is its old name)");
    s.run.save_state_every = t.has("checkpoint_every") ? t.integer("checkpoint_every", 0, 0) : t.integer("save_state_every", 0, 0);
    s.run.eval_every = t.integer("eval_every", 0, 0);
    const std::string what = t.string("train", "default");
    if (what != "default" && what != "all")
        throw PipelineError(t.at("train") + ": expected \"default\" or \"all\", found \"" + clip(what) + "\"");
    s.all_weights = what == "all";
    const bool resume = t.boolean("resume", true);
    const std::string stem = spec.output + "/train/step" + std::to_string(index) + "-" + s.model;
    s.run.state_path = stem + ".state.safetensors";
    s.run.log_path = stem + ".metrics.jsonl";
    if (!resume) s.run.fingerprint = "no-resume";
    s.run.label = "train " + s.model;
    return s;
}

void check_names(const std::vector<std::string> &given, const std::vector<std::string> &known, const std::string &what,
                 const std::string &where) {
    for (const auto &g : given)
        if (std::find(known.begin(), known.end(), g) == known.end())
            throw PipelineError(where + ": no " + what + " '" + g + "' (" + defined(known) + ")");
}

// A merge step: mergekit's YAML in a file (`config`) or inline (`yaml`), where
// a model reference may also be the name of one of the pipeline's models.
MergeStep read_merge(const PluginHost &host, Table &t, const PipelineSpec &spec, const Source &src, Names &names) {
    MergeStep st;
    st.model = t.required_string("model");
    auto file = t.path("config");
    auto inline_yaml = t.string("yaml");
    if (file.has_value() == inline_yaml.has_value())
        throw PipelineError(t.here() + ": give exactly one of 'config' (a mergekit YAML file) or 'yaml' (its text)");
    if (file) {
        std::ifstream in(*file);
        if (!in) throw PipelineError(t.at("config") + ": cannot read " + *file);
        std::stringstream ss;
        ss << in.rdbuf();
        st.yaml = ss.str();
        st.yaml_file = *file;
        st.yaml_dir = fs::path(*file).parent_path().string();
    } else {
        st.yaml = *inline_yaml;
        st.yaml_file = t.at("yaml");
        st.yaml_dir = src.dir.string();
    }
    for (size_t p = st.yaml.find("{output}"); p != std::string::npos; p = st.yaml.find("{output}", p)) st.yaml.replace(p, 8, spec.output);
    auto out = t.path("output");
    if (out) check_step_output(t, *out);
    st.output = out ? *out : (fs::path(spec.output) / "merges" / st.model).string();
    st.dtype = t.string("dtype", "");
    if (!st.dtype.empty() && st.dtype != "float32" && st.dtype != "bfloat16" && st.dtype != "float16")
        throw PipelineError(t.at("dtype") + ": dtype must be float32, bfloat16 or float16, not \"" + clip(st.dtype) + "\"");
    st.seed = static_cast<uint64_t>(t.integer("seed", 0, 0));
    // The YAML's structure and method now; its models may be trained by earlier steps, so they are checked when the step runs.
    merge::Config c;
    try {
        c = merge::parse_config(st.yaml, st.yaml_file, st.yaml_dir);
        host.require("merge", c.method);
    } catch (const std::exception &e) {
        throw PipelineError(std::string(e.what()));
    }
    if (std::find(names.models.begin(), names.models.end(), st.model) == names.models.end()) names.models.push_back(st.model);
    names.defs.erase(st.model);  // known only at run time
    return st;
}

// A convert_moe step: the options of `mango convert-moe`, data sets by name.
ConvertMoeStep read_convert_moe(const PluginHost &host, Table &t, const PipelineSpec &spec, Names &names) {
    ConvertMoeStep st;
    st.model = t.required_string("model");
    st.from = t.required_string("from");
    moe::ConvertOptions &o = st.options;
    if (const toml::node *c = t.get("converter"); c && c->is_table()) {
        const InstanceSpec ps = plugin_spec(host, Table(t.source(), *c->as_table(), t.name() + ".converter"), "moe_converter");
        o.converter = ps.name;
        o.converter_options = ps.options;
        o.where = ps.where;
    } else {
        o.converter = t.string("converter", "upcycle");
        o.where = t.at("converter");
        try {
            host.require("moe_converter", o.converter);
        } catch (const std::exception &e) {
            throw PipelineError(t.at("converter") + ": " + e.what());
        }
    }
    o.experts = t.integer("experts", 4, 2);
    o.top_k = t.integer("top_k", 2, 1);
    if (o.top_k > o.experts)
        throw PipelineError(t.at("top_k") + ": top_k " + std::to_string(o.top_k) + " exceeds experts " + std::to_string(o.experts));
    if (t.has("every") && t.has("layers")) throw PipelineError(t.here() + ": give 'every' or 'layers', not both");
    o.every = t.integer("every", 1, 1);
    if (const toml::node *l = t.get("layers")) {
        if (!l->is_array()) throw PipelineError(t.at("layers") + ": expected a list of layer numbers");
        if (l->as_array()->empty())
            throw PipelineError(t.at("layers") +
                                ": an empty list converts no layer; name layers, or leave 'layers' out to convert every one");
        for (const toml::node &x : *l->as_array()) {
            if (!x.is_integer()) throw PipelineError(t.at("layers") + ": expected a list of layer numbers");
            const int64_t layer = x.as_integer()->get();
            if (layer < 0 || layer > INT32_MAX)
                throw PipelineError(t.at("layers") + ": layer " + std::to_string(layer) + " is not a layer number (0 or more)");
            o.layers.push_back(static_cast<int32_t>(layer));
        }
    }
    o.format = t.string("format", "");
    if (!o.format.empty() && o.format != "mixtral" && o.format != "qwen2_moe" && o.format != "deepseek_v3")
        throw PipelineError(t.at("format") + ": format must be mixtral, qwen2_moe or deepseek_v3, not \"" + clip(o.format) + "\"");
    auto data_name = [&](const std::string &key) {
        const std::string d = t.string(key, "");
        if (!d.empty()) check_names({d}, names.data, "data set", t.at(key));
        return d;
    };
    st.test_data = data_name("test_data");
    st.calibration_data = data_name("calibration_data");
    o.max_increase = t.number("max_increase", 0.02, 0);
    o.metric = t.string("metric", "perplexity");
    if (o.metric != "perplexity" && o.metric != "kl")
        throw PipelineError(t.at("metric") + ": metric must be perplexity or kl, not \"" + clip(o.metric) + "\"");
    o.test_sequences = t.integer("test_sequences", 16, 1);
    o.calibration_tokens = t.integer("calibration_tokens", 2048, 1);
    if (auto p = t.path("prompts")) o.prompts = *p;
    o.gate_mode = t.string("gate_mode", "");
    st.sources = t.strings("sources");
    o.rest = t.string("rest", "base");
    o.seed = static_cast<uint64_t>(t.integer("seed", 0, 0));
    auto out = t.path("output");
    if (out) check_step_output(t, *out);
    st.output = out ? *out : (fs::path(spec.output) / "converted" / st.model).string();
    if (std::find(names.models.begin(), names.models.end(), st.model) == names.models.end()) names.models.push_back(st.model);
    names.defs.erase(st.model);  // known only at run time
    return st;
}

void read_steps(const PluginHost &host, PipelineSpec &spec, const toml::node *steps, const Source &src, Names &names) {
    if (!steps) throw PipelineError(src.file + ": no [[steps]]: nothing to do");
    if (!steps->is_array_of_tables()) throw PipelineError(where(src, steps, "steps") + ": expected [[steps]] tables");
    std::map<std::string, size_t> fused_used_at;  // plain model -> first step that used a fusion of it
    size_t i = 0;
    for (const toml::node &n : *steps->as_array()) {
        Table t(src, *n.as_table(), "steps[" + std::to_string(i) + "]");
        StepDef s;
        s.where = t.here();
        s.kind = t.required_string("run");
        auto model_name = [&](const std::string &key) {
            const std::string m = t.required_string(key);
            check_names({m}, names.models, "model", t.at(key));
            return m;
        };
        auto data_names = [&](const std::string &key) {
            auto d = t.strings(key);
            if (d.empty()) throw PipelineError(t.here() + ": missing key '" + key + "' (data set names)");
            check_names(d, names.data, "data set", t.at(key));
            return d;
        };
        auto mark_fusion_use = [&](const std::string &m) {
            auto it = names.defs.find(m);
            if (it != names.defs.end() && it->second->kind == ModelDef::Kind::Fusion)
                for (const auto &member : it->second->fusion.members) fused_used_at.emplace(member, i + 1);
        };
        // The model `m` if `flag` is set on it, else with `members` the first model a fusion `m` fuses that has
        // it set; "" when none. Flags: expert_parallel (each rank holds only its experts), offload (blocks drop
        // their weights after running).
        auto flagged = [&](const std::string &m, bool members, bool ModelDef::*flag) {
            auto it = names.defs.find(m);
            if (it == names.defs.end()) return std::string();
            if (it->second->*flag) return m;
            if (members && it->second->kind == ModelDef::Kind::Fusion)
                for (const auto &member : it->second->fusion.members)
                    if (auto d = names.defs.find(member); d != names.defs.end() && d->second->*flag) return member;
            return std::string();
        };
        auto expert_parallel = [&](const std::string &m, bool members) { return !flagged(m, members, &ModelDef::expert_parallel).empty(); };
        if (s.kind == "train") {
            TrainStep st = read_train(t, spec, i, model_name("model"), data_names("data"));
            if (const std::string o = flagged(st.model, true, &ModelDef::offload); !o.empty())
                throw PipelineError(t.at("model") + ": '" + st.model + "' " + (o == st.model ? "is" : "includes '" + o + "', which is") +
                                    " offloaded (`offload = true`); offloading is for inference (a backward pass needs the "
                                    "weights its blocks drop): train without it");
            if (expert_parallel(st.model, st.all_weights))
                throw PipelineError(t.at("model") + ": '" + st.model +
                                    "' trains the weights of an expert-parallel model, which is not supported (each rank "
                                    "holds different experts); train it without expert_parallel, or train only a fusion's "
                                    "adapters and routers");
            if (fused_used_at.count(st.model))
                throw PipelineError(t.at("model") + ": '" + st.model + "' is trained after step " +
                                    std::to_string(fused_used_at[st.model]) +
                                    " used a fusion of it; train the models before the fusions that use them");
            mark_fusion_use(st.model);
            s.step = st;
        } else if (s.kind == "eval") {
            EvalStep st;
            st.models = t.strings("models");
            if (st.models.empty()) throw PipelineError(t.here() + ": missing key 'models'");
            check_names(st.models, names.models, "model", t.at("models"));
            st.data = data_names("data");
            st.batch_size = t.integer("batch_size", 8, 1);
            st.max_sequences = t.integer("max_sequences", 0, 0);
            st.heatmap = t.string("heatmap", "");
            if (!st.heatmap.empty()) check_names({st.heatmap}, st.models, "evaluated model", t.at("heatmap"));
            for (const auto &m : st.models) mark_fusion_use(m);
            s.step = st;
        } else if (s.kind == "generate") {
            GenerateStep st;
            st.model = model_name("model");
            st.prompts = t.strings("prompt");
            for (const auto &p : t.strings("prompts")) st.prompts.push_back(p);
            if (st.prompts.empty()) throw PipelineError(t.here() + ": missing key 'prompt'");
            GenerateOptions &o = st.options;
            o.max_new_tokens = t.integer("max_new_tokens", 32, 0);
            o.greedy = t.boolean("greedy", !t.has("temperature") && !t.has("top_k") && !t.has("top_p"));
            o.temperature = t.number("temperature", 1.0, 1e-6);
            o.top_k = t.integer("top_k", 0, 0);
            o.top_p = t.number("top_p", 1.0, 1e-6, 1.0);
            o.seed = static_cast<uint64_t>(t.integer("seed", 0, 0));
            o.no_repeat_ngram_size = t.integer("no_repeat_ngram_size", 0, 0);
            mark_fusion_use(st.model);
            s.step = st;
        } else if (s.kind == "save") {
            SaveStep st;
            st.model = model_name("model");
            auto p = t.path("path");
            if (!p) throw PipelineError(t.here() + ": missing key 'path'");
            st.path = *p;
            st.self_contained = t.boolean("self_contained", false);
            if (!flagged(st.model, false, &ModelDef::offload).empty())
                throw PipelineError(t.at("model") + ": '" + st.model +
                                    "' is offloaded (`offload = true`): its layers' weights leave the device between blocks, "
                                    "so it is saved from a run without offload");
            if (expert_parallel(st.model, st.self_contained))
                throw PipelineError(t.at("model") + ": '" + st.model +
                                    "' holds an expert-parallel model, whose experts are spread over the ranks and cannot "
                                    "be saved whole; save it from a run without expert_parallel");
            mark_fusion_use(st.model);
            s.step = st;
        } else if (s.kind == "load") {
            LoadStep st;
            st.model = t.required_string("model");
            auto p = t.path("path");
            if (!p) throw PipelineError(t.here() + ": missing key 'path'");
            st.path = *p;
            if (std::find(names.models.begin(), names.models.end(), st.model) == names.models.end()) names.models.push_back(st.model);
            names.defs.erase(st.model);  // known only at run time
            s.step = st;
        } else if (s.kind == "merge") {
            s.step = read_merge(host, t, spec, src, names);
        } else if (s.kind == "convert_moe") {
            s.step = read_convert_moe(host, t, spec, names);
        } else {
            throw PipelineError(t.at("run") + ": unknown step \"" + s.kind +
                                "\" (expected train, eval, generate, save, load, merge or convert_moe)");
        }
        t.finish();
        spec.steps.push_back(std::move(s));
        ++i;
    }
}

}  // namespace

FusionSpec fusion_spec(const FusionDef &f, uint64_t seed) {
    auto index = [&](const std::string &n) { return size_t(std::find(f.members.begin(), f.members.end(), n) - f.members.begin()); };
    FusionSpec fs;
    fs.base = index(f.base);
    fs.target_hidden = f.target_hidden;
    fs.always_adapt = f.always_adapt;
    fs.seed = seed;
    fs.adapter = f.adapter;
    for (size_t l = 0; l < f.layers.size(); ++l) {
        FusionLayer layer;
        for (const auto &[m, i] : f.layers[l]) layer.experts.push_back({index(m), i});
        layer.router = f.routers[l];
        fs.layers.push_back(layer);
    }
    return fs;
}

PipelineSpec Pipeline::parse(const PluginHost &host, const std::string &file, const RunSettings &settings) try {
    if (!fs::is_regular_file(file)) throw PipelineError(file + ": no such pipeline file");
    toml::table root;
    try {
        root = toml::parse_file(file);
    } catch (const toml::parse_error &e) {
        throw PipelineError(file + ":" + std::to_string(e.source().begin.line) + ":" + std::to_string(e.source().begin.column) + ": " +
                            std::string(e.description()));
    }
    for (const auto &s : settings.sets) apply_set(root, s);

    PipelineSpec spec;
    spec.file = file;
    Source src{file, fs::absolute(file).parent_path(), ""};
    Table top(src, root, "");
    const std::string file_output = top.string("output", "");
    const std::string out = settings.output.empty() ? file_output : settings.output;
    if (out.empty()) throw PipelineError(file + ": no output folder (set output = \"...\" in the file or pass --output DIR)");
    spec.output = settings.output.empty() ? resolve_path(src, out) : fs::absolute(out).lexically_normal().string();
    src.output = spec.output;
    spec.device = device_named(top.string("device", "cpu"), top.at("device"));
    spec.dtype = parse_dtype(top.string("dtype", "float32"), top.at("dtype"));

    if (auto tok = top.table("tokenizer")) {
        auto p = tok->path("path");
        if (!p) throw PipelineError(tok->here() + ": missing key 'path'");
        spec.tokenizer = *p;
        try {
            const auto t = formats::Tokenizer::from_file(spec.tokenizer);
            if (auto eos = tok->string("eos")) {
                auto id = t.token_to_id(*eos);
                if (!id) throw PipelineError(tok->at("eos") + ": the tokenizer has no token \"" + clip(*eos) + "\"");
                spec.eos_id = *id;
            }
        } catch (const PipelineError &) {
            throw;
        } catch (const std::exception &e) {
            throw PipelineError(tok->at("path") + ": " + e.what());
        }
        tok->finish();
    }
    if (auto data = top.table("data")) read_data(spec, *data);
    if (auto models = top.table("models")) read_models(host, spec, *models);
    if (spec.models.empty()) throw PipelineError(file + ": no [models.NAME] tables");

    Names names;
    for (const auto &m : spec.models) {
        names.models.push_back(m.name);
        names.defs[m.name] = &m;
    }
    for (const auto &d : spec.data) names.data.push_back(d.name);
    for (auto &m : spec.models)
        if (m.kind == ModelDef::Kind::Fusion) {
            check_fusion_def(m, names, m.where);
            // Autograd runs each device's backward on its own thread: the exchanges of expert-parallel
            // members on two devices could then be issued in another order on each rank.
            std::optional<at::Device> shared;
            for (const auto &member : m.fusion.members) {
                const ModelDef *d = names.defs[member];
                if (!d->expert_parallel) continue;
                const at::Device dev = d->device.value_or(spec.device);
                if (shared && *shared != dev)
                    throw PipelineError(m.where + ": the expert-parallel members of a fusion must sit on one device (found " +
                                        shared->str() + " and " + dev.str() + ")");
                shared = dev;
            }
        }
    if (spec.tokenizer.empty()) {  // the first model folder's tokenizer, when there is one
        for (const auto &m : spec.models)
            if (m.kind != ModelDef::Kind::Fusion && path_exists(fs::path(m.path) / "tokenizer.json")) {
                spec.tokenizer = (fs::path(m.path) / "tokenizer.json").string();
                break;
            }
    }
    read_steps(host, spec, top.get("steps"), src, names);
    top.finish();
    bool needs_tokenizer = !spec.data.empty();
    for (const auto &s : spec.steps) needs_tokenizer = needs_tokenizer || s.kind == "generate";
    if (needs_tokenizer && spec.tokenizer.empty())
        throw PipelineError(file + ": no tokenizer: add [tokenizer] path = \"...\" (or use a model folder holding tokenizer.json)");
    return spec;
} catch (const fs::filesystem_error &e) {  // a path the checks above did not foresee (too long, not a folder, no permission)
    throw PipelineError(file + ": " + clip(e.path1().string()) + ": " + e.code().message());
}

}  // namespace mango
