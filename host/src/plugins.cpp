#include "mango/host/plugins.hpp"

#include <mango/registry/options.hpp>

#include <ATen/ATen.h>

#define BOOST_DLL_USE_STD_FS
#include <boost/dll/shared_library.hpp>

#include <cstddef>
#include <mutex>

namespace mango {

const registry::ComponentInfo &PluginHost::require(const std::string &kind, const std::string &name) const {
    if (const registry::ComponentInfo *c = registry_.find(kind, name)) return *c;
    std::string msg = "no " + kind + " plugin named '" + name + "'";
    if (auto close = registry_.close_names(name); !close.empty()) {
        msg += "; did you mean";
        for (size_t i = 0; i < close.size(); ++i) msg += (i ? ", '" : " '") + close[i] + "'";
        msg += "?";
    }
    std::string installed;
    for (const auto &c : registry_.components())
        if (c.kind == kind) installed += (installed.empty() ? "" : ", ") + c.name;
    msg += " (installed " + kind + "s: " + (installed.empty() ? "none" : installed) + ")";
    throw Error(msg);
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
        if (ec || !lib.has(MANGO_ENTRY_SYMBOL))
            throw Error("cannot load plugin library " + component.library + ": " + ec.message());
        it = loaded.emplace(component.library, std::move(lib)).first;
    }
    auto entry = it->second.get<const mango_plugin *(const mango_host_base *)>(MANGO_ENTRY_SYMBOL);
    const mango_plugin *p = entry(host_base());
    // The scan checked this library; re-check what we rely on in case the
    // file changed since.
    if (!p || p->abi_version != MANGO_ABI_VERSION || p->struct_size < sizeof(mango_plugin))
        throw Error("plugin library " + component.library + " changed since it was scanned; run `mango plugins validate`");
    const int32_t kind = registry::kind_from_name(component.kind);
    for (size_t i = 0; i < p->n_components; ++i) {
        const mango_component &c = p->components[i];
        if (c.kind == kind && c.name && component.name == c.name && c.vtable) return c.vtable;
    }
    throw Error(component.kind + " '" + component.name + "' is no longer in " + component.library);
}

Instance::~Instance() {
    if (self_ && destroy_) destroy_(self_);
}

namespace {

std::unique_ptr<InstanceContext> make_context(const registry::ComponentInfo &info, const InstanceSpec &spec) {
    auto ctx = std::make_unique<InstanceContext>();
    ctx->label = info.kind + " '" + info.name + "'";
    const std::string where = (spec.where.empty() ? "" : spec.where + ": ") + ctx->label;
    try {
        ctx->options = registry::resolve_options(info.options_schema, spec.options, where);
    } catch (const std::invalid_argument &e) {
        throw Error(e.what());
    }
    ctx->saved = spec.saved;
    ctx->param_options = spec.param_options;
    return ctx;
}

}  // namespace

std::unique_ptr<AdapterInstance> AdapterInstance::create(const PluginHost &host, const InstanceSpec &spec,
                                                         int64_t d_in, int64_t d_out) {
    const registry::ComponentInfo &info = host.require("adapter", spec.name);
    auto vt = static_cast<const mango_adapter_vtable *>(host.vtable(info));
    std::unique_ptr<AdapterInstance> a(new AdapterInstance(info, make_context(info, spec)));
    a->vt_ = vt;
    a->d_in_ = d_in;
    a->d_out_ = d_out;
    check_plugin(vt->create(a->ctx_.get(), d_in, d_out, &a->self_), a->ctx_->label + " create");
    a->destroy_ = vt->destroy;
    const bool has_is_affine = vt->struct_size >= offsetof(mango_adapter_vtable, is_affine) + sizeof(vt->is_affine);
    a->affine_ = has_is_affine && vt->is_affine && vt->is_affine(a->self_) != 0;
    return a;
}

nlohmann::json spec_json(const InstanceSpec &s) { return {{"name", s.name}, {"options", s.options}}; }

at::Tensor AdapterInstance::difference(const at::Tensor &u, const at::Tensor &v) {
    if (!affine_) return forward(u) - forward(v);
    // (A u + b) - (A v + b) = A (u - v) = forward(u - v) - forward(0).
    return forward(u - v) - forward(at::zeros({1, d_in_}, u.options()));
}

at::Tensor AdapterInstance::forward(const at::Tensor &x) {
    if (x.size(-1) != d_in_)
        throw Error(ctx_->label + ": input has hidden size " + std::to_string(x.size(-1)) + ", expected " + std::to_string(d_in_));
    mango_tensor in = wrap(x), out = nullptr;
    const mango_status s = vt_->forward(self_, ctx_.get(), in, &out);
    host_api()->tensor_release(in);
    check_plugin(s, ctx_->label + " forward");
    at::Tensor y = adopt(out);
    if (y.size(-1) != d_out_)
        throw Error(ctx_->label + ": output has hidden size " + std::to_string(y.size(-1)) + ", expected " + std::to_string(d_out_));
    return y;
}

std::unique_ptr<RouterInstance> RouterInstance::create(const PluginHost &host, const InstanceSpec &spec,
                                                       int64_t hidden, int64_t experts) {
    const registry::ComponentInfo &info = host.require("router", spec.name);
    auto vt = static_cast<const mango_router_vtable *>(host.vtable(info));
    std::unique_ptr<RouterInstance> r(new RouterInstance(info, make_context(info, spec)));
    r->vt_ = vt;
    r->hidden_ = hidden;
    r->experts_ = experts;
    check_plugin(vt->create(r->ctx_.get(), hidden, experts, &r->self_), r->ctx_->label + " create");
    r->destroy_ = vt->destroy;
    return r;
}

RouterOutput RouterInstance::route(const at::Tensor &hidden, const at::Tensor &mask) {
    ctx_->clear_reports();
    mango_tensor h = wrap(hidden), m = mask.defined() ? wrap(mask) : nullptr, out = nullptr;
    const mango_status s = vt_->route(self_, ctx_.get(), h, m, &out);
    host_api()->tensor_release(h);
    host_api()->tensor_release(m);
    check_plugin(s, ctx_->label + " route");
    RouterOutput r;
    r.weights = adopt(out);
    const bool pooled = r.weights.dim() == 2 && r.weights.size(0) == hidden.size(0);
    const bool per_token = r.weights.dim() == 3 && r.weights.size(0) == hidden.size(0) && r.weights.size(1) == hidden.size(1);
    if ((!pooled && !per_token) || r.weights.size(-1) != experts_)
        throw Error(ctx_->label + ": weights have shape " + c10::str(r.weights.sizes()) + ", expected [B, " +
                    std::to_string(experts_) + "] or [B, T, " + std::to_string(experts_) + "]");
    r.losses = ctx_->losses;
    r.stats = ctx_->stats;
    return r;
}

}  // namespace mango
