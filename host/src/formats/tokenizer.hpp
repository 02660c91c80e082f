// Tokenizers from Hugging Face `tokenizer.json`: byte-level BPE (GPT-2,
// LLaMA-3, Qwen2), SentencePiece-style BPE with byte fallback (LLaMA-2,
// Mistral), WordPiece (BERT); added/special tokens, post-processors, decoding.
// Ids equal Hugging Face tokenizers' ids on the golden set (tests/golden).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace mango::formats {

struct TokenizerError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class Tokenizer {
public:
    static Tokenizer from_file(const std::string &path);  // tokenizer.json, or a folder holding it
    static Tokenizer from_json(const std::string &text, const std::string &where);
    Tokenizer(Tokenizer &&) noexcept;
    Tokenizer &operator=(Tokenizer &&) noexcept;
    ~Tokenizer();

    // Text -> ids. add_special_tokens applies the post-processor (BOS, CLS/SEP).
    std::vector<int32_t> encode(const std::string &text, bool add_special_tokens = true) const;
    // Ids -> text; skip_special drops added tokens marked special.
    std::string decode(const std::vector<int32_t> &ids, bool skip_special = false) const;

    std::optional<int32_t> token_to_id(const std::string &token) const;
    std::string id_to_token(int32_t id) const;  // "" when unknown
    size_t vocab_size() const;                  // largest id + 1
    bool is_special(int32_t id) const;
    std::string model_type() const;  // "BPE", "WordPiece"

private:
    struct Impl;
    explicit Tokenizer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace mango::formats
