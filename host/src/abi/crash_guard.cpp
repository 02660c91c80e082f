#include "abi/crash_guard.hpp"

#include <dlfcn.h>
#include <signal.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <mutex>

namespace mango {

namespace {

thread_local const std::string *t_what = nullptr;
thread_local const void *t_function = nullptr;
// The context is written rarely (between steps) and read only when dying.
char g_context[512] = {0};

void out(const char *s) {
    if (::write(2, s, std::strlen(s)) < 0) return;
}

// "libfoo.so (symbol+0x12)" for an address, or "" when unknown.
void describe(const void *address, char *buf, size_t n) {
    Dl_info info{};
    if (address && dladdr(address, &info) && info.dli_fname)
        std::snprintf(buf, n, "%s%s%s", info.dli_fname, info.dli_sname ? ", in " : "", info.dli_sname ? info.dli_sname : "");
    else
        buf[0] = 0;
}

void on_fatal(int sig, siginfo_t *, void *uc_raw) {
    char line[1024];
    std::snprintf(line, sizeof line, "\nmango: fatal signal %d (%s)", sig, strsignal(sig));
    out(line);
    if (t_what) {
        out(" in a plugin call: ");
        out(t_what->c_str());
        char lib[600];
        describe(t_function, lib, sizeof lib);
        if (lib[0]) {
            out("\n  plugin library: ");
            out(lib);
        }
    } else {
        out(" (not inside a plugin call)");
    }
    const void *pc = nullptr;
#if defined(__x86_64__)
    if (uc_raw) pc = reinterpret_cast<const void *>(static_cast<const ucontext_t *>(uc_raw)->uc_mcontext.gregs[REG_RIP]);
#else
    (void)uc_raw;
#endif
    char where[600];
    describe(pc, where, sizeof where);
    if (where[0]) {
        std::snprintf(line, sizeof line, "\n  faulting code: %p in %s", pc, where);
        out(line);
    }
    if (g_context[0]) {
        out("\n  while: ");
        out(g_context);
    }
    out("\n");
    signal(sig, SIG_DFL);
    raise(sig);
}

}  // namespace

PluginCallScope::PluginCallScope(const std::string &what, const void *function) : previous_what_(t_what), previous_function_(t_function) {
    t_what = &what;
    t_function = function;
}

PluginCallScope::~PluginCallScope() {
    t_what = previous_what_;
    t_function = previous_function_;
}

void set_crash_context(const std::string &context) {
    const size_t n = std::min(context.size(), sizeof g_context - 1);
    std::memcpy(g_context, context.data(), n);
    g_context[n] = 0;
}

void install_crash_handlers() {
    static std::once_flag once;
    std::call_once(once, [] {
        // The handler runs on its own stack, so a stack overflow is reported too.
        static char stack[64 * 1024];
        stack_t ss{};
        ss.ss_sp = stack;
        ss.ss_size = sizeof stack;
        sigaltstack(&ss, nullptr);
        struct sigaction sa {};
        sa.sa_sigaction = on_fatal;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND;
        for (int s : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT}) sigaction(s, &sa, nullptr);
    });
}

}  // namespace mango
