/*
 * mango/plugin.h — the Mango plugin ABI, version 1.
 *
 * This C99 header is the whole contract between the `mango` host and a plugin
 * library. A plugin includes only this (or the C++ wrapper mango/plugin.hpp)
 * and never links LibTorch: tensors are opaque handles owned by the host, and
 * every computation goes through the host's operator call (`call_op`), so
 * autograd, CUDA and dtypes work for plugin code unchanged.
 *
 * Rules that keep the ABI stable:
 *  - A library exports one symbol, MANGO_ENTRY_SYMBOL, with C linkage.
 *  - Every struct that crosses the boundary starts with `struct_size`. Fields
 *    are only ever appended; the reader of a struct looks at a field only when
 *    `struct_size` says it is present. A signature change is a new `_v2`
 *    function pointer appended beside the old one.
 *  - No C++ types, exceptions or allocators cross. Errors are status codes; a
 *    failing side stores a message with set_error() and the other reads it
 *    with last_error().
 *  - Enumerations are fixed integer constants (#define), never enum layouts.
 *
 * Ownership, stated once:
 *  - "new reference": the receiver owns the tensor handle and must release it
 *    with tensor_release(). Every tensor a function writes to an `out`
 *    parameter, or a result slot of call_op, is a new reference.
 *  - "borrowed": valid only for the duration of the call that received it,
 *    unless the function says otherwise. Tensor arguments passed into a
 *    function are borrowed; to keep one, call tensor_retain().
 *  - Descriptors (mango_plugin, mango_component, vtables, strings in them) are
 *    owned by the plugin, must be static, and stay valid until the library is
 *    unloaded. The host copies nothing it does not need.
 *  - `void *self` instance state is owned by the plugin: made by create(),
 *    freed by destroy(). The host calls destroy() exactly once per successful
 *    create(), after the last call on that instance.
 *  - mango_context is owned by the host and valid from create() until
 *    destroy() returns. It is the instance's link to its options, weights,
 *    parameters, cache, and reporting.
 *
 * Threading: one instance is called from one thread at a time. Host API
 * functions are thread-safe. last_error() is per thread.
 *
 * Revisions. ABI 1 is frozen; each table grows by appending fields, and
 * every group of appended fields is a numbered revision of that table
 * ("revision 2 of mango_host_api"). A field of revision N is present when the
 * table's struct_size covers it: test with MANGO_HAS(table, type, field)
 * before using it, and fall back (or refuse clearly) when it is absent. The
 * C++ wrapper does this for you.
 *
 * Provisional: tables and functions marked PROVISIONAL have no shipped
 * plugin yet and may change once, with their first plugin, before they are
 * frozen like the rest.
 *
 * The SDK README (share/doc/mango-sdk/README.md when installed, sdk/README.md
 * in the source tree) explains each component kind with examples.
 */
#ifndef MANGO_PLUGIN_H
#define MANGO_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- versions and the entry symbol ------------------------------------ */

#define MANGO_ABI_VERSION 1u                       /* this header's ABI */
#define MANGO_ENTRY_SYMBOL "mango_plugin_entry_v1" /* exported by each library */

/* Non-zero when `table` (a pointer to a struct of type `type`) is large enough
 * to hold `field`: the reader's test before touching an appended field. */
#define MANGO_HAS(table, type, field) ((table) != NULL && (table)->struct_size >= offsetof(type, field) + sizeof(((const type *)0)->field))

#if defined(_WIN32)
#define MANGO_EXPORT __declspec(dllexport)
#else
#define MANGO_EXPORT __attribute__((visibility("default")))
#endif

/* ---- status codes ------------------------------------------------------ */

typedef int32_t mango_status;
#define MANGO_OK 0
#define MANGO_ERR_INVALID_ARGUMENT 1 /* bad value, wrong type, bad option */
#define MANGO_ERR_NOT_FOUND 2        /* unknown operator, weight, key */
#define MANGO_ERR_UNSUPPORTED 3      /* valid request this side cannot do */
#define MANGO_ERR_SHAPE 4            /* tensor shape or dtype mismatch */
#define MANGO_ERR_OUT_OF_MEMORY 5
#define MANGO_ERR_CANCELLED 6 /* the user asked to stop */
#define MANGO_ERR_INTERNAL 7  /* anything else; see last_error() */

