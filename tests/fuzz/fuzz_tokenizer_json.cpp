// Fuzz target: any bytes as tokenizer.json load or are refused with a
// TokenizerError; a loaded tokenizer must encode and decode without failing.
#include "formats/tokenizer.hpp"

#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    try {
        const auto tok = mango::formats::Tokenizer::from_json(std::string(reinterpret_cast<const char *>(data), size), "fuzz");
        for (const char *text : {"Hello world", " a  b\tc\n", "naïve 日本 🤗", ""}) {
            const auto ids = tok.encode(text, true);
            tok.decode(ids, false);
        }
    } catch (const mango::formats::TokenizerError &) {
    }
    return 0;
}
