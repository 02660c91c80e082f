// Discovery: search order, trust, cache, out-of-process scans, duplicates.
#include "mango/registry/registry.hpp"

#include "scan_cache.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <sstream>

namespace fs = std::filesystem;

namespace mango::registry {
namespace {

fs::path executable_dir() {
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    return ec ? fs::path() : exe.parent_path();
}

std::string first_existing(const std::vector<fs::path> &candidates, bool executable) {
    for (const fs::path &p : candidates) {
        std::error_code ec;
        if (p.empty() || !fs::exists(p, ec)) continue;
        if (executable && access(p.c_str(), X_OK) != 0) continue;
        return fs::weakly_canonical(p).string();
    }
    return "";
}

std::string builtin_plugin_dir() {
    const fs::path dir = executable_dir();
    return first_existing({dir / "plugins", dir / "../lib/mango/plugins",
#ifdef MANGO_BUILD_PLUGIN_DIR
                           fs::path(MANGO_BUILD_PLUGIN_DIR)
#endif
                          },
                          false);
}

bool is_library(const fs::path &p) {
    const std::string name = p.filename().string();
    return p.extension() == ".so" || name.find(".so.") != std::string::npos;
}

size_t edit_distance(const std::string &a, const std::string &b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            const size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diag = up;
        }
    }
    return row[b.size()];
}

int timeout_from(const Options &o) {
    if (const char *t = std::getenv("MANGO_SCAN_TIMEOUT_MS"); t && *t) return std::max(100, std::atoi(t));
    return o.timeout_ms;
}

std::string trust_file_from(const Options &o) {
    if (!o.trust_file.empty()) return o.trust_file;
    const char *t = std::getenv("MANGO_TRUST_FILE");
    return t ? t : "";
}

}  // namespace

std::string find_scanner() {
    if (const char *s = std::getenv("MANGO_SCANNER"); s && *s) return s;
    const fs::path dir = executable_dir();
    return first_existing({dir / "mango-plugin-scanner", dir / "../libexec/mango/mango-plugin-scanner",
#ifdef MANGO_BUILD_SCANNER
                           fs::path(MANGO_BUILD_SCANNER)
#endif
                          },
                          true);
}

std::vector<std::string> library_files(const std::string &path) {
    std::vector<std::string> out;
    std::error_code ec;
    if (fs::is_regular_file(path, ec)) return {fs::absolute(path).lexically_normal().string()};
    if (!fs::is_directory(path, ec)) return out;
    for (auto it = fs::recursive_directory_iterator(path, fs::directory_options::skip_permission_denied, ec);
         it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (ec) break;
        if (it.depth() >= 2) it.disable_recursion_pending();
        if (it->is_regular_file(ec) && is_library(it->path())) out.push_back(fs::absolute(it->path()).lexically_normal().string());
    }
    std::sort(out.begin(), out.end());
    return out;
}

void Registry::add(LibraryScan scan) {
    if (scan.ok) {
        for (const ComponentInfo &c : scan.components) {
            if (const ComponentInfo *first = find(c.kind, c.name)) {
                duplicates_.push_back(c.kind + " '" + c.name + "' in " + c.library + " is shadowed by " + first->library +
                                      " (first in search order)");
                continue;
            }
            components_.push_back(c);
        }
    }
    libraries_.push_back(std::move(scan));
}

Registry Registry::build(const std::vector<std::string> &roots, const Options &options, bool use_cache) {
    const std::string scanner = options.scanner.empty() ? find_scanner() : options.scanner;
    const std::string trust_file = trust_file_from(options);
    const int timeout = timeout_from(options);
    ScanCache cache(use_cache ? options.cache_file : "-");
    std::set<std::string> seen;
    Registry reg;
    std::vector<LibraryScan> scans;
    for (const std::string &root : roots) {
        for (const std::string &file : library_files(root)) {
            std::error_code ec;
            const std::string real = fs::canonical(file, ec).string();
            if (!seen.insert(ec ? file : real).second) continue;  // same library reached twice
            if (std::string why = trust_problem(file, trust_file); !why.empty()) {
                LibraryScan s;
                s.path = file;
                s.reason = "untrusted: " + why;
                scans.push_back(std::move(s));
                continue;
            }
            if (auto hit = cache.get(file)) {
                scans.push_back(std::move(*hit));
                continue;
            }
            LibraryScan s = scan_in_child(file, scanner, timeout);
            cache.put(s);
            scans.push_back(std::move(s));
        }
    }
    cache.save();
    for (LibraryScan &s : scans) reg.add(std::move(s));
    return reg;
}

Registry Registry::discover(const Options &options) {
    std::vector<std::string> roots = options.plugin_paths;
    if (options.use_env)
        if (const char *env = std::getenv("MANGO_PLUGIN_PATH"); env && *env) {
            std::stringstream ss(env);
            for (std::string part; std::getline(ss, part, ':');)
                if (!part.empty()) roots.push_back(part);
        }
    if (options.use_builtin) {
        const std::string dir = options.builtin_dir.empty() ? builtin_plugin_dir() : options.builtin_dir;
        if (!dir.empty()) roots.push_back(dir);
    }
    Registry reg = build(roots, options, true);
    reg.search_path_ = roots;
    return reg;
}

Registry Registry::scan_paths(const std::vector<std::string> &paths, const Options &options) {
    Registry reg = build(paths, options, false);
    reg.search_path_ = paths;
    return reg;
}

const ComponentInfo *Registry::find(const std::string &kind, const std::string &name) const {
    for (const ComponentInfo &c : components_)
        if (c.kind == kind && c.name == name) return &c;
    return nullptr;
}

std::vector<const ComponentInfo *> Registry::find_by_name(const std::string &name) const {
    std::vector<const ComponentInfo *> out;
    for (const ComponentInfo &c : components_)
        if (c.name == name) out.push_back(&c);
    return out;
}

const ComponentInfo *Registry::architecture_for(const std::string &model_type) const {
    for (const ComponentInfo &c : components_)
        if (c.kind == "architecture" && std::find(c.model_types.begin(), c.model_types.end(), model_type) != c.model_types.end()) return &c;
    return nullptr;
}

std::vector<std::string> Registry::close_names(const std::string &name, size_t n) const {
    std::vector<std::pair<size_t, std::string>> scored;
    std::set<std::string> names;
    for (const ComponentInfo &c : components_) names.insert(c.name);
    for (const std::string &cand : names) {
        const size_t d = edit_distance(name, cand);
        const bool related = cand.find(name) != std::string::npos || name.find(cand) != std::string::npos;
        if (d <= std::max<size_t>(2, name.size() / 3) || related) scored.push_back({related ? 0 : d, cand});
    }
    std::sort(scored.begin(), scored.end());
    std::vector<std::string> out;
    for (size_t i = 0; i < scored.size() && i < n; ++i) out.push_back(scored[i].second);
    return out;
}

}  // namespace mango::registry
