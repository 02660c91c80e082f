// The plugin host the runtime tests share: the build's plugins (plus any
// extra fixture folders), scanned without cache or environment.
#pragma once

#include <mango/host/plugins.hpp>

#include <string>
#include <vector>

inline mango::PluginHost make_test_plugin_host(std::vector<std::string> extra = {}) {
    mango::registry::Options o;
    o.use_env = false;
    o.use_builtin = false;
    o.cache_file = "-";
    o.scanner = MANGO_SCANNER_PATH;
    o.plugin_paths = {MANGO_PLUGIN_DIR};
    for (auto &e : extra) o.plugin_paths.push_back(std::move(e));
    return mango::PluginHost(mango::registry::Registry::discover(o));
}
