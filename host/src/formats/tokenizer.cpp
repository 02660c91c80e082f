// tokenizer.json: added tokens -> normalizer -> pre-tokenizer -> model ->
// post-processor, and the decoder chain back. Each stage is built from its
// JSON description; anything this file does not implement is refused by name.
#include "formats/tokenizer.hpp"

#include "formats/bpe_merge.hpp"
#include "util/error.hpp"

#include "unicode.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <queue>
#include <sstream>
#include <unordered_map>

namespace mango::formats {
namespace {

using nlohmann::json;
namespace uni = unicode;

using Normalizer = std::function<std::string(const std::string &)>;
// Splits pieces further; `first` is true for the text's first section.
using PreTokenizer = std::function<std::vector<std::string>(const std::vector<std::string> &, bool first)>;
using Decoder = std::function<std::vector<std::string>(std::vector<std::string>)>;
using PostProcessor = std::function<std::vector<int32_t>(std::vector<int32_t>)>;

[[noreturn]] void unsupported(const std::string &where, const std::string &what) { throw TokenizerError(where + ": unsupported " + what); }

std::string replace_all(std::string s, const std::string &from, const std::string &to) {
    if (from.empty()) return s;
    for (size_t pos = 0; (pos = s.find(from, pos)) != std::string::npos; pos += to.size()) s.replace(pos, from.size(), to);
    return s;
}

// ---- split behaviours ----------------------------------------------------------

struct Segment {
    std::string text;
    bool match;
};

std::vector<Segment> segments(const std::string &s, const std::vector<std::pair<size_t, size_t>> &matches) {
    std::vector<Segment> out;
    size_t cursor = 0;
    for (auto [b, e] : matches) {
        if (b > cursor) out.push_back({s.substr(cursor, b - cursor), false});
        out.push_back({s.substr(b, e - b), true});
        cursor = e;
    }
    if (cursor < s.size()) out.push_back({s.substr(cursor), false});
    return out;
}

std::vector<std::string> apply_behavior(std::vector<Segment> segs, const std::string &behavior, bool invert, const std::string &where) {
    if (invert)
        for (auto &s : segs) s.match = !s.match;
    std::vector<std::string> out;
    if (behavior == "Isolated" || behavior == "isolated") {
        for (auto &s : segs) out.push_back(s.text);
    } else if (behavior == "Removed" || behavior == "removed") {
        for (auto &s : segs)
            if (!s.match) out.push_back(s.text);
    } else if (behavior == "MergedWithPrevious" || behavior == "merged_with_previous") {
        for (auto &s : segs) {
            if (s.match && !out.empty())
                out.back() += s.text;
            else
                out.push_back(s.text);
        }
    } else if (behavior == "MergedWithNext" || behavior == "merged_with_next") {
        bool carry = false;
        for (auto &s : segs) {
            if (carry)
                out.back() += s.text;
            else
                out.push_back(s.text);
            carry = s.match;
        }
    } else if (behavior == "Contiguous" || behavior == "contiguous") {
        bool prev_match = false;
        for (auto &s : segs) {
            if (s.match && prev_match)
                out.back() += s.text;
            else
                out.push_back(s.text);
            prev_match = s.match;
        }
    } else {
        unsupported(where, "split behavior '" + behavior + "'");
    }
    out.erase(std::remove(out.begin(), out.end(), std::string()), out.end());
    return out;
}

// Matches of a Split pattern {"String": s} or {"Regex": r}.
std::function<std::vector<std::pair<size_t, size_t>>(const std::string &)> pattern_matcher(const json &p, const std::string &where) {
    if (p.contains("Regex")) {
        auto re = std::make_shared<uni::Regex>(p.at("Regex").get<std::string>());
        return [re](const std::string &s) { return re->find_all(s); };
    }
    if (p.contains("String")) {
        const std::string lit = p.at("String").get<std::string>();
        return [lit](const std::string &s) {
            std::vector<std::pair<size_t, size_t>> m;
            if (lit.empty()) return m;
            for (size_t pos = 0; (pos = s.find(lit, pos)) != std::string::npos; pos += lit.size()) m.emplace_back(pos, pos + lit.size());
            return m;
        };
    }
    unsupported(where, "pattern " + p.dump());
}

const char *kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ---- normalizers ---------------------------------------------------------------------

std::string bert_normalize(const std::string &s, bool clean, bool chinese, bool strip_accents, bool lowercase) {
    std::vector<char32_t> out;
    for (char32_t c : uni::decode(s)) {
        if (clean) {
            if (c == 0 || c == 0xFFFD || uni::is_control(c)) continue;
            if (uni::is_whitespace(c)) c = ' ';
        }
        if (chinese && uni::is_cjk(c)) {
            out.push_back(' ');
            out.push_back(c);
            out.push_back(' ');
            continue;
        }
        out.push_back(c);
    }
    std::string text = uni::encode(out);
    if (strip_accents) {
        std::vector<char32_t> kept;
        for (char32_t c : uni::decode(uni::nfd(text)))
            if (!uni::is_mark_nonspacing(c)) kept.push_back(c);
        text = uni::encode(kept);
    }
    if (lowercase) {
        std::vector<char32_t> low = uni::decode(text);
        for (char32_t &c : low) c = uni::to_lower(c);
        text = uni::encode(low);
    }
    return text;
}

Normalizer make_normalizer(const json &j, const std::string &where) {
    if (j.is_null()) return nullptr;
    const std::string type = j.value("type", "");
    if (type == "Sequence") {
        std::vector<Normalizer> parts;
        for (const json &n : j.at("normalizers"))
            if (auto f = make_normalizer(n, where)) parts.push_back(f);
        return [parts](const std::string &s) {
            std::string r = s;
            for (const auto &f : parts) r = f(r);
            return r;
        };
    }
    if (type == "Prepend") {
        const std::string pre = j.at("prepend");
        return [pre](const std::string &s) { return s.empty() ? s : pre + s; };
    }
    if (type == "Replace") {
        const std::string content = j.at("content");
        if (j.at("pattern").contains("String")) {
            const std::string from = j.at("pattern").at("String");
            return [from, content](const std::string &s) { return replace_all(s, from, content); };
        }
        auto match = pattern_matcher(j.at("pattern"), where);
        return [match, content](const std::string &s) {
            std::string r;
            for (const Segment &seg : segments(s, match(s))) r += seg.match ? content : seg.text;
            return r;
        };
    }
    if (type == "BertNormalizer") {
        const bool lower = j.value("lowercase", true);
        const bool strip = j.at("strip_accents").is_null() ? lower : j.at("strip_accents").get<bool>();
        const bool clean = j.value("clean_text", true), chinese = j.value("handle_chinese_chars", true);
        return [=](const std::string &s) { return bert_normalize(s, clean, chinese, strip, lower); };
    }
    if (type == "Lowercase") return [](const std::string &s) { return bert_normalize(s, false, false, false, true); };
    if (type == "StripAccents") return [](const std::string &s) { return bert_normalize(s, false, false, true, false); };
    if (type == "NFC") return [](const std::string &s) { return uni::nfc(s); };
    if (type == "NFD") return [](const std::string &s) { return uni::nfd(s); };
    if (type == "NFKC") return [](const std::string &s) { return uni::nfkc(s); };
    if (type == "Strip") {
        const bool left = j.value("strip_left", true), right = j.value("strip_right", true);
        return [=](const std::string &s) {
            std::vector<char32_t> c = uni::decode(s);
            size_t b = 0, e = c.size();
            while (left && b < e && uni::is_whitespace(c[b])) ++b;
            while (right && e > b && uni::is_whitespace(c[e - 1])) --e;
            return uni::encode(std::vector<char32_t>(c.begin() + b, c.begin() + e));
        };
    }
    unsupported(where, "normalizer '" + type + "'");
}

// ---- pre-tokenizers --------------------------------------------------------------------

std::string byte_level_map(const std::string &s) {
    std::string out;
    for (unsigned char b : s) uni::append(out, uni::byte_to_char(b));
    return out;
}

PreTokenizer make_pre_tokenizer(const json &j, const std::string &where) {
    if (j.is_null()) return nullptr;
    const std::string type = j.value("type", "");
    auto per_piece = [](auto f) {
        return [f](const std::vector<std::string> &pieces, bool first) {
            std::vector<std::string> out;
            for (size_t i = 0; i < pieces.size(); ++i)
                for (auto &p : f(pieces[i], first && i == 0)) out.push_back(std::move(p));
            return out;
        };
    };
    if (type == "Sequence") {
        std::vector<PreTokenizer> parts;
        for (const json &p : j.at("pretokenizers")) parts.push_back(make_pre_tokenizer(p, where));
        return [parts](const std::vector<std::string> &pieces, bool first) {
            std::vector<std::string> r = pieces;
            for (const auto &f : parts) r = f(r, first);
            return r;
        };
    }
    if (type == "ByteLevel") {
        const bool prefix = j.value("add_prefix_space", false), use_regex = j.value("use_regex", true);
        auto re = std::make_shared<uni::Regex>(kGpt2Pattern);
        return per_piece([=](const std::string &piece, bool) {
            std::string s = piece;
            if (prefix && (s.empty() || s[0] != ' ')) s = " " + s;
            std::vector<std::string> parts =
                use_regex ? apply_behavior(segments(s, re->find_all(s)), "Isolated", false, where) : std::vector<std::string>{s};
            for (auto &p : parts) p = byte_level_map(p);
            return parts;
        });
    }
    if (type == "Split") {
        auto match = pattern_matcher(j.at("pattern"), where);
        const std::string behavior = j.value("behavior", "Isolated");
        const bool invert = j.value("invert", false);
        return per_piece(
            [=](const std::string &piece, bool) { return apply_behavior(segments(piece, match(piece)), behavior, invert, where); });
    }
    if (type == "Metaspace") {
        const std::string rep = j.value("replacement", "\xE2\x96\x81");
        std::string scheme = j.value("prepend_scheme", "");
        if (scheme.empty()) scheme = j.value("add_prefix_space", true) ? "always" : "never";
        const bool split = j.value("split", true);
        return per_piece([=](const std::string &piece, bool first) {
            std::string s = replace_all(piece, " ", rep);
            if ((scheme == "always" || (scheme == "first" && first)) && s.rfind(rep, 0) != 0) s = rep + s;
            if (!split) return std::vector<std::string>{s};
            std::vector<std::pair<size_t, size_t>> m;
            for (size_t pos = 0; (pos = s.find(rep, pos)) != std::string::npos; pos += rep.size()) m.emplace_back(pos, pos + rep.size());
            return apply_behavior(segments(s, m), "MergedWithNext", false, where);
        });
    }
    if (type == "BertPreTokenizer" || type == "WhitespaceSplit") {
        const bool punct = type == "BertPreTokenizer";
        return per_piece([=](const std::string &piece, bool) {
            std::vector<std::string> out;
            std::vector<char32_t> cur;
            auto flush = [&] {
                if (!cur.empty()) out.push_back(uni::encode(cur));
                cur.clear();
            };
            for (char32_t c : uni::decode(piece)) {
                if (uni::is_whitespace(c))
                    flush();
                else if (punct && uni::is_punctuation(c)) {
                    flush();
                    cur.push_back(c);
                    flush();
                } else
                    cur.push_back(c);
            }
            flush();
            return out;
        });
    }
    if (type == "Whitespace") {
        auto re = std::make_shared<uni::Regex>(R"(\w+|[^\w\s]+)");
        return per_piece(
            [=](const std::string &piece, bool) { return apply_behavior(segments(piece, re->find_all(piece)), "Removed", true, where); });
    }
    if (type == "Digits") {
        const bool individual = j.value("individual_digits", false);
        auto re = std::make_shared<uni::Regex>(individual ? R"(\p{Nd})" : R"(\p{Nd}+)");
        return per_piece(
            [=](const std::string &piece, bool) { return apply_behavior(segments(piece, re->find_all(piece)), "Isolated", false, where); });
    }
    unsupported(where, "pre_tokenizer '" + type + "'");
}

// ---- models ----------------------------------------------------------------------------------

// A token id from the file: an integer in [0, 2^24), else a clear error.
int32_t token_id(const json &v, const std::string &what) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= (int64_t(1) << 24))
        throw TokenizerError(what + " has id " + v.dump() + "; ids must be integers in [0, 16777216)");
    return static_cast<int32_t>(v.get<int64_t>());
}

