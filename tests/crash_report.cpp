// On a crash (SIGSEGV, SIGBUS, SIGILL, SIGFPE), print where it happened
// before dying, so a crash on a machine without a debugger still names the
// function: the faulting address, and for a call through a null pointer the
// caller (the return address on top of the stack), then the backtrace.
#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <initializer_list>

namespace {

void say(const char *what, const void *at) {
    Dl_info info{};
    char line[512];
    if (dladdr(at, &info) && info.dli_fname)
        snprintf(line, sizeof line, "%s %p in %s (%s+%#lx)\n", what, at, info.dli_sname ? info.dli_sname : "?", info.dli_fname,
                 static_cast<unsigned long>(static_cast<const char *>(at) - static_cast<const char *>(info.dli_fbase)));
    else
        snprintf(line, sizeof line, "%s %p\n", what, at);
    if (write(2, line, strlen(line)) < 0) return;
}

void on_crash(int sig, siginfo_t *si, void *uc_raw) {
    char head[128];
    snprintf(head, sizeof head, "\n*** signal %d (%s), fault address %p\n", sig, strsignal(sig), si->si_addr);
    if (write(2, head, strlen(head)) < 0) _exit(128 + sig);
#if defined(__x86_64__)
    const auto *uc = static_cast<const ucontext_t *>(uc_raw);
    const void *pc = reinterpret_cast<const void *>(uc->uc_mcontext.gregs[REG_RIP]);
    say("pc", pc);
    if (pc == nullptr) say("called from", *reinterpret_cast<void *const *>(uc->uc_mcontext.gregs[REG_RSP]));
#else
    (void)uc_raw;
#endif
    void *frames[64];
    backtrace_symbols_fd(frames, backtrace(frames, 64), 2);
    signal(sig, SIG_DFL);
    raise(sig);
}

const bool installed = [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_crash;
    sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
    for (int s : {SIGSEGV, SIGBUS, SIGILL, SIGFPE}) sigaction(s, &sa, nullptr);
    return true;
}();

}  // namespace