/* ---- fixed constants ---------------------------------------------------- */

typedef int32_t mango_dtype;
#define MANGO_DTYPE_F32 1
#define MANGO_DTYPE_F16 2
#define MANGO_DTYPE_BF16 3
#define MANGO_DTYPE_F64 4
#define MANGO_DTYPE_I64 5
#define MANGO_DTYPE_I32 6
#define MANGO_DTYPE_I16 7
#define MANGO_DTYPE_I8 8
#define MANGO_DTYPE_U8 9
#define MANGO_DTYPE_BOOL 10
#define MANGO_DTYPE_F8_E4M3 11
#define MANGO_DTYPE_F8_E5M2 12

#define MANGO_DEVICE_CPU 0
#define MANGO_DEVICE_CUDA 1
typedef struct mango_device {
    int32_t type;  /* MANGO_DEVICE_* */
    int32_t index; /* device ordinal; -1 = current */
} mango_device;

#define MANGO_LOG_TRACE 0
#define MANGO_LOG_DEBUG 1
#define MANGO_LOG_INFO 2
#define MANGO_LOG_WARN 3
#define MANGO_LOG_ERROR 4

/* Component kinds. */
#define MANGO_KIND_ARCHITECTURE 1
#define MANGO_KIND_ADAPTER 2
#define MANGO_KIND_ROUTER 3
#define MANGO_KIND_MERGE 4
#define MANGO_KIND_MOE_CONVERTER 5

/* ---- opaque handles ---------------------------------------------------- */

typedef struct mango_tensor_t *mango_tensor;  /* a host tensor reference */
typedef struct mango_context_t mango_context; /* per-instance host state */
typedef struct mango_op_t mango_op;           /* a resolved host operator */

/* ---- boxed values (operator arguments, options, config) ---------------- */

#define MANGO_VALUE_NONE 0        /* absent optional argument */
#define MANGO_VALUE_TENSOR 1      /* u.tensor */
#define MANGO_VALUE_INT 2         /* u.i */
#define MANGO_VALUE_DOUBLE 3      /* u.d */
#define MANGO_VALUE_BOOL 4        /* u.b (0 or 1) */
#define MANGO_VALUE_STRING 5      /* u.s, NUL-terminated UTF-8 */
#define MANGO_VALUE_INT_LIST 6    /* u.ints */
#define MANGO_VALUE_TENSOR_LIST 7 /* u.tensors */
#define MANGO_VALUE_DOUBLE_LIST 8 /* u.doubles */
#define MANGO_VALUE_DTYPE 9       /* u.i holds a MANGO_DTYPE_* */
#define MANGO_VALUE_DEVICE 10     /* u.device */

typedef struct mango_value {
    int32_t kind; /* MANGO_VALUE_* */
    int32_t reserved;
    union {
        mango_tensor tensor;
        int64_t i;
        double d;
        int32_t b;
        const char *s;
        struct {
            const int64_t *data;
            size_t len;
        } ints;
        struct {
            const mango_tensor *data;
            size_t len;
        } tensors;
        struct {
            const double *data;
            size_t len;
        } doubles;
        mango_device device;
    } u;
} mango_value;

/* Which list a report() value goes to. */
#define MANGO_REPORT_LOSS                                \
    1 /* a scalar auxiliary loss. The trainer adds       \
         weight[name] * value to the training loss, with \
         the per-name weights of the pipeline's train    \
         step (aux_weights; load_balance 0.01 and        \
         entropy 0 by default). A loss name that has no  \
         weight there stops training at its first step   \
         with an error naming the component. */
#define MANGO_REPORT_STAT                                \
    2 /* a statistic (any shape; scalars and vectors are \
         logged): training metrics log, progress line,   \
         eval metrics.json. Not trained. */

