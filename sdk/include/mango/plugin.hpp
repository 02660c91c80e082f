// mango/plugin.hpp — header-only C++ wrapper over the C ABI in mango/plugin.h.
//
// Gives plugin authors RAII tensors, exceptions instead of status codes, a
// boxed operator call with typed arguments, and a Context with typed option
// and service accessors. Nothing here crosses the ABI: the C++ types live on
// the plugin's side only. Typed operators are in mango/ops.hpp, component
// glue (vtables, entry point) in mango/component.hpp.
#pragma once

#include "mango/plugin.h"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace mango {

// ---- host binding ---------------------------------------------------------

namespace detail {
inline const mango_host_api *&host_slot() {
    static const mango_host_api *api = nullptr;
    return api;
}
// The smallest host table this SDK can work with: revision 1 (ABI 1 as
// first released). Newer fields are used only when MANGO_HAS says the host
// has them; otherwise the wrapper falls back or says what is missing.
constexpr size_t kMinHostApiSize = offsetof(mango_host_api, declare_tensor) + sizeof(void *);
// Called by the entry point: remember the host API (NULL while scanning).
inline void bind_host(const mango_host_base *base) {
    if (base && base->struct_size >= sizeof(mango_host_base) && base->get_api) {
        auto *api = static_cast<const mango_host_api *>(base->get_api(1));
        if (api && api->struct_size >= kMinHostApiSize) host_slot() = api;
    }
}
}  // namespace detail

// What plugin code throws: a status code and a message. The component glue
// (mango/component.hpp) turns it into the status its C function returns.
class Error : public std::runtime_error {
public:
    Error(mango_status status, const std::string &message) : std::runtime_error(message), status_(status) {}
    mango_status status() const { return status_; }

private:
    mango_status status_;
};

inline const mango_host_api &host() {
    const mango_host_api *api = detail::host_slot();
    if (!api) throw Error(MANGO_ERR_INTERNAL, "mango host API is not bound (plugin called outside the host)");
    return *api;
}

// Whether the bound host's API table has `field` (an appended one).
#define MANGO_HOST_HAS(field) MANGO_HAS(&::mango::host(), mango_host_api, field)

inline void check(mango_status status) {
    if (status != MANGO_OK) {
        const char *msg = host().last_error();
        throw Error(status, msg && *msg ? msg : "host call failed with status " + std::to_string(status) + " and no message");
    }
}

// Autograd off on this thread for the guard's lifetime (hosts older than
// revision 3 of the API cannot switch it: the guard then does nothing).
class NoGrad {
public:
    NoGrad() : on_(MANGO_HOST_HAS(set_grad_enabled)) {
        if (on_) previous_ = host().set_grad_enabled(0);
    }
    ~NoGrad() {
        if (on_) host().set_grad_enabled(previous_);
    }
    NoGrad(const NoGrad &) = delete;
    NoGrad &operator=(const NoGrad &) = delete;

private:
    bool on_;
    int32_t previous_ = 1;
};

// ---- tensors --------------------------------------------------------------

