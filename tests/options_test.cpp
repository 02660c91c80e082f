// The options schema subset: well-formedness, defaults, and errors that name
// the key, what was expected and what was found.
#include <mango/registry/options.hpp>

#include <gtest/gtest.h>

using mango::registry::resolve_options;
using mango::registry::schema_problem;
using nlohmann::json;

namespace {
const char *kSchema = R"({"type": "object", "properties": {
  "size":  {"type": "integer", "default": 64, "minimum": 1},
  "rate":  {"type": "number", "default": 0.1, "minimum": 0, "maximum": 1},
  "act":   {"type": "string", "default": "gelu", "enum": ["gelu", "relu"]},
  "on":    {"type": "boolean", "default": true},
  "dims":  {"type": "array", "items": {"type": "integer"}},
  "name":  {"type": "string"}
}, "required": ["name"]})";

std::string error_of(const json &given) {
    try {
        resolve_options(kSchema, given, "p.toml:3");
    } catch (const std::invalid_argument &e) {
        return e.what();
    }
    return "";
}
}  // namespace

TEST(Options, DefaultsFilled) {
    json out = resolve_options(kSchema, {{"name", "x"}}, "");
    EXPECT_EQ(out["size"], 64);
    EXPECT_EQ(out["act"], "gelu");
    EXPECT_EQ(out["on"], true);
    EXPECT_FALSE(out.contains("dims"));
}

TEST(Options, IntegralFloatBecomesInteger) {
    json out = resolve_options(kSchema, {{"name", "x"}, {"size", 8.0}}, "");
    EXPECT_TRUE(out["size"].is_number_integer());
    EXPECT_EQ(out["size"], 8);
}

TEST(Options, ErrorsNameKeyExpectedAndFound) {
    EXPECT_EQ(error_of({{"name", "x"}, {"sise", 3}}), "p.toml:3: unknown option 'sise' (known: act, dims, name, on, rate, size)");
    EXPECT_EQ(error_of({{"name", "x"}, {"size", "big"}}), "p.toml:3: option 'size': expected integer, found string \"big\"");
    EXPECT_EQ(error_of({{"name", "x"}, {"size", 2.5}}), "p.toml:3: option 'size': expected integer, found number 2.5");
    EXPECT_EQ(error_of({{"name", "x"}, {"size", 1e65}}),
              "p.toml:3: option 'size': expected integer, found number 1e+65");  // no int64 holds it
    EXPECT_EQ(error_of({{"name", "x"}, {"rate", 2}}), "p.toml:3: option 'rate': expected <= 1, found 2");
    EXPECT_EQ(error_of({{"name", "x"}, {"act", "tanh"}}), "p.toml:3: option 'act': expected one of [\"gelu\",\"relu\"], found \"tanh\"");
    EXPECT_EQ(error_of({{"name", "x"}, {"dims", {1, "a"}}}), "p.toml:3: option 'dims': item 1: expected integer, found string \"a\"");
    EXPECT_EQ(error_of(json::object()), "p.toml:3: missing required option 'name'");
    EXPECT_EQ(error_of(json::array()), "p.toml:3: options must be a table, found array");
}

TEST(Options, AllErrorsReportedAtOnce) {
    const std::string e = error_of({{"size", 0}, {"act", 1}});
    EXPECT_NE(e.find("'size'"), std::string::npos);
    EXPECT_NE(e.find("'act'"), std::string::npos);
    EXPECT_NE(e.find("'name'"), std::string::npos);
}

TEST(Options, SchemaProblems) {
    EXPECT_EQ(schema_problem(""), "");
    EXPECT_EQ(schema_problem(kSchema), "");
    EXPECT_NE(schema_problem("{"), "");
    EXPECT_EQ(schema_problem(R"({"properties": {"a": {"type": "integer", "default": "x"}}})"),
              "option 'a' default: expected integer, found string \"x\"");
    EXPECT_EQ(schema_problem(R"({"properties": {"a": {"type": "integer", "pattern": "x"}}})"),
              "option 'a' uses unsupported keyword 'pattern'");
    EXPECT_EQ(schema_problem(R"({"properties": {}, "required": ["b"]})"),
              "\"required\" names an option that is not in \"properties\": \"b\"");
}