/* Flags of a declared tensor (mango_tensor_decl.flags). */
#define MANGO_TENSOR_OPTIONAL 1u /* a checkpoint may lack it (then it is not loaded) */
#define MANGO_TENSOR_TIED                              \
    2u /* the same values as `tied_to` (e.g. a tied LM \
          head); never stored or loaded by itself */
#define MANGO_TENSOR_F32                                  \
    4u /* loaded, created, merged and saved in float32    \
          whatever dtype the model runs in, as            \
          transformers' _keep_in_fp32_modules_strict      \
          keeps DeepSeek's e_score_correction_bias. Read  \
          from the architecture's tensors() table (arch   \
          vtable revision 2) before create(). Hosts older \
          than this flag cast such a tensor like any      \
          other: read the dtype you get, don't assume it. */

/* One tensor of a model, as an architecture declares it (declare_tensor_v2).
 * Strings and `shape` are borrowed for the call; the host copies them. */
typedef struct mango_tensor_decl {
    uint32_t struct_size;
    int32_t layer;        /* block index, or -1 for a model-level tensor */
    const char *role;     /* documented role, e.g. "attn.q.weight" (SDK README) */
    const char *name;     /* checkpoint name, e.g. "model.layers.3.self_attn.q_proj.weight" */
    const int64_t *shape; /* expected shape, from config.json */
    int32_t ndim;
    uint32_t flags;      /* MANGO_TENSOR_* */
    const char *tied_to; /* TIED: checkpoint name of the tensor it shares; else NULL */
} mango_tensor_decl;

/* ---- bootstrap: frozen forever ----------------------------------------- */

/* Passed to the entry point. This struct never changes. `get_api(v)` returns
 * a `const mango_host_api *` whose version is v, or NULL when the host lacks
 * that version. While a library is being scanned (listing, validation) the
 * host answers NULL for every version: the entry point must only describe. */
typedef struct mango_host_base {
    uint32_t struct_size;
    uint32_t abi_version;     /* newest ABI the host speaks */
    const char *host_version; /* e.g. "0.4.0"; static */
    const void *(*get_api)(uint32_t version);
} mango_host_base;

/* ---- the host API table (version 1) ----------------------------------- */

