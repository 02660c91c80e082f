#include "scan_cache.hpp"

#include "version.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;

namespace mango::registry {
namespace {
// Results depend on the host's ABI and checks: a new host rescans.
const std::string kCacheKey = std::string("mango ") + MANGO_VERSION_STRING + " abi " + std::to_string(MANGO_ABI_VERSION);
}  // namespace

std::string default_cache_file() {
    if (const char *d = std::getenv("MANGO_CACHE_DIR"); d && *d) return std::string(d) + "/plugin-scan.json";
    if (const char *d = std::getenv("XDG_CACHE_HOME"); d && *d) return std::string(d) + "/mango/plugin-scan.json";
    if (const char *d = std::getenv("HOME"); d && *d) return std::string(d) + "/.cache/mango/plugin-scan.json";
    return "";
}

ScanCache::ScanCache(std::string file) : file_(file.empty() ? default_cache_file() : file == "-" ? "" : std::move(file)) {
    if (file_.empty()) return;
    std::ifstream in(file_);
    if (!in) return;
    try {
        nlohmann::json j = nlohmann::json::parse(in);
        if (j.value("key", "") == kCacheKey && j.contains("entries") && j["entries"].is_object()) entries_ = j["entries"];
    } catch (const std::exception &) {
        // A corrupt cache is just a cold cache.
    }
}

std::string ScanCache::stamp(const std::string &path) {
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) return "";
    const long long ns = static_cast<long long>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
    return std::to_string(ns) + ":" + std::to_string(static_cast<long long>(st.st_size));
}

std::optional<LibraryScan> ScanCache::get(const std::string &path) const {
    auto it = entries_.find(path);
    if (it == entries_.end()) return std::nullopt;
    const std::string now = stamp(path);
    if (now.empty() || it->value("stamp", "") != now) return std::nullopt;
    try {
        LibraryScan s = scan_from_json(it->at("scan").dump(), path);
        s.from_cache = true;
        return s;
    } catch (const std::exception &) {
        return std::nullopt;
    }
}

void ScanCache::put(const LibraryScan &scan) {
    if (file_.empty()) return;
    const std::string now = stamp(scan.path);
    if (now.empty()) return;
    entries_[scan.path] = {{"stamp", now}, {"scan", nlohmann::json::parse(to_json(scan))}};
    dirty_ = true;
}

void ScanCache::save() const {
    if (file_.empty() || !dirty_) return;
    std::error_code ec;
    fs::create_directories(fs::path(file_).parent_path(), ec);
    const std::string tmp = file_ + ".tmp." + std::to_string(getpid());
    {
        std::ofstream out(tmp, std::ios::trunc);
        if (!out) return;
        out << nlohmann::json{{"key", kCacheKey}, {"entries", entries_}}.dump(1);
        if (!out.flush()) return;
    }
    fs::rename(tmp, file_, ec);
    if (ec) fs::remove(tmp, ec);
}

}  // namespace mango::registry
