// The host API table: tensor handles, the boxed ATen operator call, and the
// per-instance services. Every function catches everything: no exception
// ever crosses into plugin code.
#include "abi/context.hpp"
#include "abi/host_api.hpp"
#include "kernels/fused_ops.hpp"
#include "util/logging.hpp"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/version.h>
#ifdef MANGO_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

#include <ATen/core/grad_mode.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <cstring>
#include <mutex>
#include <unordered_map>

struct mango_op_t {
    c10::OperatorHandle handle;
    std::string name;
};

namespace mango {
namespace {

std::atomic<long> g_live{0};
std::atomic<bool> g_cancel{false};
thread_local std::string g_error;

mango_status fail(mango_status s, std::string message) {
    g_error = std::move(message);
    return s;
}

// Runs f, turning exceptions into a status and a thread-local message.
template <class F>
mango_status guarded(F &&f) noexcept {
    try {
        return f();
    } catch (const c10::Error &e) {
        return fail(MANGO_ERR_INVALID_ARGUMENT, e.what_without_backtrace());
    } catch (const mango::HostError &e) {
        return fail(MANGO_ERR_INVALID_ARGUMENT, e.what());
    } catch (const std::bad_alloc &) {
        return fail(MANGO_ERR_OUT_OF_MEMORY, "out of memory");
    } catch (const std::exception &e) {
        return fail(MANGO_ERR_INTERNAL, e.what());
    } catch (...) {
        return fail(MANGO_ERR_INTERNAL, "unknown error in host");
    }
}

// ---- errors, logging ------------------------------------------------------

const char *api_last_error() { return g_error.c_str(); }
void api_set_error(const char *message) { g_error = message ? message : ""; }

void api_log(int32_t level, const char *message) { log_message(level, message ? message : ""); }

int32_t api_is_cancelled() { return g_cancel.load() ? 1 : 0; }

// ---- tensors --------------------------------------------------------------

mango_tensor api_retain(mango_tensor t) { return t ? wrap(t->t) : nullptr; }
void api_release(mango_tensor t) {
    if (!t) return;
    --g_live;
    delete t;
}
int32_t api_ndim(mango_tensor t) { return t ? static_cast<int32_t>(t->t.dim()) : -1; }
// Dimension d (negative counts from the end) of t, or -1 when out of range.
int64_t dim_index(mango_tensor t, int32_t d) {
    if (!t || t->t.dim() == 0) return -1;
    const int64_t n = t->t.dim();
    const int64_t i = d < 0 ? d + n : d;
    return i >= 0 && i < n ? i : -1;
}
int64_t api_size(mango_tensor t, int32_t d) {
    const int64_t i = dim_index(t, d);
    return i < 0 ? -1 : t->t.size(i);
}
int64_t api_stride(mango_tensor t, int32_t d) {
    const int64_t i = dim_index(t, d);
    return i < 0 ? -1 : t->t.stride(i);
}
mango_dtype api_dtype(mango_tensor t) { return t ? from_scalar_type(t->t.scalar_type()) : 0; }

mango_device from_device(const c10::Device &d) {
    return mango_device{d.is_cuda() ? MANGO_DEVICE_CUDA : MANGO_DEVICE_CPU, d.has_index() ? d.index() : -1};
}
c10::Device to_device(mango_device d) {
    if (d.type == MANGO_DEVICE_CPU) return c10::Device(c10::kCPU);
    if (d.type == MANGO_DEVICE_CUDA) return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(d.index));
    throw mango::HostError("unknown device type " + std::to_string(d.type));
}

mango_device api_device(mango_tensor t) { return t ? from_device(t->t.device()) : mango_device{-1, -1}; }
void *api_data(mango_tensor t) { return t ? t->t.data_ptr() : nullptr; }

void *api_cuda_stream(mango_device d) {
#ifdef MANGO_WITH_CUDA
    if (d.type == MANGO_DEVICE_CUDA) return c10::cuda::getCurrentCUDAStream(d.index).stream();
#else
    (void)d;
#endif
    return nullptr;
}

mango_status api_from_data(const void *data, mango_dtype dtype, const int64_t *shape, int32_t ndim, mango_device device,
                           mango_tensor *out) {
    return guarded([&] {
        if (!out || (ndim > 0 && !shape) || ndim < 0) return fail(MANGO_ERR_INVALID_ARGUMENT, "tensor_from_data: bad shape");
        std::vector<int64_t> sizes(shape, shape + ndim);
        at::Tensor t = at::empty(sizes, at::TensorOptions().dtype(to_scalar_type(dtype)));
        if (t.numel() > 0) {
            if (!data) return fail(MANGO_ERR_INVALID_ARGUMENT, "tensor_from_data: data is NULL");
            std::memcpy(t.data_ptr(), data, t.nbytes());
        }
        *out = wrap(t.to(to_device(device)));
        return MANGO_OK;
    });
}

// ---- operators --------------------------------------------------------------

std::string type_text(const c10::Argument &a) { return a.type()->str(); }

c10::TypePtr base_type(const c10::Argument &a) {
    c10::TypePtr t = a.type();
    if (auto opt = t->cast<c10::OptionalType>()) t = opt->getElementType();
    return t;
}

c10::IValue to_ivalue(const mango_value &v, const c10::Argument &arg, size_t index, const mango_op_t &op) {
    const c10::TypePtr t = base_type(arg);
    const auto kind = t->kind();
    auto bad = [&](const char *given) {
        return mango::HostError(op.name + ": argument " + std::to_string(index + 1) + " ('" + arg.name() + "') expects " + type_text(arg) +
                                ", got " + given);
    };
    const bool wants_tensor = kind == c10::TypeKind::TensorType;
    static const char *kGiven[] = {"None",        "a tensor",      "an int",       "a float", "a bool",  "a string",
                                   "an int list", "a tensor list", "a float list", "a dtype", "a device"};
    const char *given = v.kind >= 0 && v.kind <= 10 ? kGiven[v.kind] : "an unknown value kind";
    if (wants_tensor && v.kind != MANGO_VALUE_TENSOR && v.kind != MANGO_VALUE_NONE) throw bad(given);
    if (!wants_tensor && v.kind == MANGO_VALUE_TENSOR) throw bad(given);
    switch (v.kind) {
        case MANGO_VALUE_NONE:
            if (arg.type()->kind() != c10::TypeKind::OptionalType) throw bad("None");
            return c10::IValue();
        case MANGO_VALUE_TENSOR:
            if (!v.u.tensor) {
                if (arg.type()->kind() == c10::TypeKind::OptionalType) return c10::IValue();
                throw bad("a NULL tensor");
            }
            return c10::IValue(v.u.tensor->t);
        case MANGO_VALUE_INT:
            if (kind == c10::TypeKind::FloatType) return c10::IValue(static_cast<double>(v.u.i));
            if (kind == c10::TypeKind::BoolType) throw bad("an int");
            return c10::IValue(v.u.i);
        case MANGO_VALUE_DOUBLE:
            if (kind == c10::TypeKind::IntType || kind == c10::TypeKind::SymIntType) throw bad("a float");
            return c10::IValue(v.u.d);
        case MANGO_VALUE_BOOL:
            return c10::IValue(v.u.b != 0);
        case MANGO_VALUE_STRING:
            return c10::IValue(std::string(v.u.s ? v.u.s : ""));
        case MANGO_VALUE_INT_LIST:  // also serves SymInt[] parameters
            return c10::IValue(std::vector<int64_t>(v.u.ints.data, v.u.ints.data + v.u.ints.len));
        case MANGO_VALUE_DOUBLE_LIST:
            return c10::IValue(std::vector<double>(v.u.doubles.data, v.u.doubles.data + v.u.doubles.len));
        case MANGO_VALUE_TENSOR_LIST: {
            const bool optional_items = [&] {
                auto list = t->cast<c10::ListType>();
                return list && list->getElementType()->kind() == c10::TypeKind::OptionalType;
            }();
            if (optional_items) {
                c10::List<c10::optional<at::Tensor>> items;
                for (size_t i = 0; i < v.u.tensors.len; ++i)
                    items.push_back(v.u.tensors.data[i] ? c10::optional<at::Tensor>(v.u.tensors.data[i]->t) : c10::nullopt);
                return c10::IValue(items);
            }
            c10::List<at::Tensor> items;
            for (size_t i = 0; i < v.u.tensors.len; ++i) {
                if (!v.u.tensors.data[i]) throw bad("a list with a NULL tensor");
                items.push_back(v.u.tensors.data[i]->t);
            }
            return c10::IValue(items);
        }
        case MANGO_VALUE_DTYPE:
            return c10::IValue(to_scalar_type(static_cast<mango_dtype>(v.u.i)));
        case MANGO_VALUE_DEVICE:
            return c10::IValue(to_device(v.u.device));
        default:
            throw bad(("unknown value kind " + std::to_string(v.kind)).c_str());
    }
}

mango_status api_find_op(const char *name, const char *overload, const mango_op **out) {
    return guarded([&] {
        if (!name || !out) return fail(MANGO_ERR_INVALID_ARGUMENT, "find_op: name and out are required");
        kernels::register_fused_ops();  // the host's own mango:: operators
        static std::mutex mu;
        static std::unordered_map<std::string, std::unique_ptr<mango_op_t>> ops;
        const std::string key = std::string(name) + "." + (overload ? overload : "");
        std::lock_guard<std::mutex> lock(mu);
        auto it = ops.find(key);
        if (it == ops.end()) {
            auto handle = c10::Dispatcher::singleton().findSchema({name, overload ? overload : ""});
            if (!handle) {
                *out = nullptr;
                return fail(MANGO_ERR_NOT_FOUND, std::string("no operator ") + name +
                                                     (overload && *overload ? std::string(".") + overload : "") + " in this LibTorch (" +
                                                     TORCH_VERSION + ")");
            }
            it = ops.emplace(key, std::make_unique<mango_op_t>(mango_op_t{*handle, key})).first;
        }
        *out = it->second.get();
        return MANGO_OK;
    });
}

// MANGO_PROFILE_OPS=1: time spent in each operator plugins call, printed to
// stderr at exit (slowest first) — where a plugin's time goes.
struct OpProfile {
    std::mutex mu;
    std::map<std::string, std::pair<double, long>> seconds;  // op -> (total, calls)
    bool on = [] {
        const char *e = std::getenv("MANGO_PROFILE_OPS");
        return e && *e && std::string(e) != "0";
    }();
    ~OpProfile() {
        if (!on || seconds.empty()) return;
        std::vector<std::pair<double, std::string>> rows;
        for (const auto &[name, v] : seconds) rows.push_back({v.first, name});
        std::sort(rows.rbegin(), rows.rend());
        std::fprintf(stderr, "operator profile (MANGO_PROFILE_OPS):\n");
        for (const auto &[t, name] : rows)
            std::fprintf(stderr, "  %10.1f ms  %8ld calls  %s\n", t * 1e3, seconds[name].second, name.c_str());
    }
};
OpProfile g_profile;

mango_status call_op_impl(const mango_op *op, const mango_value *args, size_t n_args, mango_value *results, size_t max_results,
                          size_t *n_results);

mango_status api_call_op(const mango_op *op, const mango_value *args, size_t n_args, mango_value *results, size_t max_results,
                         size_t *n_results) {
    if (!g_profile.on || !op) return call_op_impl(op, args, n_args, results, max_results, n_results);
    const auto start = std::chrono::steady_clock::now();
    const mango_status s = call_op_impl(op, args, n_args, results, max_results, n_results);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::lock_guard<std::mutex> lock(g_profile.mu);
    auto &slot = g_profile.seconds[op->name];
    slot.first += dt;
    ++slot.second;
    return s;
}

mango_status call_op_impl(const mango_op *op, const mango_value *args, size_t n_args, mango_value *results, size_t max_results,
                          size_t *n_results) {
    if (n_results) *n_results = 0;
    return guarded([&] {
        if (!op) return fail(MANGO_ERR_INVALID_ARGUMENT, "call_op: op is NULL");
        const auto &params = op->handle.schema().arguments();
        if (n_args > params.size())
            return fail(MANGO_ERR_INVALID_ARGUMENT,
                        op->name + " takes " + std::to_string(params.size()) + " arguments, got " + std::to_string(n_args));
        std::vector<c10::IValue> stack;
        stack.reserve(params.size());
        for (size_t i = 0; i < n_args; ++i) stack.push_back(to_ivalue(args[i], params[i], i, *op));
        for (size_t i = n_args; i < params.size(); ++i) {
            if (!params[i].default_value())
                return fail(MANGO_ERR_INVALID_ARGUMENT, op->name + ": missing argument '" + params[i].name() + "'");
            stack.push_back(*params[i].default_value());
        }
        try {
            op->handle.callBoxed(stack);
        } catch (const c10::Error &e) {
            return fail(MANGO_ERR_INVALID_ARGUMENT, op->name + ": " + e.what_without_backtrace());
        }

        size_t n = 0;
        auto put = [&](mango_value v) {
            if (n >= max_results) {
                if (v.kind == MANGO_VALUE_TENSOR) api_release(v.u.tensor);
                throw mango::HostError(op->name + " returned more than " + std::to_string(max_results) + " results");
            }
            results[n++] = v;
        };
        try {
            for (const c10::IValue &r : stack) {
                mango_value v{};
                if (r.isTensor()) {
                    v.kind = MANGO_VALUE_TENSOR;
                    v.u.tensor = wrap(r.toTensor());
                    put(v);
                } else if (r.isTensorList()) {
                    for (const at::Tensor &t : r.toTensorVector()) {
                        mango_value e{};
                        e.kind = MANGO_VALUE_TENSOR;
                        e.u.tensor = wrap(t);
                        put(e);
                    }
                } else if (r.isInt()) {
                    v.kind = MANGO_VALUE_INT;
                    v.u.i = r.toInt();
                    put(v);
                } else if (r.isDouble()) {
                    v.kind = MANGO_VALUE_DOUBLE;
                    v.u.d = r.toDouble();
                    put(v);
                } else if (r.isBool()) {
                    v.kind = MANGO_VALUE_BOOL;
                    v.u.b = r.toBool();
                    put(v);
                } else if (r.isNone()) {
                    put(v);
                } else {
                    throw mango::HostError(op->name + " returned a " + r.tagKind() + ", which the plugin ABI cannot carry");
                }
            }
        } catch (...) {
            for (size_t i = 0; i < n; ++i)
                if (results[i].kind == MANGO_VALUE_TENSOR) api_release(results[i].u.tensor);
            throw;
        }
        if (n_results) *n_results = n;
        return MANGO_OK;
    });
}

// ---- context services ------------------------------------------------------

mango_status need_ctx(mango_context *ctx, const char *key) {
    if (!ctx) return fail(MANGO_ERR_INVALID_ARGUMENT, "context is NULL");
    if (!key) return fail(MANGO_ERR_INVALID_ARGUMENT, "key is NULL");
    return MANGO_OK;
}

mango_status api_option(mango_context *ctx, const char *key, mango_value *out) {
    if (mango_status s = need_ctx(ctx, key)) return s;
    return guarded([&] {
        auto it = ctx->options.find(key);
        if (it == ctx->options.end()) return fail(MANGO_ERR_NOT_FOUND, ctx->label + ": no option '" + key + "'");
        return json_to_value(*ctx, *it, out);
    });
}

mango_status api_config(mango_context *ctx, const char *key, mango_value *out) {
    if (mango_status s = need_ctx(ctx, key)) return s;
    return guarded([&] {
        const nlohmann::json *node = &ctx->config;
        std::string path = key;
        size_t start = 0;
        while (true) {
            const size_t dot = path.find('.', start);
            const std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
            const bool index = node->is_array() && !part.empty() && part.find_first_not_of("0123456789") == std::string::npos;
            if (index && std::stoull(part) < node->size()) {
                node = &(*node)[std::stoull(part)];
            } else {
                if (!node->is_object() || !node->contains(part)) return fail(MANGO_ERR_NOT_FOUND, "config has no key '" + path + "'");
                node = &(*node)[part];
            }
            if (dot == std::string::npos) break;
            start = dot + 1;
        }
        return json_to_value(*ctx, *node, out);
    });
}

// Hands a model weight to the plugin and records it (Model::named_weights).
mango_status give_weight(mango_context *ctx, const char *name, at::Tensor t, mango_tensor *out) {
    kernels::mark_weight(t);
    ctx->weights_used.emplace_back(name, t);
    *out = wrap(std::move(t));
    return MANGO_OK;
}

mango_status api_weight(mango_context *ctx, const char *name, mango_tensor *out) {
    if (mango_status s = need_ctx(ctx, name)) return s;
    return guarded([&] {
        if (!ctx->weights) return fail(MANGO_ERR_NOT_FOUND, ctx->label + " has no checkpoint to read '" + name + "' from");
        return give_weight(ctx, name, ctx->weights(name), out);
    });
}

mango_status api_parameter(mango_context *ctx, const char *name, mango_tensor init, int32_t trainable, mango_tensor *out) {
    if (mango_status s = need_ctx(ctx, name)) return s;
    return guarded([&] {
        if (!init || !out) return fail(MANGO_ERR_INVALID_ARGUMENT, ctx->label + ": parameter '" + name + "' needs an initial value");
        for (const auto &p : ctx->parameters)
            if (p.name == name) return fail(MANGO_ERR_INVALID_ARGUMENT, ctx->label + ": parameter '" + name + "' declared twice");
        at::Tensor value = init->t.detach();
        if (auto it = ctx->saved.find(name); it != ctx->saved.end()) {
            if (!it->second.sizes().equals(value.sizes()))
                return fail(MANGO_ERR_SHAPE, ctx->label + ": saved parameter '" + name + "' has shape " + c10::str(it->second.sizes()) +
                                                 ", expected " + c10::str(value.sizes()));
            value = it->second;
        }
        value = value.to(ctx->param_options, /*non_blocking=*/false, /*copy=*/true).contiguous();
        value.set_requires_grad(trainable != 0);
        ctx->parameters.push_back({name, value, trainable != 0});
        *out = wrap(value);
        return MANGO_OK;
    });
}

int32_t api_is_training(mango_context *ctx) { return ctx && ctx->training ? 1 : 0; }

mango_status api_report(mango_context *ctx, int32_t what, const char *name, mango_tensor value) {
    if (mango_status s = need_ctx(ctx, name)) return s;
    if (!value) return fail(MANGO_ERR_INVALID_ARGUMENT, ctx->label + ": report '" + name + "' without a value");
    if (what == MANGO_REPORT_LOSS) {
        if (value->t.numel() != 1) return fail(MANGO_ERR_SHAPE, ctx->label + ": loss '" + name + "' must be a scalar");
        ctx->losses.emplace_back(name, value->t);
    } else if (what == MANGO_REPORT_STAT) {
        ctx->stats.emplace_back(name, value->t);
    } else {
        return fail(MANGO_ERR_INVALID_ARGUMENT, "report: unknown kind " + std::to_string(what));
    }
    return MANGO_OK;
}

mango_status api_cache_get(mango_context *ctx, const char *key, mango_tensor *out) {
    if (mango_status s = need_ctx(ctx, key)) return s;
    auto it = ctx->cache.find(key);
    if (it == ctx->cache.end()) {
        *out = nullptr;
        return fail(MANGO_ERR_NOT_FOUND, "cache slot '" + std::string(key) + "' is empty");
    }
    *out = wrap(it->second);
    return MANGO_OK;
}

mango_status api_cache_set(mango_context *ctx, const char *key, mango_tensor value) {
    if (mango_status s = need_ctx(ctx, key)) return s;
    if (!value) {
        ctx->cache.erase(key);
        return MANGO_OK;
    }
    ctx->cache[key] = value->t;
    if (ctx->static_cache) ctx->static_cache->grown = true;
    return MANGO_OK;
}

// A static cache's decode-step entries, written by the caller: two different slots in one launch (the
// same slot twice: in order, the second entry winning as with two calls).
void write_entries(const std::vector<kernels::CacheSlotWrite> &writes, const at::Tensor &at) {
    if (writes.size() == 2 && !writes[0].slot.is_same(writes[1].slot) && kernels::write_cache_entries(writes.data(), 2, at)) return;
    for (const kernels::CacheSlotWrite &w : writes)
        if (!kernels::write_cache_entries(&w, 1, at)) w.slot.index_copy_(w.dim, at, w.value);
}

// cache_append's work for one slot, inside guarded(): `out` gets the slot's entries. A static cache's
// decode-step entry goes to `pending` for the caller to write.
mango_status append_to_slot(mango_context *ctx, const char *key, const at::Tensor &v, int32_t dim, at::Tensor &out,
                            std::vector<kernels::CacheSlotWrite> &pending) {
    if (dim < 0) dim += static_cast<int32_t>(v.dim());
    if (dim < 0 || dim >= v.dim())
        return fail(MANGO_ERR_INVALID_ARGUMENT, ctx->label + ": cache_append '" + key + "': dim out of range for " + c10::str(v.sizes()));
    auto *sc = ctx->static_cache.get();
    if (!sc) {  // the growing cache
        auto it = ctx->cache.find(key);
        out = it == ctx->cache.end() ? v : at::cat({it->second, v}, dim);
        ctx->cache[key] = out;
        return MANGO_OK;
    }
    sc->appended = true;
    if (sc->decoding && !sc->slots.count(key))  // a slot made inside a captured step would be re-zeroed on every replay
        return fail(MANGO_ERR_INVALID_ARGUMENT, ctx->label + ": cache_append '" + key +
                                                    "': a new cache slot during a decode step (every slot must be filled by the prefill)");
    auto &[slot, written] = sc->slots[key];
    if (!slot.defined()) {
        std::vector<int64_t> shape = v.sizes().vec();
        shape[size_t(dim)] = sc->capacity;
        slot = at::zeros(shape, v.options());
        written = 0;
    }
    std::vector<int64_t> want = slot.sizes().vec(), got = v.sizes().vec();
    want[size_t(dim)] = got[size_t(dim)];
    if (want != got || v.scalar_type() != slot.scalar_type())
        return fail(MANGO_ERR_SHAPE, ctx->label + ": cache_append '" + key + "' of " + c10::str(v.sizes()) + " " +
                                         c10::toString(v.scalar_type()) + " to a slot of " + c10::str(slot.sizes()) + " " +
                                         c10::toString(slot.scalar_type()));
    const int64_t T = v.size(dim);
    if (sc->decoding) {
        if (T != sc->write_at.numel())
            return fail(MANGO_ERR_SHAPE, ctx->label + ": cache_append '" + key + "': a decode step appends " +
                                             std::to_string(sc->write_at.numel()) + " entries, got " + std::to_string(T));
        pending.push_back({slot, dim, v});
        out = slot;
        return MANGO_OK;
    }
    if (written + T > sc->capacity)
        return fail(MANGO_ERR_SHAPE, ctx->label + ": static KV cache slot '" + key + "' holds " + std::to_string(sc->capacity) +
                                         " entries; " + std::to_string(written) + " written, " + std::to_string(T) + " more asked");
    slot.narrow(dim, written, T).copy_(v);
    written += T;
    out = slot.narrow(dim, 0, written);
    return MANGO_OK;
}

mango_status api_cache_append(mango_context *ctx, const char *key, mango_tensor value, int32_t dim, mango_tensor *out) {
    if (mango_status s = need_ctx(ctx, key)) return s;
    if (!value || !out) return fail(MANGO_ERR_INVALID_ARGUMENT, ctx->label + ": cache_append '" + key + "' without a value or output");
    return guarded([&] {
        std::vector<kernels::CacheSlotWrite> pending;
        at::Tensor all;
        if (mango_status s = append_to_slot(ctx, key, value->t, dim, all, pending)) return s;
        if (!pending.empty()) write_entries(pending, ctx->static_cache->write_at);
        *out = wrap(all);
        return MANGO_OK;
    });
}

mango_status api_cache_append_pair(mango_context *ctx, const char *key_a, mango_tensor a, const char *key_b, mango_tensor b, int32_t dim,
                                   mango_tensor *out_a, mango_tensor *out_b) {
    if (mango_status s = need_ctx(ctx, key_a)) return s;
    if (!key_b || !a || !b || !out_a || !out_b)
        return fail(MANGO_ERR_INVALID_ARGUMENT,
                    ctx->label + ": cache_append_pair '" + key_a + "' without a second key, a value or an output");
    return guarded([&] {
        std::vector<kernels::CacheSlotWrite> pending;
        at::Tensor all_a, all_b;
        mango_status s = append_to_slot(ctx, key_a, a->t, dim, all_a, pending);
        if (s == MANGO_OK) s = append_to_slot(ctx, key_b, b->t, dim, all_b, pending);
        if (!pending.empty()) write_entries(pending, ctx->static_cache->write_at);  // what succeeded is appended, as two calls would
        if (s != MANGO_OK) return s;
        *out_a = wrap(all_a);
        *out_b = wrap(all_b);
        return MANGO_OK;
    });
}

mango_status api_emit(mango_context *ctx, const char *name, mango_tensor value) {
    if (mango_status s = need_ctx(ctx, name)) return s;
    if (!value) return fail(MANGO_ERR_INVALID_ARGUMENT, ctx->label + ": emit '" + name + "' without a value");
    ctx->emitted.emplace_back(name, value->t);
    return MANGO_OK;
}

mango_status api_model_option(mango_context *ctx, size_t model, const char *key, mango_value *out) {
    if (mango_status s = need_ctx(ctx, key)) return s;
    return guarded([&] {
        if (model >= ctx->model_options.size())
            return fail(MANGO_ERR_INVALID_ARGUMENT, ctx->label + ": no model #" + std::to_string(model));
        const nlohmann::json &opts = ctx->model_options[model];
        if (!opts.contains(key))
            return fail(MANGO_ERR_NOT_FOUND, ctx->label + ": model #" + std::to_string(model) + " has no option '" + key + "'");
        return json_to_value(*ctx, opts[key], out);
    });
}

mango_status api_declare_tensor(mango_context *ctx, int32_t layer, const char *role, const char *name) {
    if (mango_status s = need_ctx(ctx, role)) return s;
    if (!name) return fail(MANGO_ERR_INVALID_ARGUMENT, "declare_tensor: name is NULL");
    InstanceContext::Role r;
    r.layer = layer;
    r.role = role;
    r.name = name;
    ctx->roles.push_back(std::move(r));
    return MANGO_OK;
}

mango_status api_weight_shaped(mango_context *ctx, const char *name, const int64_t *shape, int32_t ndim, mango_tensor *out) {
    if (mango_status s = need_ctx(ctx, name)) return s;
    return guarded([&] {
        if (ndim < 0 || (ndim > 0 && !shape) || !out) return fail(MANGO_ERR_INVALID_ARGUMENT, "weight_shaped: bad shape");
        const std::vector<int64_t> want(shape, shape + ndim);
        if (ctx->random_init) {
            const std::string n = name;
            const bool bias = n.size() >= 5 && n.compare(n.size() - 5, 5, ".bias") == 0;
            const at::TensorOptions opts = ctx->float32_weights.count(n) ? ctx->param_options.dtype(at::kFloat) : ctx->param_options;
            // Drawn on the CPU in float32, then moved: a seed gives the same model on every device and dtype.
            at::Tensor t = want.size() >= 2 ? (at::randn(want, at::kFloat) * ctx->initializer_range).to(opts)
                           : bias           ? at::zeros(want, opts)
                                            : at::ones(want, opts);
            return give_weight(ctx, name, t, out);
        }
        if (!ctx->weights) return fail(MANGO_ERR_NOT_FOUND, ctx->label + " has no checkpoint to read '" + name + "' from");
        at::Tensor t = ctx->weights(name);
        if (!t.sizes().equals(want))
            return fail(MANGO_ERR_SHAPE, "tensor '" + std::string(name) + "' has shape " + c10::str(t.sizes()) + ", expected " +
                                             c10::str(at::IntArrayRef(want)));
        return give_weight(ctx, name, t, out);
    });
}

// ---- revision 5 ------------------------------------------------------------

AllToAll g_all_to_all = nullptr;
int32_t g_world = 1;

void api_expert_shard(mango_context *ctx, int32_t *rank, int32_t *world) {
    if (rank) *rank = ctx ? ctx->shard_rank : 0;
    if (world) *world = ctx ? ctx->shard_world : 1;
}

mango_status api_all_to_all(mango_tensor input, const int64_t *send_rows, const int64_t *recv_rows, mango_tensor *out) {
    return guarded([&] {
        if (!input || !send_rows || !recv_rows || !out) return fail(MANGO_ERR_INVALID_ARGUMENT, "all_to_all: NULL argument");
        const at::Tensor &x = input->t;
        if (x.dim() < 1) return fail(MANGO_ERR_INVALID_ARGUMENT, "all_to_all: the input needs a first dimension to split");
        std::vector<int64_t> send(send_rows, send_rows + g_world), recv(recv_rows, recv_rows + g_world);
        int64_t sent = 0;
        for (int64_t n : send) {
            if (n < 0) return fail(MANGO_ERR_INVALID_ARGUMENT, "all_to_all: a negative row count");
            sent += n;
        }
        if (sent != x.size(0))
            return fail(MANGO_ERR_SHAPE, "all_to_all: the send counts add up to " + std::to_string(sent) + " rows, the input has " +
                                             std::to_string(x.size(0)));
        for (int64_t n : recv)
            if (n < 0) return fail(MANGO_ERR_INVALID_ARGUMENT, "all_to_all: a negative row count");
        *out = wrap(g_all_to_all ? g_all_to_all(x, send, recv) : x.clone());
        return MANGO_OK;
    });
}

// ---- revision 3 ------------------------------------------------------------

int32_t api_attention_mask_full(mango_context *ctx) { return ctx && ctx->mask_full ? 1 : 0; }

int64_t api_cache_capacity(mango_context *ctx) { return ctx && ctx->static_cache ? ctx->static_cache->capacity : 0; }

int32_t api_wants_reports(mango_context *ctx) { return ctx && (ctx->reporting || ctx->training) ? 1 : 0; }

int32_t api_set_grad_enabled(int32_t enabled) {
    const bool previous = at::GradMode::is_enabled();
    at::GradMode::set_enabled(enabled != 0);
    return previous ? 1 : 0;
}

mango_status api_copy_to_host(mango_tensor t, void *dst, size_t dst_bytes) {
    return guarded([&] {
        if (!t || (!dst && dst_bytes)) return fail(MANGO_ERR_INVALID_ARGUMENT, "tensor_copy_to_host: tensor or destination is NULL");
        const at::Tensor c = t->t.detach().to(at::kCPU).contiguous();
        if (c.nbytes() != dst_bytes)
            return fail(MANGO_ERR_INVALID_ARGUMENT, "tensor_copy_to_host: the tensor has " + std::to_string(c.nbytes()) +
                                                        " bytes, the destination " + std::to_string(dst_bytes));
        if (dst_bytes) std::memcpy(dst, c.data_ptr(), dst_bytes);
        return MANGO_OK;
    });
}

mango_status api_weight_exists(mango_context *ctx, const char *name, int32_t *exists) {
    if (mango_status s = need_ctx(ctx, name)) return s;
    return guarded([&] {
        if (!exists) return fail(MANGO_ERR_INVALID_ARGUMENT, "weight_exists: out is NULL");
        *exists = ctx->random_init ? 1 : ctx->has_weight ? (ctx->has_weight(name) ? 1 : 0) : 0;
        return MANGO_OK;
    });
}

mango_status api_declare_tensor_v2(mango_context *ctx, const mango_tensor_decl *d) {
    if (!ctx || !d) return fail(MANGO_ERR_INVALID_ARGUMENT, "declare_tensor_v2: context or declaration is NULL");
    return guarded([&] {
        if (d->struct_size < offsetof(mango_tensor_decl, tied_to) + sizeof(d->tied_to))
            return fail(MANGO_ERR_INVALID_ARGUMENT,
                        ctx->label + ": declare_tensor_v2: struct_size " + std::to_string(d->struct_size) + " is too small");
        if (!d->role || !d->name || d->ndim < 0 || (d->ndim > 0 && !d->shape))
            return fail(MANGO_ERR_INVALID_ARGUMENT, ctx->label + ": declare_tensor_v2: role, name and shape are required");
        if ((d->flags & MANGO_TENSOR_TIED) && !d->tied_to)
            return fail(MANGO_ERR_INVALID_ARGUMENT, ctx->label + ": tensor '" + d->name + "' is TIED but names no tensor it is tied to");
        for (int32_t i = 0; i < d->ndim; ++i)
            if (d->shape[i] < 0)
                return fail(MANGO_ERR_INVALID_ARGUMENT, ctx->label + ": tensor '" + d->name + "' has a negative dimension");
        InstanceContext::Role r;
        r.layer = d->layer;
        r.role = d->role;
        r.name = d->name;
        r.shape.assign(d->shape, d->shape + d->ndim);
        r.flags = d->flags;
        if (d->tied_to) r.tied_to = d->tied_to;
        ctx->roles.push_back(std::move(r));
        return MANGO_OK;
    });
}

mango_status api_random_like(mango_context *ctx, mango_tensor like, mango_tensor *out) {
    if (!ctx || !like || !out) return fail(MANGO_ERR_INVALID_ARGUMENT, "random_like: context, tensor and out are required");
    return guarded([&] {
        // Drawn on the CPU from the instance's stream, then moved: the same numbers on every device.
        const auto opts = at::TensorOptions().dtype(at::kFloat);
        at::Tensor r = ctx->generator.defined() ? at::rand(like->t.sizes(), ctx->generator, opts) : at::rand(like->t.sizes(), opts);
        *out = wrap(r.to(like->t.device()));
        return MANGO_OK;
    });
}

size_t g_api_size = 0;  // testing: the table size get_api reports (0 = full)

const mango_host_api kApiV1 = {
    sizeof(mango_host_api),
    1,
    api_last_error,
    api_set_error,
    api_log,
    api_is_cancelled,
    api_retain,
    api_release,
    api_ndim,
    api_size,
    api_stride,
    api_dtype,
    api_device,
    api_data,
    api_cuda_stream,
    api_from_data,
    api_find_op,
    api_call_op,
    api_option,
    api_config,
    api_weight,
    api_parameter,
    api_is_training,
    api_report,
    api_cache_get,
    api_cache_set,
    api_emit,
    api_model_option,
    api_declare_tensor,
    api_weight_shaped,
    api_wants_reports,
    api_set_grad_enabled,
    api_copy_to_host,
    api_weight_exists,
    api_declare_tensor_v2,
    api_random_like,
    api_attention_mask_full,
    api_expert_shard,
    api_all_to_all,
    api_cache_append,
    api_cache_append_pair,
    api_cache_capacity,
};

}  // namespace

