// Plugin discovery, out-of-process scanning, trust checks and the scan cache.
// No LibTorch here: listing and validating plugins never loads the runtime.
#pragma once

#include <mango/plugin.h>

#include <cstdint>
#include <string>
#include <vector>

namespace mango::registry {

// "architecture", "adapter", ... for a MANGO_KIND_*; "" when unknown.
std::string kind_name(int32_t kind);
int32_t kind_from_name(const std::string &name);  // 0 when unknown

// One component as a library describes it (copied out of the descriptor).
struct ComponentInfo {
    std::string kind;  // kind_name()
    std::string name;
    std::string version;
    std::string summary;
    std::string options_schema;            // JSON text; "" = no options
    std::vector<std::string> model_types;  // architectures only
    std::string model_options_schema;      // merges: per-model parameters ("" = none)
    bool needs_base = false;               // merges: MANGO_MERGE_NEEDS_BASE
    std::string library;                   // absolute path of the .so
};

// Outcome of looking at one library file.
struct LibraryScan {
    std::string path;
    bool ok = false;
    std::string reason;        // one line, why it was refused (when !ok)
    bool blacklisted = false;  // crashed, aborted or hung while being scanned
    bool from_cache = false;
    std::string plugin_name, plugin_version, description;
    uint32_t abi_version = 0;
    std::vector<ComponentInfo> components;
};

// Describe a library by loading it in this process. Used by the scanner
// child; never call it in the host (a bad library would take it down).
LibraryScan describe_in_process(const std::string &path);

// Serialise / parse scan results (the scanner's stdout, the cache).
std::string to_json(const LibraryScan &scan);
LibraryScan scan_from_json(const std::string &text, const std::string &path);

// Describe a library in a child process (the scanner executable). A child
// that crashes, aborts or exceeds `timeout_ms` gives a blacklisted result.
LibraryScan scan_in_child(const std::string &path, const std::string &scanner, int timeout_ms);

// Where the scanner executable is: $MANGO_SCANNER, beside the running
// executable, under ../libexec/mango/, then the build tree's.
std::string find_scanner();

// Trust: the library and its folder must not be world-writable and must be
// owned by this user or root; if `trust_file` is set and names the library
// (sha256sum format: "<hex>  <path>"), its hash must match. Returns "" when
// trusted, else the one-line reason.
std::string trust_problem(const std::string &path, const std::string &trust_file);
std::string sha256_file(const std::string &path);  // lowercase hex; throws on I/O error

struct Options {
    std::vector<std::string> plugin_paths;  // --plugin-path, in order
    bool use_env = true;                    // read MANGO_PLUGIN_PATH
    bool use_builtin = true;                // the install's own plugin folder
    std::string builtin_dir;                // "" = derived from the executable
    std::string cache_file;                 // "" = default; "-" = no cache
    std::string trust_file;                 // "" = $MANGO_TRUST_FILE if set
    std::string scanner;                    // "" = find_scanner()
    int timeout_ms = 10000;                 // per library; $MANGO_SCAN_TIMEOUT_MS overrides
};

class Registry {
public:
    // Finds every library in search order and scans what the cache lacks.
    static Registry discover(const Options &options);
    // Scans exactly these files or folders, ignoring the cache (validate).
    static Registry scan_paths(const std::vector<std::string> &paths, const Options &options);

    const std::vector<std::string> &search_path() const { return search_path_; }
    const std::vector<LibraryScan> &libraries() const { return libraries_; }
    // Usable components, first found wins.
    const std::vector<ComponentInfo> &components() const { return components_; }
    // "router 'simple' in B.so is shadowed by A.so" for each duplicate.
    const std::vector<std::string> &duplicates() const { return duplicates_; }

    const ComponentInfo *find(const std::string &kind, const std::string &name) const;
    std::vector<const ComponentInfo *> find_by_name(const std::string &name) const;
    const ComponentInfo *architecture_for(const std::string &model_type) const;
    // Up to `n` component names close to `name` (edit distance), best first.
    std::vector<std::string> close_names(const std::string &name, size_t n = 3) const;

private:
    static Registry build(const std::vector<std::string> &roots, const Options &options, bool use_cache);
    void add(LibraryScan scan);
    std::vector<std::string> search_path_;
    std::vector<LibraryScan> libraries_;
    std::vector<ComponentInfo> components_;
    std::vector<std::string> duplicates_;
};

// Library files under a folder (recursing two levels), sorted; a file is
// returned as is.
std::vector<std::string> library_files(const std::string &path);

}  // namespace mango::registry
