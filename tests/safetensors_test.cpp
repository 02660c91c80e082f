// Safetensors against files written by the reference `safetensors` library
// (tests/golden), every validation rule of the format, and our writer.
#include "formats/safetensors.hpp"
#include "formats/atomic_file.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <chrono>
#include <fstream>
#include <thread>

namespace fs = std::filesystem;
using namespace mango::formats;
using nlohmann::json;

namespace {

const fs::path kGolden = fs::path(MANGO_SOURCE_DIR) / "tests/golden/safetensors";

fs::path tmp_dir(const std::string &name) {
    fs::path d = fs::path(MANGO_TEST_TMP) / "safetensors" / name;
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

// A file with the given header text (no padding) and data bytes.
std::string make_file(const std::string &name, const std::string &header, size_t data_bytes, int64_t claimed_len = -1) {
    const fs::path p = fs::path(MANGO_TEST_TMP) / "safetensors" / "bad";
    fs::create_directories(p);
    const std::string path = (p / name).string();
    std::ofstream out(path, std::ios::binary);
    const uint64_t n = claimed_len >= 0 ? uint64_t(claimed_len) : header.size();
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
    out << header << std::string(data_bytes, '\0');
    return path;
}

std::string open_error(const std::string &path) {
    try {
        SafetensorsFile::open(path);
    } catch (const FormatError &e) {
        return e.what();
    }
    return "";
}

at::Tensor expected_values(const json &e) {
    std::vector<double> v = e["values"].get<std::vector<double>>();
    return at::tensor(v, at::kDouble).reshape(e["shape"].get<std::vector<int64_t>>());
}

}  // namespace

TEST(Safetensors, ReadsEveryDtypeWrittenByTheReference) {
    const json expected = json::parse(std::ifstream(kGolden / "expected.json"));
    int files = 0;
    for (auto &[fname, spec] : expected.items()) {
        if (fname == "sharded") continue;
        auto f = SafetensorsFile::open((kGolden / fname).string());
        using Meta = std::map<std::string, std::string>;
        EXPECT_EQ(f->header().metadata, spec["metadata"].get<Meta>()) << fname;
        ASSERT_EQ(f->header().tensors.size(), spec["tensors"].size());
        for (auto &[name, t] : spec["tensors"].items()) {
            at::Tensor got = f->tensor(name);
            EXPECT_EQ(got.sizes().vec(), t["shape"].get<std::vector<int64_t>>()) << fname << " " << name;
            EXPECT_TRUE(at::equal(got.to(at::kDouble), expected_values(t))) << fname << " " << name;
        }
        ++files;
    }
    EXPECT_EQ(files, 12);
}

TEST(Safetensors, ReadsShardedCheckpointThroughIndex) {
    const json expected = json::parse(std::ifstream(kGolden / "expected.json"))["sharded"];
    Checkpoint c = Checkpoint::open((kGolden / "sharded").string());
    EXPECT_EQ(c.files().size(), 2u);
    EXPECT_EQ(c.names().size(), expected.size());
    for (auto &[name, t] : expected.items()) EXPECT_TRUE(at::equal(c.tensor(name).to(at::kDouble), expected_values(t))) << name;
    try {
        c.tensor("model.layers.9.w");
        FAIL();
    } catch (const FormatError &e) {
        EXPECT_NE(std::string(e.what()).find("no tensor 'model.layers.9.w'"), std::string::npos);
    }
}

TEST(Safetensors, ZeroCopyTensorsNeverWriteTheFile) {
    const fs::path d = tmp_dir("cow");
    write_safetensors((d / "a.safetensors").string(), {{"w", at::arange(8, at::kFloat)}});
    {
        auto f = SafetensorsFile::open((d / "a.safetensors").string());
        at::Tensor t = f->tensor("w");
        t.mul_(100);  // copy-on-write mapping
        EXPECT_EQ(t[3].item<float>(), 300.0f);
    }
    EXPECT_TRUE(at::equal(SafetensorsFile::open((d / "a.safetensors").string())->tensor("w"), at::arange(8, at::kFloat)));
}

struct BadCase {
    const char *name, *header;
    size_t data;
    int64_t claimed;
    const char *message;
};

class BadHeader : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadHeader, RefusedWithFileAndReason) {
    const BadCase &c = GetParam();
    const std::string path = make_file(std::string(c.name) + ".safetensors", c.header, c.data, c.claimed);
    const std::string err = open_error(path);
    EXPECT_EQ(err.rfind(path + ": ", 0), 0u) << err;
    EXPECT_NE(err.find(c.message), std::string::npos) << err;
}

