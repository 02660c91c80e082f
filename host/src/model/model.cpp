#include "model/model.hpp"

#include "abi/device.hpp"
#include "model/recompute.hpp"

#include "formats/atomic_file.hpp"
#include "formats/tokenizer.hpp"

#include "util/error.hpp"
#include "util/progress.hpp"

#include <ATen/ATen.h>

#include <filesystem>
#include <optional>
#include <unistd.h>
#include <set>

namespace mango {

nlohmann::json Model::normalized_config(const nlohmann::json &raw) {
    nlohmann::json c = raw;
    if (c.contains("rope_parameters") && c["rope_parameters"].is_object()) {
        const auto &rp = c["rope_parameters"];
        if (!c.contains("rope_theta") && rp.contains("rope_theta")) c["rope_theta"] = rp["rope_theta"];
        if ((!c.contains("rope_scaling") || c["rope_scaling"].is_null()) && rp.value("rope_type", "default") != "default")
            c["rope_scaling"] = rp;
    }
    if (c.contains("rope_scaling") && c["rope_scaling"].is_object() && !c["rope_scaling"].contains("rope_type") &&
        c["rope_scaling"].contains("type"))
        c["rope_scaling"]["rope_type"] = c["rope_scaling"]["type"];
    if (!c.contains("torch_dtype") && c.contains("dtype")) c["torch_dtype"] = c["dtype"];
    return c;
}

namespace {
// The device with its index ("cuda" -> "cuda:0", the current one), as the model's tensors report theirs:
// the fusion and the placement code compare a model's device with its tensors' (an unindexed "cuda" equals
// no tensor's device, which sent every fusion member through the slow path for members placed elsewhere).
// `device` with its index filled in ("cuda" -> "cuda:0"), once require_device has said it can be used.
at::Device concrete(at::Device device, const std::string &where) {
    require_device(device, where);
    if (device.has_index() || device.is_cpu()) return device;
    return at::empty({0}, at::TensorOptions().device(device)).device();
}
// The dtype a checkpoint tensor is read in: the run's, or float32 for one the table flags MANGO_TENSOR_F32.
at::ScalarType read_dtype(const InstanceContext &ctx, const std::string &name, at::ScalarType run) {
    return ctx.float32_weights.count(name) ? at::kFloat : run;
}

}  // namespace

std::unique_ptr<Model> Model::load(const PluginHost &host, const std::string &dir, at::ScalarType dtype, at::Device device,
                                   ExpertShard shard) {
    return build(host, dir, dtype, device, false, 0, shard);
}

std::unique_ptr<Model> Model::init_random(const PluginHost &host, const std::string &dir, uint64_t seed, at::ScalarType dtype,
                                          at::Device device, ExpertShard shard) {
    return build(host, dir, dtype, device, true, seed, shard);
}

std::vector<std::pair<std::string, at::Tensor>> Model::named_weights() const {
    std::vector<std::pair<std::string, at::Tensor>> out;
    std::set<std::string> seen;
    for (const auto &[name, t] : ctx_->weights_used)
        if (seen.insert(name).second) out.emplace_back(name, t);
    return out;
}

at::Tensor CausalLM::alignment_loss(const at::Tensor &, const at::Tensor &, const at::Tensor &) {
    throw HostError(describe() + ": adapter alignment applies to fused models only");
}

std::vector<std::pair<std::string, at::Tensor>> CausalLM::aux_losses() const {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const auto &r : layer_reports())
        for (const auto &l : r.losses) out.push_back(l);
    return out;
}

const std::vector<LayerReport> &CausalLM::layer_reports() const {
    static const std::vector<LayerReport> none;
    return none;
}

at::Tensor LayerReport::entropy() const { return -(weights * weights.clamp_min(1e-9).log()).sum(-1).mean(); }

