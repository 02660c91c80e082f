#include "formats/safetensors_header.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <set>

namespace mango::formats {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string &where, const std::string &what) { throw FormatError(where + ": " + what); }

bool mul_overflows(uint64_t a, uint64_t b, uint64_t &out) { return __builtin_mul_overflow(a, b, &out); }

}  // namespace

uint64_t TensorEntry::numel() const {
    uint64_t n = 1;
    for (int64_t d : shape) n *= static_cast<uint64_t>(d);
    return n;
}

size_t dtype_size(const std::string &d) {
    static const std::map<std::string, size_t> sizes = {{"F64", 8}, {"F32", 4}, {"F16", 2},  {"BF16", 2},    {"I64", 8},
                                                        {"I32", 4}, {"I16", 2}, {"I8", 1},   {"U64", 8},     {"U32", 4},
                                                        {"U16", 2}, {"U8", 1},  {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
    auto it = sizes.find(d);
    return it == sizes.end() ? 0 : it->second;
}

Header parse_header(const uint8_t *bytes, size_t available, uint64_t file_size, const std::string &where) {
    if (file_size < 8 || available < 8)
        fail(where, "file is " + std::to_string(file_size) + " bytes, too short for a safetensors header length (8 bytes)");
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
    if (n > kMaxHeaderBytes) fail(where, "header length " + std::to_string(n) + " exceeds the 100 MB limit");
    if (8 + n > file_size)
        fail(where, "header length " + std::to_string(n) + " runs past the end of the " + std::to_string(file_size) + "-byte file");
    if (8 + n > available) fail(where, "header not fully available");
    if (n < 2 || bytes[8] != '{') fail(where, "header does not start with '{'");

    // Reject duplicate top-level names (nlohmann would keep the last one).
    std::set<std::string> seen;
    std::string duplicate;
    json::parser_callback_t on_event = [&](int depth, json::parse_event_t event, json &parsed) {
        if (event == json::parse_event_t::key && depth == 1 && !seen.insert(parsed.get<std::string>()).second && duplicate.empty())
            duplicate = parsed.get<std::string>();
        return true;
    };
    json j;
    try {
        j = json::parse(bytes + 8, bytes + 8 + n, on_event);
    } catch (const json::exception &e) {
        fail(where, std::string("header is not valid JSON: ") + e.what());
    }
    if (!duplicate.empty()) fail(where, "tensor '" + duplicate + "' appears twice in the header");
    if (!j.is_object()) fail(where, "header is not a JSON object");

    Header h;
    h.data_offset = 8 + n;
    const uint64_t data_size = file_size - h.data_offset;
    for (auto &[name, v] : j.items()) {
        if (name == "__metadata__") {
            if (!v.is_object()) fail(where, "__metadata__ is not an object");
            for (auto &[k, mv] : v.items()) {
                if (!mv.is_string()) fail(where, "__metadata__ value '" + k + "' is not a string");
                h.metadata[k] = mv.get<std::string>();
            }
            continue;
        }
        const std::string at = "tensor '" + name + "'";
        if (!v.is_object()) fail(where, at + " is not an object");
        if (!v.contains("dtype") || !v["dtype"].is_string()) fail(where, at + " has no dtype");
        if (!v.contains("shape") || !v["shape"].is_array()) fail(where, at + " has no shape");
        if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
            fail(where, at + " needs data_offsets [begin, end]");
        for (auto &[k, _] : v.items())
            if (k != "dtype" && k != "shape" && k != "data_offsets") fail(where, at + " has unknown field '" + k + "'");
        TensorEntry t;
        t.name = name;
        t.dtype = v["dtype"].get<std::string>();
        const size_t esize = dtype_size(t.dtype);
        if (!esize) fail(where, at + " has unknown dtype '" + t.dtype + "'");
        uint64_t bytes_needed = esize;
        for (const json &d : v["shape"]) {
            if (!d.is_number_unsigned()) fail(where, at + " has a shape entry that is not a non-negative integer: " + d.dump());
            const uint64_t dim = d.get<uint64_t>();
            if (dim > (uint64_t(1) << 62) || mul_overflows(bytes_needed, dim, bytes_needed))
                fail(where, at + " has an impossibly large shape");
            t.shape.push_back(static_cast<int64_t>(dim));
        }
        for (const json &o : v["data_offsets"])
            if (!o.is_number_unsigned()) fail(where, at + " has a data offset that is not a non-negative integer");
        t.begin = v["data_offsets"][0].get<uint64_t>();
        t.end = v["data_offsets"][1].get<uint64_t>();
        if (t.end < t.begin)
            fail(where, at + " has data_offsets end " + std::to_string(t.end) + " before begin " + std::to_string(t.begin));
        if (t.end > data_size)
            fail(where,
                 at + " data ends at " + std::to_string(t.end) + ", past the data buffer of " + std::to_string(data_size) + " bytes");
        if (t.end - t.begin != bytes_needed)
            fail(where, at + ": shape " + v["shape"].dump() + " x " + t.dtype + " needs " + std::to_string(bytes_needed) +
                            " bytes, data_offsets span " + std::to_string(t.end - t.begin));
        h.tensors.push_back(std::move(t));
    }
    std::sort(h.tensors.begin(), h.tensors.end(),
              [](const TensorEntry &a, const TensorEntry &b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
    uint64_t cursor = 0;
    for (const TensorEntry &t : h.tensors) {
        if (t.begin < cursor)
            fail(where, "tensor '" + t.name + "' overlaps the tensor before it (starts at " + std::to_string(t.begin) +
                            ", previous ends at " + std::to_string(cursor) + ")");
        if (t.begin > cursor)
            fail(where, "hole in the data buffer before tensor '" + t.name + "' (bytes " + std::to_string(cursor) + ".." +
                            std::to_string(t.begin) + " unused)");
        cursor = t.end;
    }
    if (cursor != data_size)
        fail(where, "data buffer has " + std::to_string(data_size - cursor) + " trailing bytes not covered by any tensor");
    return h;
}

std::string make_header(std::vector<TensorEntry> &tensors, const std::map<std::string, std::string> &metadata) {
    json j = json::object();
    if (!metadata.empty()) j["__metadata__"] = metadata;
    uint64_t cursor = 0;
    for (TensorEntry &t : tensors) {
        const size_t esize = dtype_size(t.dtype);
        if (!esize) throw FormatError("tensor '" + t.name + "': unknown dtype '" + t.dtype + "'");
        if (j.contains(t.name)) throw FormatError("tensor '" + t.name + "' given twice");
        t.begin = cursor;
        t.end = cursor + t.numel() * esize;
        cursor = t.end;
        j[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {t.begin, t.end}}};
    }
    std::string text = j.dump();
    text.append((8 - (text.size() % 8)) % 8, ' ');
    return text;
}

}  // namespace mango::formats
