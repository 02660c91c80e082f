// The options schema subset: checking schemas, documenting and resolving options.
#include "mango/registry/options.hpp"

#include <cmath>
#include <set>
#include <stdexcept>

namespace mango::registry {
namespace {

using nlohmann::json;

const std::set<std::string> kTypes = {"integer", "number", "boolean", "string", "array"};
const std::set<std::string> kKeywords = {"type", "default", "description", "enum", "minimum", "maximum", "items"};

std::string type_of(const json &v) {
    if (v.is_boolean()) return "boolean";
    if (v.is_number_integer()) return "integer";
    if (v.is_number()) return "number";
    if (v.is_string()) return "string";
    if (v.is_array()) return "array";
    if (v.is_object()) return "table";
    return "nothing";
}

// An integer, or a float with an integral value that an int64 holds exactly (|v| <= 2^53).
bool integral(const json &v) {
    if (v.is_number_integer()) return true;
    if (!v.is_number_float()) return false;
    const double d = v.get<double>();
    return std::floor(d) == d && std::fabs(d) <= 9007199254740992.0;
}

// "" when `v` fits `spec`, else what is wrong.
std::string mismatch(const json &spec, const json &v) {
    const std::string want = spec.value("type", "");
    const bool ok = (want == "integer" && v.is_number() && integral(v)) || (want == "number" && v.is_number()) ||
                    (want == "boolean" && v.is_boolean()) || (want == "string" && v.is_string()) || (want == "array" && v.is_array());
    if (!ok) return "expected " + want + ", found " + type_of(v) + " " + v.dump();
    if (spec.contains("enum")) {
        bool found = false;
        for (const json &e : spec["enum"]) found = found || e == v;
        if (!found) return "expected one of " + spec["enum"].dump() + ", found " + v.dump();
    }
    if (v.is_number()) {
        if (spec.contains("minimum") && v.get<double>() < spec["minimum"].get<double>())
            return "expected >= " + spec["minimum"].dump() + ", found " + v.dump();
        if (spec.contains("maximum") && v.get<double>() > spec["maximum"].get<double>())
            return "expected <= " + spec["maximum"].dump() + ", found " + v.dump();
    }
    if (v.is_array() && spec.contains("items"))
        for (size_t i = 0; i < v.size(); ++i)
            if (std::string why = mismatch(spec["items"], v[i]); !why.empty()) return "item " + std::to_string(i) + ": " + why;
    return "";
}

json parse_schema(const std::string &text) {
    if (text.empty()) return json{{"type", "object"}, {"properties", json::object()}};
    json s = json::parse(text);
    if (!s.contains("properties")) s["properties"] = json::object();
    return s;
}

}  // namespace

std::string schema_problem(const std::string &text) {
    if (text.empty()) return "";
    json s;
    try {
        s = json::parse(text);
    } catch (const std::exception &e) {
        return std::string("not JSON: ") + e.what();
    }
    if (!s.is_object()) return "must be a JSON object";
    if (s.contains("type") && s["type"] != "object") return "top-level type must be \"object\"";
    if (s.contains("properties") && !s["properties"].is_object()) return "\"properties\" must be an object";
    const json props = s.value("properties", json::object());
    for (const auto &[key, spec] : props.items()) {
        if (!spec.is_object()) return "option '" + key + "' must be described by an object";
        for (const auto &[word, _] : spec.items())
            if (!kKeywords.count(word)) return "option '" + key + "' uses unsupported keyword '" + word + "'";
        const std::string type = spec.value("type", "");
        if (!kTypes.count(type)) return "option '" + key + "' has unsupported type '" + type + "'";
        if (spec.contains("enum") && !spec["enum"].is_array()) return "option '" + key + "': enum must be an array";
        for (const char *bound : {"minimum", "maximum"})
            if (spec.contains(bound) && !spec[bound].is_number()) return "option '" + key + "': " + bound + " must be a number";
        if (spec.contains("items") && (!spec["items"].is_object() || !kTypes.count(spec["items"].value("type", ""))))
            return "option '" + key + "': items needs a supported type";
        if (spec.contains("default"))
            if (std::string why = mismatch(spec, spec["default"]); !why.empty()) return "option '" + key + "' default: " + why;
    }
    if (s.contains("required")) {
        if (!s["required"].is_array()) return "\"required\" must be an array";
        for (const json &r : s["required"])
            if (!r.is_string() || !props.contains(r.get<std::string>()))
                return "\"required\" names an option that is not in \"properties\": " + r.dump();
    }
    return "";
}

std::vector<OptionDoc> describe_options(const std::string &text) {
    const json s = parse_schema(text);
    std::set<std::string> required;
    for (const json &r : s.value("required", json::array())) required.insert(r.get<std::string>());
    std::vector<OptionDoc> out;
    for (const auto &[key, spec] : s["properties"].items()) {
        OptionDoc d;
        d.key = key;
        d.type = spec.value("type", "");
        d.description = spec.value("description", "");
        d.default_value = spec.value("default", json());
        d.enum_values = spec.value("enum", json());
        d.minimum = spec.value("minimum", json());
        d.maximum = spec.value("maximum", json());
        d.required = required.count(key) > 0;
        out.push_back(std::move(d));
    }
    return out;
}

json resolve_options(const std::string &text, const json &given, const std::string &where) {
    const json s = parse_schema(text);
    const json &props = s["properties"];
    std::string errors;
    auto fail = [&](const std::string &line) { errors += (errors.empty() ? "" : "\n") + where + ": " + line; };

    json out = json::object();
    if (!given.is_null() && !given.is_object()) {
        fail("options must be a table, found " + type_of(given));
        throw std::invalid_argument(errors);
    }
    if (given.is_object()) {
        for (const auto &[key, value] : given.items()) {
            if (!props.contains(key)) {
                std::string known;
                for (const auto &[k, _] : props.items()) known += (known.empty() ? "" : ", ") + k;
                fail("unknown option '" + key + "' (known: " + (known.empty() ? "none" : known) + ")");
                continue;
            }
            if (std::string why = mismatch(props[key], value); !why.empty()) {
                fail("option '" + key + "': " + why);
                continue;
            }
            // Integral floats given for integer options become integers.
            out[key] = props[key]["type"] == "integer" && value.is_number_float() ? json(static_cast<int64_t>(value.get<double>())) : value;
        }
    }
    for (const auto &[key, spec] : props.items())
        if (!out.contains(key) && spec.contains("default")) out[key] = spec["default"];
    for (const json &r : s.value("required", json::array()))
        if (!out.contains(r.get<std::string>())) fail("missing required option '" + r.get<std::string>() + "'");
    if (!errors.empty()) throw std::invalid_argument(errors);
    return out;
}

}  // namespace mango::registry