at::Tensor LayerReport::load() const {
    if (weights.dim() == 2) return weights.mean(0);
    const at::Tensor keep = mask.to(weights.dtype()).unsqueeze(-1);
    return (weights * keep).sum(at::IntArrayRef{0, 1}) / keep.sum().clamp_min(1);
}

void Model::set_trainable(bool on) {
    for (auto &[_, t] : named_weights()) t.set_requires_grad(on);
}

std::vector<std::pair<std::string, at::Tensor>> Model::buffers() const {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const auto &p : ctx_->parameters)
        if (!p.trainable) out.emplace_back(p.name, p.value);
    return out;
}

ExpertShard Model::expert_shard() const { return {ctx_->shard_rank, ctx_->shard_world}; }

std::vector<std::pair<std::string, at::Tensor>> Model::trainable() const {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (auto &[name, t] : named_weights())
        if (t.requires_grad()) out.emplace_back(name, t);
    return out;
}

void Model::save(const std::string &dir, bool, const std::map<std::string, std::string> &extra_files) const {
    save_sharded(dir, 0, extra_files);
}

void Model::save_sharded(const std::string &dir, uint64_t max_shard_bytes, const std::map<std::string, std::string> &extra_files) const {
    if (ctx_->shard_world > 1)
        throw HostError(dir_ + ": this expert-parallel model holds 1/" + std::to_string(ctx_->shard_world) +
                        " of its experts in each process and cannot be saved; save it from a run without expert_parallel");
    if (offloader_)
        throw HostError(dir_ +
                        ": this model is offloaded (its layers' weights are off the device between blocks) and cannot be "
                        "saved from memory; save it from a run without offload");
    formats::OutputFolder folder(dir, true, {});
    folder.keep_other_files();
    formats::write_checkpoint(folder.path(), named_weights(), max_shard_bytes);
    for (const auto &[name, source] : extra_files)
        formats::copy_file_atomic(source, (std::filesystem::path(folder.path()) / name).string());
    formats::write_file_atomic((std::filesystem::path(folder.path()) / "config.json").string(), config_.raw.dump(2) + "\n");
    folder.commit();
}

const registry::ComponentInfo &Model::architecture_for(const PluginHost &host, const formats::HfConfig &config) {
    if (const registry::ComponentInfo *arch = host.registry().architecture_for(config.model_type)) return *arch;
    std::string installed;
    for (const auto &c : host.registry().components())
        if (c.kind == "architecture") {
            std::string types;
            for (const auto &t : c.model_types) types += (types.empty() ? "" : ", ") + t;
            installed += (installed.empty() ? "" : "; ") + c.name + " (" + types + ")";
        }
    throw HostError(config.path + ": no architecture plugin handles model_type = \"" + clip(config.model_type) +
                    "\" (installed: " + (installed.empty() ? "none" : installed) + ")");
}

std::vector<TensorDecl> Model::tensor_table(const PluginHost &host, const std::string &dir, bool check_dir) {
    const formats::HfConfig config = formats::load_hf_config(dir);
    std::function<bool(const std::string &)> has_weight;
    if (check_dir) {
        auto ckpt = std::make_shared<formats::Checkpoint>(formats::Checkpoint::open(dir));
        has_weight = [ckpt](const std::string &n) { return ckpt->contains(n); };
    }
    return tensor_table(host, config, has_weight, dir);
}

std::vector<TensorDecl> Model::tensor_table(const PluginHost &host, const formats::HfConfig &config,
                                            const std::function<bool(const std::string &)> &has_weight, const std::string &where) {
    const registry::ComponentInfo &arch = architecture_for(host, config);
    auto vt = static_cast<const mango_architecture_vtable *>(host.vtable(arch));
    if (!MANGO_HAS(vt, mango_architecture_vtable, tensors) || !vt->tensors)
        throw HostError("architecture '" + arch.name + "' (" + arch.library + ") has no tensor table (architecture vtable revision 2)");
    InstanceContext ctx;
    ctx.label = "architecture '" + arch.name + "' tensor table for " + where;
    ctx.config = normalized_config(config.raw);
    if (has_weight)
        ctx.has_weight = has_weight;
    else
        ctx.random_init = true;
    call_plugin(ctx.label, [&] { return vt->tensors(&ctx); });
    return std::move(ctx.roles);
}