struct Vocab {
    std::unordered_map<std::string, int32_t> ids;
    std::vector<std::string> tokens;  // id -> token
    void add(const std::string &tok, int32_t id) {
        ids[tok] = id;
        if (static_cast<size_t>(id) >= tokens.size()) tokens.resize(static_cast<size_t>(id) + 1);
        tokens[static_cast<size_t>(id)] = tok;
    }
    std::optional<int32_t> find(const std::string &t) const {
        auto it = ids.find(t);
        return it == ids.end() ? std::nullopt : std::optional<int32_t>(it->second);
    }
};

class Model {
public:
    virtual ~Model() = default;
    virtual void tokenize(const std::string &word, std::vector<int32_t> &out) const = 0;
};

class Bpe : public Model {
public:
    Bpe(const json &j, Vocab &vocab, const std::string &where) : vocab_(vocab) {
        if (!j.contains("vocab") || !j.at("vocab").is_object()) throw TokenizerError(where + ": BPE model needs a \"vocab\" object");
        if (!j.contains("merges") || !j.at("merges").is_array()) throw TokenizerError(where + ": BPE model needs a \"merges\" array");
        for (auto &[tok, id] : j.at("vocab").items()) vocab.add(tok, token_id(id, where + ": token '" + tok + "'"));
        prefix_ = j.at("continuing_subword_prefix").is_string() ? j.at("continuing_subword_prefix").get<std::string>() : "";
        suffix_ = j.at("end_of_word_suffix").is_string() ? j.at("end_of_word_suffix").get<std::string>() : "";
        if (j.at("unk_token").is_string()) unk_ = j.at("unk_token").get<std::string>();
        byte_fallback_ = j.value("byte_fallback", false);
        fuse_unk_ = j.value("fuse_unk", false);
        ignore_merges_ = j.value("ignore_merges", false);
        if (!j.at("dropout").is_null() && j.at("dropout").get<double>() > 0) unsupported(where, "BPE dropout");
        int rank = 0;
        for (const json &m : j.at("merges")) {
            std::optional<BpeMerge> parsed = parse_bpe_merge(m, prefix_);
            if (!parsed) throw TokenizerError(where + ": merge " + clip(m.dump(), 120) + " is neither 'a b' nor [a, b]");
            auto &[a, b, merged] = *parsed;
            // As Hugging Face tokenizers: every part of a merge is in the vocabulary.
            for (const std::string *t : {&a, &b, &merged})
                if (!vocab.find(*t))
                    throw TokenizerError(where + ": merge " + std::to_string(rank) + " ('" + clip(a, 60) + "' + '" + clip(b, 60) +
                                         "') uses '" + clip(*t, 60) + "', which is not in the vocabulary");
            merges_.emplace(a + '\0' + b, std::make_pair(rank++, std::move(merged)));
        }
    }

