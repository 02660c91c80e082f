// Fuzz target: any bytes as a model's config.json go through the architecture
// plugin that claims their model_type, which declares the model's tensor
// table (names, shapes, roles) without allocating a weight. Either a table
// comes back, every shape non-negative, or a HostError / ConfigError names
// the problem; nothing else may happen (a crash, a sanitizer report, another
// exception).
#include "test_plugins.hpp"
#include "model/model.hpp"

#include <cstdlib>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const mango::PluginHost &host = shared_plugins();
    try {
        const auto config = mango::formats::parse_hf_config(std::string(reinterpret_cast<const char *>(data), size), "fuzz/config.json");
        for (const auto &decl : mango::Model::tensor_table(host, config, nullptr, "fuzz"))
            for (int64_t d : decl.shape)
                if (d < 0) std::abort();  // a plugin declared a negative dimension instead of refusing the config
    } catch (const mango::formats::ConfigError &) {
    } catch (const mango::HostError &) {
    }
    return 0;
}