// Owns one reference to a host tensor.
class Tensor {
public:
    Tensor() = default;
    explicit Tensor(mango_tensor owned) : h_(owned) {}  // takes ownership
    static Tensor borrow(mango_tensor t) { return Tensor(t ? host().tensor_retain(t) : nullptr); }
    Tensor(const Tensor &o) : h_(o.h_ ? host().tensor_retain(o.h_) : nullptr) {}
    Tensor(Tensor &&o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
    Tensor &operator=(Tensor o) noexcept {
        std::swap(h_, o.h_);
        return *this;
    }
    ~Tensor() {
        if (h_) host().tensor_release(h_);
    }

    mango_tensor get() const { return h_; }
    mango_tensor release() { return std::exchange(h_, nullptr); }  // caller owns
    explicit operator bool() const { return h_ != nullptr; }

    int dim() const { return host().tensor_ndim(h_); }
    int64_t size(int d) const { return host().tensor_size(h_, d); }
    std::vector<int64_t> sizes() const {
        std::vector<int64_t> s(static_cast<size_t>(dim()));
        for (size_t i = 0; i < s.size(); ++i) s[i] = size(static_cast<int>(i));
        return s;
    }
    mango_dtype dtype() const { return host().tensor_dtype(h_); }
    mango_device device() const { return host().tensor_device(h_); }
    int64_t numel() const {
        int64_t n = 1;
        for (int64_t s : sizes()) n *= s;
        return n;
    }
    // The elements, row-major, copied to plugin memory. T must match the
    // dtype's element size (float for F32, int64_t for I64, ...).
    template <class T>
    std::vector<T> to_host() const;

private:
    mango_tensor h_ = nullptr;
};

// ---- boxed arguments ------------------------------------------------------

struct Dtype {
    mango_dtype value;
};

// One operator argument. Holds list storage itself, so build it in place
// (e.g. inside the braces of Op::call) rather than copying it around.
class Arg {
public:
    Arg(std::nullptr_t) { v_.kind = MANGO_VALUE_NONE; }
    Arg(const Tensor &t) {
        v_.kind = t ? MANGO_VALUE_TENSOR : MANGO_VALUE_NONE;
        v_.u.tensor = t.get();
    }
    template <class T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
    Arg(T i) {
        v_.kind = MANGO_VALUE_INT;
        v_.u.i = static_cast<int64_t>(i);
    }
    Arg(double d) {
        v_.kind = MANGO_VALUE_DOUBLE;
        v_.u.d = d;
    }
    Arg(bool b) {
        v_.kind = MANGO_VALUE_BOOL;
        v_.u.b = b ? 1 : 0;
    }
    Arg(const char *s) {
        v_.kind = MANGO_VALUE_STRING;
        v_.u.s = s;
    }
    Arg(Dtype d) {
        v_.kind = MANGO_VALUE_DTYPE;
        v_.u.i = d.value;
    }
    Arg(mango_device d) {
        v_.kind = MANGO_VALUE_DEVICE;
        v_.u.device = d;
    }
    Arg(std::initializer_list<int64_t> ints) : ints_(ints) { v_.kind = MANGO_VALUE_INT_LIST; }
    Arg(std::vector<int64_t> ints) : ints_(std::move(ints)) { v_.kind = MANGO_VALUE_INT_LIST; }
    Arg(const std::vector<Tensor> &ts) {
        v_.kind = MANGO_VALUE_TENSOR_LIST;
        for (const Tensor &t : ts) tensors_.push_back(t.get());
    }
    Arg(const Arg &) = delete;
    Arg &operator=(const Arg &) = delete;

    // The C value, with list pointers into this object's storage.
    const mango_value &value() const {
        if (v_.kind == MANGO_VALUE_INT_LIST) v_.u.ints = {ints_.data(), ints_.size()};
        if (v_.kind == MANGO_VALUE_TENSOR_LIST) v_.u.tensors = {tensors_.data(), tensors_.size()};
        return v_;
    }

private:
    mutable mango_value v_{};
    std::vector<int64_t> ints_;
    std::vector<mango_tensor> tensors_;
};

// Results of one operator call. Tensor slots not taken are released.
class Results {
public:
    static constexpr size_t kMax = 8;
    Results() = default;
    Results(const Results &) = delete;
    Results &operator=(const Results &) = delete;
    ~Results() {
        for (size_t i = 0; i < n; ++i)
            if (v[i].kind == MANGO_VALUE_TENSOR && v[i].u.tensor) host().tensor_release(v[i].u.tensor);
    }
    Tensor tensor(size_t i) {
        require(i, MANGO_VALUE_TENSOR);
        return Tensor(std::exchange(v[i].u.tensor, nullptr));
    }
    int64_t integer(size_t i) const { return require(i, MANGO_VALUE_INT).u.i; }
    double number(size_t i) const {
        const mango_value &x = require(i, MANGO_VALUE_NONE);
        if (x.kind == MANGO_VALUE_DOUBLE) return x.u.d;
        if (x.kind == MANGO_VALUE_INT) return static_cast<double>(x.u.i);
        if (x.kind == MANGO_VALUE_BOOL) return x.u.b;
        throw Error(MANGO_ERR_INVALID_ARGUMENT, "operator result " + std::to_string(i) + " is not a number");
    }

    mango_value v[kMax]{};
    size_t n = 0;

private:
    const mango_value &require(size_t i, int32_t kind) const {
        if (i >= n)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "operator returned " + std::to_string(n) + " results, wanted #" + std::to_string(i));
        if (kind != MANGO_VALUE_NONE && v[i].kind != kind)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "operator result " + std::to_string(i) + " has the wrong kind");
        return v[i];
    }
};

