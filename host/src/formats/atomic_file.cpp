#include "formats/atomic_file.hpp"

#include "formats/safetensors_header.hpp"
#include "util/error.hpp"

#include <fcntl.h>
#include <stdio.h>  // renameat2, RENAME_EXCHANGE (glibc >= 2.28)
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>
#include <set>
#include <mutex>

namespace fs = std::filesystem;

namespace mango::formats {
namespace {

constexpr const char *kTempTag = ".mango-tmp-";
constexpr const char *kOldTag = ".mango-old-";

void fsync_dir(const fs::path &dir) {
    const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        ::close(fd);
    }
}

}  // namespace

std::string temp_name(const std::string &path) { return path + kTempTag + std::to_string(getpid()); }

void write_all(int fd, const void *data, size_t n, const std::string &path) {
    const char *p = static_cast<const char *>(data);
    while (n > 0) {
        const ssize_t w = ::write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) throw FormatError(path + ": write failed: " + std::strerror(errno));
        p += w;
        n -= static_cast<size_t>(w);
    }
}

namespace {
std::atomic<bool> g_writes{true};
}

void set_writes_enabled(bool on) { g_writes = on; }
bool writes_enabled() { return g_writes; }

void write_atomic(const std::string &path, const std::function<void(int, const std::string &)> &produce) {
    if (!writes_enabled()) return;
    const fs::path target(path);
    {
        // The first write into a folder clears what killed writers left there.
        static std::mutex m;
        static std::set<std::string> cleaned;
        const std::string dir = fs::absolute(target).parent_path().string();
        std::lock_guard<std::mutex> lock(m);
        if (cleaned.insert(dir).second && fs::is_directory(dir)) remove_stale_temp_files(dir);
    }
    const std::string tmp = temp_name(path);
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw FormatError(path + ": cannot create " + tmp + ": " + std::strerror(errno));
    try {
        produce(fd, tmp);
        if (fsync(fd) != 0) throw FormatError(path + ": fsync failed: " + std::strerror(errno));
    } catch (...) {
        ::close(fd);
        ::unlink(tmp.c_str());
        throw;
    }
    ::close(fd);
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        throw FormatError(path + ": rename failed: " + std::strerror(err));
    }
    fsync_dir(target.parent_path());
}

void write_file_atomic(const std::string &path, const std::string &text) {
    write_atomic(path, [&](int fd, const std::string &tmp) { write_all(fd, text.data(), text.size(), tmp); });
}

void copy_file_atomic(const std::string &from, const std::string &to) {
    std::error_code ec;
    if (fs::exists(to) && fs::equivalent(from, to, ec)) return;
    std::ifstream in(from, std::ios::binary);
    if (!in) throw FormatError(from + ": cannot read");
    write_atomic(to, [&](int fd, const std::string &tmp) {
        char buf[1 << 16];
        while (in) {
            in.read(buf, sizeof buf);
            if (in.gcount() > 0) write_all(fd, buf, static_cast<size_t>(in.gcount()), tmp);
        }
        if (in.bad()) throw FormatError(from + ": read failed");
    });
}

int remove_stale_temp_files(const std::string &dir) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) return 0;
    int removed = 0;
    std::vector<fs::path> entries;
    for (const auto &e : fs::directory_iterator(dir, ec)) entries.push_back(e.path());
    for (const fs::path &path : entries) {
        const std::string name = path.filename().string();
        const char *tag = kTempTag;
        size_t at = name.rfind(tag);
        if (at == std::string::npos) at = name.rfind(tag = kOldTag);
        if (at == std::string::npos) continue;
        const std::string pid_text = name.substr(at + std::strlen(tag));
        if (pid_text.empty() || pid_text.find_first_not_of("0123456789") != std::string::npos) continue;
        const long pid = std::stol(pid_text);
        if (pid == getpid() || (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM)) continue;  // alive
        // A folder moved aside by a writer killed before its replacement arrived goes back.
        const fs::path original = path.parent_path() / name.substr(0, at);
        if (tag == kOldTag && !fs::exists(original, ec)) {
            fs::rename(path, original, ec);
            continue;
        }
        fs::remove_all(path, ec);
        if (!ec) ++removed;
    }
    return removed;
}