INSTANTIATE_TEST_SUITE_P(
    Spec, BadHeader,
    ::testing::Values(
        BadCase{"length_past_end", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4, 4096, "runs past the end"},
        BadCase{"length_huge", "{}", 0, 200000000, "exceeds the 100 MB limit"},
        BadCase{"not_json", "{not json}", 0, -1, "header is not valid JSON"},
        BadCase{"not_object", "[1, 2]", 0, -1, "does not start with '{'"},
        BadCase{"unknown_dtype", R"({"a":{"dtype":"F9","shape":[1],"data_offsets":[0,4]}})", 4, -1, "tensor 'a' has unknown dtype 'F9'"},
        BadCase{"size_mismatch", R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", 12, -1,
                "tensor 'a': shape [2,2] x F32 needs 16 bytes, data_offsets span 12"},
        BadCase{"out_of_bounds", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4, -1,
                "tensor 'a' data ends at 8, past the data buffer of 4 bytes"},
        BadCase{"overlap", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                8, -1, "overlaps"},
        BadCase{"hole", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                12, -1, "hole in the data buffer before tensor 'b'"},
        BadCase{"trailing", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 10, -1, "6 trailing bytes"},
        BadCase{"duplicate",
                R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4, -1,
                "tensor 'a' appears twice"},
        BadCase{"negative_dim", R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4, -1, "not a non-negative integer"},
        BadCase{"reversed", R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", 4, -1, "end 0 before begin 4"},
        BadCase{"bad_metadata", R"({"__metadata__":{"k":1}})", 0, -1, "__metadata__ value 'k' is not a string"},
        BadCase{"extra_field", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", 4, -1, "unknown field 'x'"}),
    [](const auto &info) { return std::string(info.param.name); });

TEST(Safetensors, TruncatedFile) {
    const fs::path d = tmp_dir("truncated");
    std::ofstream(d / "t.safetensors") << "abc";
    EXPECT_NE(open_error((d / "t.safetensors").string()).find("too short"), std::string::npos);
}

TEST(Safetensors, WriterRoundTripsEveryDtype) {
    const fs::path d = tmp_dir("roundtrip");
    NamedTensors all;
    for (const char *fname : {"dtype_F64", "dtype_F32", "dtype_F16", "dtype_BF16", "dtype_I64", "dtype_I32", "dtype_I16", "dtype_I8",
                              "dtype_U8", "dtype_BOOL"}) {
        auto f = SafetensorsFile::open((kGolden / (std::string(fname) + ".safetensors")).string());
        for (const auto &e : f->header().tensors) all.emplace_back(std::string(fname) + "." + e.name, f->tensor(e));
    }
    write_safetensors((d / "all.safetensors").string(), all, {{"format", "pt"}, {"by", "mango"}});
    auto back = SafetensorsFile::open((d / "all.safetensors").string());
    EXPECT_EQ(back->header().metadata.at("by"), "mango");
    EXPECT_EQ((back->header().data_offset) % 8, 0u);  // header padded to 8 bytes
    for (const auto &[name, t] : all) {
        at::Tensor got = back->tensor(name);
        EXPECT_EQ(got.scalar_type(), t.scalar_type()) << name;
        EXPECT_TRUE(at::equal(got, t)) << name;
    }
}

TEST(Safetensors, FailedWriteLeavesExistingFileUntouched) {
    const fs::path d = tmp_dir("atomic");
    const std::string path = (d / "model.safetensors").string();
    write_safetensors(path, {{"w", at::ones({4})}});
    const auto before = fs::file_size(path);
    EXPECT_THROW(write_safetensors(path, {{"ok", at::ones({2})}, {"bad", at::ones({2}, at::kComplexFloat)}}), FormatError);
    EXPECT_EQ(fs::file_size(path), before);
    EXPECT_TRUE(at::equal(SafetensorsFile::open(path)->tensor("w"), at::ones({4})));
    for (const auto &e : fs::directory_iterator(d)) EXPECT_EQ(e.path().filename(), "model.safetensors") << "temp file left behind";
}

TEST(Safetensors, ShardedWriterAndIndex) {
    const fs::path d = tmp_dir("sharded");
    NamedTensors ts;
    for (int i = 0; i < 5; ++i) ts.emplace_back("layer." + std::to_string(i) + ".w", at::full({10, 10}, double(i)));  // 400 B each
    auto files = write_checkpoint(d.string(), ts, 1000);
    ASSERT_EQ(files.size(), 4u);  // 3 shards (2+2+1) + index
    EXPECT_EQ(fs::path(files[0]).filename(), "model-00001-of-00003.safetensors");
    const json index = json::parse(std::ifstream(d / "model.safetensors.index.json"));
    EXPECT_EQ(index["metadata"]["total_size"], 2000);
    EXPECT_EQ(index["weight_map"]["layer.4.w"], "model-00003-of-00003.safetensors");
    Checkpoint c = Checkpoint::open(d.string());
    for (int i = 0; i < 5; ++i) EXPECT_EQ(c.tensor("layer." + std::to_string(i) + ".w")[0][0].item<float>(), float(i));
}

// Two writers of one new folder: the second waits for the first's lock, then finds the folder made and,
// without force, refuses rather than replacing what the first wrote.
TEST(OutputFolder, WriterThatWaitedDoesNotReplaceWhatTheFirstMade) {
    const fs::path out = tmp_dir("race") / "out";
    auto first = std::make_unique<OutputFolder>(out.string(), false, std::vector<std::string>{});
    std::ofstream(fs::path(first->path()) / "config.json") << "{\"first\": true}\n";
    std::string second_error;
    std::thread second([&] {
        try {
            OutputFolder f(out.string(), false, {});  // passes the early check: OUT does not exist yet
            second_error = "no error";
        } catch (const std::exception &e) {
            second_error = e.what();
        }
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the second is waiting on the lock
    first->commit();
    first.reset();
    second.join();
    EXPECT_NE(second_error.find("exists"), std::string::npos) << second_error;
    std::ifstream in(out / "config.json");
    EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), "{\"first\": true}\n");
}

TEST(OutputFolder, RefusesAFilesystemRoot) {
    try {
        OutputFolder f("/", true, {});
        FAIL() << "accepted /";
    } catch (const std::exception &e) {
        EXPECT_NE(std::string(e.what()).find("root"), std::string::npos) << e.what();
    }
}