typedef struct mango_host_api {
    uint32_t struct_size;
    uint32_t version; /* 1 */

    /* Errors. last_error(): message of the last failing host call on this
     * thread; borrowed until the next host call on this thread. set_error():
     * a plugin stores the reason before returning a non-OK status (copied). */
    const char *(*last_error)(void);
    void (*set_error)(const char *message);

    /* Logging through the host's logger (message copied). */
    void (*log)(int32_t level, const char *message);
    /* Non-zero once the user asked to stop (Ctrl-C); long work should return
     * MANGO_ERR_CANCELLED soon after. */
    int32_t (*is_cancelled)(void);

    /* Tensors. retain: new reference to the same tensor. release: NULL ok. */
    mango_tensor (*tensor_retain)(mango_tensor t);
    void (*tensor_release)(mango_tensor t);
    int32_t (*tensor_ndim)(mango_tensor t);
    int64_t (*tensor_size)(mango_tensor t, int32_t dim);   /* dim < 0 counts from the end */
    int64_t (*tensor_stride)(mango_tensor t, int32_t dim); /* in elements */
    mango_dtype (*tensor_dtype)(mango_tensor t);
    mango_device (*tensor_device)(mango_tensor t);
    /* Address of the first element; borrowed while `t` lives and is not
     * resized. For plugins with their own kernels. */
    void *(*tensor_data)(mango_tensor t);
    /* The current CUDA stream (cudaStream_t) of `device`, NULL for CPU. */
    void *(*cuda_stream)(mango_device device);
    /* New contiguous tensor holding a copy of `data` (element type `dtype`,
     * row-major `shape`), placed on `device`. `*out` is a new reference. */
    mango_status (*tensor_from_data)(const void *data, mango_dtype dtype, const int64_t *shape, int32_t ndim, mango_device device,
                                     mango_tensor *out);

    /* Operators: a boxed call of any ATen operator by name, e.g. ("aten::linear",
     * "") or ("aten::add", "Tensor"). find_op's handle is borrowed and valid as
     * long as the host; resolve once, call many times. call_op takes the
     * arguments in schema order (borrowed); trailing arguments with defaults
     * may be left out; ints are accepted where floats are expected. Results go
     * to `results[0..*n_results)`: tensors are new references, a Tensor[]
     * result fills consecutive slots. */
    mango_status (*find_op)(const char *name, const char *overload, const mango_op **op);
    mango_status (*call_op)(const mango_op *op, const mango_value *args, size_t n_args, mango_value *results, size_t max_results,
                            size_t *n_results);

    /* Context services. Strings and lists written to `out` are borrowed until
     * the instance is destroyed. */
    /* An option of this instance, already validated against the component's
     * schema with defaults filled in. NOT_FOUND if absent and no default. */
    mango_status (*option)(mango_context *ctx, const char *key, mango_value *out);
    /* A key of the model's config.json (architectures); dotted path for nested
     * objects and list items ("rope_scaling.type", "attention_layers.0").
     * NOT_FOUND if absent. */
    mango_status (*config)(mango_context *ctx, const char *key, mango_value *out);
    /* A weight of this instance's model by checkpoint name, loaded lazily.
     * `*out` is a new reference. NOT_FOUND names the tensor. */
    mango_status (*weight)(mango_context *ctx, const char *name, mango_tensor *out);
    /* Declare a parameter named `name` (unique within the instance) with
     * initial value `init` (borrowed; any device/dtype: the host moves it to
     * the instance's). If a saved value exists (loading a saved fusion or a
     * training state) that value is used instead. `*out` is a new reference
     * to the live tensor. trainable = 1: the optimiser updates it.
     * trainable = 0: a buffer (e.g. a balancing bias): no gradient, but
     * saved, loaded and resumed exactly like a trainable one; update it in
     * place (aten::copy_, add_) inside set_grad_enabled(0). */
    mango_status (*parameter)(mango_context *ctx, const char *name, mango_tensor init, int32_t trainable, mango_tensor *out);
    /* Non-zero in training mode (dropout on). */
    int32_t (*is_training)(mango_context *ctx);
    /* Hand an auxiliary loss or statistic to the host (borrowed; host keeps
     * its own reference). `what` is MANGO_REPORT_*. */
    mango_status (*report)(mango_context *ctx, int32_t what, const char *name, mango_tensor value);
    /* Key/value cache slots of this instance for the current sequence batch;
     * the host clears them between generations. get: NOT_FOUND and *out=NULL
     * when empty, else a new reference. set: borrowed, host keeps a ref. */
    mango_status (*cache_get)(mango_context *ctx, const char *key, mango_tensor *out);
    mango_status (*cache_set)(mango_context *ctx, const char *key, mango_tensor value);
    /* Output of a MoE conversion: a named result tensor (borrowed; the host
     * keeps a reference). */
    mango_status (*emit)(mango_context *ctx, const char *name, mango_tensor value);
    /* A per-model parameter of a merge (weight, density, ...) for the
     * tensor being merged: model_index is the position in
     * mango_merge_input.models. Like option(): validated, defaults filled. */
    mango_status (*model_option)(mango_context *ctx, size_t model_index, const char *key, mango_value *out);
    /* Architectures: name the checkpoint tensor that plays `role` in `layer`
     * (-1 for model-level tensors). Roles are documented strings such as
     * "attn.q.weight", "mlp.down.weight", "norm.final.weight"; see the SDK
     * README. Merging and MoE conversion use these. Superseded by
     * declare_tensor_v2 (revision 3), which also gives shape and flags. */
    mango_status (*declare_tensor)(mango_context *ctx, int32_t layer, const char *role, const char *name);

    /* ---- revision 2 (MANGO_HAS before use) ---- */

    /* Like weight(), with the shape the plugin expects: a checkpoint tensor of
     * another shape is refused naming both shapes, and a model initialised
     * from its config alone gets a fresh tensor (2-D and up: normal(0,
     * initializer_range); 1-D "*.weight": ones; "*.bias": zeros). */
    mango_status (*weight_shaped)(mango_context *ctx, const char *name, const int64_t *shape, int32_t ndim, mango_tensor *out);

    /* ---- revision 3 (MANGO_HAS before use) ---- */

    /* Non-zero when the host uses report() values now: in training and in
     * evaluation (statistics go to metrics.json). Skip computing reports
     * otherwise. Older hosts: use is_training(). */
    int32_t (*wants_reports)(mango_context *ctx);
    /* Turns autograd recording on (1) or off (0) for this thread; returns the
     * previous setting. For in-place updates of buffers (trainable = 0
     * parameters) and other math that must not be differentiated. Restore
     * the previous value before returning to the host. */
    int32_t (*set_grad_enabled)(int32_t enabled);
    /* Copies the elements of `t` (any device, any strides) to host memory
     * `dst` as a dense row-major array of t's own dtype; `dst_bytes` must
     * equal numel * element size, else INVALID_ARGUMENT. Synchronises. */
    mango_status (*tensor_copy_to_host)(mango_tensor t, void *dst, size_t dst_bytes);
    /* `*exists` = 1 when this instance's checkpoint holds tensor `name`
     * (always 1 for models initialised from their config), else 0. */
    mango_status (*weight_exists)(mango_context *ctx, const char *name, int32_t *exists);
    /* Declares one tensor of the model: role, checkpoint name, shape, flags.
     * Called from an architecture's tensors() (see its vtable). */
    mango_status (*declare_tensor_v2)(mango_context *ctx, const mango_tensor_decl *decl);
    /* A new tensor of `like`'s shape and device, float32, uniform in [0, 1),
     * from this instance's random stream (merges: seeded by the merge's seed
     * and the tensor's name). `*out` is a new reference. */
    mango_status (*random_like)(mango_context *ctx, mango_tensor like, mango_tensor *out);

    /* ---- revision 4 (MANGO_HAS before use) ---- */

    /* Architectures, inside block(): 1 when every entry of this call's
     * attention_mask is non-zero (no padding), so attention may run without
     * a padding mask (e.g. a causal flash kernel); 0 when some entry is 0.
     * The host works it out once per forward, not per block. */
    int32_t (*attention_mask_full)(mango_context *ctx);

    /* ---- revision 5 (MANGO_HAS before use) ---- */

    /* Expert parallelism. `*rank` and `*world` of the ranks sharing this
     * instance's experts: 0 and 1 unless the model is expert-parallel in a
     * distributed run (`expert_parallel = true` in the pipeline). Then the
     * architecture holds only experts [rank * E / world, (rank + 1) * E /
     * world) and sends each routed token to the rank holding its expert with
     * all_to_all(). */
    void (*expert_shard)(mango_context *ctx, int32_t *rank, int32_t *world);
    /* A collective over the ranks of the run: every rank calls it, in the
     * same order. Rows of `input` (dim 0) are sent out, the first
     * send_rows[0] to rank 0, the next send_rows[1] to rank 1, ...; `*out`
     * (new reference, input's device and dtype) holds the rows received,
     * recv_rows[r] of them from rank r, in rank order. Both arrays have one
     * entry per rank and must match the senders' (exchange the counts first:
     * a [world, 1] tensor with all-ones rows). Differentiable: gradients go
     * back the same way. Alone: a copy of `input`. */
    mango_status (*all_to_all)(mango_tensor input, const int64_t *send_rows, const int64_t *recv_rows, mango_tensor *out);

    /* ---- revision 6 (MANGO_HAS before use) ---- */

    /* Architectures, inside block(): appends `value` (borrowed) along `dim`
     * to the cache slot `key` and sets `*out` (new reference) to the slot's
     * entries so far: cache_get + concatenate + cache_set in one call. When
     * the host decodes with a static cache (preallocated, written in place,
     * so a decode step can be captured as a CUDA graph), `*out` may be
     * longer than the entries written: the positions not yet written are
     * zeros of the attention_mask, which always has as many columns as
     * `*out` has entries along `dim`; attention must mask by it. A block
     * that cannot (e.g. a sliding window counted from the last key, shorter
     * than cache_capacity()) uses cache_get/cache_set instead, and the host
     * then decodes without. */
    mango_status (*cache_append)(mango_context *ctx, const char *key, mango_tensor value, int32_t dim, mango_tensor *out);

    /* ---- revision 7 (MANGO_HAS before use) ---- */

    /* cache_append for two slots at once (a layer's keys and values):
     * exactly what cache_append(key_a, a, dim, out_a) then cache_append(key_b,
     * b, dim, out_b) do, but a static cache's decode step writes both entries
     * in one launch on a GPU. On an error neither `*out` is set. */
    mango_status (*cache_append_pair)(mango_context *ctx, const char *key_a, mango_tensor a, const char *key_b, mango_tensor b, int32_t dim,
                                      mango_tensor *out_a, mango_tensor *out_b);

    /* ---- revision 8 (MANGO_HAS before use) ---- */

    /* Architectures, inside block(): how many entries each cache slot holds
     * while the host prefills or decodes with a static cache, 0 with the
     * growing cache. No two positions of such a sequence are this many
     * apart, so a sliding window at least this long masks nothing, and its
     * layer may use cache_append like any other. */
    int64_t (*cache_capacity)(mango_context *ctx);
} mango_host_api;