std::vector<std::string> Model::folder_problems(const PluginHost &host, const std::string &dir, bool unread_tensors) {
    std::vector<std::string> problems;
    std::vector<TensorDecl> table;
    std::optional<formats::Checkpoint> ckpt;
    try {
        ckpt.emplace(formats::Checkpoint::open(dir));
        table = tensor_table(
            host, formats::load_hf_config(dir), [&](const std::string &n) { return ckpt->contains(n); }, dir);
    } catch (const std::exception &e) {
        problems.push_back(e.what());
        return problems;
    }
    std::set<std::string> declared;
    for (const TensorDecl &t : table) {
        declared.insert(t.name);
        if (t.flags & MANGO_TENSOR_TIED) continue;
        if (!ckpt->contains(t.name)) {
            if (!(t.flags & MANGO_TENSOR_OPTIONAL)) problems.push_back("missing tensor '" + t.name + "' (role " + t.role + ")");
            continue;
        }
        const auto &shape = ckpt->entry(t.name).shape;
        if (!t.shape.empty() && shape != t.shape)
            problems.push_back("tensor '" + t.name + "' has shape " + c10::str(at::IntArrayRef(shape)) + ", config.json implies " +
                               c10::str(at::IntArrayRef(t.shape)));
    }
    size_t unused = 0;
    std::string first;
    for (const std::string &n : ckpt->names())
        if (!declared.count(n) && unused++ == 0) first = n;
    if (unused && unread_tensors)
        problems.push_back(std::to_string(unused) + " tensor(s) the architecture does not read, e.g. '" + first + "'");
    const std::filesystem::path tok = std::filesystem::path(dir) / "tokenizer.json";
    if (std::filesystem::exists(tok)) try {
            formats::Tokenizer::from_file(tok.string());
        } catch (const std::exception &e) {
            problems.push_back(e.what());
        }
    return problems;
}

void Model::refuse_unloadable(const PluginHost &host, const std::string &dir, const std::string &out, const std::string &what) {
    const std::vector<std::string> problems = folder_problems(host, dir, false);
    if (problems.empty()) return;
    std::string list;
    for (size_t i = 0; i < problems.size() && i < 5; ++i) list += "\n  " + clip(problems[i], 400);
    if (problems.size() > 5) list += "\n  ... and " + std::to_string(problems.size() - 5) + " more";
    throw HostError("the " + what + " model would not load, so nothing was written to " + out + ":" + list);
}

std::unique_ptr<Model> Model::build(const PluginHost &host, const std::string &dir, at::ScalarType dtype, at::Device device, bool random,
                                    uint64_t seed, ExpertShard shard) {
    device = concrete(device, dir);
    std::unique_ptr<Model> m(new Model());
    m->dir_ = dir;
    m->dtype_ = dtype;
    m->device_ = device;
    m->config_ = formats::load_hf_config(dir);
    const registry::ComponentInfo &arch = architecture_for(host, m->config_);  // an unknown model_type is the first thing to say
    if (MANGO_HAS(static_cast<const mango_architecture_vtable *>(host.vtable(arch)), mango_architecture_vtable, tensors))
        check_fits(tensor_table(host, m->config_, nullptr, dir), dtype, device, dir);
    m->ctx_ = std::make_unique<InstanceContext>();
    m->ctx_->shard_rank = shard.rank;
    m->ctx_->shard_world = shard.world;
    if (random) {
        m->ctx_->random_init = true;
        m->ctx_->initializer_range = m->config_.raw.value("initializer_range", 0.02);
        at::manual_seed(seed);
    } else {
        m->ckpt_ = std::make_shared<formats::Checkpoint>(formats::Checkpoint::open(dir));
        auto ckpt = m->ckpt_;
        m->ctx_->has_weight = [ckpt](const std::string &name) { return ckpt->contains(name); };
        m->ctx_->weights = [ckpt, dtype, device, where = dir, ctx = m->ctx_.get()](const std::string &name) {
            if (!ckpt->contains(name)) throw HostError(where + " has no tensor '" + name + "'");
            return checked_weight(ckpt->tensor(name), name, where).to(device, read_dtype(*ctx, name, dtype));
        };
    }
    m->instantiate(host);
    return m;
}

