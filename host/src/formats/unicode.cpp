#include "unicode.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <cstdlib>
#include <stdexcept>

namespace mango::formats::unicode {
namespace {

// What a UTF-8 lead byte announces: sequence length (0 = not a lead byte)
// and the allowed range of the second byte (RFC 3629, no overlongs or surrogates).
struct Lead {
    size_t len;
    uint8_t lo, hi;
};
Lead lead(uint8_t b) {
    if (b < 0x80) return {1, 0x80, 0xBF};
    if (b >= 0xC2 && b <= 0xDF) return {2, 0x80, 0xBF};
    if (b >= 0xE0 && b <= 0xEF) return {3, uint8_t(b == 0xE0 ? 0xA0 : 0x80), uint8_t(b == 0xED ? 0x9F : 0xBF)};
    if (b >= 0xF0 && b <= 0xF4) return {4, uint8_t(b == 0xF0 ? 0x90 : 0x80), uint8_t(b == 0xF4 ? 0x8F : 0xBF)};
    return {0, 0, 0};
}

// Bytes after s[i] that continue the sequence its lead byte announces.
size_t continuation(const std::string &s, size_t i, const Lead &l) {
    const auto *p = reinterpret_cast<const uint8_t *>(s.data());
    size_t k = 1;
    for (; k < l.len && i + k < s.size(); ++k) {
        const uint8_t c = p[i + k];
        if (k == 1 ? (c < l.lo || c > l.hi) : (c < 0x80 || c > 0xBF)) break;
    }
    return k;
}

// Length of the valid UTF-8 sequence at s[i], 0 if invalid.
size_t valid_len(const std::string &s, size_t i) {
    const Lead l = lead(static_cast<uint8_t>(s[i]));
    if (l.len <= 1) return l.len;
    return continuation(s, i, l) == l.len ? l.len : 0;
}

// Bytes of the maximal invalid prefix at s[i] (what Rust replaces by one U+FFFD).
size_t invalid_len(const std::string &s, size_t i) {
    const Lead l = lead(static_cast<uint8_t>(s[i]));
    return l.len <= 1 ? 1 : continuation(s, i, l);
}

char32_t cp_at(const std::string &s, size_t i, size_t len) {
    const auto *p = reinterpret_cast<const uint8_t *>(s.data()) + i;
    switch (len) {
        case 1:
            return p[0];
        case 2:
            return ((p[0] & 0x1F) << 6) | (p[1] & 0x3F);
        case 3:
            return ((p[0] & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
        default:
            return ((p[0] & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
    }
}

std::string utf8proc_map_string(const std::string &s, int options) {
    utf8proc_uint8_t *out = nullptr;
    const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t *>(s.data()), static_cast<utf8proc_ssize_t>(s.size()),
                                            &out, static_cast<utf8proc_option_t>(options));
    if (n < 0) return s;  // invalid UTF-8 cannot occur: inputs are re-encoded first
    std::string r(reinterpret_cast<char *>(out), static_cast<size_t>(n));
    std::free(out);
    return r;
}

struct ByteMap {
    char32_t to_char[256];
    ByteMap() {
        int n = 0;
        for (int b = 0; b < 256; ++b) {
            const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            to_char[b] = printable ? char32_t(b) : char32_t(256 + n++);
        }
    }
};
const ByteMap &byte_map() {
    static const ByteMap m;
    return m;
}

}  // namespace

std::vector<char32_t> decode(const std::string &s) {
    std::vector<char32_t> out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
        const size_t len = valid_len(s, i);
        if (len == 0) {
            out.push_back(0xFFFD);
            i += invalid_len(s, i);
        } else {
            out.push_back(cp_at(s, i, len));
            i += len;
        }
    }
    return out;
}

void append(std::string &out, char32_t c) {
    if (c < 0x80)
        out += static_cast<char>(c);
    else if (c < 0x800) {
        out += static_cast<char>(0xC0 | (c >> 6));
        out += static_cast<char>(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
        out += static_cast<char>(0xE0 | (c >> 12));
        out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (c & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (c >> 18));
        out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (c & 0x3F));
    }
}

std::string encode(const std::vector<char32_t> &cps) {
    std::string out;
    for (char32_t c : cps) append(out, c);
    return out;
}

std::vector<std::string> chars(const std::string &s) {
    std::vector<std::string> out;
    for (size_t i = 0; i < s.size();) {
        size_t len = valid_len(s, i);
        if (len == 0) len = invalid_len(s, i);
        out.push_back(s.substr(i, len));
        i += len;
    }
    return out;
}

std::string from_bytes_lossy(const std::string &bytes) {
    std::string out;
    out.reserve(bytes.size());
    for (size_t i = 0; i < bytes.size();) {
        const size_t len = valid_len(bytes, i);
        if (len) {
            out.append(bytes, i, len);
            i += len;
        } else {
            out += "\xEF\xBF\xBD";
            i += invalid_len(bytes, i);
        }
    }
    return out;
}

bool is_whitespace(char32_t c) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == 0x0B || c == 0x0C) return true;
    return utf8proc_category(static_cast<utf8proc_int32_t>(c)) == UTF8PROC_CATEGORY_ZS || c == 0x85 || c == 0x2028 || c == 0x2029;
}

bool is_control(char32_t c) {
    if (c == '\t' || c == '\n' || c == '\r') return false;
    const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
    return cat == UTF8PROC_CATEGORY_CC || cat == UTF8PROC_CATEGORY_CF || cat == UTF8PROC_CATEGORY_CN || cat == UTF8PROC_CATEGORY_CO;
}

bool is_punctuation(char32_t c) {
    if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126)) return true;
    const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
    return cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
}