/* ---- component tables (one per kind) ------------------------------------ */

/* Every table begins with struct_size. Functions return MANGO_OK or a status
 * with set_error() called. Tensors written to out parameters are new refs. */

/* Adapter: maps hidden states [..., d_in] -> [..., d_out]. */
typedef struct mango_adapter_vtable {
    uint32_t struct_size;
    mango_status (*create)(mango_context *ctx, int64_t d_in, int64_t d_out, void **self);
    mango_status (*forward)(void *self, mango_context *ctx, mango_tensor x, mango_tensor *y);
    void (*destroy)(void *self);

    /* ---- revision 2 (read only when struct_size covers it) ---- */

    /* Optional; NULL means "no". Non-zero when this instance's forward is
     * affine, forward(x) = A x + b for every x (e.g. a projection without a
     * norm). The host then computes forward(u) - forward(v) with one
     * projection, as forward(u - v) - forward(0). */
    int32_t (*is_affine)(void *self);
} mango_adapter_vtable;

/* Router: mixes `n_experts` block outputs. route() gets the hidden states
 * [B, T, H] entering the fused layer and a mask [B, T] (1 = token, 0 = pad;
 * NULL = all tokens). It writes expert weights of a floating dtype, either
 * pooled [B, E] or per token [B, T, E], finite and >= 0, each row summing to
 * 1 (over the chosen experts, for top-k); the host checks this in training,
 * evaluation and on the first step of a generation, and names the router
 * when it does not hold. Auxiliary losses and statistics go through
 * report(); the host uses them only when wants_reports() (training,
 * evaluation), so a router may skip them otherwise. */