std::unique_ptr<Model> Model::from_tensors(const PluginHost &host, const nlohmann::json &config,
                                           std::shared_ptr<const std::map<std::string, at::Tensor>> tensors, const std::string &where,
                                           at::ScalarType dtype, at::Device device) {
    device = concrete(device, where);
    std::unique_ptr<Model> m(new Model());
    m->dir_ = where;
    m->dtype_ = dtype;
    m->device_ = device;
    m->config_ = formats::parse_hf_config(config.dump(), where + "/config.json");
    m->ctx_ = std::make_unique<InstanceContext>();
    m->ctx_->has_weight = [tensors](const std::string &name) { return tensors->count(name) > 0; };
    m->ctx_->weights = [tensors, dtype, device, where, ctx = m->ctx_.get()](const std::string &name) {
        auto it = tensors->find(name);
        if (it == tensors->end()) throw HostError(where + " has no tensor '" + name + "'");
        return checked_weight(it->second, name, where).to(device, read_dtype(*ctx, name, dtype));
    };
    m->instantiate(host);
    return m;
}

double Model::physical_memory() {
    const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? double(pages) * double(page) : 0;
}

void Model::check_fits(const std::vector<TensorDecl> &table, at::ScalarType dtype, at::Device device, const std::string &where) {
    double elements = 0, largest = 0;
    std::string largest_name;
    for (const TensorDecl &t : table) {
        if (t.flags & MANGO_TENSOR_TIED) continue;
        double n = 1;
        for (int64_t d : t.shape) n *= double(d);
        elements += n;
        if (n > largest) largest = n, largest_name = t.name;
    }
    const double bytes = elements * double(c10::elementSize(dtype));
    if (!device.is_cpu()) return;  // device memory is the device's to refuse
    const double ram = physical_memory();
    if (ram > 0 && bytes > ram)
        throw HostError(where + ": the model needs " + format_bytes(bytes) + " for its weights as " + c10::toString(dtype) +
                        " (largest: '" + largest_name + "', " + format_bytes(largest * double(c10::elementSize(dtype))) +
                        "), more than this machine's " + format_bytes(ram) + " of memory; check config.json's sizes");
}

at::Tensor Model::checked_weight(const at::Tensor &t, const std::string &name, const std::string &where) {
    if (!t.is_floating_point())
        throw HostError(where + ": tensor '" + name + "' has dtype " + c10::toString(t.scalar_type()) +
                        ", expected a floating-point weight");
    return t;
}