void set_all_to_all(AllToAll f, int32_t world) {
    g_all_to_all = f;
    g_world = std::max<int32_t>(1, world);
}

namespace {

const void *get_api(uint32_t version) {
    if (version != 1) return nullptr;
    if (g_api_size == 0 || g_api_size >= sizeof(mango_host_api)) return &kApiV1;
    static mango_host_api truncated;  // an older host, for compatibility tests
    truncated = kApiV1;
    truncated.struct_size = static_cast<uint32_t>(g_api_size);
    return &truncated;
}

}  // namespace

// ---- public helpers --------------------------------------------------------

const mango_host_base *host_base() {
    static const mango_host_base base{sizeof(mango_host_base), MANGO_ABI_VERSION, MANGO_VERSION_STRING, &get_api};
    return &base;
}
const mango_host_api *host_api() { return &kApiV1; }

mango_tensor wrap(at::Tensor t) {
    ++g_live;
    return new mango_tensor_t{std::move(t)};
}
const at::Tensor &unwrap(mango_tensor t) {
    if (!t) throw HostError("a NULL tensor handle");
    return t->t;
}
at::Tensor adopt(mango_tensor t, const std::string &what) {
    if (!t) throw HostError(what + " returned OK but no tensor");
    at::Tensor out = t->t;
    api_release(t);
    return out;
}
long live_tensor_handles() { return g_live.load(); }

