// Devices as users write them ("cpu", "cuda", "cuda:1"), checked before LibTorch sees them: its own
// parser and allocator answer bad names and absent GPUs with a C++ backtrace.
#pragma once

#include <c10/core/Device.h>

#include <string>

namespace mango {

// "cpu", "cuda" or "cuda:N" (N < 128); anything else is a HostError naming `where`.
at::Device parse_device(const std::string &text, const std::string &where);

// A HostError naming `where` unless this process can place tensors on `device`: CUDA compiled into
// LibTorch and a GPU of that index present.
void require_device(at::Device device, const std::string &where);

}  // namespace mango