FolderLock::FolderLock(const std::string &dir, double wait_seconds) {
    fs::create_directories(dir);
    const std::string path = (fs::path(dir) / ".mango-lock").string();
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw FormatError(path + ": cannot open the folder lock: " + std::strerror(errno));
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(wait_seconds);
    while (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
        if (errno != EWOULDBLOCK && errno != EINTR) {
            ::close(fd_);
            throw FormatError(path + ": cannot lock: " + std::strerror(errno));
        }
        if (std::chrono::steady_clock::now() >= until) {
            ::close(fd_);
            fd_ = -1;
            throw FormatError(dir + " is being written by another mango process (lock " + path + " held); try again when it is done");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
}

FolderLock::~FolderLock() {
    if (fd_ >= 0) {
        ::flock(fd_, LOCK_UN);
        ::close(fd_);
    }
}

OutputFolder::OutputFolder(const std::string &out_in, bool force, const std::vector<std::string> &inputs) {
    namespace fs = std::filesystem;
    if (out_in.empty()) throw HostError("the output folder is an empty path");
    const fs::path out = fs::absolute(out_in).lexically_normal();
    out_ = out.string();
    for (const std::string &input : inputs) {
        const std::string a = out_ + "/", b = fs::absolute(input).lexically_normal().string() + "/";
        if (a.rfind(b, 0) == 0 || b.rfind(a, 0) == 0)
            throw HostError(out_ + ": the output folder must not be, contain or lie inside an input model (" + input + ")");
    }
    if (out == out.root_path()) throw HostError(out_ + ": a filesystem root cannot be an output folder");
    if (fs::exists(out) && !force) throw HostError(out_ + " exists; pass --force to replace it");
    if (!writes_enabled()) {  // a scratch folder, discarded
        std::string dir = (fs::temp_directory_path() / "mango-scratch-XXXXXX").string();
        if (!::mkdtemp(dir.data())) throw HostError(out_ + ": cannot create a scratch folder: " + std::strerror(errno));
        tmp_ = dir;
        return;
    }
    fs::create_directories(out.parent_path());
    lock_ = std::make_unique<FolderLock>(out.parent_path().string());
    // Again under the lock: a writer that held it may have made OUT while this one waited.
    if (fs::exists(out) && !force) throw HostError(out_ + " exists (written while this process waited for it); pass --force to replace it");
    remove_stale_temp_files(out.parent_path().string());
    tmp_ = temp_name(out_);
    fs::remove_all(tmp_);
    fs::create_directories(tmp_);
}

void OutputFolder::commit() {
    namespace fs = std::filesystem;
    if (!writes_enabled()) return;  // the destructor removes the scratch folder
    if (keep_others_ && fs::is_directory(out_))
        for (const auto &e : fs::directory_iterator(out_)) {
            const std::string name = e.path().filename().string();
            const bool weights = name.find(".safetensors") != std::string::npos;
            const fs::path to = fs::path(tmp_) / name;
            if (weights || fs::exists(to) || name.find(".mango-") != std::string::npos) continue;
            std::error_code ec;
            if (e.is_regular_file()) fs::create_hard_link(e.path(), to, ec);
            if (!e.is_regular_file() || ec) fs::copy(e.path(), to, fs::copy_options::recursive);
        }
    std::error_code ec;
    if (fs::exists(out_)) {
        // Swapped in one step, so OUT never goes missing; the old folder ends at the temp name.
        if (::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, out_.c_str(), RENAME_EXCHANGE) == 0) {
            committed_ = true;
            fs::remove_all(tmp_, ec);
            return;
        }
        // A filesystem without the exchange: aside, then in (remove_stale_temp_files puts it back if killed between).
        const std::string old = out_ + kOldTag + std::to_string(::getpid());
        fs::rename(out_, old);
        fs::rename(tmp_, out_);
        committed_ = true;
        fs::remove_all(old, ec);
        return;
    }
    fs::rename(tmp_, out_);
    committed_ = true;
}

OutputFolder::~OutputFolder() {
    if (committed_) return;
    std::error_code ec;
    std::filesystem::remove_all(tmp_, ec);
}

}  // namespace mango::formats
