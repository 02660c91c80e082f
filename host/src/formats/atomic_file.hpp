// Writing files so that a crash never leaves a half-written one: every file
// the project writes goes through write_atomic (temp file beside the target,
// fsync, rename, fsync of the folder). Temp files carry a recognisable name,
// "<file>.mango-tmp-<pid>", and remove_stale_temp_files() deletes those whose
// process is gone. FolderLock serialises writers of one output folder.
#pragma once

#include <functional>
#include <string>

namespace mango::formats {

// produce(fd, temp_path) writes the content; on success the temp file
// replaces `path`, on failure it is removed and `path` is untouched.
void write_atomic(const std::string &path, const std::function<void(int fd, const std::string &tmp)> &produce);
void write_file_atomic(const std::string &path, const std::string &text);
// Copies `from` to `to` atomically (a no-op when both name the same file).
void copy_file_atomic(const std::string &from, const std::string &to);
// write(2) until done; throws naming `path` on failure.
void write_all(int fd, const void *data, size_t n, const std::string &path);

// The temp name write_atomic uses for `path` in this process.
std::string temp_name(const std::string &path);
// Deletes "*.mango-tmp-<pid>" files (and folders) in `dir` whose process no
// longer runs; returns how many it removed.
int remove_stale_temp_files(const std::string &dir);

// An exclusive advisory lock (flock) on DIR/.mango-lock, held for the
// object's lifetime. A second writer of the same folder waits up to
// `wait_seconds`, then fails with a message naming the folder.
class FolderLock {
public:
    explicit FolderLock(const std::string &dir, double wait_seconds = 30);
    ~FolderLock();
    FolderLock(const FolderLock &) = delete;
    FolderLock &operator=(const FolderLock &) = delete;

private:
    int fd_ = -1;
};

}  // namespace mango::formats
