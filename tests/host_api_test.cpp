// The host API table as a plugin sees it: boxed operator calls, argument
// coercion and defaults, errors as status + message, handle bookkeeping.
#include "abi/context.hpp"
#include "abi/host_api.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace {

const mango_host_api &api() { return *mango::host_api(); }

mango_value tensor_value(mango_tensor t) {
    mango_value v{};
    v.kind = MANGO_VALUE_TENSOR;
    v.u.tensor = t;
    return v;
}
mango_value int_value(int64_t i) {
    mango_value v{};
    v.kind = MANGO_VALUE_INT;
    v.u.i = i;
    return v;
}

const mango_op *op(const char *name, const char *overload) {
    const mango_op *o = nullptr;
    EXPECT_EQ(api().find_op(name, overload, &o), MANGO_OK) << api().last_error();
    return o;
}

class HostApi : public ::testing::Test {
protected:
    void SetUp() override { live_ = mango::live_tensor_handles(); }
    void TearDown() override { EXPECT_EQ(mango::live_tensor_handles(), live_) << "tensor handles leaked"; }
    long live_ = 0;
};

}  // namespace

TEST_F(HostApi, BootstrapOffersVersionOneOnly) {
    const mango_host_base *base = mango::host_base();
    EXPECT_EQ(base->abi_version, MANGO_ABI_VERSION);
    EXPECT_EQ(base->get_api(1), mango::host_api());
    EXPECT_EQ(base->get_api(2), nullptr);
    EXPECT_EQ(base->get_api(0), nullptr);
    EXPECT_EQ(api().struct_size, sizeof(mango_host_api));
}

TEST_F(HostApi, LinearMatchesLibTorchAndFillsDefaults) {
    at::Tensor x = at::randn({2, 3, 4}), w = at::randn({5, 4});
    mango_tensor hx = mango::wrap(x), hw = mango::wrap(w);
    mango_value args[] = {tensor_value(hx), tensor_value(hw)};  // bias left to its default (None)
    mango_value out[4];
    size_t n = 0;
    ASSERT_EQ(api().call_op(op("aten::linear", ""), args, 2, out, 4, &n), MANGO_OK) << api().last_error();
    ASSERT_EQ(n, 1u);
    ASSERT_EQ(out[0].kind, MANGO_VALUE_TENSOR);
    EXPECT_TRUE(at::allclose(mango::adopt(out[0].u.tensor), at::linear(x, w)));
    EXPECT_EQ(api().tensor_ndim(hx), 3);
    EXPECT_EQ(api().tensor_size(hx, -1), 4);
    EXPECT_EQ(api().tensor_size(hx, 7), -1);
    EXPECT_EQ(api().tensor_dtype(hx), MANGO_DTYPE_F32);
    EXPECT_EQ(api().tensor_device(hx).type, MANGO_DEVICE_CPU);
    api().tensor_release(hx);
    api().tensor_release(hw);
}

TEST_F(HostApi, IntIsAcceptedWhereFloatOrScalarExpected) {
    at::Tensor x = at::ones({3});
    mango_tensor hx = mango::wrap(x);
    mango_value add_args[] = {tensor_value(hx), tensor_value(hx), int_value(3)};  // alpha: Scalar
    mango_value out[2];
    size_t n = 0;
    ASSERT_EQ(api().call_op(op("aten::add", "Tensor"), add_args, 3, out, 2, &n), MANGO_OK) << api().last_error();
    EXPECT_TRUE(at::equal(mango::adopt(out[0].u.tensor), at::full({3}, 4.0)));
    mango_value drop_args[] = {tensor_value(hx), int_value(0), mango_value{MANGO_VALUE_BOOL, 0, {}}};  // p: float
    drop_args[2].u.b = 1;
    ASSERT_EQ(api().call_op(op("aten::dropout", ""), drop_args, 3, out, 2, &n), MANGO_OK) << api().last_error();
    EXPECT_TRUE(at::equal(mango::adopt(out[0].u.tensor), x));
    api().tensor_release(hx);
}