// A host operator, resolved once. Use as a function-local static.
class Op {
public:
    Op(const char *name, const char *overload = "")
        : name_(std::string(name) + (overload && *overload ? std::string(".") + overload : "")) {
        check(host().find_op(name, overload, &op_));
    }
    // The operator, or nothing where the host has none: for the host's own
    // fused operators (mango::rms_norm, ...), which older hosts lack.
    static std::optional<Op> find(const char *name, const char *overload = "") {
        const mango_op *op = nullptr;
        if (host().find_op(name, overload, &op) != MANGO_OK || !op) return std::nullopt;
        return Op(name, overload, op);
    }
    void call(std::initializer_list<Arg> args, Results &out) const {
        mango_value in[16];
        if (args.size() > 16) throw Error(MANGO_ERR_INVALID_ARGUMENT, name_ + ": more than 16 arguments");
        size_t i = 0;
        for (const Arg &a : args) in[i++] = a.value();
        check(host().call_op(op_, in, i, out.v, Results::kMax, &out.n));  // the host's message names the op and argument
    }
    const std::string &name() const { return name_; }
    Tensor operator()(std::initializer_list<Arg> args) const {
        Results r;
        call(args, r);
        return r.tensor(0);
    }

private:
    Op(const char *name, const char *overload, const mango_op *op)
        : name_(std::string(name) + (overload && *overload ? std::string(".") + overload : "")), op_(op) {}
    std::string name_;
    const mango_op *op_ = nullptr;
};

template <class T>
std::vector<T> Tensor::to_host() const {
    std::vector<T> out(static_cast<size_t>(numel()));
    if (MANGO_HOST_HAS(tensor_copy_to_host)) {
        check(host().tensor_copy_to_host(h_, out.data(), out.size() * sizeof(T)));
        return out;
    }
    // Older hosts: a contiguous CPU copy, then its data pointer.
    static const Op to("aten::to", "device"), contiguous("aten::contiguous");
    Tensor cpu = contiguous({to({*this, mango_device{MANGO_DEVICE_CPU, -1}, Dtype{dtype()}, false, true})});
    if (!out.empty()) std::memcpy(out.data(), host().tensor_data(cpu.get()), out.size() * sizeof(T));
    return out;
}

// ---- merging ------------------------------------------------------------------

// One tensor to merge (mango_merge_input, with owned handles).
struct MergeInput {
    std::string name, role;      // output tensor name; its role ("" when unknown)
    int32_t layer = -1;          // output layer; -1 model-level
    bool is_embed = false;       // rows index the vocabulary
    std::vector<Tensor> models;  // the models holding it, in configuration order
    int32_t base = -1;           // index of the base model in `models`, or -1
    bool has_base() const { return base >= 0 && size_t(base) < models.size(); }
};

// One dense FFN to convert into experts (mango_dense_ffn, with owned handles).
struct DenseFfn {
    int32_t layer = 0;
    std::string activation;
    Tensor gate, up, down, up_bias, down_bias;  // gate empty for a plain MLP
    int64_t n_experts = 0, top_k = 0;
    Tensor hidden_states;                                     // [N, H] or empty
    std::vector<Tensor> source_gate, source_up, source_down;  // other models' FFNs
    Tensor expert_directions;                                 // [n_experts, H] or empty
};

// ---- the instance's context -----------------------------------------------

class Context {
public:
    explicit Context(mango_context *c) : c_(c) {}
    mango_context *get() const { return c_; }

    int64_t option_int(const char *key) const { return as_int(fetch(&mango_host_api::option, key), key); }
    double option_double(const char *key) const { return as_double(fetch(&mango_host_api::option, key), key); }
    bool option_bool(const char *key) const { return as_bool(fetch(&mango_host_api::option, key), key); }
    std::string option_string(const char *key) const { return as_string(fetch(&mango_host_api::option, key), key); }

    std::optional<mango_value> config(const char *key) const {
        mango_value v{};
        mango_status s = host().config(c_, key, &v);
        if (s == MANGO_ERR_NOT_FOUND) return std::nullopt;
        check(s);
        return v;
    }

