// The host's view of plugins: the registry plus in-process loading of the
// libraries that a run actually uses, and typed component instances.
#pragma once

#include "abi/context.hpp"

#include <mango/registry/registry.hpp>

#include <memory>
#include <string>

namespace mango {

class PluginHost {
public:
    explicit PluginHost(registry::Registry reg) : registry_(std::move(reg)) {}
    const registry::Registry &registry() const { return registry_; }

    // The component or an error naming close matches and what is installed.
    const registry::ComponentInfo &require(const std::string &kind, const std::string &name) const;
    // Loads the component's library into this process (once; libraries stay
    // loaded for the life of the process) and returns its function table.
    const void *vtable(const registry::ComponentInfo &component) const;

private:
    registry::Registry registry_;
};

// Owns one component instance and its context. Not copyable.
class Instance {
public:
    Instance(const Instance &) = delete;
    Instance &operator=(const Instance &) = delete;
    virtual ~Instance();

    InstanceContext &context() { return *ctx_; }
    // Parameters and buffers (trainable = false), in declaration order.
    const std::vector<InstanceContext::Parameter> &parameters() const { return ctx_->parameters; }
    void train(bool on) { ctx_->training = on; }
    void set_reporting(bool on) { ctx_->reporting = on; }
    const registry::ComponentInfo &info() const { return info_; }
    // "p.toml:12: router of fusion layer 1: router 'simple'", for messages.
    const std::string &where() const { return where_; }

protected:
    Instance(const registry::ComponentInfo &info, std::unique_ptr<InstanceContext> ctx, std::string where)
        : info_(info), ctx_(std::move(ctx)), where_(std::move(where)) {}
    registry::ComponentInfo info_;
    std::unique_ptr<InstanceContext> ctx_;
    std::string where_;
    void *self_ = nullptr;
    void (*destroy_)(void *) = nullptr;
};

// What creating any instance needs besides its kind's own sizes.
struct InstanceSpec {
    std::string name;                         // component name
    nlohmann::json options;                   // as the user gave them (validated here)
    std::string where;                        // for errors: "pipeline.toml:12"
    std::map<std::string, at::Tensor> saved;  // parameter values to restore
    at::TensorOptions param_options = at::TensorOptions().dtype(at::kFloat);
};
// {"name": ..., "options": ...}: how fusion.json stores an instance, and what
// identifies it in a training run's fingerprint.
nlohmann::json spec_json(const InstanceSpec &s);

class AdapterInstance : public Instance {
public:
    static std::unique_ptr<AdapterInstance> create(const PluginHost &host, const InstanceSpec &spec, int64_t d_in, int64_t d_out);
    // check: verify the output (floating dtype, finite, shape) and name the
    // adapter when it is wrong; costs a device sync, so the host asks for it
    // in training, evaluation and a generation's first step only.
    at::Tensor forward(const at::Tensor &x, bool check = false);
    // forward(u) - forward(v), with one projection when the plugin says its
    // map is affine (adapter vtable revision 2; older plugins never do).
    at::Tensor difference(const at::Tensor &u, const at::Tensor &v, bool check = false);
    bool affine() const { return affine_; }

private:
    using Instance::Instance;
    const mango_adapter_vtable *vt_ = nullptr;
    int64_t d_in_ = 0, d_out_ = 0;
    bool affine_ = false;
};

struct RouterOutput {
    at::Tensor weights;  // [B, E] or [B, T, E]
    std::vector<std::pair<std::string, at::Tensor>> losses, stats;
};

class RouterInstance : public Instance {
public:
    static std::unique_ptr<RouterInstance> create(const PluginHost &host, const InstanceSpec &spec, int64_t hidden, int64_t experts);
    // mask: [B, T] (1 token, 0 pad) or undefined; positions [B, T]. check:
    // verify the weights (floating dtype, shape, finite, >= 0, rows summing
    // to 1 over real tokens) and name the router when they are wrong.
    RouterOutput route(const at::Tensor &hidden, const at::Tensor &mask, const at::Tensor &positions = at::Tensor(), bool check = false);

private:
    using Instance::Instance;
    void check_weights(const at::Tensor &w, const at::Tensor &hidden, const at::Tensor &mask) const;
    const mango_router_vtable *vt_ = nullptr;
    int64_t hidden_ = 0, experts_ = 0;
};

// One tensor for a merge method, with its parameters resolved for it.
struct MergeCall {
    std::string name, role;
    int32_t layer = -1;
    bool is_embed = false;
    std::vector<at::Tensor> models;             // the sources holding the tensor
    int32_t base = -1;                          // index into models, or -1
    nlohmann::json options;                     // global parameters, resolved and validated
    std::vector<nlohmann::json> model_options;  // one object per model, resolved and validated
    uint64_t seed = 0;                          // random_like()'s stream for this tensor
};

class MergeInstance : public Instance {
public:
    static std::unique_ptr<MergeInstance> create(const PluginHost &host, const InstanceSpec &spec);
    // The merged tensor; undefined when the method gives no value.
    at::Tensor merge(const MergeCall &call);
    const std::string &model_options_schema() const { return info_.model_options_schema; }

private:
    using Instance::Instance;
    const mango_merge_vtable *vt_ = nullptr;
};

// A dense FFN for a MoE converter (see mango_dense_ffn).
struct ConvertCall {
    int32_t layer = 0;
    std::string activation = "silu";
    at::Tensor gate, up, down;      // [F, H], [F, H], [H, F]; gate undefined for a plain MLP
    at::Tensor up_bias, down_bias;  // [F], [H] or undefined
    int64_t experts = 0, top_k = 0;
    at::Tensor hidden_states, expert_directions;
    std::vector<at::Tensor> source_gate, source_up, source_down;
    uint64_t seed = 0;
};

class MoeConverterInstance : public Instance {
public:
    static std::unique_ptr<MoeConverterInstance> create(const PluginHost &host, const InstanceSpec &spec);
    // The emitted tensors by name ("experts.0.gate", ..., "router").
    std::map<std::string, at::Tensor> convert(const ConvertCall &call);

private:
    using Instance::Instance;
    const mango_moe_converter_vtable *vt_ = nullptr;
};

// Throws naming `where` unless `t` has a floating dtype and only finite values.
void check_finite_floating(const at::Tensor &t, const std::string &where, const std::string &what);

}  // namespace mango