typedef struct mango_router_vtable {
    uint32_t struct_size;
    mango_status (*create)(mango_context *ctx, int64_t hidden_size, int64_t n_experts, void **self);
    mango_status (*route)(void *self, mango_context *ctx, mango_tensor hidden, mango_tensor mask, mango_tensor *weights);
    void (*destroy)(void *self);

    /* ---- revision 2 (read only when struct_size covers it) ---- */

    /* Optional; NULL = use route(). Like route(), plus the tokens' positions
     * [B, T] (int64; during cached generation they continue after the
     * cached tokens, so a position-aware router stays right). When present
     * the host calls this instead of route(). */
    mango_status (*route_v2)(void *self, mango_context *ctx, mango_tensor hidden, mango_tensor mask, mango_tensor position_ids,
                             mango_tensor *weights);
} mango_router_vtable;

/* Merge: one output tensor from the models that hold it, called tensor by
 * tensor so merging streams. The host resolves every parameter for the
 * tensor at hand (mergekit's gradients and filters) before the call:
 * option() gives the global ones, model_option(ctx, i, key) those of
 * models[i]. Random methods draw from random_like(), which the host seeds
 * per tensor, so a merge is reproducible whatever the thread schedule. */
typedef struct mango_merge_input {
    uint32_t struct_size;
    const char *name;           /* output tensor name */
    const char *role;           /* its role in the architecture's table ("" when unknown) */
    int32_t layer;              /* output layer index; -1 for model-level tensors */
    int32_t is_embed;           /* rows index the vocabulary (embeddings, LM head): their
                                   row counts may differ between models */
    size_t n_models;            /* models holding this tensor, in configuration order */
    const mango_tensor *models; /* borrowed, n_models handles, all of the compute dtype */
    int32_t base;               /* index of the base model in `models`, or -1 */
    int32_t reserved;
} mango_merge_input;

