// Fuzz target: any bytes as config.json parse or are refused with a ConfigError.
#include "formats/hf_config.hpp"

#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    try {
        mango::formats::parse_hf_config(std::string(reinterpret_cast<const char *>(data), size), "fuzz");
    } catch (const mango::formats::ConfigError &) {
    }
    return 0;
}