void Model::instantiate(const PluginHost &host) {
    const registry::ComponentInfo *arch = &architecture_for(host, config_);
    component_ = *arch;
    vt_ = static_cast<const mango_architecture_vtable *>(host.vtable(*arch));
    ctx_->label = "architecture '" + arch->name + "' for " + dir_;
    ctx_->config = normalized_config(config_.raw);
    ctx_->param_options = at::TensorOptions().dtype(dtype_).device(device_);
    // The table is the truth about roles (describe()'s v1 declarations are replaced), and says which
    // weights stay float32 (MANGO_TENSOR_F32) before create() reads them: asked for once, here.
    const bool has_table = MANGO_HAS(vt_, mango_architecture_vtable, tensors) && vt_->tensors;
    std::vector<TensorDecl> table;
    if (has_table) {
        call_plugin(ctx_->label + ": tensors", [&] { return vt_->tensors(ctx_.get()); });
        table = std::move(ctx_->roles);
        ctx_->roles.clear();
        for (const TensorDecl &t : table)
            if (t.flags & MANGO_TENSOR_F32) ctx_->float32_weights.insert(t.name);
    }
    try {
        call_plugin(ctx_->label + ": create", [&] { return vt_->create(ctx_.get(), &self_); });
        mango_model_info info{};
        info.struct_size = sizeof info;
        call_plugin(ctx_->label + ": describe", [&] { return vt_->describe(self_, ctx_.get(), &info); });
        if (has_table) ctx_->roles = std::move(table);
        info_ = {info.is_causal != 0, info.hidden_size, info.n_layers,      info.vocab_size,          info.n_heads,
                 info.n_kv_heads,     info.head_dim,    info.max_positions, info.tied_embeddings != 0};
    } catch (...) {
        if (self_) vt_->destroy(self_);
        self_ = nullptr;
        throw;
    }
}

Model::~Model() {
    if (self_) vt_->destroy(self_);
}

at::Tensor Model::embed(const at::Tensor &ids, const at::Tensor &positions) {
    mango_tensor i = wrap(ids), p = wrap(positions), out = nullptr;
    clear_plugin_error();
    mango_status s;
    {
        PluginCallScope scope(ctx_->label, function_address(vt_->embed));
        s = vt_->embed(self_, ctx_.get(), i, p, &out);
    }
    host_api()->tensor_release(i);
    host_api()->tensor_release(p);
    check_plugin(s, ctx_->label + ": embed");
    return adopt(out, ctx_->label + ": embed");
}

at::Tensor Model::block(int32_t layer, const at::Tensor &hidden, const at::Tensor &mask, const at::Tensor &positions, bool use_cache) {
    if (layer < 0 || layer >= info_.n_layers)
        throw HostError(ctx_->label + ": layer " + std::to_string(layer) + " out of range (model has " + std::to_string(info_.n_layers) +
                        ")");
    if (offloader_ && at::GradMode::is_enabled() && hidden.requires_grad())
        throw HostError(ctx_->label +
                        ": the model is offloaded (`offload = true`), which is for inference: a backward pass "
                        "through it would need the weights its blocks dropped; train without offloading it");
    if (offloader_) offloader_->before_block(layer);
    struct AfterBlock {  // dropped again however the block ends
        Offloader *o;
        int32_t layer;
        ~AfterBlock() {
            if (o) o->after_block(layer);
        }
    } after{offloader_.get(), layer};
    mango_tensor h = wrap(hidden), m = wrap(mask), p = wrap(positions), out = nullptr;
    // A static decode step's mask has unwritten entries (zeros) by design; asking would cost a device sync.
    ctx_->mask_full = ctx_->static_cache && ctx_->static_cache->decoding ? false : mask_full(mask);
    ctx_->clear_reports();
    clear_plugin_error();
    mango_status s;
    {
        PluginCallScope scope(ctx_->label, function_address(vt_->block));
        s = vt_->block(self_, ctx_.get(), layer, h, m, p, use_cache ? 1 : 0, &out);
    }
    if (s == MANGO_OK && (!ctx_->losses.empty() || !ctx_->stats.empty())) {
        LayerReport r;
        r.losses = ctx_->losses;
        r.stats = ctx_->stats;
        r.mask = new_token_mask(mask, hidden.size(1));
        r.source = ctx_->label + ": block " + std::to_string(layer);
        r.layer = layer;
        reports_.push_back(std::move(r));
    }
    host_api()->tensor_release(h);
    host_api()->tensor_release(m);
    host_api()->tensor_release(p);
    const std::string what = ctx_->label + ": block " + std::to_string(layer);
    check_plugin(s, what);
    return adopt(out, what);
}

