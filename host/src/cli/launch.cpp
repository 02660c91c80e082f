#include "launch.hpp"

#include "util/error.hpp"

#include <arpa/inet.h>
#include <csignal>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

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

// A TCP port free on the loopback interface right now.
int free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) throw HostError(std::string("cannot open a socket to find a free port: ") + std::strerror(errno));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0 || ::getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len) != 0) {
        ::close(fd);
        throw HostError(std::string("cannot find a free port: ") + std::strerror(errno));
    }
    ::close(fd);
    return ntohs(a.sin_port);
}

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
    const std::string port = std::to_string(free_port()), world = std::to_string(nproc);
    std::map<pid_t, int> ranks;
    for (int r = 0; r < nproc; ++r) {
        const pid_t pid = ::fork();
        if (pid < 0) throw HostError(std::string("cannot start rank ") + std::to_string(r) + ": " + std::strerror(errno));
        if (pid == 0) {
            ::setenv("RANK", std::to_string(r).c_str(), 1);
            ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
            ::setenv("LOCAL_WORLD_SIZE", world.c_str(), 1);
            ::setenv("WORLD_SIZE", world.c_str(), 1);
            ::setenv("MASTER_ADDR", "127.0.0.1", 1);
            ::setenv("MASTER_PORT", port.c_str(), 1);
            if (r > 0) {  // one copy of the output
                const int null = ::open("/dev/null", O_WRONLY);
                if (null >= 0) ::dup2(null, STDOUT_FILENO);
            }
            std::vector<char *> argv;
            for (const std::string &a : args) argv.push_back(const_cast<char *>(a.c_str()));
            argv.push_back(nullptr);
            ::execv("/proc/self/exe", argv.data());
            std::fprintf(stderr, "mango: rank %d: cannot start %s: %s\n", r, args[0].c_str(), std::strerror(errno));
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