TEST_F(HostApi, TensorListResultFillsConsecutiveSlots) {
    mango_tensor hx = mango::wrap(at::arange(6).reshape({3, 2}));
    mango_value args[] = {tensor_value(hx), int_value(0)};
    mango_value out[4];
    size_t n = 0;
    ASSERT_EQ(api().call_op(op("aten::unbind", "int"), args, 2, out, 4, &n), MANGO_OK) << api().last_error();
    ASSERT_EQ(n, 3u);
    for (size_t i = 0; i < n; ++i) EXPECT_EQ(mango::adopt(out[i].u.tensor)[0].item<int64_t>(), int64_t(2 * i));
    // Too few result slots: an error, and nothing leaks.
    EXPECT_EQ(api().call_op(op("aten::unbind", "int"), args, 2, out, 2, &n), MANGO_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(n, 0u);
    EXPECT_NE(std::string(api().last_error()).find("more than 2 results"), std::string::npos);
    api().tensor_release(hx);
}

TEST_F(HostApi, ErrorsComeBackAsStatusAndMessage) {
    const mango_op *o = nullptr;
    EXPECT_EQ(api().find_op("aten::no_such_op", "", &o), MANGO_ERR_NOT_FOUND);
    EXPECT_NE(std::string(api().last_error()).find("no operator aten::no_such_op"), std::string::npos);

    mango_tensor a = mango::wrap(at::ones({2, 3})), b = mango::wrap(at::ones({4, 5}));
    mango_value args[] = {tensor_value(a), tensor_value(b)};
    mango_value out[1];
    size_t n = 0;
    EXPECT_EQ(api().call_op(op("aten::matmul", ""), args, 2, out, 1, &n), MANGO_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(api().last_error()).find("cannot be multiplied"), std::string::npos) << api().last_error();

    mango_value wrong[] = {tensor_value(a), mango_value{MANGO_VALUE_DOUBLE, 0, {}}};
    EXPECT_EQ(api().call_op(op("aten::softmax", "int"), wrong, 2, out, 1, &n), MANGO_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(api().last_error()).find("argument 2 ('dim') expects int, got a float"), std::string::npos) << api().last_error();

    mango_value too_few[] = {tensor_value(a)};
    EXPECT_EQ(api().call_op(op("aten::matmul", ""), too_few, 1, out, 1, &n), MANGO_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(api().last_error()).find("missing argument 'other'"), std::string::npos);
    api().tensor_release(a);
    api().tensor_release(b);
}

TEST_F(HostApi, CreationWithDtypeAndDevice) {
    int64_t shape[] = {2, 2};
    mango_value args[4]{};
    args[0].kind = MANGO_VALUE_INT_LIST;
    args[0].u.ints = {shape, 2};
    args[1].kind = MANGO_VALUE_DTYPE;
    args[1].u.i = MANGO_DTYPE_BF16;
    args[2].kind = MANGO_VALUE_NONE;
    args[3].kind = MANGO_VALUE_DEVICE;
    args[3].u.device = {MANGO_DEVICE_CPU, -1};
    mango_value out[1];
    size_t n = 0;
    ASSERT_EQ(api().call_op(op("aten::zeros", ""), args, 4, out, 1, &n), MANGO_OK) << api().last_error();
    at::Tensor z = mango::adopt(out[0].u.tensor);
    EXPECT_EQ(z.scalar_type(), at::kBFloat16);
    EXPECT_EQ(z.sizes(), at::IntArrayRef({2, 2}));
}

TEST_F(HostApi, FromDataCopiesAndDataPointerReads) {
    const float data[] = {1, 2, 3, 4, 5, 6};
    const int64_t shape[] = {2, 3};
    mango_tensor t = nullptr;
    ASSERT_EQ(api().tensor_from_data(data, MANGO_DTYPE_F32, shape, 2, {MANGO_DEVICE_CPU, -1}, &t), MANGO_OK);
    EXPECT_EQ(static_cast<float *>(api().tensor_data(t))[4], 5.0f);
    EXPECT_EQ(api().tensor_stride(t, 0), 3);
    EXPECT_EQ(api().cuda_stream({MANGO_DEVICE_CPU, -1}), nullptr);
    api().tensor_release(t);
    EXPECT_EQ(api().tensor_from_data(data, 77, shape, 2, {MANGO_DEVICE_CPU, -1}, &t), MANGO_ERR_INVALID_ARGUMENT);
}

TEST_F(HostApi, AutogradFlowsThroughBoxedCalls) {
    at::Tensor w = at::randn({3, 4}).set_requires_grad(true);
    mango_tensor hx = mango::wrap(at::randn({2, 4})), hw = mango::wrap(w);
    mango_value args[] = {tensor_value(hx), tensor_value(hw)};
    mango_value out[1];
    size_t n = 0;
    ASSERT_EQ(api().call_op(op("aten::linear", ""), args, 2, out, 1, &n), MANGO_OK);
    mango::adopt(out[0].u.tensor).sum().backward();
    ASSERT_TRUE(w.grad().defined());
    EXPECT_GT(w.grad().abs().sum().item<float>(), 0);
    api().tensor_release(hx);
    api().tensor_release(hw);
}

TEST_F(HostApi, ContextServices) {
    mango::InstanceContext ctx;
    ctx.label = "test";
    ctx.options = {{"width", 8}, {"name", "x"}, {"dims", {1, 2}}, {"rate", 0.5}};
    ctx.config = {{"rope_scaling", {{"type", "linear"}}}};
    mango_value v{};
    ASSERT_EQ(api().option(&ctx, "width", &v), MANGO_OK);
    EXPECT_EQ(v.kind, MANGO_VALUE_INT);
    EXPECT_EQ(v.u.i, 8);
    ASSERT_EQ(api().option(&ctx, "name", &v), MANGO_OK);
    EXPECT_STREQ(v.u.s, "x");
    ASSERT_EQ(api().option(&ctx, "dims", &v), MANGO_OK);
    EXPECT_EQ(v.kind, MANGO_VALUE_INT_LIST);
    EXPECT_EQ(v.u.ints.data[1], 2);
    EXPECT_EQ(api().option(&ctx, "nope", &v), MANGO_ERR_NOT_FOUND);
    ASSERT_EQ(api().config(&ctx, "rope_scaling.type", &v), MANGO_OK);
    EXPECT_STREQ(v.u.s, "linear");
    EXPECT_EQ(api().config(&ctx, "rope_scaling.factor", &v), MANGO_ERR_NOT_FOUND);

    mango_tensor init = mango::wrap(at::zeros({3})), p = nullptr;
    ctx.saved["restored"] = at::full({3}, 7.0);
    ASSERT_EQ(api().parameter(&ctx, "fresh", init, 1, &p), MANGO_OK);
    EXPECT_TRUE(mango::adopt(p).requires_grad());
    ASSERT_EQ(api().parameter(&ctx, "restored", init, 0, &p), MANGO_OK);
    EXPECT_EQ(mango::adopt(p)[0].item<float>(), 7.0f);
    EXPECT_EQ(api().parameter(&ctx, "fresh", init, 1, &p), MANGO_ERR_INVALID_ARGUMENT);
    ctx.saved["bad"] = at::zeros({4});
    EXPECT_EQ(api().parameter(&ctx, "bad", init, 1, &p), MANGO_ERR_SHAPE);
    EXPECT_NE(std::string(api().last_error()).find("expected [3]"), std::string::npos) << api().last_error();
    ASSERT_EQ(ctx.parameters.size(), 2u);

    mango_tensor got = nullptr;
    EXPECT_EQ(api().cache_get(&ctx, "k", &got), MANGO_ERR_NOT_FOUND);
    EXPECT_EQ(got, nullptr);
    ASSERT_EQ(api().cache_set(&ctx, "k", init), MANGO_OK);
    ASSERT_EQ(api().cache_get(&ctx, "k", &got), MANGO_OK);
    api().tensor_release(got);
    EXPECT_EQ(api().report(&ctx, MANGO_REPORT_LOSS, "vec", init), MANGO_ERR_SHAPE);
    api().tensor_release(init);
}

// cache_append_pair is two cache_append calls: growing cache, a static cache's prefill and its decode
// steps (written in place at the step's entry); keys and values of different widths (MLA's latent and
// rotary parts); on an error neither output is set, and what came before the failing slot stays appended.
TEST_F(HostApi, CacheAppendPairIsTwoAppends) {
    for (const bool fixed : {false, true}) {
        mango::InstanceContext one, two;
        one.label = two.label = "test";
        if (fixed)
            for (auto *ctx : {&one, &two}) {
                ctx->static_cache = std::make_shared<mango::InstanceContext::StaticCache>();
                ctx->static_cache->capacity = 6;
            }
        at::manual_seed(3);
        for (int step = 0; step < 4; ++step) {
            const int64_t T = step == 0 ? 3 : 1;  // a prefill of 3, then decode steps
            if (fixed && step > 0)
                for (auto *ctx : {&one, &two}) {
                    auto &sc = *ctx->static_cache;
                    if (!sc.decoding) sc.decoding = true, sc.write_at = at::full({1}, 2 + step, at::kLong);
                    sc.write_at.fill_(2 + step);
                }
            mango_tensor k = mango::wrap(at::randn({2, 1, T, 4})), v = mango::wrap(at::randn({2, 1, T, 3}));
            mango_tensor k1 = nullptr, v1 = nullptr, k2 = nullptr, v2 = nullptr;
            ASSERT_EQ(api().cache_append(&one, "layer0.k", k, 2, &k1), MANGO_OK) << api().last_error();
            ASSERT_EQ(api().cache_append(&one, "layer0.v", v, 2, &v1), MANGO_OK) << api().last_error();
            ASSERT_EQ(api().cache_append_pair(&two, "layer0.k", k, "layer0.v", v, 2, &k2, &v2), MANGO_OK) << api().last_error();
            const at::Tensor a = mango::adopt(k1), b = mango::adopt(v1), c = mango::adopt(k2), d = mango::adopt(v2);
            EXPECT_TRUE(a.equal(c)) << "keys, step " << step << (fixed ? " (static)" : "");
            EXPECT_TRUE(b.equal(d)) << "values, step " << step << (fixed ? " (static)" : "");
            EXPECT_EQ(c.size(2), fixed ? (step == 0 ? 3 : 6) : 3 + step);
            api().tensor_release(k);
            api().tensor_release(v);
        }
    }
    mango::InstanceContext ctx;
    ctx.label = "test";
    mango_tensor k = mango::wrap(at::zeros({1, 1, 2, 4})), bad = mango::wrap(at::zeros({1, 1, 2, 4})), ko = nullptr, vo = nullptr;
    ASSERT_EQ(api().cache_append_pair(&ctx, "k", k, "v", bad, 2, &ko, &vo), MANGO_OK);
    api().tensor_release(ko);
    api().tensor_release(vo);
    ko = vo = nullptr;
    EXPECT_EQ(api().cache_append_pair(&ctx, "k", k, "v", bad, 7, &ko, &vo), MANGO_ERR_INVALID_ARGUMENT);  // dim out of range
    EXPECT_EQ(ko, nullptr);
    EXPECT_EQ(vo, nullptr);
    EXPECT_NE(std::string(api().last_error()).find("dim out of range"), std::string::npos) << api().last_error();
    api().tensor_release(k);
    api().tensor_release(bad);
}