    void tokenize(const std::string &word, std::vector<int32_t> &out) const override {
        {
            std::lock_guard<std::mutex> lock(cache_mu_);
            auto it = cache_.find(word);
            if (it != cache_.end()) {
                out.insert(out.end(), it->second.begin(), it->second.end());
                return;
            }
        }
        std::vector<int32_t> ids = compute(word);
        out.insert(out.end(), ids.begin(), ids.end());
        std::lock_guard<std::mutex> lock(cache_mu_);
        if (cache_.size() > 100000) cache_.clear();
        cache_.emplace(word, std::move(ids));
    }

private:
    // Applies merges lowest rank first (leftmost among equals) with a linked
    // list and a priority queue: O(n log n) for a word of n symbols.
    void merge(std::vector<std::string> &sym) const {
        if (sym.size() < 2) return;
        const int n = static_cast<int>(sym.size());
        std::vector<int> prev(n), next(n);
        std::vector<bool> alive(n, true);
        for (int i = 0; i < n; ++i) {
            prev[i] = i - 1;
            next[i] = i + 1 < n ? i + 1 : -1;
        }
        using Entry = std::pair<int, int>;  // (rank, left index)
        std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> queue;
        auto rank_of = [&](int l, int r) {
            auto it = merges_.find(sym[l] + '\0' + sym[r]);
            return it == merges_.end() ? -1 : it->second.first;
        };
        auto push = [&](int l) {
            if (l < 0 || next[l] < 0) return;
            const int rank = rank_of(l, next[l]);
            if (rank >= 0) queue.push({rank, l});
        };
        for (int i = 0; i + 1 < n; ++i) push(i);
        while (!queue.empty()) {
            const auto [rank, l] = queue.top();
            queue.pop();
            const int r = alive[l] ? next[l] : -1;
            if (r < 0 || rank_of(l, r) != rank) continue;  // stale entry
            sym[l] = merges_.find(sym[l] + '\0' + sym[r])->second.second;
            alive[r] = false;
            next[l] = next[r];
            if (next[r] >= 0) prev[next[r]] = l;
            push(prev[l]);
            push(l);
        }
        std::vector<std::string> out;
        for (int i = 0; i >= 0; i = next[i]) out.push_back(std::move(sym[i]));
        sym.swap(out);
    }

