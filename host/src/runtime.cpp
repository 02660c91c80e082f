#include "mango/host/runtime.hpp"

#include "mango/host/host_api.hpp"

#include <ATen/Parallel.h>
#include <torch/version.h>
#ifdef MANGO_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

#include <csignal>
#include <thread>
#include <unistd.h>

namespace mango {
namespace {
void on_sigint(int) {
    if (cancel_requested()) _exit(130);
    request_cancel();
}
}  // namespace

void init_runtime(int threads) {
    const int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    at::set_num_threads(n);
    std::signal(SIGINT, on_sigint);
}

std::string runtime_description() {
    std::string cuda = "not built";
#ifdef MANGO_WITH_CUDA
    cuda = at::cuda::is_available() ? std::to_string(at::cuda::device_count()) + " device(s)" : "built, no device";
#endif
    return std::string("LibTorch ") + TORCH_VERSION + ", " + std::to_string(at::get_num_threads()) + " threads, CUDA: " + cuda;
}

}  // namespace mango
