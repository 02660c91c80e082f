// Scan results on disk, keyed by library path + mtime + size, so a warm
// `mango plugins list` loads nothing. Crashed libraries stay cached as
// blacklisted until the file changes.
#pragma once

#include "mango/registry/registry.hpp"

#include <nlohmann/json.hpp>

#include <optional>
#include <string>

namespace mango::registry {

class ScanCache {
public:
    // `file` "" = default location, "-" = disabled.
    explicit ScanCache(std::string file);
    std::optional<LibraryScan> get(const std::string &path) const;
    void put(const LibraryScan &scan);
    void save() const;  // atomic; errors are ignored (the cache is optional)

private:
    static std::string stamp(const std::string &path);  // "mtime_ns:size" or ""
    std::string file_;
    nlohmann::json entries_ = nlohmann::json::object();
    bool dirty_ = false;
};

std::string default_cache_file();

}  // namespace mango::registry
