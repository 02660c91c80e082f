// Tokenizers against Hugging Face tokenizers' own ids and decodes
// (tests/golden/tokenizers, made by tools/golden/make_fixtures.py).
#include "formats/tokenizer.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
using mango::formats::Tokenizer;
using mango::formats::TokenizerError;
using nlohmann::json;

namespace {
const fs::path kDir = fs::path(MANGO_SOURCE_DIR) / "tests/golden/tokenizers";
const json &golden() {
    static const json j = json::parse(std::ifstream(kDir / "ids.json"));
    return j;
}
}  // namespace

class Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Golden, IdsAndDecodesMatchHuggingFace) {
    const std::string name = GetParam();
    const Tokenizer tok = Tokenizer::from_file((kDir / name).string());
    const json &texts = golden()["texts"];
    const json &rows = golden()["tokenizers"][name];
    ASSERT_EQ(texts.size(), rows.size());
    for (size_t i = 0; i < texts.size(); ++i) {
        const std::string text = texts[i];
        const auto plain = rows[i]["ids"].get<std::vector<int32_t>>();
        const auto special = rows[i]["ids_with_special"].get<std::vector<int32_t>>();
        EXPECT_EQ(tok.encode(text, false), plain) << name << " text #" << i << ": " << text;
        EXPECT_EQ(tok.encode(text, true), special) << name << " text #" << i << ": " << text;
        EXPECT_EQ(tok.decode(plain), rows[i]["decoded"].get<std::string>()) << name << " text #" << i;
        EXPECT_EQ(tok.decode(special, true), rows[i]["decoded_with_special_skipped"].get<std::string>()) << name << " text #" << i;
    }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, Golden, ::testing::Values("gpt2", "llama3_style", "sp_bpe", "wordpiece"));

TEST(Tokenizer, ByteLevelRoundTripIsLossless) {
    const Tokenizer tok = Tokenizer::from_file((kDir / "gpt2").string());
    for (const std::string text : {"any bytes \x01\x7f at all", "tabs\t\tand  spaces", "日本語 🤗", ""})
        EXPECT_EQ(tok.decode(tok.encode(text, false)), text);
}

TEST(Tokenizer, SpecialTokensAndVocab) {
    const Tokenizer tok = Tokenizer::from_file((kDir / "gpt2").string());
    EXPECT_EQ(tok.token_to_id("<|endoftext|>"), 50256);
    EXPECT_TRUE(tok.is_special(50256));
    EXPECT_EQ(tok.vocab_size(), 50257u);
    EXPECT_EQ(tok.model_type(), "BPE");
    EXPECT_THROW(tok.decode({60000}), TokenizerError);
}

TEST(Tokenizer, BadFilesAreRefusedByName) {
    auto error = [](const std::string &text) {
        try {
            Tokenizer::from_json(text, "x/tokenizer.json");
        } catch (const TokenizerError &e) {
            return std::string(e.what());
        }
        return std::string();
    };
    EXPECT_NE(error("{").find("x/tokenizer.json: not valid JSON"), std::string::npos);
    EXPECT_EQ(error("{}"), "x/tokenizer.json: no \"model\" object");
    EXPECT_EQ(error(R"({"model": {"type": "Unigram", "vocab": []}})"),
              "x/tokenizer.json: unsupported model type 'Unigram' (supported: BPE, WordPiece)");
    EXPECT_NE(error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null}, "normalizer": {"type": "Precompiled"}})")
                  .find("unsupported normalizer 'Precompiled'"),
              std::string::npos);
    EXPECT_NE(error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [1]}})").find("malformed"), std::string::npos);
    const std::string bpe = R"({"model": {"type": "BPE", "vocab": {"a": 0, "aa": 1}, "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "merges": )";
    EXPECT_EQ(error(bpe + R"([["a", 1]]}})"), "x/tokenizer.json: merge [\"a\",1] is neither 'a b' nor [a, b]");
    EXPECT_EQ(error(bpe + R"(["aa"]}})"), "x/tokenizer.json: merge \"aa\" is neither 'a b' nor [a, b]");
    EXPECT_EQ(error(bpe + R"(["a a", ["a", "b"]]}})"), "x/tokenizer.json: merge 1 ('a' + 'b') uses 'b', which is not in the vocabulary");
    EXPECT_THROW(Tokenizer::from_file("/nonexistent/dir"), TokenizerError);
}
