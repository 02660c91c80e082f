// UTF-8 and Unicode helpers for the tokenizer: code points, categories,
// normalisation (utf8proc), regex splitting (PCRE2), GPT-2's byte map.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mango::formats::unicode {

// Code points of valid UTF-8; invalid bytes become U+FFFD.
std::vector<char32_t> decode(const std::string &s);
void append(std::string &out, char32_t cp);
std::string encode(const std::vector<char32_t> &cps);
// UTF-8 characters of s, each as its own string.
std::vector<std::string> chars(const std::string &s);
// Like Rust's String::from_utf8_lossy: each maximal invalid subsequence -> U+FFFD.
std::string from_bytes_lossy(const std::string &bytes);
// Offset of the first byte that is not valid UTF-8, or std::string::npos.
size_t first_invalid_utf8(const std::string &s);

bool is_whitespace(char32_t c);   // Unicode White_Space
bool is_control(char32_t c);      // category C* other than \t \n \r
bool is_punctuation(char32_t c);  // ASCII punctuation or category P*
bool is_cjk(char32_t c);          // CJK ideograph blocks (BERT)
bool is_mark_nonspacing(char32_t c);
char32_t to_lower(char32_t c);
std::string nfd(const std::string &s);
std::string nfc(const std::string &s);
std::string nfkc(const std::string &s);

// GPT-2's reversible byte <-> printable code point map.
char32_t byte_to_char(uint8_t b);
int char_to_byte(char32_t c);  // -1 when not in the map

// A compiled PCRE2 pattern (UTF + Unicode properties, JIT when available).
class Regex {
public:
    explicit Regex(const std::string &pattern);
    ~Regex();
    Regex(const Regex &) = delete;
    Regex &operator=(const Regex &) = delete;
    // Byte ranges [begin, end) of all non-overlapping matches.
    std::vector<std::pair<size_t, size_t>> find_all(const std::string &text) const;

private:
    void *code_ = nullptr;
};

}  // namespace mango::formats::unicode