    std::vector<int32_t> compute(const std::string &word) const {
        std::vector<int32_t> ids;
        if (ignore_merges_)
            if (auto id = vocab_.find(word)) return {*id};
        std::vector<std::string> sym = uni::chars(word);
        for (size_t i = 0; i < sym.size(); ++i) {
            if (i > 0) sym[i] = prefix_ + sym[i];
            if (i + 1 == sym.size()) sym[i] += suffix_;
        }
        merge(sym);
        bool last_unk = false;
        for (const std::string &s : sym) {
            if (auto id = vocab_.find(s)) {
                ids.push_back(*id);
                last_unk = false;
                continue;
            }
            if (byte_fallback_) {
                std::vector<int32_t> bytes;
                char name[8];
                for (unsigned char b : s) {
                    std::snprintf(name, sizeof name, "<0x%02X>", b);
                    if (auto id = vocab_.find(name))
                        bytes.push_back(*id);
                    else
                        break;
                }
                if (bytes.size() == s.size()) {
                    ids.insert(ids.end(), bytes.begin(), bytes.end());
                    last_unk = false;
                    continue;
                }
            }
            if (unk_.empty()) continue;  // no unk token: the symbol is dropped
            if (fuse_unk_ && last_unk) continue;
            if (auto id = vocab_.find(unk_)) ids.push_back(*id);
            last_unk = true;
        }
        return ids;
    }

