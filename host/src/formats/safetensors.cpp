#include "formats/safetensors.hpp"

#include "formats/atomic_file.hpp"
#include "formats/json_file.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/version.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;

namespace mango::formats {

class Mapping {
public:
    explicit Mapping(const std::string &path) {
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) throw FormatError(path + ": cannot open: " + std::strerror(errno));
        struct stat st {};
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            ::close(fd);
            throw FormatError(path + ": not a regular file");
        }
        size_ = static_cast<size_t>(st.st_size);
        if (size_ > 0) {
            // Private + writable: tensors may be modified in memory (copy on
            // write); the file never changes.
            void *p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
            if (p == MAP_FAILED) {
                ::close(fd);
                throw FormatError(path + ": mmap failed: " + std::strerror(errno));
            }
            data_ = static_cast<uint8_t *>(p);
        }
        ::close(fd);
    }
    ~Mapping() {
        if (data_) munmap(data_, size_);
    }
    uint8_t *data() const { return data_; }
    size_t size() const { return size_; }

private:
    uint8_t *data_ = nullptr;
    size_t size_ = 0;
};

namespace {

constexpr bool kNativeF8 = TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1);

at::ScalarType scalar_type(const std::string &d, const std::string &where) {
    static const std::map<std::string, at::ScalarType> types = {
        {"F64", at::kDouble},
        {"F32", at::kFloat},
        {"F16", at::kHalf},
        {"BF16", at::kBFloat16},
        {"I64", at::kLong},
        {"I32", at::kInt},
        {"I16", at::kShort},
        {"I8", at::kChar},
        {"U8", at::kByte},
        {"BOOL", at::kBool},
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
        {"F8_E4M3", at::ScalarType::Float8_e4m3fn},
        {"F8_E5M2", at::ScalarType::Float8_e5m2},
#endif
    };
    auto it = types.find(d);
    if (it == types.end()) throw FormatError(where + ": dtype " + d + " is not supported by LibTorch " + TORCH_VERSION);
    return it->second;
}

// OCP FP8 decoding, for LibTorch builds without float8 types.
float decode_e4m3fn(uint8_t b) {
    const int sign = b >> 7, exp = (b >> 3) & 15, man = b & 7;
    float v;
    if (exp == 15 && man == 7)
        v = NAN;
    else if (exp == 0)
        v = std::ldexp(man / 8.0f, -6);
    else
        v = std::ldexp(1.0f + man / 8.0f, exp - 7);
    return sign ? -v : v;
}
float decode_e5m2(uint8_t b) {
    const int sign = b >> 7, exp = (b >> 2) & 31, man = b & 3;
    float v;
    if (exp == 31)
        v = man ? NAN : INFINITY;
    else if (exp == 0)
        v = std::ldexp(man / 4.0f, -14);
    else
        v = std::ldexp(1.0f + man / 4.0f, exp - 15);
    return sign ? -v : v;
}

}  // namespace

std::string dtype_name(at::ScalarType t) {
    switch (t) {
        case at::kDouble:
            return "F64";
        case at::kFloat:
            return "F32";
        case at::kHalf:
            return "F16";
        case at::kBFloat16:
            return "BF16";
        case at::kLong:
            return "I64";
        case at::kInt:
            return "I32";
        case at::kShort:
            return "I16";
        case at::kChar:
            return "I8";
        case at::kByte:
            return "U8";
        case at::kBool:
            return "BOOL";
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
        case at::ScalarType::Float8_e4m3fn:
            return "F8_E4M3";
        case at::ScalarType::Float8_e5m2:
            return "F8_E5M2";
#endif
        default:
            throw FormatError(std::string("dtype ") + c10::toString(t) + " cannot be stored in safetensors");
    }
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string &path) {
    auto f = std::shared_ptr<SafetensorsFile>(new SafetensorsFile());
    f->path_ = path;
    f->map_ = std::make_shared<Mapping>(path);
    f->header_ = parse_header(f->map_->data(), f->map_->size(), f->map_->size(), path);
    return f;
}

const TensorEntry *SafetensorsFile::find(const std::string &name) const {
    for (const TensorEntry &t : header_.tensors)
        if (t.name == name) return &t;
    return nullptr;
}

at::Tensor SafetensorsFile::tensor(const std::string &name) const {
    const TensorEntry *t = find(name);
    if (!t) throw FormatError(path_ + ": no tensor '" + name + "'");
    return tensor(*t);
}

at::Tensor SafetensorsFile::tensor(const TensorEntry &t) const {
    const std::string where = path_ + ": tensor '" + t.name + "'";
    uint8_t *p = map_->data() + header_.data_offset + t.begin;
    if (!kNativeF8 && (t.dtype == "F8_E4M3" || t.dtype == "F8_E5M2")) {
        at::Tensor out = at::empty(t.shape, at::kFloat);
        float *o = out.data_ptr<float>();
        for (uint64_t i = 0; i < t.numel(); ++i) o[i] = t.dtype == "F8_E4M3" ? decode_e4m3fn(p[i]) : decode_e5m2(p[i]);
        return out;
    }
    const at::ScalarType type = scalar_type(t.dtype, where);
    const size_t esize = dtype_size(t.dtype);
    if (t.numel() == 0) return at::empty(t.shape, at::TensorOptions().dtype(type));
    if (reinterpret_cast<uintptr_t>(p) % esize == 0) {
        std::shared_ptr<Mapping> keep = map_;
        return at::from_blob(
            p, t.shape, [keep](void *) {}, at::TensorOptions().dtype(type));
    }
    at::Tensor out = at::empty(t.shape, at::TensorOptions().dtype(type));
    std::memcpy(out.data_ptr(), p, t.end - t.begin);
    return out;
}

