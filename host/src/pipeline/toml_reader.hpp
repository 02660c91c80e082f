// Reading a pipeline's TOML: tables whose keys are checked off as they are
// read (what is left over is an unknown key), values with their file and
// line for errors, --set overrides, TOML -> JSON for plugin options.
#pragma once

#include "pipeline/pipeline.hpp"

#include <toml++/toml.h>

#include <filesystem>
#include <set>

namespace mango::pipeline {

struct Source {
    std::string file;           // as given, for messages
    std::filesystem::path dir;  // relative paths resolve here
    std::string output;         // replaces "{output}" in paths
};

// "pipeline.toml:12: steps[2].lr" (or "(--set)" for values set on the command line).
std::string where(const Source &src, const toml::node *node, const std::string &key);

class Table {
public:
    Table(const Source &src, const toml::table &t, std::string path);
    const toml::node *get(const std::string &key);  // nullptr when absent
    bool has(const std::string &key) const { return t_.contains(key); }
    std::string at(const std::string &key) const;  // where(key)
    std::string here() const;                      // where of the table itself

    std::optional<std::string> string(const std::string &key);
    std::string string(const std::string &key, const std::string &fallback);
    std::string required_string(const std::string &key);
    int64_t integer(const std::string &key, int64_t fallback, int64_t minimum = INT64_MIN);
    double number(const std::string &key, double fallback, double minimum = -1e300, double maximum = 1e300);
    bool boolean(const std::string &key, bool fallback);
    std::vector<std::string> strings(const std::string &key);  // "x" or ["x", ...]; empty when absent
    // A path: "{output}" replaced, relative to the pipeline file's folder.
    std::optional<std::string> path(const std::string &key);
    std::optional<Table> table(const std::string &key);
    // Throws for keys that were never read, naming the ones allowed.
    void finish() const;

    std::vector<std::string> keys() const;  // sorted (TOML tables are unordered)
    const Source &source() const { return src_; }
    const std::string &name() const { return path_; }

private:
    std::string qualified(const std::string &key) const { return path_.empty() ? key : path_ + "." + key; }  // "steps[0].lr"
    const Source &src_;
    const toml::table &t_;
    std::string path_;
    std::set<std::string> read_;
};

std::string resolve_path(const Source &src, const std::string &p);
nlohmann::json to_json(const toml::node &n);
// Applies "a.b.0.c=value" (TOML value, or a bare string); "*" matches every
// element of an array or table, and below a "*" only keys that exist change
// ("steps.*.steps=2" shortens the train steps and adds nothing to the others).
// Throws when the path leads nowhere, or when a "*" path changes nothing
// (a misspelt key) unless the key ends with '?' ("steps.*.align_steps?=1").
void apply_set(toml::table &root, const std::string &assignment);

}  // namespace mango::pipeline
