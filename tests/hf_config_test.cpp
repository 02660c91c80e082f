// config.json: both generations of keys, GPT-2 style names, and errors that
// name the file and key.
#include "formats/hf_config.hpp"
#include "formats/json_file.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <unistd.h>

using mango::formats::ConfigError;
using mango::formats::parse_hf_config;

TEST(HfConfig, TransformersFourKeys) {
    auto c = parse_hf_config(R"({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
        "vocab_size": 100, "max_position_embeddings": 256, "rope_theta": 500000.0, "torch_dtype": "bfloat16",
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}, "eos_token_id": [1, 2], "bos_token_id": 0})",
                             "c.json");
    EXPECT_EQ(c.model_type, "llama");
    EXPECT_EQ(c.architectures[0], "LlamaForCausalLM");
    EXPECT_EQ(c.head_dim, 16);
    EXPECT_EQ(c.num_kv_heads, 2);
    EXPECT_EQ(c.rope_theta, 500000.0);
    EXPECT_EQ(c.rope_scaling.type, "llama3");
    EXPECT_EQ(c.rope_scaling.factor, 8.0);
    EXPECT_EQ(c.rope_scaling.params["original_max_position_embeddings"], 8192);
    EXPECT_EQ(c.dtype, "bfloat16");
    EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{1, 2}));
    EXPECT_EQ(c.bos_token_ids, (std::vector<int64_t>{0}));
    EXPECT_FALSE(c.tie_word_embeddings);
}

TEST(HfConfig, TransformersFiveKeys) {
    auto c = parse_hf_config(R"({"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4,
        "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "linear", "factor": 2.0}, "dtype": "float32",
        "tie_word_embeddings": true})",
                             "c.json");
    EXPECT_EQ(c.rope_theta, 1000000.0);
    EXPECT_EQ(c.rope_scaling.type, "linear");
    EXPECT_EQ(c.rope_scaling.factor, 2.0);
    EXPECT_EQ(c.dtype, "float32");
    EXPECT_EQ(c.num_kv_heads, 4);
    EXPECT_TRUE(c.tie_word_embeddings);
}

TEST(HfConfig, Gpt2Names) {
    auto c = parse_hf_config(R"({"model_type": "gpt2", "n_embd": 32, "n_layer": 3, "n_head": 4, "n_positions": 64, "vocab_size": 50})",
                             "c.json");
    EXPECT_EQ(c.hidden_size, 32);
    EXPECT_EQ(c.num_layers, 3);
    EXPECT_EQ(c.max_positions, 64);
    EXPECT_TRUE(c.tie_word_embeddings);
    EXPECT_EQ(c.rope_scaling.type, "default");
}

TEST(HfConfig, ErrorsNameFileAndKey) {
    auto error = [](const std::string &text) {
        try {
            parse_hf_config(text, "m/config.json");
        } catch (const ConfigError &e) {
            return std::string(e.what());
        }
        return std::string();
    };
    EXPECT_EQ(error("{}"), "m/config.json: missing string key 'model_type' (which architecture is this?)");
    EXPECT_EQ(error(R"({"model_type": "llama", "hidden_size": "big"})"),
              "m/config.json: key 'hidden_size' must be a non-negative integer, found \"big\"");
    EXPECT_EQ(error(R"({"model_type": "llama", "num_attention_heads": 6, "num_key_value_heads": 4})"),
              "m/config.json: num_attention_heads 6 is not a multiple of num_key_value_heads 4");
    EXPECT_EQ(error(R"({"model_type": "llama", "rope_theta": -1})"), "m/config.json: rope_theta must be a positive number, found -1");
    EXPECT_NE(error("[").find("not valid JSON"), std::string::npos);
    // Layer counts past the tensor-table cap, under any spelling (GPT-2's n_layer once made its plugin allocate 125 GB).
    EXPECT_EQ(error(R"({"model_type": "gpt2", "num_hidden_layers": 2, "n_layer": 1000000000000})"),
              "m/config.json: n_layer = 1000000000000 is more layers than a model can declare (at most 250000)");
    EXPECT_EQ(error(R"({"model_type": "llama", "num_hidden_layers": 250000})"), "");
    auto c = parse_hf_config(R"({"model_type": "x", "n": 1})", "m/config.json");
    EXPECT_EQ(c.require<int>("n"), 1);
    EXPECT_THROW(c.require<int>("missing"), ConfigError);
}

// The JSON-file reader every loader shares: a missing file says what it is needed for, a broken one
// gives the parser's position, ordered_json keeps the file's key order, and the caller picks the error.
TEST(JsonFile, ErrorsNameTheFileAndOrderIsKept) {
    namespace fs = std::filesystem;
    const fs::path dir = fs::temp_directory_path() / ("mango-json-file-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    auto message = [](auto &&read) -> std::string {
        try {
            read();
        } catch (const std::exception &e) {
            return e.what();
        }
        return "no error";
    };
    using mango::formats::read_json_file;
    EXPECT_EQ(message([&] { read_json_file(dir / "absent.json", "the test needs it"); }),
              (dir / "absent.json").string() + ": cannot read (the test needs it)");
    std::ofstream(dir / "broken.json") << "{\"a\": [1, 2}";
    const std::string broken = message([&] { read_json_file<nlohmann::json, ConfigError>(dir / "broken.json", "x"); });
    EXPECT_EQ(broken.rfind((dir / "broken.json").string() + ": not valid JSON: ", 0), 0u) << broken;
    EXPECT_NE(broken.find("column 12"), std::string::npos) << broken;  // nlohmann names where parsing stopped
    EXPECT_THROW((read_json_file<nlohmann::json, ConfigError>(dir / "broken.json", "x")), ConfigError);
    std::ofstream(dir / "order.json") << R"({"z": 1, "a": 2, "m": 3})";
    std::string keys;
    const auto ordered = read_json_file<nlohmann::ordered_json>(dir / "order.json", "x");
    for (const auto &[k, v] : ordered.items()) keys += k;
    EXPECT_EQ(keys, "zam");
    fs::remove_all(dir);
}
