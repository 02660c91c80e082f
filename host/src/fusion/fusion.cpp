#include "fusion/fusion.hpp"

#include "kernels/fused_ops.hpp"
#include "model/recompute.hpp"

#include <ATen/ATen.h>

#include "formats/json_file.hpp"
#include "formats/safetensors.hpp"
#include <mango/registry/registry.hpp>

#include <algorithm>
#include <filesystem>
#include <set>

namespace mango {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::map<std::string, at::Tensor> saved_under(const std::map<std::string, at::Tensor> &all, const std::string &prefix) {
    std::map<std::string, at::Tensor> out;
    for (const auto &[name, t] : all)
        if (name.rfind(prefix, 0) == 0) out[name.substr(prefix.size())] = t;
    return out;
}

// sha256 of config.json and every .safetensors / index file of a model folder.
json model_hashes(const std::string &dir) {
    json h = json::object();
    std::vector<fs::path> files;
    for (const auto &e : fs::directory_iterator(dir)) {
        const std::string n = e.path().filename().string();
        if (n == "config.json" || e.path().extension() == ".safetensors" || n == "model.safetensors.index.json") files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto &f : files) h[f.filename().string()] = registry::sha256_file(f.string());
    return h;
}

InstanceSpec spec_from(const json &j) {
    InstanceSpec s;
    s.name = j.at("name").get<std::string>();
    s.options = j.value("options", json::object());
    return s;
}

}  // namespace

std::unique_ptr<FusedModel> FusedModel::build(const PluginHost &host, std::vector<std::shared_ptr<Model>> models, FusionSpec spec) {
    std::vector<FusionMember> members;
    for (const auto &m : models) members.push_back({m->dir(), m->info().hidden_size, m->info().n_layers, m->info().is_causal});
    FusionPlaces places;
    if (!spec.layers.empty() && !spec.layers[0].router.where.empty())
        places.layer = [&spec](size_t l) { return spec.layers[l].router.where; };
    const int64_t target = check_fusion(members, spec, places);  // everything, before any plugin instance exists
    std::unique_ptr<FusedModel> f(new FusedModel());
    f->target_ = target;
    f->models_ = std::move(models);
    f->spec_ = std::move(spec);
    // Plugins draw initial values from the default generator: seed it, so a
    // fusion starts the same whatever ran before it in this process.
    at::manual_seed(f->spec_.seed);
    // Adapters and routers train in float32 whatever the models' dtype: bfloat16 members stay bfloat16 (frozen,
    // never recast), and the fused residual stream between them is float32 (see logits()).
    const auto options = at::TensorOptions().device(f->device()).dtype(at::kFloat);
    for (size_t m : adapted_members(members, f->spec_, target)) {
        const int64_t h = f->models_[m]->info().hidden_size;
        for (const char *dir : {"in", "out"}) {
            InstanceSpec a = f->spec_.adapter;
            a.param_options = options;
            a.where = (a.where.empty() ? "" : a.where + ": ") + "adapter " + dir + " of model #" + std::to_string(m);
            const std::string key = "m" + std::to_string(m) + "." + dir;
            a.saved = saved_under(f->spec_.saved, "adapters." + key + ".");
            f->adapters_[key] =
                std::string(dir) == "in" ? AdapterInstance::create(host, a, target, h) : AdapterInstance::create(host, a, h, target);
        }
    }
    for (size_t li = 0; li < f->spec_.layers.size(); ++li) {
        InstanceSpec r = f->spec_.layers[li].router;
        r.param_options = options;
        r.where = (r.where.empty() ? "" : r.where + ": ") + "router of fusion layer " + std::to_string(li);
        r.saved = saved_under(f->spec_.saved, "layers." + std::to_string(li) + ".router.");
        f->routers_.push_back(RouterInstance::create(host, r, target, static_cast<int64_t>(f->spec_.layers[li].experts.size())));
    }
    return f;
}

int64_t FusedModel::max_positions() const {
    int64_t limit = 0;
    for (const auto &m : models_)
        if (m->max_positions() > 0) limit = limit == 0 ? m->max_positions() : std::min(limit, m->max_positions());
    return limit;
}

at::Tensor FusedModel::adapt(const std::string &key, const at::Tensor &x, bool check) {
    auto it = adapters_.find(key);
    return it == adapters_.end() ? x : it->second->forward(x, check);
}