    Tensor weight(const std::string &name) const {
        mango_tensor t = nullptr;
        check(host().weight(c_, name.c_str(), &t));
        return Tensor(t);
    }
    // A weight whose shape must be `shape`; else an error naming the tensor,
    // the expected and the found shape. Hosts that initialise models from a
    // config alone create it.
    Tensor weight(const std::string &name, const std::vector<int64_t> &shape) const {
        if (MANGO_HOST_HAS(weight_shaped) && host().weight_shaped) {
            mango_tensor t = nullptr;
            check(host().weight_shaped(c_, name.c_str(), shape.data(), static_cast<int32_t>(shape.size()), &t));
            return Tensor(t);
        }
        Tensor w = weight(name);
        if (w.sizes() != shape)
            throw Error(MANGO_ERR_SHAPE, "tensor '" + name + "' has shape " + shape_text(w.sizes()) + ", expected " + shape_text(shape));
        return w;
    }
    static std::string shape_text(const std::vector<int64_t> &s) {
        std::string t = "[";
        for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
        return t + "]";
    }
    // Optional config value readers (defaults when absent).
    //
    // Every integer of a model's config (sizes, counts, token ids, steps)
    // fits in 32 bits; a larger one is a wrong config, refused here, so a
    // product of two such values (a weight's rows, 4 * n_embd) cannot
    // overflow.
    static constexpr int64_t kMaxConfigInt = 2147483647;
    int64_t config_int(const char *key, int64_t fallback) const {
        auto v = config(key);
        if (!v || v->kind == MANGO_VALUE_NONE) return fallback;
        if (v->kind != MANGO_VALUE_INT) throw Error(MANGO_ERR_INVALID_ARGUMENT, std::string("config key '") + key + "' must be an integer");
        if (v->u.i > kMaxConfigInt || v->u.i < -kMaxConfigInt)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, std::string("config key '") + key + "' = " + std::to_string(v->u.i) +
                                                        " is out of range (a model's sizes and ids are at most " +
                                                        std::to_string(kMaxConfigInt) + ")");
        return v->u.i;
    }
    // transformers' two defaults: `absent` when the key is missing (the
    // config class's default), `if_null` when it is null (None).
    int64_t config_int(const char *key, int64_t absent, int64_t if_null) const { return config(key) ? config_int(key, if_null) : absent; }
    double config_double(const char *key, double fallback) const {
        auto v = config(key);
        if (!v || v->kind == MANGO_VALUE_NONE) return fallback;
        if (v->kind == MANGO_VALUE_INT) return static_cast<double>(v->u.i);
        if (v->kind != MANGO_VALUE_DOUBLE)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, std::string("config key '") + key + "' must be a number");
        return v->u.d;
    }
    bool config_bool(const char *key, bool fallback) const {
        auto v = config(key);
        if (!v || v->kind == MANGO_VALUE_NONE) return fallback;
        if (v->kind != MANGO_VALUE_BOOL)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, std::string("config key '") + key + "' must be true or false");
        return v->u.b != 0;
    }
    std::string config_string(const char *key, const std::string &fallback) const {
        auto v = config(key);
        if (!v || v->kind == MANGO_VALUE_NONE) return fallback;
        if (v->kind != MANGO_VALUE_STRING)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, std::string("config key '") + key + "' must be a string");
        return v->u.s;
    }

    Tensor parameter(const std::string &name, const Tensor &init, bool trainable = true) const {
        mango_tensor t = nullptr;
        check(host().parameter(c_, name.c_str(), init.get(), trainable ? 1 : 0, &t));
        return Tensor(t);
    }
    // State that is saved, loaded and resumed but not trained (e.g. a
    // balancing bias). Update it in place under a NoGrad guard.
    Tensor buffer(const std::string &name, const Tensor &init) const { return parameter(name, init, false); }
    bool training() const { return host().is_training(c_) != 0; }
    // Merges: model i's parameter for the tensor being merged (i indexes MergeInput::models).
    std::optional<mango_value> model_option(size_t i, const char *key) const {
        mango_value v{};
        const mango_status s = host().model_option(c_, i, key, &v);
        if (s == MANGO_ERR_NOT_FOUND) return std::nullopt;
        check(s);
        if (v.kind == MANGO_VALUE_NONE) return std::nullopt;
        return v;
    }
    double model_option_double(size_t i, const char *key) const {
        auto v = model_option(i, key);
        if (!v) throw Error(MANGO_ERR_INVALID_ARGUMENT, std::string("model #") + std::to_string(i) + " has no parameter '" + key + "'");
        return as_double(*v, key);
    }
    // Uniform [0, 1) float32 noise of `like`'s shape from the instance's seeded stream.
    Tensor random_like(const Tensor &like) const {
        if (!MANGO_HOST_HAS(random_like)) throw Error(MANGO_ERR_UNSUPPORTED, "this host offers no random_like (API revision 3)");
        mango_tensor t = nullptr;
        check(host().random_like(c_, like.get(), &t));
        return Tensor(t);
    }
    // Whether report_loss / report_stat values are used now (training and
    // evaluation); older hosts: in training only.
    bool reporting() const { return MANGO_HOST_HAS(wants_reports) ? host().wants_reports(c_) != 0 : training(); }
    // Inside block(): whether the attention mask has no padding (hosts older
    // than revision 4: false, so the mask is always applied).
    bool attention_mask_full() const { return MANGO_HOST_HAS(attention_mask_full) && host().attention_mask_full(c_) != 0; }
    // Inside block(): the entries of each static cache slot, 0 with the
    // growing cache (and with hosts older than revision 8).
    int64_t cache_capacity() const { return MANGO_HOST_HAS(cache_capacity) ? host().cache_capacity(c_) : 0; }
    // This instance's share of an expert-parallel model (hosts older than
    // revision 5, and models that are not expert-parallel: {0, 1}).
    struct Shard {
        int32_t rank = 0, world = 1;
    };
    Shard expert_shard() const {
        Shard s;
        if (MANGO_HOST_HAS(expert_shard)) host().expert_shard(c_, &s.rank, &s.world);
        return s;
    }
    // Whether the checkpoint holds `name` (hosts older than revision 3: tries to read it).
    bool weight_exists(const std::string &name) const {
        if (MANGO_HOST_HAS(weight_exists)) {
            int32_t e = 0;
            check(host().weight_exists(c_, name.c_str(), &e));
            return e != 0;
        }
        mango_tensor t = nullptr;
        const mango_status s = host().weight(c_, name.c_str(), &t);
        host().tensor_release(t);
        return s == MANGO_OK;
    }
    void report_loss(const char *name, const Tensor &t) const { check(host().report(c_, MANGO_REPORT_LOSS, name, t.get())); }
    void report_stat(const char *name, const Tensor &t) const { check(host().report(c_, MANGO_REPORT_STAT, name, t.get())); }
    Tensor cache_get(const std::string &key) const {
        mango_tensor t = nullptr;
        mango_status s = host().cache_get(c_, key.c_str(), &t);
        if (s == MANGO_ERR_NOT_FOUND) return Tensor();
        check(s);
        return Tensor(t);
    }
    void cache_set(const std::string &key, const Tensor &t) const { check(host().cache_set(c_, key.c_str(), t.get())); }
    void emit(const std::string &name, const Tensor &t) const { check(host().emit(c_, name.c_str(), t.get())); }
    void declare_tensor(int32_t layer, const char *role, const std::string &name) const {
        check(host().declare_tensor(c_, layer, role, name.c_str()));
    }

