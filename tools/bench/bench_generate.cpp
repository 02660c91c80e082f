// bench_generate MODEL_DIR [--device cpu|cuda] [--dtype float32|bfloat16]
//                [--prefill N] [--prompt N] [--decode N] [--reps R]
// [--batch B]: prefill tokens/s (one forward over N tokens, batch 1) and greedy decode
// tokens/s (KV cache) of a model folder, as JSON. tools/bench/bench_gpu_llama.py
// runs it beside transformers on the same folder.
#include "fusion/fusion.hpp"
#include "model/generate.hpp"
#include "abi/runtime.hpp"

#include <ATen/ATen.h>
#ifdef MANGO_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

#include <algorithm>
#include <chrono>
#include <iostream>

using Clock = std::chrono::steady_clock;

static void sync(const at::Device &d) {
#ifdef MANGO_WITH_CUDA
    if (d.is_cuda()) at::cuda::getCurrentCUDAStream().synchronize();
#else
    (void)d;
#endif
}

int main(int argc, char **argv) {
    if (argc < 2) {
        std::cerr << "usage: bench_generate MODEL_DIR [--device cpu|cuda] [--dtype float32|bfloat16] [--prefill N] [--prompt N] [--decode "
                     "N] [--reps R] [--batch B] [--fuse 1]\n";
        return 2;
    }
    std::string dir = argv[1], device = "cpu", dtype = "float32";
    bool fuse = false;  // --fuse 1: a fusion of two copies of the model (a simple router per layer)
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
            fuse = v == "1";
    }
    mango::init_runtime(0);
    const at::Device dev(device == "cuda" ? at::kCUDA : at::kCPU);
    const at::ScalarType dt = dtype == "bfloat16" ? at::kBFloat16 : dtype == "float16" ? at::kHalf : at::kFloat;
    const mango::PluginHost host(mango::registry::Registry::discover({}));
    std::shared_ptr<mango::Model> model = mango::Model::load(host, dir, dt, dev);
    std::unique_ptr<mango::FusedModel> fused;
    if (fuse) {
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
    mango::CausalLM &lm = fused ? static_cast<mango::CausalLM &>(*fused) : static_cast<mango::CausalLM &>(*model);
    at::NoGradGuard no_grad;
    const int64_t V = model->info().vocab_size;
    at::Tensor ids = at::randint(V, {1, prefill}, at::TensorOptions().dtype(at::kLong).device(dev));
    at::Tensor mask = at::ones({1, prefill}, ids.options()), pos = at::arange(prefill, ids.options()).unsqueeze(0);
    auto prefill_once = [&] { return fused ? fused->logits(ids, mask, pos, false) : model->forward(ids, mask, pos); };
    prefill_once();  // warm-up
    sync(dev);
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = Clock::now();
        prefill_once();
        sync(dev);
        t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    mango::GenerateOptions o;
    o.max_new_tokens = decode;
    std::string used;
    o.decode_used = &used;
    std::vector<std::vector<int64_t>> p(static_cast<size_t>(batch), std::vector<int64_t>(static_cast<size_t>(prompt), 5));
    mango::generate(lm, p, o);  // warm-up
    std::vector<double> g;
    for (int r = 0; r < 3; ++r) {
        const auto t0 = Clock::now();
        mango::generate(lm, p, o);
        sync(dev);
        g.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::sort(g.begin(), g.end());
    std::cout << "{\"impl\": \"" << (fuse ? "mango-fusion" : "mango") << "\", \"device\": \"" << device << "\", \"dtype\": \"" << dtype
              << "\", \"prefill_tokens\": " << prefill << ", \"prefill_tok_s\": " << prefill / t[t.size() / 2]
              << ", \"decode_tokens\": " << decode << ", \"batch\": " << batch << ", \"decode_tok_s\": " << double(decode * batch) / g[1]
              << ", \"decode\": \"" << used << "\"}\n";
}
