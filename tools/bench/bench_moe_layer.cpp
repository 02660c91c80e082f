// bench_moe_layer MODEL_DIR [--device cuda] [--dtype bfloat16] [--batch B] [--tokens T] [--reps R]
// Milliseconds of one decoder layer (block 0: attention + MoE) of a model
// folder on [B, T] tokens, median of R runs, as JSON. tools/bench/bench_gpu_moe.py
// runs it beside transformers on the same folder.
#include "abi/runtime.hpp"
#include "model/model.hpp"

#include <ATen/ATen.h>
#ifdef MANGO_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

#include <algorithm>
#include <chrono>
#include <iostream>

static void sync(const at::Device &d) {
#ifdef MANGO_WITH_CUDA
    if (d.is_cuda()) at::cuda::getCurrentCUDAStream().synchronize();
#else
    (void)d;
#endif
}

int main(int argc, char **argv) {
    if (argc < 2) {
        std::cerr << "usage: bench_moe_layer MODEL_DIR [--device cuda] [--dtype bfloat16] [--batch B] [--tokens T] [--reps R]\n";
        return 2;
    }
    std::string dir = argv[1], device = "cpu", dtype = "float32";
    int64_t batch = 64, tokens = 64;
    int reps = 20;
    for (int i = 2; i + 1 < argc; i += 2) {
        const std::string a = argv[i], v = argv[i + 1];
        if (a == "--device")
            device = v;
        else if (a == "--dtype")
            dtype = v;
        else if (a == "--batch")
            batch = std::stoll(v);
        else if (a == "--tokens")
            tokens = std::stoll(v);
        else if (a == "--reps")
            reps = std::stoi(v);
    }
    mango::init_runtime(0);
    const at::Device dev(device == "cuda" ? at::kCUDA : at::kCPU);
    const at::ScalarType dt = dtype == "bfloat16" ? at::kBFloat16 : dtype == "float16" ? at::kHalf : at::kFloat;
    const mango::PluginHost host(mango::registry::Registry::discover({}));
    auto model = mango::Model::load(host, dir, dt, dev);
    at::NoGradGuard no_grad;
    const int64_t H = model->info().hidden_size;
    at::manual_seed(0);
    at::Tensor x = at::randn({batch, tokens, H}, at::TensorOptions().dtype(dt).device(dev));
    at::Tensor mask = at::ones({batch, tokens}, at::TensorOptions().dtype(at::kLong).device(dev));
    at::Tensor pos = at::arange(tokens, mask.options()).unsqueeze(0).expand({batch, tokens});
    for (int i = 0; i < 3; ++i) model->block(0, x, mask, pos, false);
    sync(dev);
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        model->block(0, x, mask, pos, false);
        sync(dev);
        t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    std::cout << "{\"impl\": \"mango\", \"layer_ms\": " << t[t.size() / 2] << ", \"batch\": " << batch << ", \"tokens\": " << tokens
              << "}\n";
    return 0;
}