at::Tensor FusedModel::logits(const at::Tensor &ids, const at::Tensor &mask, const at::Tensor &positions, bool use_cache) {
    Model &base = *models_[spec_.base];
    const std::string b = "m" + std::to_string(spec_.base);
    // Outputs are checked in training and evaluation, and on the first step of a generation.
    const bool check = always_check_ || training_ || reporting_ || forwards_since_clear_ == 0;
    ++forwards_since_clear_;
    const at::Tensor embedded = base.embed(ids, positions);
    at::Tensor h = adapt(b + ".out", embedded.to(at::kFloat), check);  // base size -> target, float32
    // The router sees only the new tokens' columns of the mask.
    const at::Tensor new_mask = base.new_token_mask(mask, ids.size(1));
    reports_.clear();
    const bool recompute = recompute_blocks(use_cache);
    // Inference (no gradient, no recomputation): h goes to a member's dtype once per layer, not once per
    // expert, and an expert without adapters on h's device returns its block's output in its own dtype,
    // which mix_experts converts exactly while mixing (one kernel on a GPU instead of a cast per expert
    // and a multiply and an add per expert).
    const bool lean = !recompute && !at::GradMode::is_enabled();
    // h in a member's dtype, for this layer: the embedding itself where h is it unadapted (float32 holds a
    // bfloat16 or float16 value exactly), then what each mix wrote beside h.
    at::Tensor h_carried = lean && !adapters_.count(b + ".out") ? embedded : at::Tensor();
    for (size_t li = 0; li < spec_.layers.size(); ++li) {
        const FusionLayer &l = spec_.layers[li];
        std::vector<at::Tensor> outs;
        std::vector<std::pair<at::ScalarType, at::Tensor>> h_as;
        if (h_carried.defined() && (h_carried.scalar_type() == at::kBFloat16 || h_carried.scalar_type() == at::kHalf))
            h_as.emplace_back(h_carried.scalar_type(), h_carried);
        for (const FusionExpert &e : l.experts) {
            Model *model = models_[e.model].get();
            const std::string m = "m" + std::to_string(e.model);
            auto in = adapters_.find(m + ".in"), out = adapters_.find(m + ".out");
            AdapterInstance *in_adapter = in == adapters_.end() ? nullptr : in->second.get();
            AdapterInstance *out_adapter = out == adapters_.end() ? nullptr : out->second.get();
            // A member placed on another device (`device` per model) runs its
            // block there, in its own dtype: the float32 hidden states go
            // over (and down to bfloat16, say) and come back.
            const at::Device where = model->device();
            const at::ScalarType dtype = model->dtype();
            if (lean && !in_adapter && where == h.device()) {
                auto cast = std::find_if(h_as.begin(), h_as.end(), [&](const auto &c) { return c.first == dtype; });
                if (cast == h_as.end()) cast = h_as.insert(h_as.end(), {dtype, h.to(dtype)});
                // the experts of this dtype share that tensor, as float32 members always shared h itself: a block
                // must not write its input in place (the SDK's layers never do)
                outs.push_back(model->block(e.layer, cast->second, mask, positions, use_cache));
                continue;
            }
            auto block = [=](const at::Tensor &x) {
                if (x.device() == where) return model->block(e.layer, x.to(dtype), mask, positions, use_cache).to(x.scalar_type());
                return model->block(e.layer, x.to(where, dtype), mask.to(where), positions.to(where), use_cache)
                    .to(x.device(), x.scalar_type());
            };
            auto path = [=](const at::Tensor &x) {  // by value: it may run again in backward
                if (!in_adapter) return block(x);
                // An adapted block contributes its update, mapped back: the
                // residual stream itself never makes the round trip.
                const at::Tensor inner = in_adapter->forward(x, check);
                return x + out_adapter->difference(block(inner), inner, check);
            };
            outs.push_back(recompute ? recomputed(path, h, trainable_tensors()) : path(h));
        }
        RouterOutput r = routers_[li]->route(h, new_mask, positions, check);
        h = kernels::mix_experts(outs, r.weights.dim() == 2 ? r.weights.unsqueeze(1) : r.weights, h.scalar_type(),  // weights [B, 1|T, E]
                                 lean ? &h_carried : nullptr);
        LayerReport rep;
        rep.weights = r.weights;
        rep.mask = new_mask;
        rep.losses = std::move(r.losses);
        rep.stats = std::move(r.stats);
        rep.source = routers_[li]->where();
        rep.layer = int32_t(li);
        reports_.push_back(std::move(rep));
    }
    return base.head(adapt(b + ".in", h, check).to(base.dtype()));  // target -> base size
}

