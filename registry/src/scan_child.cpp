// Runs the scanner executable on one library with a deadline, so a library
// that crashes, aborts or hangs while loading cannot take the host down.
#include "mango/registry/registry.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>

extern char **environ;

namespace mango::registry {
namespace {

constexpr const char *kMarker = "MANGO-SCAN-RESULT ";

LibraryScan failed(const std::string &path, const std::string &reason, bool blacklist) {
    LibraryScan s;
    s.path = path;
    s.reason = reason;
    s.blacklisted = blacklist;
    return s;
}

std::string last_line(const std::string &text) {
    std::string t = text;
    while (!t.empty() && (t.back() == '\n' || t.back() == '\r')) t.pop_back();
    const size_t nl = t.rfind('\n');
    std::string line = nl == std::string::npos ? t : t.substr(nl + 1);
    if (line.size() > 200) line = line.substr(0, 200) + "...";
    return line;
}

}  // namespace

LibraryScan scan_in_child(const std::string &path, const std::string &scanner, int timeout_ms) {
    if (scanner.empty() || access(scanner.c_str(), X_OK) != 0) return failed(path, "plugin scanner not found (set MANGO_SCANNER)", false);

    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) != 0) return failed(path, std::string("pipe: ") + strerror(errno), false);
    if (pipe2(err, O_CLOEXEC) != 0) {
        close(out[0]);
        close(out[1]);
        return failed(path, std::string("pipe: ") + strerror(errno), false);
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&fa, err[1], STDERR_FILENO);
    const char *argv[] = {scanner.c_str(), path.c_str(), nullptr};
    pid_t pid = 0;
    const int rc = posix_spawn(&pid, scanner.c_str(), &fa, nullptr, const_cast<char **>(argv), environ);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    close(err[1]);
    if (rc != 0) {
        close(out[0]);
        close(err[0]);
        return failed(path, std::string("could not start the plugin scanner: ") + strerror(rc), false);
    }

    std::string stdout_text, stderr_text;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    bool timed_out = false;
    pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
    int open_fds = 2;
    while (open_fds > 0) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
        if (left <= 0) {
            timed_out = true;
            break;
        }
        const int n = poll(fds, 2, static_cast<int>(left));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) continue;
        for (int i = 0; i < 2; ++i) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            char buf[4096];
            const ssize_t got = read(fds[i].fd, buf, sizeof buf);
            if (got > 0) {
                std::string &sink = i == 0 ? stdout_text : stderr_text;
                if (sink.size() < (1u << 20)) sink.append(buf, static_cast<size_t>(got));
            } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
                close(fds[i].fd);
                fds[i].fd = -1;
                --open_fds;
            }
        }
    }
    if (timed_out) kill(pid, SIGKILL);
    for (pollfd &f : fds)
        if (f.fd >= 0) close(f.fd);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }

    if (timed_out) return failed(path, "hung while loading: no answer within " + std::to_string(timeout_ms) + " ms (killed)", true);
    if (WIFSIGNALED(status)) {
        const int sig = WTERMSIG(status);
        return failed(path, std::string("crashed while loading: signal ") + std::to_string(sig) + " (" + strsignal(sig) + ")", true);
    }
    const size_t at = stdout_text.rfind(kMarker);
    if (WEXITSTATUS(status) != 0 || at == std::string::npos) {
        std::string why = "exited with status " + std::to_string(WEXITSTATUS(status)) + " while loading";
        if (const std::string line = last_line(stderr_text); !line.empty()) why += ": " + line;
        return failed(path, why, true);
    }
    try {
        const size_t begin = at + std::strlen(kMarker);
        const size_t end = stdout_text.find('\n', begin);
        return scan_from_json(stdout_text.substr(begin, end == std::string::npos ? std::string::npos : end - begin), path);
    } catch (const std::exception &e) {
        return failed(path, std::string("scanner answer unreadable: ") + e.what(), true);
    }
}

}  // namespace mango::registry
