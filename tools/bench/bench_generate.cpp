// bench_generate MODEL_DIR [--device cpu|cuda] [--dtype float32|bfloat16]
//                [--prefill N] [--prompt N] [--decode N] [--reps R]
// [--batch B] [--fuse 0|1|compare]: prefill tokens/s (one forward over N
// tokens, batch 1) and greedy decode tokens/s (KV cache) of a model folder, as
// JSON. --fuse 1 times a fusion of two copies of the model (a simple router
// per layer) instead; --fuse compare times the model and that fusion in turn
// in this one process (the runs interleaved, so clocks and caches treat both
// alike) and adds the fusion's overhead: its time over twice the model's.
// prefill_host_ms: until the forward call returned, before the device
// finished; near prefill_ms, launching the kernels is the bound.
// tools/bench/bench_gpu_llama.py runs it beside transformers on the same folder.
#include "fusion/fusion.hpp"
#include "model/generate.hpp"
#include "abi/runtime.hpp"

#include <ATen/ATen.h>
#ifdef MANGO_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

#include <algorithm>
#include <array>
#include <chrono>
#include <functional>
#include <iostream>

using Clock = std::chrono::steady_clock;

static void sync(const at::Device &d) {
#ifdef MANGO_WITH_CUDA
    if (d.is_cuda()) at::cuda::getCurrentCUDAStream().synchronize();
#else
    (void)d;
#endif
}

// Median seconds of each of the runs, taken in turn `reps` times after one warm-up each: until the
// device finished (wall) and until the call returned (host: as long as wall when launching is the bound).
struct Timing {
    std::vector<double> wall, host;
};
static Timing median_seconds(const std::vector<std::function<void()>> &runs, int reps, const at::Device &dev) {
    std::vector<std::vector<double>> wall(runs.size()), host(runs.size());
    for (const auto &run : runs) run();
    sync(dev);
    for (int r = 0; r < reps; ++r)
        for (size_t i = 0; i < runs.size(); ++i) {
            const auto t0 = Clock::now();
            runs[i]();
            host[i].push_back(std::chrono::duration<double>(Clock::now() - t0).count());
            sync(dev);
            wall[i].push_back(std::chrono::duration<double>(Clock::now() - t0).count());
        }
    const auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
    };
    Timing out;
    for (size_t i = 0; i < runs.size(); ++i) out.wall.push_back(median(wall[i])), out.host.push_back(median(host[i]));
    return out;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        std::cerr << "usage: bench_generate MODEL_DIR [--device cpu|cuda] [--dtype float32|bfloat16] [--prefill N] [--prompt N] [--decode "
                     "N] [--reps R] [--batch B] [--fuse 0|1|compare]\n";
        return 2;
    }
    std::string dir = argv[1], device = "cpu", dtype = "float32";
    std::string fuse = "0";
    int64_t prefill = 512, prompt = 32, decode = 128, batch = 1;
    int reps = 10;
    for (int i = 2; i + 1 < argc; i += 2) {
        const std::string a = argv[i], v = argv[i + 1];
        if (a == "--device")
            device = v;
        else if (a == "--dtype")
            dtype = v;
        else if (a == "--prefill")
            prefill = std::stoll(v);
        else if (a == "--prompt")
            prompt = std::stoll(v);
        else if (a == "--decode")
            decode = std::stoll(v);
        else if (a == "--reps")
            reps = std::stoi(v);
        else if (a == "--batch")
            batch = std::stoll(v);
        else if (a == "--fuse")
            fuse = v;
    }
    mango::init_runtime(0);
    const at::Device dev(device == "cuda" ? at::kCUDA : at::kCPU);
    const at::ScalarType dt = dtype == "bfloat16" ? at::kBFloat16 : dtype == "float16" ? at::kHalf : at::kFloat;
    const mango::PluginHost host(mango::registry::Registry::discover({}));
    std::shared_ptr<mango::Model> model = mango::Model::load(host, dir, dt, dev);
    std::unique_ptr<mango::FusedModel> fused;
    if (fuse != "0") {
        mango::FusionSpec spec;
        spec.adapter.name = "linear";
        for (int32_t l = 0; l < model->info().n_layers; ++l) {
            mango::FusionLayer fl;
            fl.experts = {{0, l}, {1, l}};
            fl.router.name = "simple";
            fl.router.options = nlohmann::json::object();
            spec.layers.push_back(fl);
        }
        fused = mango::FusedModel::build(host, {model, mango::Model::load(host, dir, dt, dev)}, std::move(spec));
        fused->train(false);
    }
    at::NoGradGuard no_grad;
    const int64_t V = model->info().vocab_size;
    at::Tensor ids = at::randint(V, {1, prefill}, at::TensorOptions().dtype(at::kLong).device(dev));
    at::Tensor mask = at::ones({1, prefill}, ids.options()), pos = at::arange(prefill, ids.options()).unsqueeze(0);
    std::vector<std::vector<int64_t>> p(static_cast<size_t>(batch), std::vector<int64_t>(static_cast<size_t>(prompt), 5));
    // What is timed: the model, the fusion, or both in turn.
    std::vector<std::string> names;
    std::vector<std::function<void()>> prefills, decodes;
    std::array<std::string, 2> used;  // how each decoded (graphs, eager, ...)
    auto add = [&](const std::string &name, mango::CausalLM &lm, std::function<void()> forward) {
        mango::GenerateOptions o;
        o.max_new_tokens = decode;
        o.decode_used = &used[names.size()];
        names.push_back(name);
        prefills.push_back(std::move(forward));
        decodes.push_back([&lm, &p, o] { mango::generate(lm, p, o); });
    };
    if (fuse != "1") add("mango", *model, [&] { model->forward(ids, mask, pos); });
    if (fused) add("mango-fusion", *fused, [&] { fused->logits(ids, mask, pos, false); });
    const Timing prefill_t = median_seconds(prefills, reps, dev);
    const std::vector<double> &tp = prefill_t.wall, td = median_seconds(decodes, 3, dev).wall;
    for (size_t i = 0; i < names.size(); ++i)
        std::cout << "{\"impl\": \"" << names[i] << "\", \"device\": \"" << device << "\", \"dtype\": \"" << dtype
                  << "\", \"prefill_tokens\": " << prefill << ", \"prefill_tok_s\": " << prefill / tp[i]
                  << ", \"prefill_ms\": " << tp[i] * 1e3 << ", \"prefill_host_ms\": " << prefill_t.host[i] * 1e3
                  << ", \"decode_tokens\": " << decode << ", \"batch\": " << batch
                  << ", \"decode_tok_s\": " << double(decode * batch) / td[i] << ", \"decode\": \"" << used[i] << "\"}\n";
    if (names.size() == 2)  // the fusion runs both members' blocks: its time over twice the model's
        std::cout << "{\"fusion_overhead\": {\"prefill\": " << tp[1] / (2 * tp[0]) << ", \"decode\": " << td[1] / (2 * td[0]) << "}}\n";
}
