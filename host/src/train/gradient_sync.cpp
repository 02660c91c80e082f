#include "train/gradient_sync.hpp"

#include "dist/process_group.hpp"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <functional>
#include <mutex>
#include <vector>

namespace mango {

struct GradientSync::State {
    struct Bucket {
        at::Tensor flat;  // float32, on the collective device
        std::vector<size_t> members;
        size_t pending = 0;
        std::function<void()> wait;  // set once its sum has started
    };
    std::mutex mu;
    bool active = false, overlap = false;
    std::vector<at::Tensor> params;
    std::vector<size_t> bucket_of;
    std::vector<int64_t> offset;  // of each tensor in its bucket
    std::vector<bool> arrived;
    std::vector<Bucket> buckets;
    size_t next = 0;  // the first bucket not started
    std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;
    std::vector<uintptr_t> hooks;

    at::Tensor slot(size_t i) { return buckets[bucket_of[i]].flat.narrow(0, offset[i], params[i].numel()); }

    void start_ready() {
        while (next < buckets.size() && buckets[next].pending == 0) {
            buckets[next].wait = dist::current().start_sum(buckets[next].flat);
            ++next;
        }
    }

    // After tensor i's gradient was accumulated (on autograd's thread for its device).
    void arrived_at(size_t i) {
        std::lock_guard<std::mutex> lock(mu);
        if (!active || arrived[i]) return;
        const at::Tensor g = params[i].grad();
        if (!g.defined()) return;
        arrived[i] = true;
        slot(i).copy_(g.detach().reshape({-1}));
        --buckets[bucket_of[i]].pending;
        if (overlap) start_ready();
    }
};

namespace {

struct AfterAccumulation : torch::autograd::FunctionPostHook {
    AfterAccumulation(std::weak_ptr<GradientSync::State> s, size_t i) : state(std::move(s)), index(i) {}
    torch::autograd::variable_list operator()(const torch::autograd::variable_list &outputs,
                                              const torch::autograd::variable_list & /*inputs*/) override {
        if (auto s = state.lock()) s->arrived_at(index);
        return outputs;
    }
    std::weak_ptr<GradientSync::State> state;
    size_t index;
};

}  // namespace

GradientSync::GradientSync(const std::vector<at::Tensor> &params, double bucket_mb) : state_(std::make_shared<State>()) {
    State &s = *state_;
    s.params = params;
    s.bucket_of.resize(params.size());
    s.offset.resize(params.size());
    s.arrived.assign(params.size(), false);
    const at::Device where = dist::current().collective_device();
    const int64_t cap = std::max<int64_t>(1, int64_t(bucket_mb * (1 << 20) / 4));
    std::vector<int64_t> sizes;
    for (size_t k = params.size(); k-- > 0;) {  // reverse: backward's order, roughly
        if (s.buckets.empty() || (sizes.back() > 0 && sizes.back() + params[k].numel() > cap)) {
            s.buckets.emplace_back();
            sizes.push_back(0);
        }
        s.bucket_of[k] = s.buckets.size() - 1;
        s.offset[k] = sizes.back();
        sizes.back() += params[k].numel();
        s.buckets.back().members.push_back(k);
    }
    for (size_t b = 0; b < s.buckets.size(); ++b)
        s.buckets[b].flat = at::zeros({sizes[b]}, at::TensorOptions().dtype(at::kFloat).device(where));
    for (size_t k = 0; k < params.size(); ++k) {
        if (!params[k].requires_grad() || !params[k].is_leaf()) continue;
        auto acc = torch::autograd::impl::grad_accumulator(params[k]);
        if (!acc) continue;
        s.hooks.push_back(acc->add_post_hook(std::make_unique<AfterAccumulation>(state_, k)));
        s.accumulators.push_back(std::move(acc));  // the tensor holds it weakly: keep it, with its hook
    }
}

GradientSync::~GradientSync() {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->active = false;
    for (size_t k = 0; k < state_->accumulators.size(); ++k) state_->accumulators[k]->del_post_hook(state_->hooks[k]);
}

void GradientSync::begin(bool overlap) {
    std::lock_guard<std::mutex> lock(state_->mu);
    State &s = *state_;
    s.active = true;
    s.overlap = overlap;
    s.next = 0;
    s.arrived.assign(s.params.size(), false);
    for (auto &b : s.buckets) b.pending = b.members.size(), b.wait = nullptr;
}

void GradientSync::finish(double &loss, double &lm) {
    std::lock_guard<std::mutex> lock(state_->mu);
    State &s = *state_;
    s.active = false;
    at::NoGradGuard no_grad;
    // Gradients this rank did not produce count as zeros; the rest start in bucket order.
    for (size_t b = s.next; b < s.buckets.size(); ++b) {
        for (size_t k : s.buckets[b].members)
            if (!s.arrived[k]) s.slot(k).zero_();
        s.buckets[b].pending = 0;
    }
    s.start_ready();
    const size_t n = s.params.size();
    std::vector<float> local(n + 2);  // had a gradient (1/0) per tensor, then the two losses
    for (size_t k = 0; k < n; ++k) local[k] = s.arrived[k] ? 1.f : 0.f;
    local[n] = float(loss);
    local[n + 1] = float(lm);
    at::Tensor flags = at::tensor(local).to(dist::current().collective_device());
    dist::current().start_sum(flags)();
    for (auto &b : s.buckets) b.wait();
    const double world = dist::current().world();
    flags = flags.cpu();
    const auto summed = flags.accessor<float, 1>();
    loss = double(summed[int64_t(n)] / float(world));  // the mean in float32, as it travelled
    lm = double(summed[int64_t(n) + 1] / float(world));
    for (auto &b : s.buckets) b.flat.div_(world);
    for (size_t k = 0; k < n; ++k) {
        at::Tensor &p = s.params[k];
        const at::Tensor mean = s.slot(k).view(p.sizes());
        if (s.arrived[k])
            p.mutable_grad().copy_(mean);
        else if (summed[int64_t(k)] > 0)  // another rank had one
            p.mutable_grad() = mean.to(p.device(), p.scalar_type(), false, /*copy=*/true);
    }
}

}  // namespace mango