#define MANGO_MERGE_NEEDS_BASE 1u /* refuse configurations without base_model */

typedef struct mango_merge_vtable {
    uint32_t struct_size;
    mango_status (*create)(mango_context *ctx, void **self);
    /* Writes the merged tensor to *out (new reference), of the shape the
     * method defines and the inputs' dtype. *out = NULL with MANGO_OK means
     * "no value" (the host then skips an optional tensor, and fails for a
     * required one, naming it). */
    mango_status (*merge)(void *self, mango_context *ctx, const mango_merge_input *in, mango_tensor *out);
    void (*destroy)(void *self);
    /* Per-model parameters ("weight", "density", ...) as a JSON Schema
     * subset like mango_component.options_schema; NULL = none. Static. */
    const char *model_options_schema;
    uint32_t flags; /* MANGO_MERGE_* */
} mango_merge_vtable;

/* A dense feed-forward block handed to a MoE converter: the FFN of one layer
 * of the dense model (and of each source model, for converters that take
 * experts from several fine-tunes), what the conversion asks for, and data
 * to initialise the router from. Everything is borrowed for the call. FFNs
 * are SwiGLU-style: down(act(gate x) * (up x)); gate is NULL for a plain
 * MLP (down(act(up x))). */
typedef struct mango_dense_ffn {
    uint32_t struct_size;
    int32_t layer;
    const char *activation; /* config's activation name, e.g. "silu" */
    mango_tensor gate;      /* [F, H] or NULL (non-gated MLP) */
    mango_tensor up;        /* [F, H] */
    mango_tensor down;      /* [H, F] */
    mango_tensor up_bias;   /* [F] or NULL */
    mango_tensor down_bias; /* [H] or NULL */
    int64_t n_experts;      /* experts to make */
    int64_t top_k;          /* experts per token the output model will use */
    /* Inputs of this layer's FFN (after its norm) on calibration text, [N, H],
     * or NULL: for routers initialised from data. */
    mango_tensor hidden_states;
    /* Other models' FFNs for this layer (fine-tunes of the same base), in
     * configuration order, n_sources each (NULL arrays when none). */
    size_t n_sources;
    const mango_tensor *source_gate, *source_up, *source_down;
    /* Per expert, a direction in hidden space the router should prefer for
     * it ([n_experts, H]; e.g. from prompts), or NULL. */
    mango_tensor expert_directions;
} mango_dense_ffn;

/* MoE converter: turns one dense FFN into n_experts experts and a router,
 * written with emit(): "experts.<e>.gate", "experts.<e>.up",
 * "experts.<e>.down" ([F_e, H], [F_e, H], [H, F_e]; gate omitted for a plain
 * MLP; every expert the same F_e) and "router" ([n_experts, H]). Any output
 * scale the method needs (e.g. E/k for split experts) is folded into down.
 * When the FFN has biases: also "experts.<e>.up_bias" [F_e] and
 * "experts.<e>.down_bias" [H] (hosts before revision 4 of the host API
 * refuse them). */
