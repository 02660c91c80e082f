#include "abi/plugins.hpp"

#include <mango/registry/options.hpp>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#define BOOST_DLL_USE_STD_FS
#include <boost/dll/shared_library.hpp>

#include <cstddef>
#include <mutex>

namespace mango {

const registry::ComponentInfo &PluginHost::require(const std::string &kind, const std::string &name) const {
    if (const registry::ComponentInfo *c = registry_.find(kind, name)) return *c;
    std::string msg = "no " + kind + " plugin named '" + clip(name) + "'";
    if (auto close = registry_.close_names(name); !close.empty()) {
        msg += "; did you mean";
        for (size_t i = 0; i < close.size(); ++i) msg += (i ? ", '" : " '") + close[i] + "'";
        msg += "?";
    }
    std::string installed;
    for (const auto &c : registry_.components())
        if (c.kind == kind || kind == "component") installed += (installed.empty() ? "" : ", ") + c.name;  // "component": any kind
    msg += " (installed " + kind + "s: " + (installed.empty() ? "none" : installed) + ")";
    throw HostError(msg);
}

const void *PluginHost::vtable(const registry::ComponentInfo &component) const {
    static std::mutex mu;
    static std::map<std::string, boost::dll::shared_library> loaded;
    std::lock_guard<std::mutex> lock(mu);
    auto it = loaded.find(component.library);
    if (it == loaded.end()) {
        boost::dll::shared_library lib;
        boost::dll::fs::error_code ec;
        lib.load(component.library, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local, ec);
        if (ec || !lib.has(MANGO_ENTRY_SYMBOL)) throw HostError("cannot load plugin library " + component.library + ": " + ec.message());
        it = loaded.emplace(component.library, std::move(lib)).first;
    }
    auto entry = it->second.get<const mango_plugin *(const mango_host_base *)>(MANGO_ENTRY_SYMBOL);
    const mango_plugin *p = entry(host_base());
    // The scan checked this library; re-check what we rely on in case the
    // file changed since.
    if (!p || p->abi_version != MANGO_ABI_VERSION || p->struct_size < sizeof(mango_plugin))
        throw HostError("plugin library " + component.library + " changed since it was scanned; run `mango plugins validate`");
    const int32_t kind = registry::kind_from_name(component.kind);
    for (size_t i = 0; i < p->n_components; ++i) {
        const mango_component &c = p->components[i];
        if (c.kind == kind && c.name && component.name == c.name && c.vtable) return c.vtable;
    }
    throw HostError(component.kind + " '" + component.name + "' is no longer in " + component.library);
}

Instance::~Instance() {
    if (self_ && destroy_) destroy_(self_);
}

namespace {

std::unique_ptr<InstanceContext> make_context(const registry::ComponentInfo &info, const InstanceSpec &spec, std::string &where) {
    auto ctx = std::make_unique<InstanceContext>();
    ctx->label = info.kind + " '" + info.name + "'";
    where = (spec.where.empty() ? "" : spec.where + ": ") + ctx->label;
    // Merge methods get their options per tensor (MergeInstance::merge); the others once, here.
    if (info.kind != "merge") {
        try {
            ctx->options = registry::resolve_options(info.options_schema, spec.options, where);
        } catch (const std::invalid_argument &e) {
            throw HostError(e.what());
        }
    }
    ctx->label = where;  // messages from host services name the instance and its place
    ctx->saved = spec.saved;
    ctx->param_options = spec.param_options;
    return ctx;
}

std::string dtype_text(const at::Tensor &t) { return c10::toString(t.scalar_type()); }

}  // namespace

void check_finite_floating(const at::Tensor &t, const std::string &where, const std::string &what) {
    if (!t.is_floating_point()) throw HostError(where + ": " + what + " has dtype " + dtype_text(t) + ", expected a floating-point tensor");
    if (!at::isfinite(t).all().item<bool>()) {
        const int64_t bad = (~at::isfinite(t)).sum().item<int64_t>();
        throw HostError(where + ": " + what + " has " + std::to_string(bad) + " non-finite value" + (bad == 1 ? "" : "s") +
                        " (NaN or inf)");
    }
}

std::unique_ptr<AdapterInstance> AdapterInstance::create(const PluginHost &host, const InstanceSpec &spec, int64_t d_in, int64_t d_out) {
    const registry::ComponentInfo &info = host.require("adapter", spec.name);
    auto vt = static_cast<const mango_adapter_vtable *>(host.vtable(info));
    std::string where;
    auto ctx = make_context(info, spec, where);
    std::unique_ptr<AdapterInstance> a(new AdapterInstance(info, std::move(ctx), where));
    a->vt_ = vt;
    a->d_in_ = d_in;
    a->d_out_ = d_out;
    call_plugin(where + ": create", [&] { return vt->create(a->ctx_.get(), d_in, d_out, &a->self_); });
    a->destroy_ = vt->destroy;
    a->affine_ = MANGO_HAS(vt, mango_adapter_vtable, is_affine) && vt->is_affine && vt->is_affine(a->self_) != 0;
    return a;
}

nlohmann::json spec_json(const InstanceSpec &s) { return {{"name", s.name}, {"options", s.options}}; }

at::Tensor AdapterInstance::difference(const at::Tensor &u, const at::Tensor &v, bool check) {
    if (!affine_) return forward(u, check) - forward(v, check);
    // (A u + b) - (A v + b) = A (u - v) = forward(u - v) - forward(0).
    return forward(u - v, check) - forward(at::zeros({1, d_in_}, u.options()), check);
}

at::Tensor AdapterInstance::forward(const at::Tensor &x, bool check) {
    if (x.size(-1) != d_in_)
        throw HostError(where_ + ": input has hidden size " + std::to_string(x.size(-1)) + ", expected " + std::to_string(d_in_));
    mango_tensor in = wrap(x), out = nullptr;
    clear_plugin_error();
    mango_status s;
    {
        PluginCallScope scope(where_, function_address(vt_->forward));
        s = vt_->forward(self_, ctx_.get(), in, &out);
    }
    host_api()->tensor_release(in);
    check_plugin(s, where_ + ": forward");
    at::Tensor y = adopt(out, where_ + ": forward");
    if (y.dim() != x.dim() || y.size(-1) != d_out_ ||
        !y.sizes().slice(0, size_t(y.dim() - 1)).equals(x.sizes().slice(0, size_t(x.dim() - 1)))) {
        std::vector<int64_t> want = x.sizes().vec();
        want.back() = d_out_;
        throw HostError(where_ + ": forward returned shape " + c10::str(y.sizes()) + ", expected " + c10::str(at::IntArrayRef(want)));
    }
    if (check) check_finite_floating(y.detach(), where_, "forward's output");
    return y;
}

std::unique_ptr<RouterInstance> RouterInstance::create(const PluginHost &host, const InstanceSpec &spec, int64_t hidden, int64_t experts) {
    const registry::ComponentInfo &info = host.require("router", spec.name);
    auto vt = static_cast<const mango_router_vtable *>(host.vtable(info));
    std::string where;
    auto ctx = make_context(info, spec, where);
    std::unique_ptr<RouterInstance> r(new RouterInstance(info, std::move(ctx), where));
    r->vt_ = vt;
    r->hidden_ = hidden;
    r->experts_ = experts;
    call_plugin(where + ": create", [&] { return vt->create(r->ctx_.get(), hidden, experts, &r->self_); });
    r->destroy_ = vt->destroy;
    return r;
}

RouterOutput RouterInstance::route(const at::Tensor &hidden, const at::Tensor &mask, const at::Tensor &positions, bool check) {
    ctx_->clear_reports();
    mango_tensor h = wrap(hidden), m = mask.defined() ? wrap(mask) : nullptr, p = positions.defined() ? wrap(positions) : nullptr,
                 out = nullptr;
    const bool v2 = MANGO_HAS(vt_, mango_router_vtable, route_v2) && vt_->route_v2;
    clear_plugin_error();
    mango_status s;
    {
        PluginCallScope scope(where_, v2 ? function_address(vt_->route_v2) : function_address(vt_->route));
        s = v2 ? vt_->route_v2(self_, ctx_.get(), h, m, p, &out) : vt_->route(self_, ctx_.get(), h, m, &out);
    }
    host_api()->tensor_release(h);
    host_api()->tensor_release(m);
    host_api()->tensor_release(p);
    const std::string what = where_ + (v2 ? ": route_v2" : ": route");
    check_plugin(s, what);
    RouterOutput r;
    r.weights = adopt(out, what);
    const bool pooled = r.weights.dim() == 2 && r.weights.size(0) == hidden.size(0);
    const bool per_token = r.weights.dim() == 3 && r.weights.size(0) == hidden.size(0) && r.weights.size(1) == hidden.size(1);
    if ((!pooled && !per_token) || r.weights.size(-1) != experts_)
        throw HostError(where_ + ": weights have shape " + c10::str(r.weights.sizes()) + ", expected [" + std::to_string(hidden.size(0)) +
                        ", " + std::to_string(experts_) + "] or [" + std::to_string(hidden.size(0)) + ", " +
                        std::to_string(hidden.size(1)) + ", " + std::to_string(experts_) + "]");
    if (check) check_weights(r.weights, hidden, mask);
    r.losses = ctx_->losses;
    r.stats = ctx_->stats;
    return r;
}

std::unique_ptr<MergeInstance> MergeInstance::create(const PluginHost &host, const InstanceSpec &spec) {
    const registry::ComponentInfo &info = host.require("merge", spec.name);
    auto vt = static_cast<const mango_merge_vtable *>(host.vtable(info));
    std::string where;
    auto ctx = make_context(info, spec, where);
    std::unique_ptr<MergeInstance> m(new MergeInstance(info, std::move(ctx), where));
    m->vt_ = vt;
    call_plugin(where + ": create", [&] { return vt->create(m->ctx_.get(), &m->self_); });
    m->destroy_ = vt->destroy;
    return m;
}

at::Tensor MergeInstance::merge(const MergeCall &call) {
    ctx_->options = call.options;
    ctx_->model_options = call.model_options;
    ctx_->generator = at::make_generator<at::CPUGeneratorImpl>(call.seed);
    std::vector<mango_tensor> handles;
    for (const at::Tensor &t : call.models) handles.push_back(wrap(t));
    mango_merge_input in{};
    in.struct_size = sizeof in;
    in.name = call.name.c_str();
    in.role = call.role.c_str();
    in.layer = call.layer;
    in.is_embed = call.is_embed ? 1 : 0;
    in.n_models = handles.size();
    in.models = handles.data();
    in.base = call.base;
    mango_tensor out = nullptr;
    clear_plugin_error();
    mango_status s;
    {
        PluginCallScope scope(where_, function_address(vt_->merge));
        s = vt_->merge(self_, ctx_.get(), &in, &out);
    }
    for (mango_tensor h : handles) host_api()->tensor_release(h);
    check_plugin(s, where_ + ": tensor '" + call.name + "'");
    return out ? adopt(out, where_) : at::Tensor();
}

std::unique_ptr<MoeConverterInstance> MoeConverterInstance::create(const PluginHost &host, const InstanceSpec &spec) {
    const registry::ComponentInfo &info = host.require("moe_converter", spec.name);
    auto vt = static_cast<const mango_moe_converter_vtable *>(host.vtable(info));
    std::string where;
    auto ctx = make_context(info, spec, where);
    std::unique_ptr<MoeConverterInstance> c(new MoeConverterInstance(info, std::move(ctx), where));
    c->vt_ = vt;
    call_plugin(where + ": create", [&] { return vt->create(c->ctx_.get(), &c->self_); });
    c->destroy_ = vt->destroy;
    return c;
}

std::map<std::string, at::Tensor> MoeConverterInstance::convert(const ConvertCall &call) {
    ctx_->emitted.clear();
    ctx_->generator = at::make_generator<at::CPUGeneratorImpl>(call.seed);
    std::vector<mango_tensor> owned;
    auto h = [&](const at::Tensor &t) -> mango_tensor {
        if (!t.defined()) return nullptr;
        owned.push_back(wrap(t));
        return owned.back();
    };
    mango_dense_ffn f{};
    f.struct_size = sizeof f;
    f.layer = call.layer;
    f.activation = call.activation.c_str();
    f.gate = h(call.gate);
    f.up = h(call.up);
    f.down = h(call.down);
    f.up_bias = h(call.up_bias);
    f.down_bias = h(call.down_bias);
    f.n_experts = call.experts;
    f.top_k = call.top_k;
    f.hidden_states = h(call.hidden_states);
    f.expert_directions = h(call.expert_directions);
    std::vector<mango_tensor> sg, su, sd;
    for (size_t i = 0; i < call.source_up.size(); ++i) {
        sg.push_back(h(call.source_gate[i]));
        su.push_back(h(call.source_up[i]));
        sd.push_back(h(call.source_down[i]));
    }
    f.n_sources = su.size();
    f.source_gate = sg.empty() ? nullptr : sg.data();
    f.source_up = su.empty() ? nullptr : su.data();
    f.source_down = sd.empty() ? nullptr : sd.data();
    clear_plugin_error();
    mango_status s;
    {
        PluginCallScope scope(where_, function_address(vt_->convert));
        s = vt_->convert(self_, ctx_.get(), &f);
    }
    for (mango_tensor t : owned) host_api()->tensor_release(t);
    check_plugin(s, where_ + ": layer " + std::to_string(call.layer));
    std::map<std::string, at::Tensor> out;
    for (const auto &[name, t] : ctx_->emitted) out[name] = t;
    ctx_->emitted.clear();
    return out;
}

void RouterInstance::check_weights(const at::Tensor &weights, const at::Tensor &hidden, const at::Tensor &mask) const {
    const at::Tensor w = weights.detach();
    check_finite_floating(w, where_, "the expert weights");
    if ((w < 0).any().item<bool>())
        throw HostError(where_ + ": the expert weights have negative values (min " + std::to_string(w.min().item<double>()) + ")");
    at::Tensor sums = w.to(at::kDouble).sum(-1);                                                    // [B] or [B, T]
    if (w.dim() == 3 && mask.defined()) sums = sums.masked_fill(mask.to(sums.device()) == 0, 1.0);  // padding may carry anything
    const double tolerance = w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble ? 1e-3 : 2e-2;
    const at::Tensor off = (sums - 1).abs();
    if ((off > tolerance).any().item<bool>()) {
        const int64_t worst = off.reshape({-1}).argmax().item<int64_t>();
        throw HostError(where_ + ": expert weights must sum to 1 per " + (w.dim() == 2 ? "sequence" : "token") + "; a row sums to " +
                        std::to_string(sums.reshape({-1})[worst].item<double>()) + " (hidden " + c10::str(hidden.sizes()) + ")");
    }
}

}  // namespace mango
