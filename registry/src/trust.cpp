// Who may put code into this process: permission and ownership checks, and
// optional hash pins in a trust file (sha256sum format).
#include "mango/registry/registry.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace fs = std::filesystem;

namespace mango::registry {
namespace {

std::string permission_problem(const std::string &path, const char *what) {
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) return std::string(what) + " " + path + " cannot be read";
    if (st.st_mode & S_IWOTH) return std::string(what) + " " + path + " is world-writable (chmod o-w)";
    if (st.st_uid != geteuid() && st.st_uid != 0)
        return std::string(what) + " " + path + " is owned by uid " + std::to_string(st.st_uid) + ", not by you or root";
    return "";
}

// The pinned hash for `library` in the trust file, or "" when not listed.
std::string pinned_hash(const fs::path &library, const std::string &trust_file) {
    std::ifstream in(trust_file);
    if (!in) throw std::runtime_error("trust file " + trust_file + " cannot be read");
    const fs::path base = fs::path(trust_file).parent_path();
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream words(line);
        std::string hash, name;
        if (!(words >> hash) || hash[0] == '#') continue;
        std::getline(words >> std::ws, name);
        if (!name.empty() && name[0] == '*') name.erase(0, 1);  // sha256sum's binary marker
        if (name.empty()) continue;
        const fs::path pinned(name);
        const bool same = pinned.has_parent_path() ? fs::weakly_canonical(pinned.is_absolute() ? pinned : base / pinned) == library
                                                   : pinned == library.filename();
        if (same) return hash;
    }
    return "";
}

}  // namespace

std::string trust_problem(const std::string &path, const std::string &trust_file) {
    std::error_code ec;
    const fs::path real = fs::canonical(path, ec);
    if (ec) return "cannot resolve " + path;
    if (std::string p = permission_problem(real.string(), "library"); !p.empty()) return p;
    if (std::string p = permission_problem(real.parent_path().string(), "folder"); !p.empty()) return p;
    if (trust_file.empty()) return "";
    try {
        const std::string want = pinned_hash(real, trust_file);
        if (want.empty()) return "";
        const std::string have = sha256_file(real.string());
        if (have != want) return "sha256 " + have + " does not match the pin " + want + " in trust file " + trust_file;
    } catch (const std::exception &e) {
        return e.what();
    }
    return "";
}

}  // namespace mango::registry
