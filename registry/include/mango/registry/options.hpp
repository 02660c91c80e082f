// Component options: a JSON Schema subset, checked before anything runs.
//
// Supported: {"type":"object","properties":{KEY:{"type": integer|number|
// boolean|string|array, "default", "description", "enum", "minimum",
// "maximum", "items": {"type": ...}}}, "required": [...]}. Unknown keys are
// refused.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace mango::registry {

// Problems with a schema itself ("" when it is usable). Empty text = no options.
std::string schema_problem(const std::string &schema_text);

struct OptionDoc {
    std::string key, type, description;
    nlohmann::json default_value;  // null when none
    nlohmann::json enum_values;    // null when none
    nlohmann::json minimum, maximum;
    bool required = false;
};
std::vector<OptionDoc> describe_options(const std::string &schema_text);

// Validates `given` (an object) against the schema and returns it with
// defaults filled in. Throws std::invalid_argument with one message per line,
// each naming the key, what was expected and what was found; `where` prefixes
// each line (e.g. "pipeline.toml:12: router 'simple'").
nlohmann::json resolve_options(const std::string &schema_text, const nlohmann::json &given, const std::string &where);

}  // namespace mango::registry
