#include "formats/shard_writer.hpp"

#include "formats/atomic_file.hpp"
#include "formats/safetensors.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace fs = std::filesystem;

namespace mango::formats {
namespace {

void pwrite_all(int fd, const void *data, size_t n, uint64_t offset, const std::string &path) {
    const char *p = static_cast<const char *>(data);
    while (n > 0) {
        const ssize_t w = ::pwrite(fd, p, n, off_t(offset));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) throw FormatError(path + ": write failed: " + std::strerror(errno));
        p += w;
        n -= size_t(w);
        offset += uint64_t(w);
    }
}

}  // namespace

ShardWriter::ShardWriter(std::string dir, uint64_t max_shard_bytes, std::vector<Planned> planned,
                         std::map<std::string, std::string> metadata)
    : dir_(std::move(dir)), max_(max_shard_bytes), planned_(std::move(planned)), metadata_(std::move(metadata)) {
    fs::create_directories(dir_);
}

ShardWriter::~ShardWriter() {
    if (fd_ >= 0) ::close(fd_);
}

uint64_t ShardWriter::header_room() const {
    // The longest header the remaining tensors could need: 20 digits per number.
    uint64_t room = nlohmann::json(metadata_).dump().size() + 32;
    for (size_t i = next_planned_; i < planned_.size(); ++i)
        room += nlohmann::json(planned_[i].name).dump().size() + 64 + 21 * planned_[i].ndim + 2 * 21;
    return (room + 7) / 8 * 8;
}

void ShardWriter::open_shard() {
    const std::string path = (fs::path(dir_) / ("shard-" + std::to_string(shard_files_.size() + 1) + ".part")).string();
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) throw FormatError(path + ": cannot create: " + std::strerror(errno));
    shard_files_.push_back(path);
    shard_tensors_.emplace_back();
    room_ = header_room();
    cursor_ = 0;
    entries_.clear();
}

void ShardWriter::close_shard() {
    if (fd_ < 0) return;
    nlohmann::json j = nlohmann::json::object();
    if (!metadata_.empty()) j["__metadata__"] = metadata_;
    for (const Entry &e : entries_) j[e.name] = {{"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {e.begin, e.end}}};
    std::string header = j.dump();
    const std::string &path = shard_files_.back();
    if (header.size() > room_)
        throw FormatError(path + ": header of " + std::to_string(header.size()) + " bytes exceeds its reserved room (a bug)");
    header.append(room_ - header.size(), ' ');
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = uint8_t(room_ >> (8 * i));
    pwrite_all(fd_, len, 8, 0, path);
    pwrite_all(fd_, header.data(), header.size(), 8, path);
    if (::fsync(fd_) != 0) throw FormatError(path + ": fsync failed: " + std::strerror(errno));
    ::close(fd_);
    fd_ = -1;
}

void ShardWriter::add(const std::string &name, const at::Tensor &tensor) {
    const at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
    const uint64_t bytes = t.nbytes();
    if (fd_ >= 0 && max_ > 0 && cursor_ > 0 && cursor_ + bytes > max_) close_shard();
    if (fd_ < 0) open_shard();
    while (next_planned_ < planned_.size() && planned_[next_planned_].name != name) ++next_planned_;
    if (next_planned_ < planned_.size()) ++next_planned_;
    Entry e{name, dtype_name(t.scalar_type()), t.sizes().vec(), cursor_, cursor_ + bytes};
    if (bytes) pwrite_all(fd_, t.data_ptr(), bytes, 8 + room_ + cursor_, shard_files_.back());
    cursor_ += bytes;
    total_ += bytes;
    entries_.push_back(std::move(e));
    shard_tensors_.back().push_back(name);
}

std::vector<std::string> ShardWriter::finish() {
    close_shard();
    std::vector<std::string> out;
    const size_t n = shard_files_.size();
    if (n == 0) {  // no tensor at all: still a valid, empty checkpoint
        write_safetensors((fs::path(dir_) / "model.safetensors").string(), {}, metadata_);
        return {(fs::path(dir_) / "model.safetensors").string()};
    }
    nlohmann::json weight_map = nlohmann::json::object();
    for (size_t i = 0; i < n; ++i) {
        char name[64];
        if (n == 1)
            std::snprintf(name, sizeof name, "model.safetensors");
        else
            std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, n);
        const std::string final_path = (fs::path(dir_) / name).string();
        fs::rename(shard_files_[i], final_path);
        out.push_back(final_path);
        for (const auto &t : shard_tensors_[i]) weight_map[t] = name;
    }
    if (n > 1) {
        const std::string index = (fs::path(dir_) / "model.safetensors.index.json").string();
        write_file_atomic(index, nlohmann::json{{"metadata", {{"total_size", total_}}}, {"weight_map", weight_map}}.dump(2) + "\n");
        out.push_back(index);
    }
    return out;
}

}  // namespace mango::formats
