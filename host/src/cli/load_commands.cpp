// Finds and loads lib/mango/libmango-commands.so, the half of the command
// line that needs LibTorch, so `mango plugins ...` starts without it.
#include "cli.hpp"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <filesystem>

namespace mango::cli {
namespace {

namespace fs = std::filesystem;

std::string library_path() {
    if (const char *env = std::getenv("MANGO_COMMANDS_LIBRARY"); env && *env) return env;
    char self[PATH_MAX];
    const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) throw std::runtime_error("cannot find the mango executable's folder (/proc/self/exe)");
    self[n] = '\0';
    // bin/mango -> lib/mango/ (the build tree mirrors the install tree; also lib64 installs).
    const fs::path root = fs::path(self).parent_path().parent_path();
    for (const char *lib : {"lib", "lib64"}) {
        const fs::path p = root / lib / "mango" / "libmango-commands.so";
        if (fs::exists(p)) return p.string();
    }
    return (root / "lib" / "mango" / "libmango-commands.so").string();
}

}  // namespace

const RuntimeCommands &runtime_commands() {
    static RuntimeCommands loaded;
    static bool done = false;
    if (done) return loaded;
    const std::string path = library_path();
    // Global: the runtime finds its BLAS by symbol (single_threaded_blas in abi/runtime.cpp).
    void *lib = ::dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (!lib) throw std::runtime_error("cannot load the mango runtime " + path + ": " + ::dlerror());
    auto fill = reinterpret_cast<RuntimeCommandsFn>(::dlsym(lib, MANGO_COMMANDS_SYMBOL));
    if (!fill) throw std::runtime_error(path + " has no " MANGO_COMMANDS_SYMBOL " (a library of another mango version?)");
    fill(&loaded);  // the library stays loaded for the life of the process
    done = true;
    return loaded;
}

}  // namespace mango::cli