    const Vocab &vocab_;
    std::unordered_map<std::string, std::pair<int, std::string>> merges_;
    std::string prefix_, suffix_, unk_;
    bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;
    mutable std::mutex cache_mu_;
    mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

class WordPiece : public Model {
public:
    WordPiece(const json &j, Vocab &vocab, const std::string &where) : vocab_(vocab) {
        if (!j.contains("vocab") || !j.at("vocab").is_object()) throw TokenizerError(where + ": WordPiece model needs a \"vocab\" object");
        for (auto &[tok, id] : j.at("vocab").items()) vocab.add(tok, token_id(id, where + ": token '" + tok + "'"));
        unk_ = j.value("unk_token", "[UNK]");
        prefix_ = j.value("continuing_subword_prefix", "##");
        max_chars_ = j.value("max_input_chars_per_word", 100);
        if (!vocab.find(unk_)) throw TokenizerError(where + ": WordPiece unk_token '" + unk_ + "' is not in the vocabulary");
    }
    void tokenize(const std::string &word, std::vector<int32_t> &out) const override {
        const std::vector<std::string> ch = uni::chars(word);
        if (ch.size() > max_chars_) {
            out.push_back(*vocab_.find(unk_));
            return;
        }
        std::vector<int32_t> ids;
        size_t start = 0;
        while (start < ch.size()) {
            size_t end = ch.size();
            std::optional<int32_t> found;
            while (start < end) {
                std::string sub;
                for (size_t k = start; k < end; ++k) sub += ch[k];
                if (start > 0) sub = prefix_ + sub;
                if ((found = vocab_.find(sub))) break;
                --end;
            }
            if (!found) {
                out.push_back(*vocab_.find(unk_));
                return;
            }
            ids.push_back(*found);
            start = end;
        }
        out.insert(out.end(), ids.begin(), ids.end());
    }

private:
    const Vocab &vocab_;
    std::string unk_, prefix_;
    size_t max_chars_;
};

// ---- post-processors and decoders -----------------------------------------------------------

PostProcessor make_post_processor(const json &j, const std::string &where) {
    if (j.is_null()) return nullptr;
    const std::string type = j.value("type", "");
    if (type == "ByteLevel") return nullptr;
    if (type == "Sequence") {
        std::vector<PostProcessor> parts;
        for (const json &p : j.at("processors"))
            if (auto f = make_post_processor(p, where)) parts.push_back(f);
        return [parts](std::vector<int32_t> ids) {
            for (const auto &f : parts) ids = f(std::move(ids));
            return ids;
        };
    }
    if (type == "TemplateProcessing") {
        std::vector<std::vector<int32_t>> before, after;  // special ids around $A
        bool seen_a = false;
        for (const json &item : j.at("single")) {
            if (item.contains("Sequence")) {
                if (item.at("Sequence").value("id", "A") != "A") unsupported(where, "template sequence other than $A in 'single'");
                seen_a = true;
            } else if (item.contains("SpecialToken")) {
                const std::string name = item.at("SpecialToken").at("id");
                if (!j.at("special_tokens").contains(name))
                    throw TokenizerError(where + ": template names unknown special token '" + name + "'");
                std::vector<int32_t> ids;
                for (const json &id : j.at("special_tokens").at(name).at("ids"))
                    ids.push_back(token_id(id, where + ": special token '" + name + "'"));
                (seen_a ? after : before).push_back(ids);
            }
        }
        return [before, after](std::vector<int32_t> ids) {
            std::vector<int32_t> out;
            for (const auto &v : before) out.insert(out.end(), v.begin(), v.end());
            out.insert(out.end(), ids.begin(), ids.end());
            for (const auto &v : after) out.insert(out.end(), v.begin(), v.end());
            return out;
        };
    }
    if (type == "BertProcessing" || type == "RobertaProcessing") {
        // "cls": ["[CLS]", 101]: the token and its id.
        auto pair_id = [&](const char *key) {
            const json &p = j.at(key);
            if (!p.is_array() || p.size() != 2)
                throw TokenizerError(where + ": '" + key + "' must be [token, id], found " + clip(p.dump()));
            return token_id(p[1], where + ": " + key);
        };
        const int32_t cls = pair_id("cls"), sep = pair_id("sep");
        return [cls, sep](std::vector<int32_t> ids) {
            ids.insert(ids.begin(), cls);
            ids.push_back(sep);
            return ids;
        };
    }
    unsupported(where, "post_processor '" + type + "'");
}

std::string wordpiece_cleanup(std::string s) {
    for (auto [from, to] : std::vector<std::pair<const char *, const char *>>{{" .", "."},
                                                                              {" ?", "?"},
                                                                              {" !", "!"},
                                                                              {" ,", ","},
                                                                              {" ' ", "'"},
                                                                              {" n't", "n't"},
                                                                              {" 'm", "'m"},
                                                                              {" do not", " don't"},
                                                                              {" 's", "'s"},
                                                                              {" 've", "'ve"},
                                                                              {" 're", "'re"}})
        s = replace_all(s, from, to);
    return s;
}

Decoder make_decoder(const json &j, const std::string &where) {
    if (j.is_null()) return nullptr;
    const std::string type = j.value("type", "");
    if (type == "Sequence") {
        std::vector<Decoder> parts;
        for (const json &d : j.at("decoders")) parts.push_back(make_decoder(d, where));
        return [parts](std::vector<std::string> t) {
            for (const auto &f : parts) t = f(std::move(t));
            return t;
        };
    }
    if (type == "ByteLevel") {
        return [](std::vector<std::string> tokens) {
            std::string bytes;
            for (const std::string &t : tokens) {
                std::string mapped;
                bool ok = true;
                for (char32_t c : uni::decode(t)) {
                    const int b = uni::char_to_byte(c);
                    if (b < 0) {
                        ok = false;
                        break;
                    }
                    mapped += static_cast<char>(b);
                }
                bytes += ok ? mapped : t;
            }
            return std::vector<std::string>{uni::from_bytes_lossy(bytes)};
        };
    }
    if (type == "Replace") {
        if (!j.at("pattern").contains("String")) unsupported(where, "Replace decoder with a regex");
        const std::string from = j.at("pattern").at("String"), to = j.at("content");
        return [from, to](std::vector<std::string> t) {
            for (auto &s : t) s = replace_all(s, from, to);
            return t;
        };
    }
    if (type == "ByteFallback") {
        return [](std::vector<std::string> tokens) {
            std::vector<std::string> out;
            std::string pending;  // bytes of consecutive <0xXX> tokens
            size_t pending_count = 0;
            auto flush = [&] {
                if (!pending_count) return;
                if (uni::from_bytes_lossy(pending) == pending)  // valid UTF-8
                    out.push_back(pending);
                else
                    for (size_t i = 0; i < pending_count; ++i) out.push_back("\xEF\xBF\xBD");
                pending.clear();
                pending_count = 0;
            };
            for (const std::string &t : tokens) {
                unsigned v = 0;
                if (t.size() == 6 && t.rfind("<0x", 0) == 0 && t[5] == '>' && std::sscanf(t.c_str() + 3, "%2X", &v) == 1) {
                    pending += static_cast<char>(v);
                    ++pending_count;
                } else {
                    flush();
                    out.push_back(t);
                }
            }
            flush();
            return out;
        };
    }
    if (type == "Fuse") {
        return [](std::vector<std::string> t) {
            std::string all;
            for (auto &s : t) all += s;
            return std::vector<std::string>{all};
        };
    }
    if (type == "Strip") {
        const std::string content = j.at("content");
        const size_t start = j.value("start", 0), stop = j.value("stop", 0);
        return [=](std::vector<std::string> t) {
            for (auto &s : t) {
                for (size_t i = 0; i < start && s.rfind(content, 0) == 0; ++i) s.erase(0, content.size());
                for (size_t i = 0;
                     i < stop && s.size() >= content.size() && s.compare(s.size() - content.size(), content.size(), content) == 0; ++i)
                    s.erase(s.size() - content.size());
            }
            return t;
        };
    }
    if (type == "WordPiece") {
        const std::string prefix = j.value("prefix", "##");
        const bool cleanup = j.value("cleanup", true);
        return [=](std::vector<std::string> t) {
            for (size_t i = 0; i < t.size(); ++i) {
                if (i != 0) {
                    if (t[i].rfind(prefix, 0) == 0)
                        t[i].erase(0, prefix.size());
                    else
                        t[i] = " " + t[i];
                }
                if (cleanup) t[i] = wordpiece_cleanup(t[i]);
            }
            return t;
        };
    }
    if (type == "Metaspace") {
        const std::string rep = j.value("replacement", "\xE2\x96\x81");
        std::string scheme = j.value("prepend_scheme", "");
        if (scheme.empty()) scheme = j.value("add_prefix_space", true) ? "always" : "never";
        return [=](std::vector<std::string> t) {
            for (size_t i = 0; i < t.size(); ++i) {
                t[i] = replace_all(t[i], rep, " ");
                if (i == 0 && scheme != "never" && !t[i].empty() && t[i][0] == ' ') t[i].erase(0, 1);
            }
            return t;
        };
    }
    unsupported(where, "decoder '" + type + "'");
}

struct AddedToken {
    std::string content;
    int32_t id;
    bool special, lstrip, rstrip;
};

}  // namespace

