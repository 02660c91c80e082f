#include "abi/runtime.hpp"

#include "abi/host_api.hpp"

#include <ATen/Parallel.h>
#include <torch/version.h>
#ifdef MANGO_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

#include <csignal>
#include <dlfcn.h>
#include <thread>
#include <unistd.h>

namespace mango {
namespace {
void on_sigint(int) {
    if (cancel_requested()) _exit(130);
    request_cancel();
}

// LibTorch runs `n` threads of its own and calls BLAS from inside them; a
// threaded OpenBLAS then starts n more per call, and 2n threads on n cores
// spin against each other (measured: a 6-layer, 512-wide LLaMA forward took
// 286 ms with both threaded, 125 ms with OpenBLAS on one thread, on 2 cores).
// So OpenBLAS, when it is the BLAS in use, keeps to one thread per caller.
bool g_blas_single = false;
void single_threaded_blas() {
    using SetThreads = void (*)(int);
    if (auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
        set(1);
        g_blas_single = true;
    }
}
}  // namespace

void init_runtime(int threads) {
    const int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    at::set_num_threads(n);
    if (n > 1) single_threaded_blas();
    std::signal(SIGINT, on_sigint);
}

std::string runtime_description() {
    std::string cuda = "not built";
#ifdef MANGO_WITH_CUDA
    cuda = at::cuda::is_available() ? std::to_string(at::cuda::device_count()) + " device(s)" : "built, no device";
#endif
    return std::string("LibTorch ") + TORCH_VERSION + ", " + std::to_string(at::get_num_threads()) + " threads" +
           (g_blas_single ? " (OpenBLAS: one thread per caller)" : "") + ", CUDA: " + cuda;
}

}  // namespace mango
