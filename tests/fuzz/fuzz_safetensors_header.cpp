// Fuzz target: any bytes as a safetensors file must parse or be refused with
// a FormatError; nothing else (crash, hang, other exception) is allowed.
#include "formats/safetensors_header.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    try {
        const auto h = mango::formats::parse_header(data, size, size, "fuzz");
        for (const auto &t : h.tensors)
            if (h.data_offset + t.end > size) __builtin_trap();  // validated ranges must lie in the file
    } catch (const mango::formats::FormatError &) {
    }
    return 0;
}
