// mango/component.hpp — write a component as a C++ class; get its C vtable.
//
//   struct MyRouter {
//       MyRouter(mango::Context &ctx, int64_t hidden, int64_t experts);
//       mango::Tensor route(mango::Context &ctx, const mango::Tensor &h, const mango::Tensor &mask);
//       // or, to see token positions [B, T] (right in cached generation too):
//       // mango::Tensor route(mango::Context &, const mango::Tensor &h, const mango::Tensor &mask, const mango::Tensor &pos);
//   };
//   MANGO_PLUGIN("my_plugin", "1.0.0", "What it is",
//                mango::router<MyRouter>("my_router", "1.0.0", "One line", kSchemaJson))
//
// Adapters have the same shape: `MyAdapter(Context &, int64_t d_in, int64_t
// d_out)` and `Tensor forward(Context &, const Tensor &x)`, plus, optionally,
// `bool affine() const` when forward is x -> A x + b (see is_affine).
//
// Every C entry catches all exceptions and turns them into a status code plus
// set_error(), so nothing thrown ever crosses the ABI.
#pragma once

#include "mango/plugin.hpp"
#include "mango/tensors.hpp"

#include <utility>

namespace mango {
namespace detail {

template <class F>
mango_status guard(F &&f) noexcept {
    try {
        f();
        return MANGO_OK;
    } catch (const Error &e) {
        if (detail::host_slot()) host().set_error(e.what());
        return e.status();
    } catch (const std::bad_alloc &) {
        if (detail::host_slot()) host().set_error("out of memory in plugin");
        return MANGO_ERR_OUT_OF_MEMORY;
    } catch (const std::exception &e) {
        if (detail::host_slot()) host().set_error(e.what());
        return MANGO_ERR_INTERNAL;
    } catch (...) {
        if (detail::host_slot()) host().set_error("unknown exception in plugin");
        return MANGO_ERR_INTERNAL;
    }
}

template <class T>
void destroy(void *self) noexcept {
    delete static_cast<T *>(self);
}

template <class T>
struct AdapterGlue {
    static mango_status create(mango_context *c, int64_t d_in, int64_t d_out, void **self) {
        return guard([&] {
            Context ctx(c);
            *self = new T(ctx, d_in, d_out);
        });
    }
    static mango_status forward(void *self, mango_context *c, mango_tensor x, mango_tensor *y) {
        return guard([&] {
            Context ctx(c);
            *y = static_cast<T *>(self)->forward(ctx, Tensor::borrow(x)).release();
        });
    }
    // Filled when the class has `bool affine() const` (see is_affine in plugin.h).
    template <class U>
    static auto affine_of(const U *a, int) -> decltype(a->affine(), int32_t()) {
        return a->affine() ? 1 : 0;
    }
    template <class U>
    static int32_t affine_of(const U *, long) {
        return 0;
    }
    static int32_t is_affine(void *self) noexcept { return affine_of(static_cast<const T *>(self), 0); }
    static inline const mango_adapter_vtable vtable{sizeof(mango_adapter_vtable), &create, &forward, &destroy<T>, &is_affine};
};

template <class T>
struct RouterGlue {
    static mango_status create(mango_context *c, int64_t hidden, int64_t experts, void **self) {
        return guard([&] {
            Context ctx(c);
            *self = new T(ctx, hidden, experts);
        });
    }
    // T::route(ctx, hidden, mask, positions) when T takes positions, else T::route(ctx, hidden, mask).
    template <class U>
    static auto call(U *r, Context &ctx, const Tensor &h, const Tensor &m, const Tensor &p, int) -> decltype(r->route(ctx, h, m, p)) {
        return r->route(ctx, h, m, p);
    }
    template <class U>
    static Tensor call(U *r, Context &ctx, const Tensor &h, const Tensor &m, const Tensor &, long) {
        return r->route(ctx, h, m);
    }
    static mango_status route(void *self, mango_context *c, mango_tensor h, mango_tensor mask, mango_tensor *w) {
        return route_v2(self, c, h, mask, nullptr, w);
    }
    static mango_status route_v2(void *self, mango_context *c, mango_tensor h, mango_tensor mask, mango_tensor pos, mango_tensor *w) {
        return guard([&] {
            Context ctx(c);
            *w = call(static_cast<T *>(self), ctx, Tensor::borrow(h), Tensor::borrow(mask), Tensor::borrow(pos), 0).release();
        });
    }
    static inline const mango_router_vtable vtable{sizeof(mango_router_vtable), &create, &route, &destroy<T>, &route_v2};
};

// T(Context&) and Tensor merge(Context&, const MergeInput&).
template <class T>
struct MergeGlue {
    static mango_status create(mango_context *c, void **self) {
        return guard([&] {
            Context ctx(c);
            *self = new T(ctx);
        });
    }
    static mango_status merge(void *self, mango_context *c, const mango_merge_input *in, mango_tensor *out) {
        return guard([&] {
            Context ctx(c);
            MergeInput m;
            m.name = in->name ? in->name : "";
            m.role = in->role ? in->role : "";
            m.layer = in->layer;
            m.is_embed = in->is_embed != 0;
            m.base = in->base;
            for (size_t i = 0; i < in->n_models; ++i) m.models.push_back(Tensor::borrow(in->models[i]));
            *out = static_cast<T *>(self)->merge(ctx, m).release();
        });
    }
    static const mango_merge_vtable *make(const char *model_options_schema, uint32_t flags) {
        static const mango_merge_vtable vt{sizeof(mango_merge_vtable), &create, &merge, &destroy<T>, model_options_schema, flags};
        return &vt;
    }
};

// T(Context&) and void convert(Context&, const DenseFfn&), emitting through ctx.emit().
template <class T>
struct ConverterGlue {
    static mango_status create(mango_context *c, void **self) {
        return guard([&] {
            Context ctx(c);
            *self = new T(ctx);
        });
    }
    static mango_status convert(void *self, mango_context *c, const mango_dense_ffn *f) {
        return guard([&] {
            Context ctx(c);
            DenseFfn d;
            d.layer = f->layer;
            d.activation = f->activation ? f->activation : "silu";
            d.gate = Tensor::borrow(f->gate);
            d.up = Tensor::borrow(f->up);
            d.down = Tensor::borrow(f->down);
            d.up_bias = Tensor::borrow(f->up_bias);
            d.down_bias = Tensor::borrow(f->down_bias);
            d.n_experts = f->n_experts;
            d.top_k = f->top_k;
            d.hidden_states = Tensor::borrow(f->hidden_states);
            d.expert_directions = Tensor::borrow(f->expert_directions);
            for (size_t i = 0; i < f->n_sources; ++i) {
                d.source_gate.push_back(Tensor::borrow(f->source_gate ? f->source_gate[i] : nullptr));
                d.source_up.push_back(Tensor::borrow(f->source_up[i]));
                d.source_down.push_back(Tensor::borrow(f->source_down[i]));
            }
            static_cast<T *>(self)->convert(ctx, d);
        });
    }
    static inline const mango_moe_converter_vtable vtable{sizeof(mango_moe_converter_vtable), &create, &convert, &destroy<T>};
};

// T(Context&), describe(Context&, mango_model_info&), embed(Context&, ids, pos),
// block(Context&, layer, hidden, mask, pos, use_cache), head(Context&, hidden),
// and optionally static TensorTable tensor_table(Context&) (from config alone).
template <class T>
struct ArchitectureGlue {
    static mango_status create(mango_context *c, void **self) {
        return guard([&] {
            Context ctx(c);
            *self = new T(ctx);
        });
    }
    static mango_status describe(void *self, mango_context *c, mango_model_info *info) {
        return guard([&] {
            Context ctx(c);
            static_cast<T *>(self)->describe(ctx, *info);
        });
    }
    static mango_status embed(void *self, mango_context *c, mango_tensor ids, mango_tensor pos, mango_tensor *out) {
        return guard([&] {
            Context ctx(c);
            *out = static_cast<T *>(self)->embed(ctx, Tensor::borrow(ids), Tensor::borrow(pos)).release();
        });
    }
    static mango_status block(void *self, mango_context *c, int32_t layer, mango_tensor h, mango_tensor mask, mango_tensor pos,
                              int32_t use_cache, mango_tensor *out) {
        return guard([&] {
            Context ctx(c);
            *out = static_cast<T *>(self)
                       ->block(ctx, layer, Tensor::borrow(h), Tensor::borrow(mask), Tensor::borrow(pos), use_cache != 0)
                       .release();
        });
    }
    static mango_status head(void *self, mango_context *c, mango_tensor h, mango_tensor *out) {
        return guard([&] {
            Context ctx(c);
            *out = static_cast<T *>(self)->head(ctx, Tensor::borrow(h)).release();
        });
    }
    // Filled when T has `static TensorTable tensor_table(Context &)` (mango/tensors.hpp).
    template <class U>
    static auto table_of(Context &ctx, int) -> decltype(U::tensor_table(ctx), void()) {
        U::tensor_table(ctx).declare(ctx);
    }
    template <class U>
    static void table_of(Context &, long) {}
    template <class U>
    static constexpr auto has_table(int) -> decltype(U::tensor_table(std::declval<Context &>()), bool()) {
        return true;
    }
    template <class U>
    static constexpr bool has_table(long) {
        return false;
    }
    static mango_status tensors(mango_context *c) {
        return guard([&] {
            Context ctx(c);
            table_of<T>(ctx, 0);
        });
    }
    static inline const mango_architecture_vtable *make(const char *const *model_types) {
        static const mango_architecture_vtable vt{
            sizeof(mango_architecture_vtable),   model_types, &create, &describe, &embed, &block, &head, &destroy<T>,
            has_table<T>(0) ? &tensors : nullptr};
        return &vt;
    }
};

}  // namespace detail

inline constexpr mango_component component(int32_t kind, const char *name, const char *version, const char *summary, const char *schema,
                                           const void *vtable) {
    return mango_component{sizeof(mango_component), kind, name, version, summary, schema, vtable};
}
template <class T>
mango_component adapter(const char *name, const char *version, const char *summary, const char *schema) {
    return component(MANGO_KIND_ADAPTER, name, version, summary, schema, &detail::AdapterGlue<T>::vtable);
}
template <class T>
mango_component router(const char *name, const char *version, const char *summary, const char *schema) {
    return component(MANGO_KIND_ROUTER, name, version, summary, schema, &detail::RouterGlue<T>::vtable);
}
// A merge method: `schema` for its global parameters, `model_schema` for the
// per-model ones (weight, density, ...), `flags` MANGO_MERGE_*.
template <class T>
mango_component merge(const char *name, const char *version, const char *summary, const char *schema, const char *model_schema,
                      uint32_t flags = 0) {
    return component(MANGO_KIND_MERGE, name, version, summary, schema, detail::MergeGlue<T>::make(model_schema, flags));
}

template <class T>
mango_component moe_converter(const char *name, const char *version, const char *summary, const char *schema) {
    return component(MANGO_KIND_MOE_CONVERTER, name, version, summary, schema, &detail::ConverterGlue<T>::vtable);
}

// `model_types`: a static NULL-terminated list of config.json model_type values.
template <class T>
mango_component architecture(const char *name, const char *version, const char *summary, const char *schema,
                             const char *const *model_types) {
    return component(MANGO_KIND_ARCHITECTURE, name, version, summary, schema, detail::ArchitectureGlue<T>::make(model_types));
}

}  // namespace mango

// Defines the library's entry point. The variadic part lists mango_component
// values (mango::adapter<...>(...), mango::router<...>(...), ...).
#define MANGO_PLUGIN(NAME, VERSION, DESCRIPTION, ...)                                                                                     \
    extern "C" MANGO_EXPORT const mango_plugin *mango_plugin_entry_v1(const mango_host_base *base) {                                      \
        static const mango_component components[] = {__VA_ARGS__};                                                                        \
        static const mango_plugin plugin = {                                                                                              \
            sizeof(mango_plugin), MANGO_ABI_VERSION, NAME, VERSION, DESCRIPTION, sizeof(components) / sizeof(components[0]), components}; \
        ::mango::detail::bind_host(base);                                                                                                 \
        return &plugin;                                                                                                                   \
    }
