// The plugin host the LibTorch fuzz targets share: the build's plugins,
// scanned once, without cache or environment.
#pragma once

#include "abi/plugins.hpp"

inline const mango::PluginHost &mango_fuzz_plugins() {
    static const mango::PluginHost host = [] {
        mango::registry::Options o;
        o.use_env = false;
        o.use_builtin = false;
        o.cache_file = "-";
        o.scanner = MANGO_SCANNER_PATH;
        o.plugin_paths = {MANGO_PLUGIN_DIR};
        return mango::PluginHost(mango::registry::Registry::discover(o));
    }();
    return host;
}