at::Tensor FusedModel::alignment_loss(const at::Tensor &ids, const at::Tensor &mask, const at::Tensor &positions) {
    const std::string b = "m" + std::to_string(spec_.base);
    if (adapters_.count(b + ".in"))
        throw HostError("adapter alignment needs the base model at the fused hidden size (it has adapters itself)");
    // Each model's own residual stream: states[m][k] = input of block k, [n] = output of the last.
    std::map<size_t, std::vector<at::Tensor>> states;
    {
        at::NoGradGuard no_grad;
        for (size_t m = 0; m < models_.size(); ++m) {
            Model &model = *models_[m];
            const at::Device where = model.device();  // placed members run where their weights are
            const at::Tensor mask_there = mask.to(where), positions_there = positions.to(where);
            std::vector<at::Tensor> s{model.embed(ids.to(where), positions_there)};
            for (int32_t k = 0; k < model.info().n_layers; ++k) s.push_back(model.block(k, s.back(), mask_there, positions_there, false));
            for (at::Tensor &t : s) t = t.to(ids.device(), at::kFloat);  // adapters work in float32
            states[m] = std::move(s);
        }
    }
    auto rel = [&](const at::Tensor &got, const at::Tensor &want) {
        at::Tensor keep = mask.to(got.dtype()).unsqueeze(-1);
        return ((got - want).pow(2) * keep).sum() / ((want.pow(2) * keep).sum() + 1e-6);
    };
    std::vector<at::Tensor> terms;
    for (const FusionLayer &l : spec_.layers) {
        int32_t k = -1;
        for (const FusionExpert &e : l.experts)
            if (e.model == spec_.base) k = e.layer;
        if (k < 0) continue;
        const at::Tensor &before = states[spec_.base][size_t(k)], &after = states[spec_.base][size_t(k) + 1];
        for (const FusionExpert &e : l.experts) {
            const std::string m = "m" + std::to_string(e.model);
            if (!adapters_.count(m + ".in")) continue;
            terms.push_back(rel(adapters_[m + ".in"]->forward(before), states[e.model][size_t(e.layer)]));
            terms.push_back(rel(adapters_[m + ".out"]->forward(states[e.model][size_t(e.layer) + 1]), after));
        }
    }
    if (terms.empty()) throw HostError("adapter alignment: no fusion layer pairs a block of the base model with an adapted expert");
    return at::stack(terms).mean();
}

void FusedModel::clear_cache() {
    for (auto &m : models_) m->clear_cache();
    forwards_since_clear_ = 0;
}

void FusedModel::begin_static_cache(int64_t capacity) {
    clear_cache();
    for (auto &m : models_) m->begin_static_cache(capacity);
}

bool FusedModel::static_cache_ready() const {
    for (const auto &m : models_)  // a member without blocks in the fusion caches nothing: not in the way
        if (m->kv_cache_used() && !m->static_cache_ready()) return false;
    return std::any_of(models_.begin(), models_.end(), [](const auto &m) { return m->static_cache_ready(); });
}

bool FusedModel::graph_safe() const {
    return std::all_of(models_.begin(), models_.end(), [](const auto &m) { return m->graph_safe(); });
}

void FusedModel::decode_at(int64_t entry) {
    for (auto &m : models_) m->decode_at(entry);
}

std::vector<std::pair<std::string, at::Tensor>> FusedModel::trainable() const {
    auto out = fusion_parameters();
    if (experts_trainable_)
        for (size_t i = 0; i < models_.size(); ++i)
            for (auto &[name, t] : models_[i]->trainable()) out.emplace_back("models." + std::to_string(i) + "." + name, t);
    return out;
}

void FusedModel::set_experts_trainable(bool on) {
    experts_trainable_ = on;
    for (auto &m : models_) m->set_trainable(on);
}

namespace {
// Parameters (trainable) or buffers (not) of every adapter and router, by qualified name.
std::vector<std::pair<std::string, at::Tensor>> instance_state(const std::map<std::string, std::unique_ptr<AdapterInstance>> &adapters,
                                                               const std::vector<std::unique_ptr<RouterInstance>> &routers,
                                                               bool trainable) {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const auto &[key, a] : adapters)
        for (const auto &p : a->parameters())
            if (p.trainable == trainable) out.emplace_back("adapters." + key + "." + p.name, p.value);
    for (size_t i = 0; i < routers.size(); ++i)
        for (const auto &p : routers[i]->parameters())
            if (p.trainable == trainable) out.emplace_back("layers." + std::to_string(i) + ".router." + p.name, p.value);
    return out;
}
}  // namespace

std::vector<std::pair<std::string, at::Tensor>> FusedModel::fusion_parameters() const { return instance_state(adapters_, routers_, true); }
std::vector<std::pair<std::string, at::Tensor>> FusedModel::buffers() const { return instance_state(adapters_, routers_, false); }

void FusedModel::train(bool on) {
    training_ = on;
    for (auto &[_, a] : adapters_) a->train(on);
    for (auto &r : routers_) r->train(on);
}

void FusedModel::set_reporting(bool on) {
    reporting_ = on;
    for (auto &[_, a] : adapters_) a->set_reporting(on);
    for (auto &r : routers_) r->set_reporting(on);
}

}  // namespace mango

