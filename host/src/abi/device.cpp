#include "abi/device.hpp"

#include "util/error.hpp"

#include <ATen/Context.h>

namespace mango {

at::Device parse_device(const std::string &text, const std::string &where) {
    if (text == "cpu") return at::kCPU;
    if (text == "cuda") return at::Device(at::kCUDA);
    const std::string n = text.rfind("cuda:", 0) == 0 ? text.substr(5) : "";
    if (!n.empty() && n.size() <= 3 && n.find_first_not_of("0123456789") == std::string::npos && std::stoi(n) < 128)
        return at::Device(at::kCUDA, static_cast<at::DeviceIndex>(std::stoi(n)));
    throw HostError(where + ": device must be \"cpu\" or \"cuda[:N]\", not \"" + clip(text) + "\"");
}

void require_device(at::Device device, const std::string &where) {
    if (!device.is_cuda()) return;
    if (!at::hasCUDA()) throw HostError(where + ": device '" + device.str() + "' asked for, but this LibTorch has no CUDA or sees no GPU");
    const auto count = static_cast<int64_t>(at::getNumGPUs());
    if (device.has_index() && device.index() >= count)
        throw HostError(where + ": device '" + device.str() + "' asked for, but this machine has " + std::to_string(count) + " GPU" +
                        (count == 1 ? "" : "s") + " (cuda:0" + (count > 1 ? " .. cuda:" + std::to_string(count - 1) : "") + ")");
}

}  // namespace mango
