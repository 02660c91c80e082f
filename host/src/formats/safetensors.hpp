// Safetensors files and checkpoints as LibTorch tensors: mmap-backed, lazy
// (a tensor's bytes are touched only when used), zero-copy where aligned;
// atomic writer with sharding and the index file transformers writes.
#pragma once

#include "formats/atomic_file.hpp"
#include "formats/safetensors_header.hpp"

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mango::formats {

class Mapping;  // an mmapped file

// One .safetensors file.
class SafetensorsFile {
public:
    static std::shared_ptr<SafetensorsFile> open(const std::string &path);
    const std::string &path() const { return path_; }
    const Header &header() const { return header_; }
    const TensorEntry *find(const std::string &name) const;
    // The tensor (CPU). Zero-copy over the mapping when its data is aligned
    // (copy-on-write: writes never reach the file), else a copy. F8 types
    // need LibTorch >= 2.1; older builds return them widened to F32.
    at::Tensor tensor(const std::string &name) const;
    at::Tensor tensor(const TensorEntry &entry) const;

private:
    std::string path_;
    std::shared_ptr<Mapping> map_;
    Header header_;
};

// A checkpoint folder: model.safetensors, or shards + model.safetensors.index.json.
// A path to one .safetensors file works too.
class Checkpoint {
public:
    static Checkpoint open(const std::string &path);
    std::vector<std::string> names() const;  // sorted
    bool contains(const std::string &name) const;
    const TensorEntry &entry(const std::string &name) const;  // throws naming the tensor
    at::Tensor tensor(const std::string &name) const;
    const std::vector<std::shared_ptr<SafetensorsFile>> &files() const { return files_; }
    const std::string &root() const { return root_; }

private:
    std::string root_;
    std::vector<std::shared_ptr<SafetensorsFile>> files_;
    std::map<std::string, size_t> where_;  // tensor -> file index
};

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Writes one file atomically (temp file, fsync, rename): an interrupted
// write never leaves a file that looks complete, and a failed one leaves an
// existing file untouched.
void write_safetensors(const std::string &path, const NamedTensors &tensors, const std::map<std::string, std::string> &metadata = {});

// Writes a checkpoint folder: one model.safetensors, or when the tensors
// exceed max_shard_bytes (> 0), model-0000i-of-0000n.safetensors shards and
// model.safetensors.index.json (written last). Returns the files written.
std::vector<std::string> write_checkpoint(const std::string &dir, const NamedTensors &tensors, uint64_t max_shard_bytes = 0,
                                          const std::map<std::string, std::string> &metadata = {{"format", "pt"}});

std::string dtype_name(at::ScalarType t);  // "F32", ...; throws if unsupported

}  // namespace mango::formats
