// bench_fusion [--layers 4] [--hidden 512] [--hidden-b 384] [--batch 4] [--tokens 128]
//              [--reps 10] [--train-steps 10] [--device cpu|cuda] [--bf16] [--weights-bf16]
//              [--no-adapter-norm]
// Cost of fusion: the fused forward of two LLaMA-style models (2 experts per
// layer, linear adapters for the smaller one, a simple router per layer)
// against the sum of running the same expert blocks alone, plus the base
// model's embedding and head, on inputs of the same shapes, in one run.
// The ratio is the price of adapters, routers and mixing (goal <= 1.10); a
// second reference adds the adapters' own projections (plain at::linear of
// the same shapes: in, and out twice, as an adapted block needs; out once
// with --no-adapter-norm, where the adapter is affine and the host maps the
// block's update with one projection), so what is left over is routing,
// mixing and the plugin calls.
// Then training throughput: adapters + routers of the fusion, and a whole
// model from random initialisation, in tokens/s.
#include "fusion/fusion.hpp"
#include "abi/runtime.hpp"
#include "train/train.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

std::string llama_config(const std::string &name, int64_t hidden, int64_t layers) {
    const fs::path dir = fs::temp_directory_path() / ("mango-bench-fusion-" + name);
    fs::create_directories(dir);
    std::ofstream(dir / "config.json") << nlohmann::json{
        {"model_type", "llama"},
        {"hidden_size", hidden},
        {"num_hidden_layers", layers},
        {"num_attention_heads", hidden / 64},
        {"num_key_value_heads", std::max<int64_t>(1, hidden / 128)},
        {"intermediate_size", hidden * 8 / 3},
        {"vocab_size", 32000},
        {"rms_norm_eps", 1e-6},
        {"rope_theta", 10000.0},
        {"max_position_embeddings", 4096}}.dump();
    return dir.string();
}

// Median wall times of each function over reps rounds (after one warm-up);
// the functions take turns within a round, so drifting machine load hits
// them alike. Each returns a tensor that is read back, which waits for the device.
std::vector<double> medians_s(int reps, const std::vector<std::function<at::Tensor()>> &fns) {
    std::vector<std::vector<double>> t(fns.size());
    for (int r = -1; r < reps; ++r)
        for (size_t i = 0; i < fns.size(); ++i) {
            const auto start = Clock::now();
            const at::Tensor out = fns[i]();
            out.sum().item<double>();
            if (r >= 0) t[i].push_back(std::chrono::duration<double>(Clock::now() - start).count());
        }
    std::vector<double> med;
    for (auto &v : t) {
        std::sort(v.begin(), v.end());
        med.push_back(v[v.size() / 2]);
    }
    return med;
}

}  // namespace

