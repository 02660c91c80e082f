// The safetensors header: parsed and validated against the format's rules,
// without LibTorch (the fuzzer links only this).
//
// Layout: u64 little-endian N, then N bytes of JSON, then the data buffer.
// JSON: {"__metadata__": {str: str}, NAME: {"dtype", "shape", "data_offsets":
// [begin, end]}} with offsets relative to the data buffer, which must be
// covered exactly: no holes, no overlaps.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace mango::formats {

struct FormatError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

constexpr uint64_t kMaxHeaderBytes = 100u * 1000u * 1000u;

struct TensorEntry {
    std::string name;
    std::string dtype;  // "F32", "BF16", ...
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;  // byte range in the data buffer
    uint64_t numel() const;
};

struct Header {
    std::vector<TensorEntry> tensors;  // in data order
    std::map<std::string, std::string> metadata;
    uint64_t data_offset = 0;  // 8 + N
};

// Bytes per element of a safetensors dtype; 0 when unknown.
size_t dtype_size(const std::string &dtype);

// Parses and validates. `bytes` is the whole file (or at least its first
// 8 + N bytes with file_size giving the full length). Errors name `where`
// (the file) and the tensor.
Header parse_header(const uint8_t *bytes, size_t available, uint64_t file_size, const std::string &where);

// The header bytes (JSON padded with spaces to a multiple of 8) for tensors
// laid out one after another in the given order; fills begin/end.
std::string make_header(std::vector<TensorEntry> &tensors, const std::map<std::string, std::string> &metadata);

}  // namespace mango::formats
