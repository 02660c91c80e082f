#include "abi/runtime.hpp"

#include "abi/crash_guard.hpp"
#include "abi/host_api.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/version.h>
#ifdef MANGO_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <csignal>
#include <cstdlib>
#include <dlfcn.h>
#include <thread>
#include <unistd.h>

namespace mango {
namespace {
void on_sigint(int) {
    if (cancel_requested()) _exit(130);
    request_cancel();
}

// LibTorch's OpenMP threads and OpenBLAS's threads share the cores. Measured
// on 2 cores (the demo's 128-wide LLaMA training, tokens/s): ATen 2 + BLAS 1
// thread 4.0k; ATen 2 + BLAS 2 with OpenMP spinning 2.2k; ATen 2 + BLAS 2 with
// OpenMP waiting passively 5.6k. So BLAS gets every core and OpenMP workers
// sleep instead of spinning while BLAS runs: the `mango` executable sets
// OMP_WAIT_POLICY=PASSIVE before LibTorch loads (unless the user set it).
std::string blas_threads() {
    using GetThreads = int (*)();
    if (auto get = reinterpret_cast<GetThreads>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"))) return std::to_string(get());
    return "";
}
}  // namespace

void init_runtime(int threads) {
    const int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    at::set_num_threads(n);
    std::signal(SIGINT, on_sigint);
    install_crash_handlers();
#ifdef MANGO_WITH_CUDA
    // MANGO_CUDA_MEMORY_FRACTION=F: this process may use at most F of each GPU's memory (the caching
    // allocator refuses beyond it), e.g. to check that an offloaded model fits a smaller card.
    if (const char *f = std::getenv("MANGO_CUDA_MEMORY_FRACTION"); f && *f && at::cuda::is_available()) {
        char *end = nullptr;
        const double fraction = std::strtod(f, &end);
        if (*end || !(fraction > 0 && fraction <= 1))
            throw HostError(std::string("MANGO_CUDA_MEMORY_FRACTION=") + clip(f) + ": expected a number in (0, 1]");
        for (int d = 0; d < at::cuda::device_count(); ++d) {
            (void)at::empty({1}, at::TensorOptions().device(at::kCUDA, d));  // initialises CUDA and its allocator for the device
            c10::cuda::CUDACachingAllocator::setMemoryFraction(fraction, d);
        }
    }
#endif
}

std::string runtime_description() {
    std::string cuda = "not built";
#ifdef MANGO_WITH_CUDA
    cuda = at::cuda::is_available() ? std::to_string(at::cuda::device_count()) + " device(s)" : "built, no device";
#endif
    const std::string blas = blas_threads();
    const char *wait = std::getenv("OMP_WAIT_POLICY");
    return std::string("LibTorch ") + TORCH_VERSION + ", " + std::to_string(at::get_num_threads()) + " threads" +
           (blas.empty() ? "" : ", OpenBLAS " + blas + " threads") + ", OMP_WAIT_POLICY " + (wait ? wait : "unset") + ", CUDA: " + cuda;
}

}  // namespace mango
