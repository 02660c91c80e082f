// Writing files so that a crash never leaves a half-written one: every file
// the project writes goes through write_atomic (temp file beside the target,
// fsync, rename, fsync of the folder). Temp files carry a recognisable name,
// "<file>.mango-tmp-<pid>", and remove_stale_temp_files() deletes those whose
// process is gone. FolderLock serialises writers of one output folder.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace mango::formats {

// produce(fd, temp_path) writes the content; on success the temp file
// replaces `path`, on failure it is removed and `path` is untouched.
// A process that must not write (a rank other than 0 of a distributed run)
// turns writes off: write_atomic and the helpers built on it do nothing, and
// an OutputFolder is a private scratch folder that commit() discards. On by
// default.
void set_writes_enabled(bool on);
bool writes_enabled();

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

// An output folder that appears whole or not at all: files are written into
// a temp folder beside OUT (path()), and commit() swaps it in (a replaced
// folder is moved aside first, then removed). Until commit() the temp folder
// is removed on destruction. The constructor fails when OUT exists without
// `force`, or when OUT is, contains or lies inside one of `inputs`; the
// parent folder stays locked (FolderLock) for the object's lifetime.
class OutputFolder {
public:
    OutputFolder(const std::string &out, bool force, const std::vector<std::string> &inputs);
    ~OutputFolder();
    OutputFolder(const OutputFolder &) = delete;
    OutputFolder &operator=(const OutputFolder &) = delete;
    const std::string &path() const { return tmp_; }  // where to write
    const std::string &target() const { return out_; }
    // Files of a replaced folder that the new one does not have are carried
    // over on commit (a user's notes beside a model), except weights.
    void keep_other_files() { keep_others_ = true; }
    void commit();

private:
    std::string out_, tmp_;
    std::unique_ptr<FolderLock> lock_;
    bool committed_ = false, keep_others_ = false;
};

}  // namespace mango::formats