typedef struct mango_moe_converter_vtable {
    uint32_t struct_size;
    mango_status (*create)(mango_context *ctx, void **self);
    mango_status (*convert)(void *self, mango_context *ctx, const mango_dense_ffn *ffn);
    void (*destroy)(void *self);
} mango_moe_converter_vtable;

/* What an architecture tells the host about a model built from its config. */
typedef struct mango_model_info {
    uint32_t struct_size;
    int32_t is_causal; /* 1 decoder (LM head), 0 encoder */
    int64_t hidden_size;
    int64_t n_layers;
    int64_t vocab_size;
    int64_t n_heads;
    int64_t n_kv_heads;
    int64_t head_dim;
    int64_t max_positions;   /* 0 = unbounded (rotary) */
    int32_t tied_embeddings; /* LM head shares the token embedding */
    int32_t reserved;
} mango_model_info;

/* Architecture: claims config.json model types and runs a model piece by
 * piece so the host can fuse blocks of different models. Hidden states are
 * [B, T, H]; attention_mask is [B, S] over all positions seen so far
 * (1 = token, 0 = pad), S = cached + T; position_ids are [B, T]. */
typedef struct mango_architecture_vtable {
    uint32_t struct_size;
    const char *const *model_types; /* NULL-terminated; static */
    mango_status (*create)(mango_context *ctx, void **self);
    /* Fills `info` (host sets info->struct_size) and declares tensor roles. */
    mango_status (*describe)(void *self, mango_context *ctx, mango_model_info *info);
    mango_status (*embed)(void *self, mango_context *ctx, mango_tensor input_ids, mango_tensor position_ids, mango_tensor *hidden);
    /* One block; uses cache_get/cache_set for its KV cache when use_cache. */
    mango_status (*block)(void *self, mango_context *ctx, int32_t layer, mango_tensor hidden, mango_tensor attention_mask,
                          mango_tensor position_ids, int32_t use_cache, mango_tensor *out);
    /* Final norm + head: logits (decoders) or final hidden states. */
    mango_status (*head)(void *self, mango_context *ctx, mango_tensor hidden, mango_tensor *out);
    void (*destroy)(void *self);

    /* ---- revision 2 (read only when struct_size covers it) ---- */

    /* Optional; NULL = roles come from describe(). Declares every tensor a
     * model of this config has, with declare_tensor_v2, from config.json
     * alone: called without an instance, and `ctx` offers config() and
     * weight_exists() but no weights. Drives `mango inspect --roles`,
     * merging and MoE conversion, and must agree with what create() loads. */
    mango_status (*tensors)(mango_context *ctx);
} mango_architecture_vtable;

/* ---- descriptors --------------------------------------------------------- */

typedef struct mango_component {
    uint32_t struct_size;
    int32_t kind;        /* MANGO_KIND_* */
    const char *name;    /* unique within its kind: [a-z0-9_]+ */
    const char *version; /* "MAJOR.MINOR.PATCH" */
    const char *summary; /* one line */
    /* Options as a JSON Schema subset: {"type":"object","properties":{KEY:
     * {"type": "integer"|"number"|"boolean"|"string"|"array", "default": ...,
     * "description": "...", "enum": [...], "minimum": n, "maximum": n}},
     * "required": [...]}. Unknown keys are refused. NULL = no options. */
    const char *options_schema;
    const void *vtable; /* mango_<kind>_vtable for `kind` */
} mango_component;

typedef struct mango_plugin {
    uint32_t struct_size;
    uint32_t abi_version; /* MANGO_ABI_VERSION the plugin was built with */
    const char *name;     /* library's plugin name */
    const char *version;
    const char *description;
    size_t n_components;
    const mango_component *components;
} mango_plugin;

/* The one exported function. Returns the static descriptor (NULL = refuse to
 * load). Must not call host services other than base->get_api(). */
typedef const mango_plugin *(*mango_plugin_entry_fn)(const mango_host_base *base);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MANGO_PLUGIN_H */
