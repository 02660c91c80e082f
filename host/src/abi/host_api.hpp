// The host side of the plugin ABI: the API table plugins call, and the
// conversions between LibTorch tensors and opaque handles.
#pragma once

#include "abi/crash_guard.hpp"

#include "util/error.hpp"

#include <mango/plugin.h>

#include <ATen/core/Tensor.h>

#include <stdexcept>
#include <string>
#include <vector>

struct mango_tensor_t {
    at::Tensor t;
};

namespace mango {

const mango_host_base *host_base();
const mango_host_api *host_api();

// Handles: wrap() returns a new reference the receiver must release.
mango_tensor wrap(at::Tensor t);
const at::Tensor &unwrap(mango_tensor t);
// Takes ownership of a handle a plugin returned and releases it; a NULL
// handle is an error naming `what` ("router 'x' of fusion layer 1: route").
at::Tensor adopt(mango_tensor t, const std::string &what = "a plugin");
long live_tensor_handles();  // handles not yet released (leak checks)

at::ScalarType to_scalar_type(mango_dtype d);    // throws mango::HostError
mango_dtype from_scalar_type(at::ScalarType t);  // 0 when unrepresentable

// Clears this thread's error message: done before every plugin call, so a
// plugin that fails without set_error() is not blamed with a stale message.
void clear_plugin_error();
// Throws mango::HostError "<what>: <the plugin's message>" if status is not
// OK ("returned status N (NAME) without a message" when it set none).
void check_plugin(mango_status status, const std::string &what);
// One plugin call: clear the message, call (naming it for the crash
// handler), check.
template <class F>
void call_plugin(const std::string &what, F &&f) {
    clear_plugin_error();
    mango_status s;
    {
        PluginCallScope scope(what, nullptr);
        s = f();
    }
    check_plugin(s, what);
}

// The collective behind the API's all_to_all (revision 5), installed by the
// distributed layer when the process joins a group: rows of `input` to each
// rank, rows from each rank back, differentiable.
using AllToAll = at::Tensor (*)(const at::Tensor &input, const std::vector<int64_t> &send_rows, const std::vector<int64_t> &recv_rows);
void set_all_to_all(AllToAll f, int32_t world);

// Tests: make get_api() report a table of `bytes` (an older host); 0 = full.
void set_host_api_size_for_testing(size_t bytes);

// Ctrl-C: is_cancelled() reports this flag to plugins.
void request_cancel();
bool cancel_requested();

}  // namespace mango
