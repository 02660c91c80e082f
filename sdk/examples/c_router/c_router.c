/* A router in plain C99 against mango/plugin.h alone: the pooled softmax gate
 *
 *   w[b] = softmax(W mean_t(h[b, t]) / temperature)        [B, E]
 *
 * W [E, H] starts at zero (a uniform mix). Every tensor operation is an ATen
 * operator called by name through the host; nothing here links LibTorch.
 * Shows: option(), parameter(), find_op()/call_op() with boxed values,
 * reference counting, and set_error() on failure. */
#include <mango/plugin.h>

#include <stdlib.h>

static const mango_host_api *api; /* bound in the entry point; NULL while scanning */

typedef struct {
    double temperature;
    mango_tensor weight; /* owned reference to the live parameter */
    const mango_op *zeros, *mean, *linear, *mul, *softmax;
} router;

static mango_value tensor_value(mango_tensor t) {
    mango_value v = {MANGO_VALUE_TENSOR, 0, {0}};
    v.u.tensor = t;
    return v;
}
static mango_value int_list(const int64_t *data, size_t len) {
    mango_value v = {MANGO_VALUE_INT_LIST, 0, {0}};
    v.u.ints.data = data;
    v.u.ints.len = len;
    return v;
}
static mango_value int_value(int64_t i) {
    mango_value v = {MANGO_VALUE_INT, 0, {0}};
    v.u.i = i;
    return v;
}
static mango_value double_value(double d) {
    mango_value v = {MANGO_VALUE_DOUBLE, 0, {0}};
    v.u.d = d;
    return v;
}

/* One operator call with one tensor result (a new reference in *out). */
static mango_status call1(const mango_op *op, const mango_value *args, size_t n, mango_tensor *out) {
    mango_value results[1];
    size_t n_results = 0;
    mango_status s = api->call_op(op, args, n, results, 1, &n_results);
    if (s != MANGO_OK) return s; /* the host's message stays in last_error() */
    *out = results[0].u.tensor;
    return MANGO_OK;
}

static mango_status create(mango_context *ctx, int64_t hidden, int64_t experts, void **self) {
    router *r = calloc(1, sizeof *r);
    mango_value option;
    mango_tensor init = NULL;
    mango_status s;
    int64_t shape[2];
    mango_value args[2];
    if (!r) return MANGO_ERR_OUT_OF_MEMORY;
    if ((s = api->option(ctx, "temperature", &option)) != MANGO_OK) goto fail;
    r->temperature = option.kind == MANGO_VALUE_INT ? (double)option.u.i : option.u.d;
    if ((s = api->find_op("aten::zeros", "", &r->zeros)) != MANGO_OK || (s = api->find_op("aten::mean", "dim", &r->mean)) != MANGO_OK ||
        (s = api->find_op("aten::linear", "", &r->linear)) != MANGO_OK || (s = api->find_op("aten::mul", "Scalar", &r->mul)) != MANGO_OK ||
        (s = api->find_op("aten::softmax", "int", &r->softmax)) != MANGO_OK)
        goto fail;
    shape[0] = experts;
    shape[1] = hidden;
    args[0] = int_list(shape, 2);
    if ((s = call1(r->zeros, args, 1, &init)) != MANGO_OK) goto fail;
    s = api->parameter(ctx, "gate.weight", init, 1, &r->weight); /* the host copies init */
    api->tensor_release(init);
    if (s != MANGO_OK) goto fail;
    *self = r;
    return MANGO_OK;
fail:
    free(r);
    return s;
}

static mango_status route(void *self, mango_context *ctx, mango_tensor hidden, mango_tensor mask, mango_tensor *weights) {
    router *r = self;
    const int64_t time_dim[1] = {1};
    mango_tensor pooled = NULL, logits = NULL, scaled = NULL;
    mango_value args[3];
    mango_status s;
    (void)ctx;
    (void)mask; /* a fuller router would leave padding out of the mean */
    args[0] = tensor_value(hidden);
    args[1] = int_list(time_dim, 1);
    if ((s = call1(r->mean, args, 2, &pooled)) != MANGO_OK) return s; /* [B, H] */
    args[0] = tensor_value(pooled);
    args[1] = tensor_value(r->weight);
    s = call1(r->linear, args, 2, &logits); /* [B, E] */
    api->tensor_release(pooled);
    if (s != MANGO_OK) return s;
    args[0] = tensor_value(logits);
    args[1] = double_value(1.0 / r->temperature);
    s = call1(r->mul, args, 2, &scaled);
    api->tensor_release(logits);
    if (s != MANGO_OK) return s;
    args[0] = tensor_value(scaled);
    args[1] = int_value(-1);
    s = call1(r->softmax, args, 2, weights);
    api->tensor_release(scaled);
    return s;
}

static void destroy(void *self) {
    router *r = self;
    if (!r) return;
    api->tensor_release(r->weight);
    free(r);
}

static const mango_router_vtable kRouter = {sizeof(mango_router_vtable), create, route, destroy, NULL};

static const mango_component kComponents[] = {
    {sizeof(mango_component), MANGO_KIND_ROUTER, "c_softmax", "1.0.0", "pooled softmax gate written in plain C99 (SDK example)",
     "{\"type\": \"object\", \"properties\": {\"temperature\": {\"type\": \"number\", \"default\": 1.0, \"minimum\": 1e-6, "
     "\"description\": \"softmax temperature\"}}}",
     &kRouter},
};

static const mango_plugin kPlugin = {sizeof(mango_plugin), MANGO_ABI_VERSION, "c_router", "1.0.0", "Example router in C99", 1, kComponents};

MANGO_EXPORT const mango_plugin *mango_plugin_entry_v1(const mango_host_base *base) {
    /* Scanning passes a base whose get_api answers NULL: describe only. */
    const mango_host_api *a = base && base->get_api ? (const mango_host_api *)base->get_api(1) : NULL;
    if (a && a->struct_size >= offsetof(mango_host_api, declare_tensor) + sizeof(a->declare_tensor)) api = a;
    return &kPlugin;
}
