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

// The registry search options the global flags ask for.
registry::Options registry_options(const Global &g);

std::vector<Command> plugin_commands();
std::vector<Command> generate_commands();
std::vector<Command> inspect_commands();
std::vector<Command> tokenize_commands();
std::vector<Command> run_commands();

}  // namespace mango::cli
