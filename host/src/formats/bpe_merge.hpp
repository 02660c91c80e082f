// One entry of a BPE tokenizer.json's "merges" list, in either form Hugging Face writes it:
// "a b" (older files) or ["a", "b"] (tokenizers >= 0.20, which allows spaces inside parts).
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>

namespace mango::formats {

struct BpeMerge {
    std::string a, b;    // the two parts, as written
    std::string merged;  // the token they make: a + b, with b's continuing-subword prefix dropped
};

// Nullopt when `m` is neither form: not a string or a pair of strings, or a string with no space
// after its first character (a part may itself be a space, so the split is at the first space after it).
inline std::optional<BpeMerge> parse_bpe_merge(const nlohmann::json &m, const std::string &continuing_subword_prefix) {
    BpeMerge out;
    if (m.is_string()) {
        const std::string &s = m.get_ref<const std::string &>();
        const size_t sp = s.find(' ', 1);
        if (sp == std::string::npos) return std::nullopt;
        out.a = s.substr(0, sp);
        out.b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        out.a = m[0].get<std::string>();
        out.b = m[1].get<std::string>();
    } else {
        return std::nullopt;
    }
    const std::string &p = continuing_subword_prefix;
    out.merged = out.a + (!p.empty() && out.b.rfind(p, 0) == 0 ? out.b.substr(p.size()) : out.b);
    return out;
}

}  // namespace mango::formats