int main(int argc, char **argv) {
    int64_t layers = 4, hidden = 512, hidden_b = 384, batch = 4, tokens = 128;
    int reps = 10, train_steps = 10;
    std::string device = "cpu";
    bool bf16 = false, weights_bf16 = false, adapter_norm = true;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&] { return std::string(i + 1 < argc ? argv[++i] : "0"); };
        if (a == "--layers")
            layers = std::stoll(next());
        else if (a == "--hidden")
            hidden = std::stoll(next());
        else if (a == "--hidden-b")
            hidden_b = std::stoll(next());
        else if (a == "--batch")
            batch = std::stoll(next());
        else if (a == "--tokens")
            tokens = std::stoll(next());
        else if (a == "--reps")
            reps = std::stoi(next());
        else if (a == "--train-steps")
            train_steps = std::stoi(next());
        else if (a == "--device")
            device = next();
        else if (a == "--bf16")
            bf16 = true;
        else if (a == "--weights-bf16")
            weights_bf16 = true;
        else if (a == "--no-adapter-norm")
            adapter_norm = false;
        else {
            std::cerr << "usage: bench_fusion [--layers N] [--hidden H] [--hidden-b H] [--batch B] [--tokens T] [--reps R] "
                         "[--train-steps S] [--device cpu|cuda] [--bf16] [--weights-bf16] [--no-adapter-norm]\n";
            return 2;
        }
    }
    mango::init_runtime(0);
    const at::Device dev(device);
    const mango::PluginHost host(mango::registry::Registry::discover(mango::registry::Options{}));
    const at::ScalarType wt = weights_bf16 ? at::kBFloat16 : at::kFloat;  // all weights: experts, adapters, routers
    std::shared_ptr<mango::Model> a = mango::Model::init_random(host, llama_config("a", hidden, layers), 1, wt, dev);
    std::shared_ptr<mango::Model> b = mango::Model::init_random(host, llama_config("b", hidden_b, layers), 2, wt, dev);
    mango::FusionSpec spec;
    spec.adapter.name = "linear";
    spec.adapter.options = {{"layer_norm", adapter_norm}};
    for (int32_t l = 0; l < layers; ++l) {
        mango::FusionLayer fl;
        fl.experts = {{0, l}, {1, l}};
        fl.router.name = "simple";
        fl.router.options = nlohmann::json::object();
        spec.layers.push_back(fl);
    }
    auto fused = mango::FusedModel::build(host, {a, b}, spec);
    fused->train(false);

    const at::TensorOptions ids_opt = at::TensorOptions().dtype(at::kLong).device(dev);
    const at::Tensor ids = at::randint(0, 32000, {batch, tokens}, ids_opt), mask = at::ones({batch, tokens}, ids_opt);
    const at::Tensor pos = at::arange(tokens, ids_opt).unsqueeze(0).expand({batch, tokens});
    const at::Tensor ha = at::randn({batch, tokens, hidden}, at::TensorOptions().device(dev).dtype(wt));
    const at::Tensor hb = at::randn({batch, tokens, hidden_b}, at::TensorOptions().device(dev).dtype(wt));
    const at::Tensor w_in = at::randn({hidden_b, hidden}, ha.options()), w_out = at::randn({hidden, hidden_b}, ha.options());

    double t_fused, t_alone, t_with_adapters;
    {
        at::NoGradGuard no_grad;
        const auto t =
            medians_s(reps, {[&] { return fused->logits(ids, mask, pos, false); },
                             [&] {
                                 at::Tensor s = a->embed(ids, pos).sum();
                                 for (int32_t l = 0; l < layers; ++l) {
                                     s = s + a->block(l, ha, mask, pos, false).sum();
                                     s = s + b->block(l, hb, mask, pos, false).sum();
                                 }
                                 return s + a->head(ha).sum();
                             },
                             [&] {
                                 at::Tensor s = a->embed(ids, pos).sum();
                                 for (int32_t l = 0; l < layers; ++l) {
                                     s = s + a->block(l, ha, mask, pos, false).sum();
                                     s = s + b->block(l, at::linear(ha, w_in), mask, pos, false).sum();
                                     s = s + (adapter_norm ? at::linear(hb, w_out) - at::linear(hb, w_out) : at::linear(hb, w_out)).sum();
                                 }
                                 return s + a->head(ha).sum();
                             }});
        t_fused = t[0], t_alone = t[1], t_with_adapters = t[2];
    }
    std::cout << "fused forward, " << layers << " layers x 2 experts (hidden " << hidden << " + " << hidden_b << "), batch " << batch
              << " x " << tokens << " tokens, " << device << ", linear adapters " << (adapter_norm ? "with" : "without") << " LayerNorm:\n"
              << "  fused model:              " << t_fused * 1e3 << " ms\n"
              << "  expert blocks alone (sum): " << t_alone * 1e3 << " ms\n"
              << "  ratio fused/alone:        " << t_fused / t_alone << "\n"
              << "  blocks + adapter projections: " << t_with_adapters * 1e3 << " ms; ratio fused/that: " << t_fused / t_with_adapters
              << "\n";

    // Training throughput.
    auto rate = [&](mango::CausalLM &m, const char *what) {
        mango::TrainOptions o;
        o.steps = train_steps + 1;
        o.batch_size = batch;
        o.bf16_autocast = bf16;
        mango::Trainer t(m, o);
        t.step(ids, mask);  // warm-up
        const auto start = Clock::now();
        int64_t n = 0;
        for (int s = 0; s < train_steps; ++s) n += t.step(ids, mask).tokens;
        const double sec = std::chrono::duration<double>(Clock::now() - start).count();
        std::cout << "  training " << what << ": " << double(n) / sec << " tokens/s (" << sec / train_steps * 1e3 << " ms/step)\n";
    };
    std::cout << "training, batch " << batch << " x " << tokens << (bf16 ? ", bf16 autocast" : "") << (weights_bf16 ? ", bf16 weights" : "")
              << ":\n";
    rate(*fused, "fusion (adapters + routers)");
    if (!weights_bf16) {  // an optimiser over bf16 weights is not what anyone would run
        a->set_trainable(true);
        rate(*a, "whole base model");
    }
    return 0;
}