bool is_cjk(char32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

bool is_mark_nonspacing(char32_t c) { return utf8proc_category(static_cast<utf8proc_int32_t>(c)) == UTF8PROC_CATEGORY_MN; }

char32_t to_lower(char32_t c) { return static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))); }

std::string nfd(const std::string &s) { return utf8proc_map_string(s, UTF8PROC_STABLE | UTF8PROC_DECOMPOSE); }
std::string nfc(const std::string &s) { return utf8proc_map_string(s, UTF8PROC_STABLE | UTF8PROC_COMPOSE); }
std::string nfkc(const std::string &s) { return utf8proc_map_string(s, UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT); }

char32_t byte_to_char(uint8_t b) { return byte_map().to_char[b]; }
int char_to_byte(char32_t c) {
    static const auto reverse = [] {
        std::vector<int> r(512, -1);
        for (int b = 0; b < 256; ++b) r[byte_map().to_char[b]] = b;
        return r;
    }();
    return c < reverse.size() ? reverse[c] : -1;
}

Regex::Regex(const std::string &pattern) {
    int err = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code *code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &offset, nullptr);
    if (!code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        throw std::runtime_error("regex /" + pattern + "/ does not compile at offset " + std::to_string(offset) + ": " +
                                 reinterpret_cast<char *>(msg));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional speed-up
    code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code *>(code_)); }

std::vector<std::pair<size_t, size_t>> Regex::find_all(const std::string &text) const {
    auto *code = static_cast<pcre2_code *>(code_);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(code, nullptr);
    std::vector<std::pair<size_t, size_t>> out;
    size_t start = 0;
    // PCRE2 checks the whole subject's UTF-8 on every call unless told not
    // to: once is enough (every call after the first would make a long text
    // quadratic: 3 MB took minutes).
    uint32_t options = 0;
    while (start <= text.size()) {
        const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), start, options, md, nullptr);
        if (rc < 0) break;
        options = PCRE2_NO_UTF_CHECK;
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (ov[1] == ov[0]) {  // empty match: step one character
            if (ov[0] >= text.size()) break;
            size_t len = valid_len(text, ov[0]);
            start = ov[0] + (len ? len : 1);
            continue;
        }
        out.emplace_back(ov[0], ov[1]);
        start = ov[1];
    }
    pcre2_match_data_free(md);
    return out;
}

size_t first_invalid_utf8(const std::string &s) {
    const auto *p = reinterpret_cast<const unsigned char *>(s.data());
    const size_t n = s.size();
    for (size_t i = 0; i < n;) {
        const unsigned char c = p[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
        if (len == 0 || i + len > n) return i;
        uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
        for (size_t k = 1; k < len; ++k) {
            if ((p[i + k] & 0xC0) != 0x80) return i;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        const bool overlong = (len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000);
        if (overlong || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
        i += len;
    }
    return std::string::npos;
}

}  // namespace mango::formats::unicode