private:
    using Getter = mango_status (*mango_host_api::*)(mango_context *, const char *, mango_value *);
    mango_value fetch(Getter g, const char *key) const {
        mango_value v{};
        check((host().*g)(c_, key, &v));
        return v;
    }
    static Error wrong(const char *key, const char *want) {
        return Error(MANGO_ERR_INVALID_ARGUMENT, std::string("option '") + key + "' is not " + want);
    }
    static int64_t as_int(const mango_value &v, const char *key) {
        if (v.kind != MANGO_VALUE_INT) throw wrong(key, "an integer");
        return v.u.i;
    }
    static double as_double(const mango_value &v, const char *key) {
        if (v.kind == MANGO_VALUE_DOUBLE) return v.u.d;
        if (v.kind == MANGO_VALUE_INT) return static_cast<double>(v.u.i);
        throw wrong(key, "a number");
    }
    static bool as_bool(const mango_value &v, const char *key) {
        if (v.kind != MANGO_VALUE_BOOL) throw wrong(key, "a boolean");
        return v.u.b != 0;
    }
    static std::string as_string(const mango_value &v, const char *key) {
        if (v.kind != MANGO_VALUE_STRING) throw wrong(key, "a string");
        return v.u.s;
    }

    mango_context *c_;
};

inline void log(int32_t level, const std::string &message) { host().log(level, message.c_str()); }

// Rows of `input` to the ranks (send_rows[r] to rank r, in order), the rows
// they sent here (recv_rows[r] from rank r) back; differentiable. See
// all_to_all in plugin.h.
inline Tensor all_to_all(const Tensor &input, const std::vector<int64_t> &send_rows, const std::vector<int64_t> &recv_rows) {
    if (!MANGO_HOST_HAS(all_to_all)) throw Error(MANGO_ERR_UNSUPPORTED, "this host offers no all_to_all (API revision 5)");
    if (send_rows.size() != recv_rows.size())
        throw Error(MANGO_ERR_INVALID_ARGUMENT, "all_to_all: send and receive counts differ in length");
    mango_tensor t = nullptr;
    check(host().all_to_all(input.get(), send_rows.data(), recv_rows.data(), &t));
    return Tensor(t);
}

}  // namespace mango
