// mango plugins list | info NAME | validate [PATH...]
#include "cli.hpp"

#include <mango/registry/options.hpp>
#include <mango/registry/registry.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <iostream>

namespace mango::cli {
namespace {

using nlohmann::json;
using registry::ComponentInfo;
using registry::LibraryScan;
using registry::Registry;

json component_json(const ComponentInfo &c) {
    json j = {{"kind", c.kind}, {"name", c.name}, {"version", c.version}, {"summary", c.summary}, {"library", c.library}};
    if (!c.model_types.empty()) j["model_types"] = c.model_types;
    return j;
}

json library_json(const LibraryScan &s) {
    json j = {{"path", s.path}, {"ok", s.ok}, {"cached", s.from_cache}};
    if (!s.ok) {
        j["reason"] = s.reason;
        j["blacklisted"] = s.blacklisted;
    } else {
        j["plugin"] = s.plugin_name;
        j["version"] = s.plugin_version;
        j["components"] = s.components.size();
    }
    return j;
}

void print_table(const std::vector<std::vector<std::string>> &rows) {
    std::vector<size_t> width;
    for (const auto &r : rows)
        for (size_t i = 0; i < r.size(); ++i) {
            if (width.size() <= i) width.push_back(0);
            width[i] = std::max(width[i], r[i].size());
        }
    for (const auto &r : rows) {
        std::string line;
        for (size_t i = 0; i < r.size(); ++i) line += r[i] + (i + 1 < r.size() ? std::string(width[i] - r[i].size() + 2, ' ') : "");
        std::cout << line << "\n";
    }
}

int list(const Global &g, const po::variables_map &) {
    const Registry reg = Registry::discover(registry_options(g));
    std::vector<ComponentInfo> comps = reg.components();
    std::sort(comps.begin(), comps.end(), [](const auto &a, const auto &b) { return std::tie(a.kind, a.name) < std::tie(b.kind, b.name); });
    size_t refused = 0, blacklisted = 0;
    for (const auto &s : reg.libraries()) {
        refused += !s.ok;
        blacklisted += s.blacklisted;
    }
    if (g.json) {
        json j = {{"search_path", reg.search_path()}, {"components", json::array()}, {"libraries", json::array()},
                  {"duplicates", reg.duplicates()},   {"refused", refused},          {"blacklisted", blacklisted}};
        for (const auto &c : comps) j["components"].push_back(component_json(c));
        for (const auto &s : reg.libraries()) j["libraries"].push_back(library_json(s));
        std::cout << j.dump(2) << "\n";
        return 0;
    }
    std::vector<std::vector<std::string>> rows = {{"KIND", "NAME", "VERSION", "SUMMARY"}};
    for (const auto &c : comps) {
        std::string summary = c.summary;
        if (!c.model_types.empty()) {
            std::string types;
            for (const auto &t : c.model_types) types += (types.empty() ? "" : ", ") + t;
            summary = "[" + types + "] " + summary;
        }
        rows.push_back({c.kind, c.name, c.version, summary});
    }
    print_table(rows);
    std::cout << "\n" << comps.size() << " components in " << reg.libraries().size() - refused << " libraries";
    if (refused) std::cout << "; " << refused << " refused (" << blacklisted << " blacklisted)";
    std::cout << "\n";
    for (const auto &s : reg.libraries())
        if (!s.ok)
            std::cout << "  refused " << s.path << ": " << s.reason << (s.blacklisted ? " [blacklisted until the file changes]" : "")
                      << "\n";
    for (const auto &d : reg.duplicates()) std::cout << "  duplicate: " << d << "\n";
    if (reg.search_path().empty()) std::cout << "No plugin folder found: use --plugin-path or MANGO_PLUGIN_PATH.\n";
    return 0;
}

std::string json_text(const json &v) { return v.is_null() ? "" : v.is_string() ? v.get<std::string>() : v.dump(); }

int info(const Global &g, const po::variables_map &vm) {
    const std::string name = vm["name"].as<std::string>();
    const std::string kind = vm.count("kind") ? vm["kind"].as<std::string>() : "";
    const Registry reg = Registry::discover(registry_options(g));
    std::vector<const ComponentInfo *> found = reg.find_by_name(name);
    if (!kind.empty()) found.erase(std::remove_if(found.begin(), found.end(), [&](auto *c) { return c->kind != kind; }), found.end());
    if (found.empty()) {
        std::string msg = "no plugin component named '" + name + "'" + (kind.empty() ? "" : " of kind " + kind);
        if (auto close = reg.close_names(name); !close.empty()) {
            msg += "; did you mean";
            for (size_t i = 0; i < close.size(); ++i) msg += (i ? ", " : " ") + close[i];
            msg += "?";
        }
        throw std::runtime_error(msg + " (see `mango plugins list`)");
    }
    json all = json::array();
    for (const ComponentInfo *c : found) {
        json j = component_json(*c);
        j["options"] = json::array();
        for (const auto &o : registry::describe_options(c->options_schema)) {
            json oj = {{"key", o.key}, {"type", o.type}, {"description", o.description}, {"required", o.required}};
            if (!o.default_value.is_null()) oj["default"] = o.default_value;
            if (!o.enum_values.is_null()) oj["enum"] = o.enum_values;
            if (!o.minimum.is_null()) oj["minimum"] = o.minimum;
            if (!o.maximum.is_null()) oj["maximum"] = o.maximum;
            j["options"].push_back(oj);
        }
        all.push_back(j);
        if (g.json) continue;
        std::cout << c->kind << " '" << c->name << "' " << c->version << "\n  " << c->summary << "\n  library: " << c->library << "\n";
        if (!c->model_types.empty()) {
            std::cout << "  model types:";
            for (const auto &t : c->model_types) std::cout << " " << t;
            std::cout << "\n";
        }
        if (j["options"].empty()) {
            std::cout << "  options: none\n";
            continue;
        }
        std::cout << "  options:\n";
        std::vector<std::vector<std::string>> rows = {{"    KEY", "TYPE", "DEFAULT", "DESCRIPTION"}};
        for (const auto &o : j["options"]) {
            std::string doc = o["description"].get<std::string>();
            if (o.contains("enum")) doc += " (one of " + o["enum"].dump() + ")";
            if (o.contains("minimum") && o.contains("maximum"))
                doc += " [" + o["minimum"].dump() + ", " + o["maximum"].dump() + "]";
            else if (o.contains("minimum"))
                doc += " (>= " + o["minimum"].dump() + ")";
            else if (o.contains("maximum"))
                doc += " (<= " + o["maximum"].dump() + ")";
            rows.push_back({"    " + o["key"].get<std::string>(), o["type"].get<std::string>(),
                            o["required"].get<bool>() ? "(required)" : json_text(o.value("default", json())), doc});
        }
        print_table(rows);
    }
    if (g.json) std::cout << (all.size() == 1 ? all[0] : all).dump(2) << "\n";
    return 0;
}

int validate(const Global &g, const po::variables_map &vm) {
    std::vector<std::string> paths = vm.count("paths") ? vm["paths"].as<std::vector<std::string>>() : std::vector<std::string>{};
    registry::Options o = registry_options(g);
    if (paths.empty()) paths = Registry::discover(o).search_path();
    const Registry reg = Registry::scan_paths(paths, o);
    bool all_ok = !reg.libraries().empty() && reg.duplicates().empty();
    for (const auto &s : reg.libraries()) all_ok = all_ok && s.ok;
    if (g.json) {
        json j = {{"ok", all_ok}, {"libraries", json::array()}, {"duplicates", reg.duplicates()}};
        for (const auto &s : reg.libraries()) j["libraries"].push_back(library_json(s));
        std::cout << j.dump(2) << "\n";
        return all_ok ? 0 : 1;
    }
    for (const auto &s : reg.libraries()) {
        if (s.ok)
            std::cout << "ok    " << s.path << " (" << s.plugin_name << " " << s.plugin_version << ", " << s.components.size()
                      << " component" << (s.components.size() == 1 ? "" : "s") << ")\n";
        else
            std::cout << "FAIL  " << s.path << ": " << s.reason << "\n";
    }
    for (const auto &d : reg.duplicates()) std::cout << "FAIL  duplicate: " << d << "\n";
    if (reg.libraries().empty()) std::cout << "FAIL  no plugin libraries found in the given paths\n";
    size_t failed = reg.duplicates().size();
    for (const auto &s : reg.libraries()) failed += !s.ok;
    std::cout << reg.libraries().size() - std::min(failed, reg.libraries().size()) << " passed, " << failed << " failed\n";
    return all_ok ? 0 : 1;
}

}  // namespace

std::vector<Command> plugin_commands() {
    return {
        {"plugins list", "[--json]", "list every installed component (kind, name, version, library)",
         [](po::options_description &, po::positional_options_description &) {}, list},
        {"plugins info", "NAME [--kind KIND] [--json]", "show one component: summary, library, options",
         [](po::options_description &d, po::positional_options_description &p) {
             d.add_options()("name", po::value<std::string>()->required(), "component name")(
                 "kind", po::value<std::string>(), "architecture|adapter|router|merge|moe_converter");
             p.add("name", 1);
         },
         info},
        {"plugins validate", "[PATH...] [--json]", "load each library in a child process and check it; exit 0 only if all pass",
         [](po::options_description &d, po::positional_options_description &p) {
             d.add_options()("paths", po::value<std::vector<std::string>>(), "library files or folders (default: the search path)");
             p.add("paths", -1);
         },
         validate},
    };
}

}  // namespace mango::cli
