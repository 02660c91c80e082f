// mango — entry point: global options, command dispatch, exit codes.
//   0 success, 1 the command failed, 2 bad command line.
#include "cli.hpp"

#include "mango/host/host_api.hpp"
#include "mango/host/runtime.hpp"

#include "mango/host/logging.hpp"

#include <iostream>

namespace mango::cli {
namespace {

std::vector<Command> all_commands() {
    std::vector<Command> cmds = plugin_commands();
    for (auto &c : inspect_commands()) cmds.push_back(std::move(c));
    for (auto &c : tokenize_commands()) cmds.push_back(std::move(c));
    for (auto &c : generate_commands()) cmds.push_back(std::move(c));
    for (auto &c : run_commands()) cmds.push_back(std::move(c));
    return cmds;
}

po::options_description global_options(Global &g) {
    po::options_description d("Global options");
    d.add_options()("help,h", "show help (for a command: mango COMMAND --help)")("version", "print versions and exit")(
        "plugin-path", po::value(&g.plugin_paths)->composing(), "search DIR for plugins first (repeatable)")(
        "log-level", po::value(&g.log_level)->default_value("warn"), "trace|debug|info|warn|error|off")(
        "trust-file", po::value(&g.trust_file), "sha256sum-style pins for plugin libraries (or MANGO_TRUST_FILE)")(
        "threads", po::value(&g.threads)->default_value(0), "CPU threads for tensor math (0 = all cores)")(
        "json", po::bool_switch(&g.json), "machine-readable output");
    return d;
}

const std::vector<std::string> kValued = {"--plugin-path", "--log-level", "--trust-file", "--threads"};

void print_overview(std::ostream &out, const std::vector<Command> &cmds) {
    Global g;
    out << "mango " << MANGO_VERSION_STRING << " — compose large language models from plugins\n\n"
        << "Usage: mango [GLOBAL OPTIONS] COMMAND [ARGS]\n\nCommands:\n";
    for (const Command &c : cmds) {
        std::string head = "  " + c.name + " " + c.usage;
        out << head << std::string(head.size() < 44 ? 44 - head.size() : 1, ' ') << c.summary << "\n";
    }
    out << "\n" << global_options(g) << "\nEnvironment: MANGO_PLUGIN_PATH (colon-separated plugin folders), MANGO_TRUST_FILE,\n"
        << "MANGO_CACHE_DIR (plugin scan cache), MANGO_SCAN_TIMEOUT_MS.\n";
}

int run(int argc, char **argv) {
    const std::vector<Command> cmds = all_commands();
    std::vector<std::string> args(argv + 1, argv + argc);

    // Find the command words: leading non-option tokens.
    std::string words;
    std::vector<std::string> rest;
    const Command *cmd = nullptr;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string &a = args[i];
        if (cmd || (!a.empty() && a[0] == '-')) {
            rest.push_back(a);
            if (!cmd && std::find(kValued.begin(), kValued.end(), a) != kValued.end() && i + 1 < args.size())
                rest.push_back(args[++i]);
            continue;
        }
        words += (words.empty() ? "" : " ") + a;
        for (const Command &c : cmds)
            if (c.name == words) cmd = &c;
        bool prefix = false;
        for (const Command &c : cmds) prefix = prefix || c.name.rfind(words + " ", 0) == 0;
        if (!cmd && !prefix) throw UsageError("unknown command '" + words + "'");
    }

    Global g;
    po::options_description opts = global_options(g);
    po::positional_options_description pos;
    if (cmd) {
        po::options_description own(cmd->name + " options");
        cmd->declare(own, pos);
        opts.add(own);
    }
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(rest).options(opts).positional(pos).run(), vm);
        if (!vm.count("help") && !vm.count("version")) po::notify(vm);  // required options
    } catch (const po::error &e) {
        throw UsageError(e.what());
    }

    init_runtime(g.threads);
    if (vm.count("version")) {
        std::cout << "mango " << MANGO_VERSION_STRING << "\nplugin ABI " << MANGO_ABI_VERSION << "\n"
                  << runtime_description() << "\n";
        return 0;
    }
    if (!cmd) {
        if (!words.empty() && !vm.count("help")) throw UsageError("'" + words + "' needs a subcommand");
        print_overview(vm.count("help") ? std::cout : std::cerr, cmds);
        return vm.count("help") ? 0 : 2;
    }
    if (vm.count("help")) {
        std::cout << "Usage: mango " << cmd->name << " " << cmd->usage << "\n" << cmd->summary << "\n\n" << opts;
        return 0;
    }

    if (!init_logging(g.log_level)) throw UsageError("unknown --log-level '" + g.log_level + "'");
    return cmd->run(g, vm);
}

}  // namespace
}  // namespace mango::cli

int main(int argc, char **argv) {
    try {
        return mango::cli::run(argc, argv);
    } catch (const mango::cli::UsageError &e) {
        std::cerr << "mango: " << e.what() << "\nTry 'mango --help'.\n";
        return 2;
    } catch (const std::exception &e) {
        std::cerr << "mango: error: " << e.what() << "\n";
        return 1;
    }
}
