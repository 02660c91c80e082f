// The `mango` command line: a table of commands, each with its options.
#pragma once

#include <mango/registry/registry.hpp>

#include <boost/program_options.hpp>

#include <functional>
#include <string>
#include <vector>

namespace mango::cli {

namespace po = boost::program_options;

// Options every command accepts.
struct Global {
    std::vector<std::string> plugin_paths;
    std::string log_level = "warn";
    std::string trust_file;
    bool json = false;
    int threads = 0;  // 0 = all cores
};

struct Command {
    std::string name;     // "plugins list"
    std::string usage;    // "[--json]"
    std::string summary;  // one line
    std::function<void(po::options_description &, po::positional_options_description &)> declare;
    std::function<int(const Global &, const po::variables_map &)> run;
};

// Thrown for bad command lines: printed with usage, exit status 2.
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// TEXT itself when it is valid UTF-8; with `lossy`, invalid bytes replaced
// by U+FFFD (what Hugging Face tokenizers see from Python); else a
// UsageError naming `what` and the byte offset.
std::string checked_utf8(const std::string &text, const std::string &what, bool lossy);

// The registry search options the global flags ask for.
inline registry::Options registry_options(const Global &g) {
    registry::Options o;
    o.plugin_paths = g.plugin_paths;
    o.trust_file = g.trust_file;
    return o;
}

// In the `mango` executable (no LibTorch): plugins list, info, validate.
std::vector<Command> plugin_commands();

// In lib/mango/libmango-commands.so, loaded when a command needs the runtime.
std::vector<Command> generate_commands();
std::vector<Command> inspect_commands();
std::vector<Command> tokenize_commands();
std::vector<Command> run_commands();
std::vector<Command> plugin_test_commands();
std::vector<Command> merge_commands();
std::vector<Command> convert_commands();

// What the thin executable finds in the runtime library (load_commands.cpp).
struct RuntimeCommands {
    std::vector<Command> commands;
    // "LibTorch 1.13.1, 2 threads, CUDA: not built", with the threads the flags ask for.
    std::function<std::string(const Global &)> describe;
};
// Loads the runtime library once; throws naming the file when it cannot.
const RuntimeCommands &runtime_commands();

// The symbol the runtime library exports: fills `out` (C++ types: the library
// and the executable are built together, never mixed across versions).
#define MANGO_COMMANDS_SYMBOL "mango_runtime_commands_v1"
using RuntimeCommandsFn = void (*)(RuntimeCommands *out);

}  // namespace mango::cli