struct Tokenizer::Impl {
    std::string where, model_type;
    Vocab vocab;
    std::unique_ptr<Model> model;
    Normalizer normalizer;
    PreTokenizer pre_tokenizer;
    PostProcessor post_processor;
    Decoder decoder;
    std::vector<AddedToken> added;                          // longest first
    std::map<unsigned char, std::vector<size_t>> by_first;  // first byte -> added indices
    std::vector<bool> special;                              // id -> special added token

    // Next added-token match at or after `from`: (pos, index) or npos.
    std::pair<size_t, size_t> next_added(const std::string &text, size_t from) const {
        for (size_t pos = from; pos < text.size(); ++pos) {
            auto it = by_first.find(static_cast<unsigned char>(text[pos]));
            if (it == by_first.end()) continue;
            for (size_t k : it->second)
                if (text.compare(pos, added[k].content.size(), added[k].content) == 0) return {pos, k};
        }
        return {std::string::npos, 0};
    }

    void encode_section(const std::string &section, bool first, std::vector<int32_t> &ids) const {
        if (section.empty()) return;
        std::string text = normalizer ? normalizer(section) : section;
        std::vector<std::string> pieces = pre_tokenizer ? pre_tokenizer({text}, first) : std::vector<std::string>{text};
        for (const std::string &p : pieces)
            if (!p.empty()) model->tokenize(p, ids);
    }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer &&) noexcept = default;
