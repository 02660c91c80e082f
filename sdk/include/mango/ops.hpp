// mango/ops.hpp — typed helpers over the host's boxed ATen operator call.
//
// Each helper resolves its operator once (function-local static) and calls it
// with the arguments in ATen schema order. Add what you need the same way:
//   static const Op op("aten::<name>", "<overload>"); return op({...});
#pragma once

#include "mango/plugin.hpp"

namespace mango::ops {

constexpr mango_device cpu{MANGO_DEVICE_CPU, -1};

// ---- creation ---------------------------------------------------------------
inline Tensor zeros(std::vector<int64_t> size, mango_dtype dt = MANGO_DTYPE_F32, mango_device dev = cpu) {
    static const Op op("aten::zeros");
    return op({std::move(size), Dtype{dt}, nullptr, dev});
}
inline Tensor ones(std::vector<int64_t> size, mango_dtype dt = MANGO_DTYPE_F32, mango_device dev = cpu) {
    static const Op op("aten::ones");
    return op({std::move(size), Dtype{dt}, nullptr, dev});
}
inline Tensor full(std::vector<int64_t> size, double value, mango_dtype dt = MANGO_DTYPE_F32, mango_device dev = cpu) {
    static const Op op("aten::full");
    return op({std::move(size), value, Dtype{dt}, nullptr, dev});
}
// Rectangular identity [n, m]: ones on the main diagonal.
inline Tensor eye(int64_t n, int64_t m, mango_dtype dt = MANGO_DTYPE_F32, mango_device dev = cpu) {
    static const Op op("aten::eye", "m");
    return op({n, m, Dtype{dt}, nullptr, dev});
}
// Standard normal samples from the host's seeded generator.
inline Tensor randn(std::vector<int64_t> size, mango_dtype dt = MANGO_DTYPE_F32, mango_device dev = cpu) {
    static const Op op("aten::randn");
    return op({std::move(size), Dtype{dt}, nullptr, dev});
}

// ---- arithmetic ---------------------------------------------------------------
inline Tensor add(const Tensor &a, const Tensor &b) {
    static const Op op("aten::add", "Tensor");
    return op({a, b});
}
inline Tensor sub(const Tensor &a, const Tensor &b) {
    static const Op op("aten::sub", "Tensor");
    return op({a, b});
}
inline Tensor mul(const Tensor &a, const Tensor &b) {
    static const Op op("aten::mul", "Tensor");
    return op({a, b});
}
inline Tensor mul(const Tensor &a, double s) {
    static const Op op("aten::mul", "Scalar");
    return op({a, s});
}
inline Tensor div(const Tensor &a, const Tensor &b) {
    static const Op op("aten::div", "Tensor");
    return op({a, b});
}
inline Tensor add_scalar(const Tensor &a, double s) {
    static const Op op("aten::add", "Scalar");
    return op({a, s});
}
inline Tensor matmul(const Tensor &a, const Tensor &b) {
    static const Op op("aten::matmul");
    return op({a, b});
}
// y = x W^T + b (b may be an empty Tensor). The host's mango::linear where
// it has one (a faster kernel for decoding's few rows on a GPU), else ATen's.
inline Tensor linear(const Tensor &x, const Tensor &w, const Tensor &b = Tensor()) {
    static const std::optional<Op> host_op = Op::find("mango::linear");
    static const Op op = host_op ? *host_op : Op("aten::linear");
    return op({x, w, b});
}
// residual + (x W^T + b): a layer's last projection and its residual add,
// one kernel on a GPU where the host has mango::linear_residual.
inline Tensor linear_residual(const Tensor &residual, const Tensor &x, const Tensor &w, const Tensor &b = Tensor()) {
    static const std::optional<Op> fused = Op::find("mango::linear_residual");
    if (fused) return (*fused)({x, w, b, residual});
    return add(residual, linear(x, w, b));
}
// Whether every tensor in ts is defined (the host operators take lists of
// tensors, none of them empty).
inline bool all_defined(const std::vector<Tensor> &ts) {
    for (const Tensor &t : ts)
        if (!t) return false;
    return true;
}
// x W_i^T (+ b_i) for up to 8 weights that share an input (q, k, v; gate,
// up); biases: none, or one per weight (an empty one: no bias). One kernel on
// a GPU where the host has mango::linears, else one linear each.
inline std::vector<Tensor> linears(const Tensor &x, const std::vector<Tensor> &ws, const std::vector<Tensor> &bs = {}) {
    if (!bs.empty() && bs.size() != ws.size())
        throw Error(MANGO_ERR_INVALID_ARGUMENT, "linears: " + std::to_string(bs.size()) + " biases for " + std::to_string(ws.size()) +
                                                    " weights (give none or one each)");
    static const std::optional<Op> fused = Op::find("mango::linears");
    std::vector<Tensor> out;
    if (fused && all_defined(bs) && ws.size() <= Results::kMax) {
        Results r;
        fused->call({x, ws, bs}, r);
        if (r.n != ws.size())
            throw Error(MANGO_ERR_INTERNAL, "mango::linears returned " + std::to_string(r.n) + " results for " + std::to_string(ws.size()));
        for (size_t i = 0; i < r.n; ++i) out.push_back(r.tensor(i));
        return out;
    }
    for (size_t i = 0; i < ws.size(); ++i) out.push_back(linear(x, ws[i], bs.empty() ? Tensor() : bs[i]));
    return out;
}
inline Tensor log(const Tensor &x) {
    static const Op op("aten::log");
    return op({x});
}
inline Tensor clamp_min(const Tensor &x, double lo) {
    static const Op op("aten::clamp_min");
    return op({x, lo});
}

// ---- activations and normalisation ---------------------------------------------
inline Tensor gelu(const Tensor &x, const char *approximate = "none") {
    static const Op op("aten::gelu");
    return op({x, approximate});
}
inline Tensor relu(const Tensor &x) {
    static const Op op("aten::relu");
    return op({x});
}
inline Tensor silu(const Tensor &x) {
    static const Op op("aten::silu");
    return op({x});
}
inline Tensor tanh(const Tensor &x) {
    static const Op op("aten::tanh");
    return op({x});
}
inline Tensor sigmoid(const Tensor &x) {
    static const Op op("aten::sigmoid");
    return op({x});
}
inline Tensor softmax(const Tensor &x, int64_t dim) {
    static const Op op("aten::softmax", "int");
    return op({x, dim});
}
inline Tensor layer_norm(const Tensor &x, std::vector<int64_t> shape, const Tensor &w, const Tensor &b, double eps = 1e-5) {
    static const Op op("aten::layer_norm");
    return op({x, std::move(shape), w, b, eps});
}
inline Tensor dropout(const Tensor &x, double p, bool train) {
    static const Op op("aten::dropout");
    return op({x, p, train});
}

// ---- reductions -----------------------------------------------------------------
inline Tensor sum(const Tensor &x, std::vector<int64_t> dims, bool keepdim = false) {
    static const Op op("aten::sum", "dim_IntList");
    return op({x, std::move(dims), keepdim});
}
inline Tensor mean(const Tensor &x, std::vector<int64_t> dims, bool keepdim = false) {
    static const Op op("aten::mean", "dim");
    return op({x, std::move(dims), keepdim});
}
inline Tensor mean_all(const Tensor &x) {
    static const Op op("aten::mean");
    return op({x});
}
inline Tensor amax(const Tensor &x, std::vector<int64_t> dims, bool keepdim = false) {
    static const Op op("aten::amax");
    return op({x, std::move(dims), keepdim});
}

// ---- shape and selection ----------------------------------------------------------
inline Tensor unsqueeze(const Tensor &x, int64_t dim) {
    static const Op op("aten::unsqueeze");
    return op({x, dim});
}
inline Tensor reshape(const Tensor &x, std::vector<int64_t> shape) {
    static const Op op("aten::reshape");
    return op({x, std::move(shape)});
}
inline Tensor transpose(const Tensor &x, int64_t d0, int64_t d1) {
    static const Op op("aten::transpose", "int");
    return op({x, d0, d1});
}
inline Tensor to_dtype(const Tensor &x, mango_dtype dt) {
    static const Op op("aten::to", "dtype");
    return op({x, Dtype{dt}});
}
// Elementwise: where mask is true take `value`, else x (mask broadcasts).
inline Tensor masked_fill(const Tensor &x, const Tensor &mask, double value) {
    static const Op op("aten::masked_fill", "Scalar");
    return op({x, mask, value});
}
inline Tensor eq_scalar(const Tensor &x, double value) {
    static const Op op("aten::eq", "Scalar");
    return op({x, value});
}

// ---- more for architectures ------------------------------------------------------
inline Tensor arange(int64_t end, mango_dtype dt = MANGO_DTYPE_I64, mango_device dev = cpu) {
    static const Op op("aten::arange");
    return op({end, Dtype{dt}, nullptr, dev});
}
inline Tensor embedding(const Tensor &weight, const Tensor &ids) {
    static const Op op("aten::embedding");
    return op({weight, ids});
}
inline Tensor rsqrt(const Tensor &x) {
    static const Op op("aten::rsqrt");
    return op({x});
}
inline Tensor pow(const Tensor &x, double e) {
    static const Op op("aten::pow", "Tensor_Scalar");
    return op({x, e});
}
inline Tensor neg(const Tensor &x) {
    static const Op op("aten::neg");
    return op({x});
}
inline Tensor cos(const Tensor &x) {
    static const Op op("aten::cos");
    return op({x});
}
inline Tensor sin(const Tensor &x) {
    static const Op op("aten::sin");
    return op({x});
}
inline Tensor cat(const std::vector<Tensor> &ts, int64_t dim) {
    static const Op op("aten::cat");
    return op({ts, dim});
}
// x[..., start:start+length, ...] along dim (a view).
inline Tensor narrow(const Tensor &x, int64_t dim, int64_t start, int64_t length) {
    static const Op op("aten::narrow");
    return op({x, dim, start, length});
}
// x[..., start:end:step, ...] along dim (a view).
inline Tensor slice(const Tensor &x, int64_t dim, int64_t start, int64_t end, int64_t step) {
    static const Op op("aten::slice", "Tensor");
    return op({x, dim, start, end, step});
}
inline Tensor stack(const std::vector<Tensor> &ts, int64_t dim) {
    static const Op op("aten::stack");
    return op({ts, dim});
}
// (values, indices) of the k largest along dim.
inline std::pair<Tensor, Tensor> topk(const Tensor &x, int64_t k, int64_t dim = -1) {
    static const Op op("aten::topk");
    Results r;
    op.call({x, k, dim}, r);
    return {r.tensor(0), r.tensor(1)};
}
// A copy of x with src written at index along dim.
inline Tensor scatter(const Tensor &x, int64_t dim, const Tensor &index, const Tensor &src) {
    static const Op op("aten::scatter", "src");
    return op({x, dim, index, src});
}
inline Tensor exp(const Tensor &x) {
    static const Op op("aten::exp");
    return op({x});
}
inline Tensor zeros_like(const Tensor &x) {
    static const Op op("aten::zeros_like");
    return op({x});
}
inline Tensor ones_like(const Tensor &x) {
    static const Op op("aten::ones_like");
    return op({x});
}
inline Tensor detach(const Tensor &x) {
    static const Op op("aten::detach");
    return op({x});
}
inline Tensor contiguous(const Tensor &x) {
    static const Op op("aten::contiguous");
    return op({x});
}
inline Tensor expand(const Tensor &x, std::vector<int64_t> size) {
    static const Op op("aten::expand");
    return op({x, std::move(size)});
}
inline Tensor permute(const Tensor &x, std::vector<int64_t> dims) {
    static const Op op("aten::permute");
    return op({x, std::move(dims)});
}
// Elementwise comparisons with a tensor (broadcasting); bool results.
inline Tensor le(const Tensor &a, const Tensor &b) {
    static const Op op("aten::le", "Tensor");
    return op({a, b});
}
inline Tensor gt(const Tensor &a, const Tensor &b) {
    static const Op op("aten::gt", "Tensor");
    return op({a, b});
}
inline Tensor logical_and(const Tensor &a, const Tensor &b) {
    static const Op op("aten::logical_and");
    return op({a, b});
}
inline Tensor logical_not(const Tensor &a) {
    static const Op op("aten::logical_not");
    return op({a});
}

// ---- more elementwise ---------------------------------------------------------
inline Tensor abs(const Tensor &x) {
    static const Op op("aten::abs");
    return op({x});
}
inline Tensor sign(const Tensor &x) {
    static const Op op("aten::sign");
    return op({x});
}
inline Tensor sqrt(const Tensor &x) {
    static const Op op("aten::sqrt");
    return op({x});
}
inline Tensor acos(const Tensor &x) {
    static const Op op("aten::acos");
    return op({x});
}
inline Tensor clamp(const Tensor &x, double lo, double hi) {
    static const Op op("aten::clamp");
    return op({x, lo, hi});
}
inline Tensor clamp_max(const Tensor &x, double hi) {
    static const Op op("aten::clamp_max");
    return op({x, hi});
}
inline Tensor div_scalar(const Tensor &a, double s) {
    static const Op op("aten::div", "Scalar");
    return op({a, s});
}
inline Tensor rsub_scalar(const Tensor &a, double s) {  // s - a
    static const Op op("aten::rsub", "Scalar");
    return op({a, s});
}
// where(cond, a, b): a where cond is true, else b.
inline Tensor where(const Tensor &cond, const Tensor &a, const Tensor &b) {
    static const Op op("aten::where", "self");
    return op({cond, a, b});
}
inline Tensor lt_scalar(const Tensor &x, double v) {
    static const Op op("aten::lt", "Scalar");
    return op({x, v});
}
inline Tensor ge_scalar(const Tensor &x, double v) {
    static const Op op("aten::ge", "Scalar");
    return op({x, v});
}
inline Tensor gt_scalar(const Tensor &x, double v) {
    static const Op op("aten::gt", "Scalar");
    return op({x, v});
}
inline Tensor lt(const Tensor &a, const Tensor &b) {
    static const Op op("aten::lt", "Tensor");
    return op({a, b});
}
inline Tensor ge(const Tensor &a, const Tensor &b) {
    static const Op op("aten::ge", "Tensor");
    return op({a, b});
}
inline Tensor eq(const Tensor &a, const Tensor &b) {
    static const Op op("aten::eq", "Tensor");
    return op({a, b});
}
inline Tensor logical_or(const Tensor &a, const Tensor &b) {
    static const Op op("aten::logical_or");
    return op({a, b});
}
inline Tensor sum_all(const Tensor &x) {
    static const Op op("aten::sum");
    return op({x});
}
inline Tensor max_all(const Tensor &x) {
    static const Op op("aten::max");
    return op({x});
}
inline Tensor min_all(const Tensor &x) {
    static const Op op("aten::min");
    return op({x});
}
// Euclidean norm over all elements (dims empty) or over `dims`.
inline Tensor norm(const Tensor &x, std::vector<int64_t> dims = {}, bool keepdim = false) {
    static const Op op("aten::linalg_vector_norm");
    if (dims.empty()) return op({x, 2.0, nullptr, keepdim});
    return op({x, 2.0, std::move(dims), keepdim});
}
inline Tensor flatten(const Tensor &x) { return reshape(x, {-1}); }
// Indices that sort x along dim.
inline Tensor argsort(const Tensor &x, int64_t dim = -1, bool descending = false) {
    static const Op op("aten::argsort");
    return op({x, dim, descending});
}
// The k-th smallest value (k from 1) over a 1-D tensor, as a 0-d tensor.
inline Tensor kthvalue(const Tensor &x, int64_t k) {
    static const Op op("aten::kthvalue");
    Results r;
    op.call({x, k}, r);
    return r.tensor(0);
}
inline Tensor index_select(const Tensor &x, int64_t dim, const Tensor &index) {
    static const Op op("aten::index_select");
    return op({x, dim, index});
}
inline Tensor select(const Tensor &x, int64_t dim, int64_t index) {
    static const Op op("aten::select", "int");
    return op({x, dim, index});
}
inline Tensor squeeze(const Tensor &x, int64_t dim) {
    static const Op op("aten::squeeze", "dim");
    return op({x, dim});
}
inline Tensor clone(const Tensor &x) {
    static const Op op("aten::clone");
    return op({x});
}
inline Tensor full_like(const Tensor &x, double value) {
    static const Op op("aten::full_like");
    return op({x, value});
}
inline Tensor variance(const Tensor &x, std::vector<int64_t> dims, bool unbiased, bool keepdim = false) {
    static const Op op("aten::var", "dim");
    return op({x, std::move(dims), unbiased, keepdim});
}
// The value of a 0-d (or one-element) tensor, as a double.
inline double item(const Tensor &x) {
    static const Op op("aten::item");
    Results r;
    op.call({x}, r);
    return r.number(0);
}

// ---- routers ---------------------------------------------------------------------
// A router's gate over a sequence: softmax(scale (p W^T + b)) [B, E], where p
// is the mean of hidden [B, T, H] over the tokens mask [B, T] keeps (its
// values weigh the tokens; a sequence with none pools to zeros; no mask: all
// tokens). Where the host has mango::mean_pool_gate: one kernel on a GPU for
// float32 without gradients (equal to the chain within float32 rounding: it
// sums in another order), else this chain of operators.
inline Tensor mean_pool_gate(const Tensor &hidden, const Tensor &mask, const Tensor &w, const Tensor &b, double scale = 1.0) {
    static const std::optional<Op> fused = Op::find("mango::mean_pool_gate");
    if (fused) return (*fused)({hidden, mask, w, b, scale});
    Tensor pooled;
    if (!mask) {
        pooled = mean(hidden, {1});
    } else {
        const Tensor keep = unsqueeze(to_dtype(mask, hidden.dtype()), -1);  // [B, T, 1]
        if (hidden.size(1) == 1) {                                          // one token: without the sums over one position
            const Tensor k = select(keep, 1, 0);
            pooled = div(mul(select(hidden, 1, 0), k), clamp_min(k, 1.0));
        } else {
            pooled = div(sum(mul(hidden, keep), {1}), clamp_min(sum(keep, {1}), 1.0));
        }
    }
    Tensor logits = linear(pooled, w, b);
    if (scale != 1.0) logits = mul(logits, scale);
    return softmax(logits, -1);
}

}  // namespace mango::ops
