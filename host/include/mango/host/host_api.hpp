// The host side of the plugin ABI: the API table plugins call, and the
// conversions between LibTorch tensors and opaque handles.
#pragma once

#include <mango/plugin.h>

#include <ATen/core/Tensor.h>

#include <stdexcept>
#include <string>

struct mango_tensor_t {
    at::Tensor t;
};

namespace mango {

// Errors raised by the host runtime (configuration, plugins, data).
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

const mango_host_base *host_base();
const mango_host_api *host_api();

// Handles: wrap() returns a new reference the receiver must release.
mango_tensor wrap(at::Tensor t);
const at::Tensor &unwrap(mango_tensor t);
// Takes ownership of a handle a plugin returned and releases it.
at::Tensor adopt(mango_tensor t);
long live_tensor_handles();  // handles not yet released (leak checks)

at::ScalarType to_scalar_type(mango_dtype d);  // throws mango::Error
mango_dtype from_scalar_type(at::ScalarType t);  // 0 when unrepresentable

// Throws mango::Error with the plugin's message if status is not OK.
void check_plugin(mango_status status, const std::string &what);

// Ctrl-C: is_cancelled() reports this flag to plugins.
void request_cancel();
bool cancel_requested();

}  // namespace mango