Tokenizer &Tokenizer::operator=(Tokenizer &&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_file(const std::string &path) {
    std::string file = path;
    if (std::filesystem::is_directory(path)) file = (std::filesystem::path(path) / "tokenizer.json").string();
    std::ifstream in(file, std::ios::binary);
    if (!in) throw TokenizerError(file + ": cannot read (expected a tokenizer.json)");
    std::stringstream ss;
    ss << in.rdbuf();
    return from_json(ss.str(), file);
}

Tokenizer Tokenizer::from_json(const std::string &text, const std::string &where) {
    json j;
    try {
        j = json::parse(text);
    } catch (const std::exception &e) {
        throw TokenizerError(where + ": not valid JSON: " + e.what());
    }
    auto impl = std::make_unique<Impl>();
    impl->where = where;
    try {
        if (!j.is_object() || !j.contains("model") || !j.at("model").is_object()) throw TokenizerError(where + ": no \"model\" object");
        const json &m = j.at("model");
        impl->model_type = m.value("type", "");
        if (impl->model_type.empty() && m.contains("merges")) impl->model_type = "BPE";
        if (impl->model_type == "BPE")
            impl->model = std::make_unique<Bpe>(m, impl->vocab, where);
        else if (impl->model_type == "WordPiece")
            impl->model = std::make_unique<WordPiece>(m, impl->vocab, where);
        else
            unsupported(where, "model type '" + impl->model_type + "' (supported: BPE, WordPiece)");
        impl->normalizer = make_normalizer(j.value("normalizer", json()), where);
        impl->pre_tokenizer = make_pre_tokenizer(j.value("pre_tokenizer", json()), where);
        impl->post_processor = make_post_processor(j.value("post_processor", json()), where);
        impl->decoder = make_decoder(j.value("decoder", json()), where);
        for (const json &a : j.value("added_tokens", json::array())) {
            AddedToken t{a.at("content"), token_id(a.at("id"), where + ": added token"), a.value("special", false),
                         a.value("lstrip", false), a.value("rstrip", false)};
            if (t.content.empty()) continue;
            impl->vocab.add(t.content, t.id);
            impl->added.push_back(t);
        }
    } catch (const json::exception &e) {
        throw TokenizerError(where + ": malformed tokenizer.json: " + e.what());
    } catch (const std::runtime_error &e) {
        const std::string msg = e.what();
        throw TokenizerError(msg.rfind(where, 0) == 0 ? msg : where + ": " + msg);
    }
    std::stable_sort(impl->added.begin(), impl->added.end(),
                     [](const AddedToken &a, const AddedToken &b) { return a.content.size() > b.content.size(); });
    impl->special.assign(impl->vocab.tokens.size(), false);
    for (size_t k = 0; k < impl->added.size(); ++k) {
        impl->by_first[static_cast<unsigned char>(impl->added[k].content[0])].push_back(k);
        if (impl->added[k].special) impl->special[static_cast<size_t>(impl->added[k].id)] = true;
    }
    return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(const std::string &raw, bool add_special_tokens) const {
    const std::string text = unicode::from_bytes_lossy(raw);
    std::vector<int32_t> ids;
    size_t cursor = 0;
    bool first = true;
    while (cursor <= text.size()) {
        auto [pos, k] = impl_->next_added(text, cursor);
        size_t end = pos == std::string::npos ? text.size() : pos;
        size_t resume = pos == std::string::npos ? text.size() + 1 : pos + impl_->added[k].content.size();
        if (pos != std::string::npos) {
            const AddedToken &t = impl_->added[k];
            if (t.lstrip)
                while (end > cursor && std::isspace(static_cast<unsigned char>(text[end - 1]))) --end;
            if (t.rstrip)
                while (resume < text.size() && std::isspace(static_cast<unsigned char>(text[resume]))) ++resume;
        }
        impl_->encode_section(text.substr(cursor, end - cursor), first, ids);
        if (pos == std::string::npos) break;
        ids.push_back(impl_->added[k].id);
        first = false;
        cursor = resume;
    }
    if (add_special_tokens && impl_->post_processor) ids = impl_->post_processor(std::move(ids));
    return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t> &ids, bool skip_special) const {
    std::vector<std::string> tokens;
    for (int32_t id : ids) {
        if (skip_special && is_special(id)) continue;
        if (id < 0 || static_cast<size_t>(id) >= impl_->vocab.tokens.size())
            throw TokenizerError(impl_->where + ": id " + std::to_string(id) + " is outside the vocabulary of " +
                                 std::to_string(impl_->vocab.tokens.size()));
        tokens.push_back(impl_->vocab.tokens[static_cast<size_t>(id)]);
    }
    if (impl_->decoder)
        tokens = impl_->decoder(std::move(tokens));
    else if (!tokens.empty()) {
        std::string joined = tokens[0];
        for (size_t i = 1; i < tokens.size(); ++i) joined += " " + tokens[i];
        return joined;
    }
    std::string out;
    for (const auto &t : tokens) out += t;
    return out;
}

std::optional<int32_t> Tokenizer::token_to_id(const std::string &token) const { return impl_->vocab.find(token); }
std::string Tokenizer::id_to_token(int32_t id) const {
    return id >= 0 && static_cast<size_t>(id) < impl_->vocab.tokens.size() ? impl_->vocab.tokens[static_cast<size_t>(id)] : "";
}
size_t Tokenizer::vocab_size() const { return impl_->vocab.tokens.size(); }
bool Tokenizer::is_special(int32_t id) const {
    return id >= 0 && static_cast<size_t>(id) < impl_->special.size() && impl_->special[static_cast<size_t>(id)];
}
std::string Tokenizer::model_type() const { return impl_->model_type; }

}  // namespace mango::formats