bool Model::mask_full(const at::Tensor &mask) {
    if (!mask.defined()) return true;
    if (!mask_seen_.defined() || !mask_seen_.is_same(mask) || mask_version_ != mask._version()) {
        mask_seen_ = mask;
        mask_version_ = mask._version();
        mask_full_ = mask.numel() == 0 || mask.ne(0).all().item<bool>();
    }
    return mask_full_;
}

at::Tensor Model::head(const at::Tensor &hidden) {
    mango_tensor h = wrap(hidden), out = nullptr;
    clear_plugin_error();
    mango_status s;
    {
        PluginCallScope scope(ctx_->label, function_address(vt_->head));
        s = vt_->head(self_, ctx_.get(), h, &out);
    }
    host_api()->tensor_release(h);
    check_plugin(s, ctx_->label + ": head");
    return adopt(out, ctx_->label + ": head");
}

void Model::clear_cache() {
    ctx_->cache.clear();
    ctx_->static_cache.reset();
    cached_ = 0;
}

void Model::begin_static_cache(int64_t capacity) {
    clear_cache();
    ctx_->static_cache = std::make_shared<InstanceContext::StaticCache>();
    ctx_->static_cache->capacity = capacity;
}

bool Model::static_cache_ready() const {
    const auto &sc = ctx_->static_cache;
    return sc && sc->appended && !sc->grown;
}

int64_t Model::offload() {
    if (offloader_) return offloader_->offloaded_bytes();
    std::map<std::string, int32_t> layer_of;
    for (const auto &r : ctx_->roles) layer_of[r.name] = r.layer;
    std::vector<std::pair<at::Tensor, int32_t>> weights;
    for (const auto &[name, t] : ctx_->weights_used) {
        auto it = layer_of.find(name);
        weights.emplace_back(t, it == layer_of.end() ? -1 : it->second);  // unknown: model-level, stays
    }
    offloader_ = std::make_unique<Offloader>(weights, info_.n_layers, device_);
    return offloader_->offloaded_bytes();
}

at::Tensor Model::new_token_mask(const at::Tensor &mask, int64_t T) const {
    const auto &sc = ctx_->static_cache;
    if (sc && sc->decoding) return mask.index_select(1, sc->write_at.to(mask.device()));
    return mask.narrow(1, mask.size(1) - T, T);
}

bool Model::kv_cache_used() const {
    const auto &sc = ctx_->static_cache;
    return !ctx_->cache.empty() || (sc && (sc->appended || sc->grown));
}

void Model::decode_at(int64_t entry) {
    auto &sc = ctx_->static_cache;
    if (!sc) throw HostError(ctx_->label + ": decode_at without a static KV cache (begin_static_cache first)");
    if (entry < 0 || entry >= sc->capacity)
        throw HostError(ctx_->label + ": static KV cache entry " + std::to_string(entry) + " out of range (capacity " +
                        std::to_string(sc->capacity) + ")");
    if (!sc->decoding) {
        sc->decoding = true;
        sc->write_at = at::full({1}, entry, at::TensorOptions().dtype(at::kLong).device(device_));
    } else {
        sc->write_at.fill_(entry);
    }
}

at::Tensor Model::forward(const at::Tensor &ids, const at::Tensor &mask, const at::Tensor &positions, bool use_cache) {
    reports_.clear();
    at::Tensor h = embed(ids, positions);
    const bool recompute = recompute_blocks(use_cache);
    for (int32_t l = 0; l < info_.n_layers; ++l) {
        if (recompute)
            h = recomputed([this, l, mask, positions](const at::Tensor &x) { return block(l, x, mask, positions, false); }, h,
                           trainable_tensors());
        else
            h = block(l, h, mask, positions, use_cache);
    }
    if (use_cache) cached_ += ids.size(1);
    return head(h);
}

}  // namespace mango