std::string status_name(mango_status s) {
    switch (s) {
        case MANGO_ERR_INVALID_ARGUMENT:
            return "INVALID_ARGUMENT";
        case MANGO_ERR_NOT_FOUND:
            return "NOT_FOUND";
        case MANGO_ERR_UNSUPPORTED:
            return "UNSUPPORTED";
        case MANGO_ERR_SHAPE:
            return "SHAPE";
        case MANGO_ERR_OUT_OF_MEMORY:
            return "OUT_OF_MEMORY";
        case MANGO_ERR_CANCELLED:
            return "CANCELLED";
        case MANGO_ERR_INTERNAL:
            return "INTERNAL";
        default:
            return "unknown";
    }
}

void clear_plugin_error() { g_error.clear(); }

void check_plugin(mango_status status, const std::string &what) {
    if (status == MANGO_OK) return;
    throw HostError(
        what + ": " +
        (g_error.empty() ? "returned status " + std::to_string(status) + " (" + status_name(status) + ") without a message" : g_error));
}

void set_host_api_size_for_testing(size_t bytes) { g_api_size = bytes; }

void request_cancel() { g_cancel = true; }
bool cancel_requested() { return g_cancel.load(); }

at::ScalarType to_scalar_type(mango_dtype d) {
    switch (d) {
        case MANGO_DTYPE_F32:
            return at::kFloat;
        case MANGO_DTYPE_F16:
            return at::kHalf;
        case MANGO_DTYPE_BF16:
            return at::kBFloat16;
        case MANGO_DTYPE_F64:
            return at::kDouble;
        case MANGO_DTYPE_I64:
            return at::kLong;
        case MANGO_DTYPE_I32:
            return at::kInt;
        case MANGO_DTYPE_I16:
            return at::kShort;
        case MANGO_DTYPE_I8:
            return at::kChar;
        case MANGO_DTYPE_U8:
            return at::kByte;
        case MANGO_DTYPE_BOOL:
            return at::kBool;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
        case MANGO_DTYPE_F8_E4M3:
            return at::ScalarType::Float8_e4m3fn;
        case MANGO_DTYPE_F8_E5M2:
            return at::ScalarType::Float8_e5m2;
#endif
        default:
            throw HostError("dtype " + std::to_string(d) + " is not supported by this LibTorch (" + TORCH_VERSION + ")");
    }
}

