#include "launch.hpp"

#include "util/error.hpp"

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <csignal>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace mango::cli {
namespace {

// This process's own command line.
std::vector<std::string> own_arguments() {
    std::ifstream in("/proc/self/cmdline", std::ios::binary);
    const std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::string> args;
    for (size_t at = 0; at < all.size();) {
        const size_t end = all.find('\0', at);
        args.push_back(all.substr(at, end - at));
        at = end == std::string::npos ? all.size() : end + 1;
    }
    if (args.empty()) throw HostError("cannot read this process's command line (/proc/self/cmdline)");
    return args;
}

std::string describe(int status) {
    if (WIFSIGNALED(status))
        return std::string("was killed by signal ") + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
    return "exited with status " + std::to_string(WEXITSTATUS(status));
}

}  // namespace

int launch_local_ranks(int nproc) {
    const std::vector<std::string> args = own_arguments();
    // The rendezvous store lives here for the ranks' lifetime, as torchrun's agent hosts it: the port is bound
    // once (port 0) and kept, so no other socket (NCCL's own, another run's) can take it between choice and use.
    c10::intrusive_ptr<c10d::TCPStore> store;
    try {
        c10d::TCPStoreOptions o;
        o.port = 0;
        o.isServer = true;
        o.waitWorkers = false;
        store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o);
    } catch (const std::exception &e) {
        throw HostError(std::string("cannot open the ranks' rendezvous store on 127.0.0.1: ") + e.what());
    }
    const std::string port = std::to_string(store->getPort()), world = std::to_string(nproc);
    // Everything a rank's exec needs is built before fork(): the store's thread runs in this process, so the
    // child may only make async-signal-safe calls (no setenv, no allocation) until it execs.
    std::vector<char *> argv;
    for (const std::string &a : args) argv.push_back(const_cast<char *>(a.c_str()));
    argv.push_back(nullptr);
    const std::vector<std::string> replaced = {
        "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE"};
    std::vector<std::string> inherited;
    for (char **e = environ; e && *e; ++e) {
        const std::string entry = *e, key = entry.substr(0, entry.find('='));
        if (std::find(replaced.begin(), replaced.end(), key) == replaced.end()) inherited.push_back(entry);
    }
    std::vector<std::vector<std::string>> env_of(static_cast<size_t>(nproc), inherited);
    std::vector<std::vector<char *>> envp_of(static_cast<size_t>(nproc));
    for (int r = 0; r < nproc; ++r) {
        auto &env = env_of[size_t(r)];
        for (const std::string &kv : {"RANK=" + std::to_string(r), "LOCAL_RANK=" + std::to_string(r), "LOCAL_WORLD_SIZE=" + world,
                                      "WORLD_SIZE=" + world, std::string("MASTER_ADDR=127.0.0.1"), "MASTER_PORT=" + port,
                                      std::string("TORCHELASTIC_USE_AGENT_STORE=True")})  // the store above; rank 0 opens none
            env.push_back(kv);
        for (std::string &kv : env) envp_of[size_t(r)].push_back(kv.data());
        envp_of[size_t(r)].push_back(nullptr);
    }
    std::map<pid_t, int> ranks;
    for (int r = 0; r < nproc; ++r) {
        const pid_t pid = ::fork();
        if (pid < 0) throw HostError(std::string("cannot start rank ") + std::to_string(r) + ": " + std::strerror(errno));
        if (pid == 0) {
            if (r > 0) {  // one copy of the output
                const int null = ::open("/dev/null", O_WRONLY);
                if (null >= 0) ::dup2(null, STDOUT_FILENO);
            }
            ::execve("/proc/self/exe", argv.data(), envp_of[size_t(r)].data());
            static const char failed[] = "mango: a rank could not start (exec of /proc/self/exe failed)\n";
            [[maybe_unused]] const ssize_t n = ::write(STDERR_FILENO, failed, sizeof failed - 1);
            ::_exit(127);
        }
        ranks[pid] = r;
    }
    // Ctrl-C reaches the ranks themselves (same process group); this process waits to report.
    std::signal(SIGINT, SIG_IGN);
    int result = 0;
    while (!ranks.empty()) {
        int status = 0;
        const pid_t pid = ::waitpid(-1, &status, 0);
        if (pid < 0) break;
        const auto it = ranks.find(pid);
        if (it == ranks.end()) continue;
        const int rank = it->second;
        ranks.erase(it);
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (ok || result != 0) continue;
        result = WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
        std::cerr << "mango: rank " << rank << " of " << nproc << " " << describe(status)
                  << (ranks.empty() ? "" : "; stopping the other ranks") << "\n";
        // The others fail on their next collective; give them a moment to say so, then stop them.
        for (int waited = 0; waited < 100 && !ranks.empty(); ++waited) {
            while (true) {
                const pid_t done = ::waitpid(-1, &status, WNOHANG);
                if (done <= 0) break;
                ranks.erase(done);
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        for (const auto &[p, r] : ranks) ::kill(p, SIGKILL);
    }
    return result;
}

}  // namespace mango::cli