Checkpoint Checkpoint::open(const std::string &path) {
    Checkpoint c;
    c.root_ = path;
    std::error_code ec;
    if (fs::is_regular_file(path, ec)) {
        c.files_.push_back(SafetensorsFile::open(path));
    } else if (fs::is_directory(path, ec)) {
        const fs::path index = fs::path(path) / "model.safetensors.index.json";
        if (fs::exists(index)) {
            const nlohmann::json j = read_json_file<nlohmann::json, FormatError>(index, "a sharded checkpoint's index");
            if (!j.contains("weight_map") || !j["weight_map"].is_object()) throw FormatError(index.string() + ": no \"weight_map\" object");
            std::map<std::string, size_t> file_index;  // shard file -> position, in name order
            for (auto &[name, file] : j["weight_map"].items()) {
                if (!file.is_string()) throw FormatError(index.string() + ": weight_map['" + name + "'] is not a file name");
                const std::string fname = file.get<std::string>();
                if (fname.find('/') != std::string::npos || fname == "..")
                    throw FormatError(index.string() + ": weight_map['" + name + "'] = '" + fname + "' leaves the folder");
                file_index.emplace(fname, 0);
            }
            for (auto &[fname, pos] : file_index) {
                pos = c.files_.size();
                c.files_.push_back(SafetensorsFile::open((fs::path(path) / fname).string()));
            }
            for (auto &[name, file] : j["weight_map"].items()) {
                const std::string fname = file.get<std::string>();
                if (!c.files_[file_index[fname]]->find(name))
                    throw FormatError(index.string() + ": tensor '" + name + "' is mapped to " + fname + ", which does not hold it");
            }
        } else {
            std::vector<std::string> found;
            for (const auto &e : fs::directory_iterator(path))
                if (e.path().extension() == ".safetensors") found.push_back(e.path().string());
            std::sort(found.begin(), found.end());
            if (found.empty()) throw FormatError(path + ": no .safetensors files and no model.safetensors.index.json");
            for (const std::string &f : found) c.files_.push_back(SafetensorsFile::open(f));
        }
    } else {
        throw FormatError(path + ": no such file or folder");
    }
    for (size_t i = 0; i < c.files_.size(); ++i)
        for (const TensorEntry &t : c.files_[i]->header().tensors) {
            auto [it, fresh] = c.where_.emplace(t.name, i);
            if (!fresh)
                throw FormatError(path + ": tensor '" + t.name + "' is in both " + c.files_[it->second]->path() + " and " +
                                  c.files_[i]->path());
        }
    return c;
}

std::vector<std::string> Checkpoint::names() const {
    std::vector<std::string> out;
    for (const auto &[name, _] : where_) out.push_back(name);
    return out;
}

bool Checkpoint::contains(const std::string &name) const { return where_.count(name) > 0; }

const TensorEntry &Checkpoint::entry(const std::string &name) const {
    auto it = where_.find(name);
    if (it == where_.end()) throw FormatError(root_ + ": no tensor '" + name + "'");
    return *files_[it->second]->find(name);
}

at::Tensor Checkpoint::tensor(const std::string &name) const {
    auto it = where_.find(name);
    if (it == where_.end()) throw FormatError(root_ + ": no tensor '" + name + "'");
    return files_[it->second]->tensor(name);
}

void write_safetensors(const std::string &path, const NamedTensors &tensors, const std::map<std::string, std::string> &metadata) {
    std::vector<TensorEntry> entries;
    std::vector<at::Tensor> data;
    for (const auto &[name, t] : tensors) {
        TensorEntry e;
        e.name = name;
        e.dtype = dtype_name(t.scalar_type());
        e.shape = t.sizes().vec();
        entries.push_back(std::move(e));
        data.push_back(t.detach().to(at::kCPU).contiguous());
    }
    const std::string header = make_header(entries, metadata);
    write_atomic(path, [&](int fd, const std::string &tmp) {
        uint8_t len[8];
        for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(uint64_t(header.size()) >> (8 * i));
        write_all(fd, len, 8, tmp);
        write_all(fd, header.data(), header.size(), tmp);
        for (const at::Tensor &t : data) write_all(fd, t.data_ptr(), t.nbytes(), tmp);
    });
}

std::vector<std::string> write_checkpoint(const std::string &dir, const NamedTensors &tensors, uint64_t max_shard_bytes,
                                          const std::map<std::string, std::string> &metadata) {
    fs::create_directories(dir);
    std::vector<NamedTensors> shards(1);
    uint64_t in_shard = 0, total = 0;
    for (const auto &nt : tensors) {
        const uint64_t bytes = nt.second.numel() * nt.second.element_size();
        if (max_shard_bytes > 0 && in_shard > 0 && in_shard + bytes > max_shard_bytes) {
            shards.emplace_back();
            in_shard = 0;
        }
        shards.back().push_back(nt);
        in_shard += bytes;
        total += bytes;
    }
    std::vector<std::string> written;
    const fs::path index = fs::path(dir) / "model.safetensors.index.json";
    if (shards.size() == 1) {
        const std::string path = (fs::path(dir) / "model.safetensors").string();
        write_safetensors(path, shards[0], metadata);
        fs::remove(index);  // a stale index would point elsewhere
        return {path};
    }
    char name[64];
    nlohmann::json weight_map = nlohmann::json::object();
    for (size_t i = 0; i < shards.size(); ++i) {
        std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
        write_safetensors((fs::path(dir) / name).string(), shards[i], metadata);
        written.push_back((fs::path(dir) / name).string());
        for (const auto &nt : shards[i]) weight_map[nt.first] = name;
    }
    write_file_atomic(index.string(), nlohmann::json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}.dump(2) + "\n");
    written.push_back(index.string());
    return written;
}

}  // namespace mango::formats
