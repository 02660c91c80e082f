// Naming the plugin a crash happened in. Every call into a plugin runs
// inside a PluginCallScope that records, per thread, what is being called
// ("<TOML line>: router 'simple' of fusion layer 1: route_v2") and the
// function pointer (so the handler can name its library). A fatal signal
// (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT) then prints that, the library
// the faulting address lies in, the crash context the host set (e.g. the
// pipeline step), and exits with the signal's status. Nothing is isolated:
// a plugin runs in the host process; this only says who crashed.
#pragma once

#include <string>

namespace mango {

class PluginCallScope {
public:
    PluginCallScope(const std::string &what, const void *function);
    ~PluginCallScope();
    PluginCallScope(const PluginCallScope &) = delete;
    PluginCallScope &operator=(const PluginCallScope &) = delete;

private:
    const std::string *previous_what_;
    const void *previous_function_;
};

// What the process is doing, for the crash message ("step 4/7: train (configs/demo.toml:52)"); "" clears.
void set_crash_context(const std::string &context);

// Installs the handlers (idempotent).
void install_crash_handlers();

// Casts a function pointer for PluginCallScope.
template <class F>
const void *function_address(F *f) {
    return reinterpret_cast<const void *>(f);
}

}  // namespace mango
