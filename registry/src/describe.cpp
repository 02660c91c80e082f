// Loads one library in this process and checks its descriptor against ABI v1.
// Runs inside the scanner child only: a broken library can crash it safely.
#include "mango/registry/options.hpp"
#include "mango/registry/registry.hpp"
#include "version.hpp"

#define BOOST_DLL_USE_STD_FS
#include <boost/dll/shared_library.hpp>
#include <dlfcn.h>

#include <cstddef>
#include <filesystem>
#include <set>

namespace mango::registry {
namespace {

// Size of a struct up to and including `field`: what ABI v1 requires, also
// once later versions have appended fields.
#define MANGO_V1_SIZE(type, field) (offsetof(type, field) + sizeof(((type *)nullptr)->field))

constexpr size_t kPluginV1 = MANGO_V1_SIZE(mango_plugin, components);
constexpr size_t kComponentV1 = MANGO_V1_SIZE(mango_component, vtable);

const void *no_api(uint32_t) { return nullptr; }  // scanning: describe only

bool valid_name(const char *s) {
    if (!s || !*s) return false;
    for (const char *p = s; *p; ++p)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')) return false;
    return true;
}

bool nonempty(const char *s) { return s && *s; }

// Checks the kind's table; returns "" or the problem.
std::string vtable_problem(int32_t kind, const void *vt, std::vector<std::string> &model_types) {
    if (!vt) return "has no function table";
    const uint32_t size = *static_cast<const uint32_t *>(vt);
    auto too_small = [&](size_t need) {
        return "function table struct_size " + std::to_string(size) + " is smaller than ABI v1's " + std::to_string(need);
    };
    switch (kind) {
        case MANGO_KIND_ADAPTER: {
            auto *t = static_cast<const mango_adapter_vtable *>(vt);
            if (size < MANGO_V1_SIZE(mango_adapter_vtable, destroy)) return too_small(MANGO_V1_SIZE(mango_adapter_vtable, destroy));
            if (!t->create || !t->forward || !t->destroy) return "function table has NULL entries";
            return "";
        }
        case MANGO_KIND_ROUTER: {
            auto *t = static_cast<const mango_router_vtable *>(vt);
            if (size < MANGO_V1_SIZE(mango_router_vtable, destroy)) return too_small(MANGO_V1_SIZE(mango_router_vtable, destroy));
            if (!t->create || !t->route || !t->destroy) return "function table has NULL entries";
            return "";
        }
        case MANGO_KIND_MERGE: {
            // The merge table was provisional until its first plugins; this is its first frozen layout.
            auto *t = static_cast<const mango_merge_vtable *>(vt);
            if (size < sizeof(mango_merge_vtable))
                return "merge table struct_size " + std::to_string(size) + " is the provisional layout; rebuild against SDK 0.4 (" +
                       std::to_string(sizeof(mango_merge_vtable)) + " bytes)";
            if (!t->create || !t->merge || !t->destroy) return "function table has NULL entries";
            return "";
        }
        case MANGO_KIND_MOE_CONVERTER: {
            // Provisional until its first plugins; this is its first frozen layout.
            auto *t = static_cast<const mango_moe_converter_vtable *>(vt);
            if (size < sizeof(mango_moe_converter_vtable))
                return "moe_converter table struct_size " + std::to_string(size) + " is too small (" +
                       std::to_string(sizeof(mango_moe_converter_vtable)) + " bytes)";
            if (!t->create || !t->convert || !t->destroy) return "function table has NULL entries";
            return "";
        }
        case MANGO_KIND_ARCHITECTURE: {
            auto *t = static_cast<const mango_architecture_vtable *>(vt);
            if (size < MANGO_V1_SIZE(mango_architecture_vtable, destroy))
                return too_small(MANGO_V1_SIZE(mango_architecture_vtable, destroy));
            if (!t->create || !t->describe || !t->embed || !t->block || !t->head || !t->destroy) return "function table has NULL entries";
            if (!t->model_types) return "claims no model_type (model_types is NULL)";
            for (size_t i = 0; t->model_types[i]; ++i) {
                if (i >= 256) return "model_types is not NULL-terminated";
                model_types.emplace_back(t->model_types[i]);
            }
            if (model_types.empty()) return "claims no model_type";
            return "";
        }
        default:
            return "has unknown kind " + std::to_string(kind);
    }
}

}  // namespace

LibraryScan describe_in_process(const std::string &path) {
    LibraryScan scan;
    scan.path = path;
    std::error_code fec;
    if (!std::filesystem::is_regular_file(path, fec)) {
        scan.reason = "not a regular file";
        return scan;
    }

    // Keep the library loaded for the life of this (short) process: static
    // descriptor strings must stay valid while we copy them.
    static std::vector<boost::dll::shared_library> keep;
    boost::dll::shared_library lib;
    boost::dll::fs::error_code ec;
    dlerror();
    lib.load(path, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local, ec);
    if (ec) {
        const char *why = dlerror();
        scan.reason = std::string("not a loadable shared library: ") + (why ? why : ec.message());
        return scan;
    }
    if (!lib.has(MANGO_ENTRY_SYMBOL)) {
        scan.reason = std::string("no entry symbol '") + MANGO_ENTRY_SYMBOL + "' (not a Mango plugin, or built for another ABI)";
        return scan;
    }
    auto entry = lib.get<const mango_plugin *(const mango_host_base *)>(MANGO_ENTRY_SYMBOL);
    keep.push_back(std::move(lib));

    static const mango_host_base base{sizeof(mango_host_base), MANGO_ABI_VERSION, MANGO_VERSION_STRING, &no_api};
    const mango_plugin *p = entry(&base);
    if (!p) {
        scan.reason = "entry point returned no descriptor (the plugin refused to load)";
        return scan;
    }
    if (p->struct_size < offsetof(mango_plugin, abi_version) + sizeof(uint32_t)) {
        scan.reason =
            "plugin descriptor struct_size " + std::to_string(p->struct_size) + " is smaller than ABI v1's " + std::to_string(kPluginV1);
        return scan;
    }
    scan.abi_version = p->abi_version;
    if (p->abi_version != MANGO_ABI_VERSION) {
        scan.reason =
            "built for plugin ABI v" + std::to_string(p->abi_version) + ", this host speaks ABI v" + std::to_string(MANGO_ABI_VERSION);
        return scan;
    }
    if (p->struct_size < kPluginV1) {
        scan.reason =
            "plugin descriptor struct_size " + std::to_string(p->struct_size) + " is smaller than ABI v1's " + std::to_string(kPluginV1);
        return scan;
    }
    if (!valid_name(p->name)) {
        scan.reason = "plugin name must be non-empty [a-z0-9_]";
        return scan;
    }
    scan.plugin_name = p->name;
    scan.plugin_version = nonempty(p->version) ? p->version : "";
    scan.description = nonempty(p->description) ? p->description : "";
    if (p->n_components == 0 || !p->components || p->n_components > 1024) {
        scan.reason = "descriptor lists no components (or an implausible count " + std::to_string(p->n_components) + ")";
        return scan;
    }

    std::set<std::pair<int32_t, std::string>> seen;
    for (size_t i = 0; i < p->n_components; ++i) {
        const mango_component &c = p->components[i];
        const std::string where = "component #" + std::to_string(i);
        if (c.struct_size < kComponentV1) {
            scan.reason =
                where + ": struct_size " + std::to_string(c.struct_size) + " is smaller than ABI v1's " + std::to_string(kComponentV1);
            return scan;
        }
        if (!valid_name(c.name)) {
            scan.reason = where + ": name must be non-empty [a-z0-9_]";
            return scan;
        }
        const std::string label = where + " '" + c.name + "'";
        if (kind_name(c.kind).empty()) {
            scan.reason = label + " has unknown kind " + std::to_string(c.kind);
            return scan;
        }
        if (!nonempty(c.version) || !nonempty(c.summary)) {
            scan.reason = label + " needs a version and a summary";
            return scan;
        }
        if (!seen.insert({c.kind, c.name}).second) {
            scan.reason = label + " is listed twice";
            return scan;
        }
        ComponentInfo info;
        if (std::string why = vtable_problem(c.kind, c.vtable, info.model_types); !why.empty()) {
            scan.reason = label + " " + why;
            return scan;
        }
        const std::string schema = c.options_schema ? c.options_schema : "";
        if (std::string why = schema_problem(schema); !why.empty()) {
            scan.reason = label + " has a bad options schema: " + why;
            return scan;
        }
        if (c.kind == MANGO_KIND_MERGE) {
            auto *t = static_cast<const mango_merge_vtable *>(c.vtable);
            info.model_options_schema = t->model_options_schema ? t->model_options_schema : "";
            if (std::string why = schema_problem(info.model_options_schema); !why.empty()) {
                scan.reason = label + " has a bad per-model options schema: " + why;
                return scan;
            }
            info.needs_base = (t->flags & MANGO_MERGE_NEEDS_BASE) != 0;
        }
        info.kind = kind_name(c.kind);
        info.name = c.name;
        info.version = c.version;
        info.summary = c.summary;
        info.options_schema = schema;
        info.library = path;
        scan.components.push_back(std::move(info));
    }
    scan.ok = true;
    return scan;
}

}  // namespace mango::registry
