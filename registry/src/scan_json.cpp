// Scan results as JSON: the scanner child's answer and the cache's entries.
#include "mango/registry/registry.hpp"

#include <nlohmann/json.hpp>

namespace mango::registry {

std::string kind_name(int32_t kind) {
    switch (kind) {
        case MANGO_KIND_ARCHITECTURE:
            return "architecture";
        case MANGO_KIND_ADAPTER:
            return "adapter";
        case MANGO_KIND_ROUTER:
            return "router";
        case MANGO_KIND_MERGE:
            return "merge";
        case MANGO_KIND_MOE_CONVERTER:
            return "moe_converter";
        default:
            return "";
    }
}

int32_t kind_from_name(const std::string &name) {
    for (int32_t k = MANGO_KIND_ARCHITECTURE; k <= MANGO_KIND_MOE_CONVERTER; ++k)
        if (kind_name(k) == name) return k;
    return 0;
}

std::string to_json(const LibraryScan &s) {
    nlohmann::json j = {{"ok", s.ok},
                        {"reason", s.reason},
                        {"blacklisted", s.blacklisted},
                        {"plugin", s.plugin_name},
                        {"plugin_version", s.plugin_version},
                        {"description", s.description},
                        {"abi_version", s.abi_version},
                        {"components", nlohmann::json::array()}};
    for (const ComponentInfo &c : s.components)
        j["components"].push_back({{"kind", c.kind},
                                   {"name", c.name},
                                   {"version", c.version},
                                   {"summary", c.summary},
                                   {"options_schema", c.options_schema},
                                   {"model_types", c.model_types},
                                   {"model_options_schema", c.model_options_schema},
                                   {"needs_base", c.needs_base}});
    return j.dump();
}

LibraryScan scan_from_json(const std::string &text, const std::string &path) {
    const nlohmann::json j = nlohmann::json::parse(text);  // throws on bad text
    LibraryScan s;
    s.path = path;
    s.ok = j.at("ok").get<bool>();
    s.reason = j.at("reason").get<std::string>();
    s.blacklisted = j.value("blacklisted", false);
    s.plugin_name = j.value("plugin", "");
    s.plugin_version = j.value("plugin_version", "");
    s.description = j.value("description", "");
    s.abi_version = j.value("abi_version", 0u);
    for (const auto &c : j.at("components")) {
        ComponentInfo info;
        info.kind = c.at("kind").get<std::string>();
        info.name = c.at("name").get<std::string>();
        info.version = c.at("version").get<std::string>();
        info.summary = c.at("summary").get<std::string>();
        info.options_schema = c.at("options_schema").get<std::string>();
        info.model_types = c.at("model_types").get<std::vector<std::string>>();
        info.model_options_schema = c.value("model_options_schema", "");
        info.needs_base = c.value("needs_base", false);
        info.library = path;
        s.components.push_back(std::move(info));
    }
    return s;
}

}  // namespace mango::registry