namespace mango {

void FusedModel::save(const std::string &out_dir, bool self_contained, const std::map<std::string, std::string> &extra_files) const {
    // Trained experts, and models that exist only in memory, must be written out.
    self_contained = self_contained || experts_trainable_ ||
                     std::any_of(models_.begin(), models_.end(), [](const auto &m) { return !m->from_checkpoint(); });
    formats::OutputFolder folder(out_dir, true, {});
    folder.keep_other_files();
    const std::string dir = folder.path();
    for (const auto &[name, source] : extra_files) formats::copy_file_atomic(source, (fs::path(dir) / name).string());
    json j = {{"format", "mango-fusion"},
              {"version", 1},
              {"base", spec_.base},
              {"target_hidden", target_},
              {"always_adapt", spec_.always_adapt},
              {"models", json::array()},
              {"layers", json::array()}};
    if (!spec_.adapter.name.empty()) j["adapter"] = spec_json(spec_.adapter);
    for (size_t i = 0; i < models_.size(); ++i) {
        const Model &m = *models_[i];
        if (self_contained) {
            const std::string rel = "models/" + std::to_string(i);
            const fs::path copy = fs::path(dir) / rel;
            const fs::path tok = fs::path(m.dir()) / "tokenizer.json";
            m.save(copy.string(), false,
                   fs::exists(tok) ? std::map<std::string, std::string>{{"tokenizer.json", tok.string()}}
                                   : std::map<std::string, std::string>{});
            j["models"].push_back({{"path", rel}, {"sha256", model_hashes(copy.string())}});
        } else {
            j["models"].push_back({{"path", fs::absolute(m.dir()).lexically_normal().string()}, {"sha256", model_hashes(m.dir())}});
        }
    }
    for (const auto &l : spec_.layers) {
        json experts = json::array();
        for (const auto &e : l.experts) experts.push_back({e.model, e.layer});
        j["layers"].push_back({{"experts", experts}, {"router", spec_json(l.router)}});
    }
    auto state = fusion_parameters();
    for (auto &b : buffers()) state.push_back(b);
    formats::write_safetensors((fs::path(dir) / "fusion.safetensors").string(), state, {{"format", "pt"}, {"mango", "fusion"}});
    formats::write_file_atomic((fs::path(dir) / "fusion.json").string(), j.dump(2) + "\n");
    folder.commit();
}

std::unique_ptr<FusedModel> FusedModel::load(const PluginHost &host, const std::string &dir, at::ScalarType dtype, at::Device device) {
    const fs::path cfg = fs::path(dir) / "fusion.json";
    const json j = formats::read_json_file(cfg, "a fused model's folder holds fusion.json");
    try {
        if (j.value("format", "") != "mango-fusion") throw HostError(cfg.string() + ": not a mango fusion (format != mango-fusion)");
        std::vector<std::shared_ptr<Model>> models;
        for (const json &m : j.at("models")) {
            std::string path = m.at("path").get<std::string>();
            if (fs::path(path).is_relative()) path = (fs::path(dir) / path).string();  // a self-contained export
            const json now = model_hashes(path);
            for (const auto &[file, hash] : m.at("sha256").items())
                if (!now.contains(file) || now[file] != hash)
                    throw HostError(cfg.string() + ": base model " + path + " changed since the fusion was saved (" + file +
                                    (now.contains(file) ? " has another sha256)" : " is missing)"));
            models.push_back(std::shared_ptr<Model>(Model::load(host, path, dtype, device)));
        }
        FusionSpec spec;
        spec.base = j.at("base").get<size_t>();
        spec.target_hidden = j.at("target_hidden").get<int64_t>();
        spec.always_adapt = j.value("always_adapt", false);
        if (j.contains("adapter")) spec.adapter = spec_from(j["adapter"]);
        for (const json &l : j.at("layers")) {
            FusionLayer layer;
            for (const json &e : l.at("experts")) layer.experts.push_back({e.at(0).get<size_t>(), e.at(1).get<int32_t>()});
            layer.router = spec_from(l.at("router"));
            spec.layers.push_back(std::move(layer));
        }
        auto weights = formats::SafetensorsFile::open((fs::path(dir) / "fusion.safetensors").string());
        for (const auto &e : weights->header().tensors) spec.saved[e.name] = weights->tensor(e).clone();
        auto f = build(host, std::move(models), std::move(spec));
        const size_t restored = f->fusion_parameters().size() + f->buffers().size();
        if (restored != weights->header().tensors.size())
            throw HostError(dir + ": fusion.safetensors holds " + std::to_string(weights->header().tensors.size()) +
                            " tensors, the fusion has " + std::to_string(restored) + " parameters and buffers");
        return f;
    } catch (const json::exception &e) {
        throw HostError(cfg.string() + ": malformed: " + e.what());
    }
}

}  // namespace mango
