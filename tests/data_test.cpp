// Training data: text and JSONL documents, packing, split, and errors that
// name the file and line.
#include "train/data.hpp"
#include "abi/host_api.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
using namespace mango;

namespace {
const formats::Tokenizer &gpt2() {
    static const auto tok = formats::Tokenizer::from_file((fs::path(MANGO_SOURCE_DIR) / "tests/golden/tokenizers/gpt2").string());
    return tok;
}
std::string write(const std::string &name, const std::string &text) {
    const fs::path p = fs::path(MANGO_TEST_TMP) / "data" / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
    return p.string();
}
}  // namespace

TEST(Data, TextBlocksJsonlAndPacking) {
    DataOptions o;
    auto docs = read_documents(write("a.txt", "first doc\nstill first\n\n\nsecond doc\n"), o);
    ASSERT_EQ(docs.size(), 2u);
    EXPECT_EQ(docs[0], "first doc\nstill first");
    o.line_documents = true;
    EXPECT_EQ(read_documents(write("b.txt", "one\n\ntwo\nthree\n"), o).size(), 3u);
    auto j = read_documents(write("c.jsonl", "{\"text\": \"hello there\"}\n\n{\"text\": \"general kenobi\"}\n"), o);
    EXPECT_EQ(j, (std::vector<std::string>{"hello there", "general kenobi"}));

    std::vector<std::string> many(50, "The quick brown fox jumps over the lazy dog.");
    o.seq_len = 8;
    o.eos_id = 50256;
    o.validation_fraction = 0.2;
    PackedData p = pack(gpt2(), many, o, "test");
    const int64_t per_doc = static_cast<int64_t>(gpt2().encode(many[0], false).size()) + 1;
    EXPECT_EQ(p.tokens, 50 * per_doc);
    EXPECT_EQ(p.train.size(0) + p.validation.size(0), p.tokens / 8);
    EXPECT_EQ(p.validation.size(0), (p.tokens / 8) / 5);
    EXPECT_EQ(p.train[0][0].item<int64_t>(), gpt2().encode(many[0], false)[0]);
    EXPECT_EQ(p.train.flatten()[per_doc - 1].item<int64_t>(), 50256);  // EOS between documents
}

TEST(Data, BadFilesAreNamed) {
    DataOptions o;
    auto error = [&](const std::string &path) {
        try {
            read_documents(path, o);
        } catch (const HostError &e) {
            return std::string(e.what());
        }
        return std::string();
    };
    EXPECT_NE(error("/nonexistent/x.txt").find("cannot read"), std::string::npos);
    const std::string empty = write("empty.txt", "\n\n  \n");
    EXPECT_EQ(error(empty), empty + ": the data file holds no text");
    const std::string bad = write("bad.jsonl", "{\"text\": \"ok\"}\n{\"txt\": 1}\n");
    EXPECT_EQ(error(bad), bad + ":2: expected an object with a string \"text\" field");
    o.seq_len = 1000;
    EXPECT_THROW(pack(gpt2(), {"short"}, o, "x"), HostError);
}