mango_dtype from_scalar_type(at::ScalarType t) {
    switch (t) {
        case at::kFloat:
            return MANGO_DTYPE_F32;
        case at::kHalf:
            return MANGO_DTYPE_F16;
        case at::kBFloat16:
            return MANGO_DTYPE_BF16;
        case at::kDouble:
            return MANGO_DTYPE_F64;
        case at::kLong:
            return MANGO_DTYPE_I64;
        case at::kInt:
            return MANGO_DTYPE_I32;
        case at::kShort:
            return MANGO_DTYPE_I16;
        case at::kChar:
            return MANGO_DTYPE_I8;
        case at::kByte:
            return MANGO_DTYPE_U8;
        case at::kBool:
            return MANGO_DTYPE_BOOL;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
        case at::ScalarType::Float8_e4m3fn:
            return MANGO_DTYPE_F8_E4M3;
        case at::ScalarType::Float8_e5m2:
            return MANGO_DTYPE_F8_E5M2;
#endif
        default:
            return 0;
    }
}

mango_status json_to_value(InstanceContext &ctx, const nlohmann::json &v, mango_value *out) {
    if (!out) return fail(MANGO_ERR_INVALID_ARGUMENT, "out is NULL");
    *out = mango_value{};
    if (v.is_null()) {
        out->kind = MANGO_VALUE_NONE;
    } else if (v.is_boolean()) {
        out->kind = MANGO_VALUE_BOOL;
        out->u.b = v.get<bool>();
    } else if (v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))) {
        out->kind = MANGO_VALUE_INT;
        out->u.i = v.get<int64_t>();
    } else if (v.is_number()) {  // an integer past int64 too: not wrapped to a negative one
        out->kind = MANGO_VALUE_DOUBLE;
        out->u.d = v.get<double>();
    } else if (v.is_string()) {
        out->kind = MANGO_VALUE_STRING;
        out->u.s = ctx.strings.emplace_back(v.get<std::string>()).c_str();
    } else if (v.is_array() && std::all_of(v.begin(), v.end(), [](const auto &e) { return e.is_number_integer(); })) {
        auto &list = ctx.int_lists.emplace_back(v.get<std::vector<int64_t>>());
        out->kind = MANGO_VALUE_INT_LIST;
        out->u.ints = {list.data(), list.size()};
    } else if (v.is_array() && std::all_of(v.begin(), v.end(), [](const auto &e) { return e.is_number(); })) {
        auto &list = ctx.double_lists.emplace_back(v.get<std::vector<double>>());
        out->kind = MANGO_VALUE_DOUBLE_LIST;
        out->u.doubles = {list.data(), list.size()};
    } else {
        return fail(MANGO_ERR_UNSUPPORTED, "value " + v.dump() + " has no ABI representation");
    }
    return MANGO_OK;
}

}  // namespace mango
