// mergekit's YAML, as its users write it: models or slices, merge_method,
// base_model, parameters (scalars, gradient lists, filter/value conditionals),
// dtype, out_dtype, tokenizer_source / tokenizer (source, tokens,
// pad_to_multiple_of), chat_template. Read with
// yaml-cpp; every error names the file, line and key. Model references are
// local Hugging Face folders.
#pragma once

#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

namespace mango::merge {

// A parameter setting as written: a number or boolean, a list of numbers (a
// gradient over the layers), or a list of {filter, value} conditionals.
using Setting = nlohmann::json;
using Settings = std::map<std::string, Setting>;

struct Source {
    std::string model;             // as written
    int64_t start = -1, end = -1;  // layer_range [start, end); -1 = every layer
    Settings parameters;
    std::string where;  // "merge.yml:7"
};

struct Slice {
    std::vector<Source> sources;
    std::string base_model;  // "" = the top-level one
    Settings parameters;
    std::string where;
};

// One entry of tokenizer.tokens (mergekit's TokenEmbeddingConfig): where the
// embedding and LM-head rows of `token` (a token of the merged vocabulary) come from.
struct TokenSource {
    enum class Kind { model, model_token, zero };
    std::string token;
    Kind kind = Kind::model;   // model: that model's row for the same token; zero: zeros;
                               // model_token: a row of `model` named by token_id or source_token
    std::string model;         // a model reference (model, model_token)
    int64_t token_id = -1;     // model_token: a row of the model's own embedding, or
    std::string source_token;  // model_token: a token of the model's own vocabulary
    bool force = false;        // every model takes this row; otherwise only models lacking the token do
    std::string where;
};

struct Config {
    std::string file, dir;  // the YAML file and its folder (relative model paths resolve there too)
    std::string method, method_where;
    std::string base_model, base_where;
    bool slices_syntax = false;    // `slices:` rather than `models:`
    std::vector<Slice> slices;     // `models:` becomes one slice over every layer
    Settings parameters;           // top level
    std::string dtype, out_dtype;  // "" = as stored
    std::string tokenizer_source;  // "" (base model's files), "base", "union", or a model reference
    std::string tokenizer_where;
    int64_t pad_to_multiple_of = 0;
    std::vector<TokenSource> tokens;  // tokenizer.tokens
    std::string chat_template;        // "" = as the donor has it
    std::string text;                 // the file's text (kept with the output)
    std::string where(int line) const { return file + ":" + std::to_string(line); }
};

// Parses and checks the structure (not the models or methods). Throws HostError.
Config parse_config(const std::string &yaml_text, const std::string &file, const std::string &dir);
Config load_config(const std::string &path);

// The value of a setting for a tensor at layer fraction t (mergekit's
// evaluate_setting): gradients interpolate at t, conditionals take the first
// whose filter is absent, "*", or a substring of the tensor name. Null when
// no conditional matches.
nlohmann::json evaluate(const Setting &s, const std::string &tensor, double t);

}  // namespace mango::merge
