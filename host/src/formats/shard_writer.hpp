// Writing a checkpoint one tensor at a time, as merging produces them: each
// tensor goes to disk when it is added (nothing is held back), shards close
// when the next tensor would pass max_shard_bytes (a tensor larger than that
// gets a shard of its own), and finish() names them as transformers does
// (model.safetensors, or model-0000i-of-0000n.safetensors + the index).
// A shard reserves room for its header up front, sized for every tensor still
// to come, and pads the header with spaces when it closes (the format allows
// trailing whitespace), so no tensor is ever copied twice.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mango::formats {

class ShardWriter {
public:
    struct Planned {
        std::string name;
        size_t ndim = 0;
    };
    // `planned`: every tensor that may be added, in order (sizes the header room).
    ShardWriter(std::string dir, uint64_t max_shard_bytes, std::vector<Planned> planned,
                std::map<std::string, std::string> metadata = {{"format", "pt"}});
    ~ShardWriter();
    ShardWriter(const ShardWriter &) = delete;
    ShardWriter &operator=(const ShardWriter &) = delete;

    void add(const std::string &name, const at::Tensor &t);
    // Closes the last shard, renames the shards and writes the index; returns the files.
    std::vector<std::string> finish();
    uint64_t bytes() const { return total_; }

private:
    struct Entry {
        std::string name, dtype;
        std::vector<int64_t> shape;
        uint64_t begin = 0, end = 0;
    };
    void open_shard();
    void close_shard();
    uint64_t header_room() const;

    std::string dir_;
    uint64_t max_;
    std::vector<Planned> planned_;
    size_t next_planned_ = 0;
    std::map<std::string, std::string> metadata_;
    int fd_ = -1;
    uint64_t room_ = 0, cursor_ = 0, total_ = 0;
    std::vector<Entry> entries_;            // of the open shard
    std::vector<std::string> shard_files_;  // temp names, in order
    std::vector<std::vector<std::string>> shard_tensors_;
};

}  // namespace mango::formats
