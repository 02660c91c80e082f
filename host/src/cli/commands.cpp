// The entry point of libmango-commands.so: every command that needs the
// runtime (LibTorch), each wrapped so the runtime is set up first.
#include "cli.hpp"

#include "abi/runtime.hpp"
#include "util/logging.hpp"

namespace mango::cli {
namespace {

// Threads and Ctrl-C for LibTorch; the logger of this library's copy of the
// logging code.
Command with_runtime(Command c) {
    auto run = c.run;
    c.run = [run](const Global &g, const po::variables_map &vm) {
        init_runtime(g.threads);
        init_logging(g.log_level);
        return run(g, vm);
    };
    return c;
}

}  // namespace
}  // namespace mango::cli

extern "C" __attribute__((visibility("default"))) void mango_runtime_commands_v1(mango::cli::RuntimeCommands *out) {
    using namespace mango::cli;
    for (auto make :
         {plugin_test_commands, inspect_commands, tokenize_commands, generate_commands, merge_commands, convert_commands, run_commands})
        for (Command &c : make()) out->commands.push_back(with_runtime(std::move(c)));
    out->describe = [](const Global &g) {
        mango::init_runtime(g.threads);
        return mango::runtime_description();
    };
}
