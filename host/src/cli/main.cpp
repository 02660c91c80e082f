// mango — entry point: global options, command dispatch, exit codes.
//   0 success, 1 the command failed, 2 bad command line.
// This executable does not link LibTorch: the plugin commands run here
// directly, everything else comes from the runtime library (load_commands.cpp)
// the first time a command needs it.
#include "cli.hpp"

#include "util/error.hpp"
#include "util/logging.hpp"

#include <mango/plugin.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <thread>

namespace mango::cli {
namespace {

po::options_description global_options(Global &g) {
    po::options_description d("Global options");
    d.add_options()("help,h", "show help (for a command: mango COMMAND --help)")("version", "print versions and exit")(
        "plugin-path", po::value(&g.plugin_paths)->composing(), "search DIR for plugins first (repeatable)")(
        "log-level", po::value(&g.log_level)->default_value("warn"), "trace|debug|info|warn|error|off")(
        "trust-file", po::value(&g.trust_file), "sha256sum-style pins for plugin libraries (or MANGO_TRUST_FILE)")(
        "threads", po::value(&g.threads)->default_value(0), "CPU threads for tensor math (0 = all cores)")("json", po::bool_switch(&g.json),
                                                                                                           "machine-readable output");
    return d;
}

const std::vector<std::string> kValued = {"--plugin-path", "--log-level", "--trust-file", "--threads"};

void print_overview(std::ostream &out, const std::vector<Command> &cmds, const std::string &note) {
    Global g;
    out << "mango " << MANGO_VERSION_STRING << " — compose large language models from plugins\n\n"
        << "Usage: mango [GLOBAL OPTIONS] COMMAND [ARGS]\n\nCommands:\n";
    for (const Command &c : cmds) {
        std::string head = "  " + c.name + " " + c.usage;
        out << head << std::string(head.size() < 44 ? 44 - head.size() : 1, ' ') << c.summary << "\n";
    }
    if (!note.empty()) out << "  (" << note << ")\n";
    out << "\n"
        << global_options(g) << "\nEnvironment: MANGO_PLUGIN_PATH (colon-separated plugin folders), MANGO_TRUST_FILE,\n"
        << "MANGO_CACHE_DIR (plugin scan cache), MANGO_SCAN_TIMEOUT_MS.\n";
}

// Leading words that are not options: "plugins list", "run", ...
struct Words {
    std::string words;
    std::vector<std::string> rest;
};

Words split(const std::vector<std::string> &args) {
    Words w;
    bool done = false;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string &a = args[i];
        if (done || (!a.empty() && a[0] == '-')) {
            w.rest.push_back(a);
            if (!done && std::find(kValued.begin(), kValued.end(), a) != kValued.end() && i + 1 < args.size()) w.rest.push_back(args[++i]);
            continue;
        }
        // The first two words at most name a command; later words are arguments.
        const size_t n_words = w.words.empty() ? 0 : size_t(std::count(w.words.begin(), w.words.end(), ' ') + 1);
        if (n_words >= 2) {
            w.rest.push_back(a);
            done = true;
            continue;
        }
        w.words += (w.words.empty() ? "" : " ") + a;
    }
    return w;
}

const Command *find(const std::vector<Command> &cmds, const std::string &name) {
    for (const Command &c : cmds)
        if (c.name == name) return &c;
    return nullptr;
}
bool is_prefix(const std::vector<Command> &cmds, const std::string &words) {
    for (const Command &c : cmds)
        if (c.name.rfind(words + " ", 0) == 0) return true;
    return false;
}

int run(int argc, char **argv) {
    std::vector<Command> cmds = plugin_commands();
    const std::vector<std::string> args(argv + 1, argv + argc);

    // Resolve the command: the plugin commands here, the rest from the runtime.
    auto resolve = [&](const std::vector<std::string> &a, Words &w) -> const Command * {
        w = split(a);
        std::string words = w.words;
        // Try the longest prefix of the words that names a command; the remaining word is an argument.
        for (int take = 2; take >= 1; --take) {
            std::vector<std::string> parts;
            std::string p;
            for (char ch : words) {
                if (ch == ' ')
                    parts.push_back(p), p.clear();
                else
                    p += ch;
            }
            if (!p.empty()) parts.push_back(p);
            if (int(parts.size()) < take) continue;
            std::string name;
            for (int i = 0; i < take; ++i) name += (i ? " " : "") + parts[size_t(i)];
            if (const Command *c = find(cmds, name)) {
                std::vector<std::string> rest;
                for (size_t i = size_t(take); i < parts.size(); ++i) rest.push_back(parts[i]);
                rest.insert(rest.end(), w.rest.begin(), w.rest.end());
                w.words = name;
                w.rest = rest;
                return c;
            }
        }
        return nullptr;
    };
    Words w;
    const Command *cmd = resolve(args, w);
    std::string load_note;
    std::function<std::string(const Global &)> describe;
    const bool wants_version = std::find(args.begin(), args.end(), "--version") != args.end();
    if (!cmd || wants_version) {
        try {
            const RuntimeCommands &rt = runtime_commands();
            for (const Command &c : rt.commands) cmds.push_back(c);
            describe = rt.describe;
        } catch (const std::exception &e) {
            load_note = std::string("runtime commands unavailable: ") + e.what();
        }
        if (!cmd) cmd = resolve(args, w);
    }
    if (!cmd && !w.words.empty() && !is_prefix(cmds, w.words)) {
        if (!load_note.empty()) throw std::runtime_error("unknown command '" + w.words + "' (" + load_note + ")");
        throw UsageError("unknown command '" + w.words + "'");
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
        po::store(po::command_line_parser(w.rest).options(opts).positional(pos).run(), vm);
        if (!vm.count("help") && !vm.count("version")) po::notify(vm);  // required options
    } catch (const po::error &e) {
        throw UsageError(e.what());
    }

    if (vm.count("version")) {
        std::cout << "mango " << MANGO_VERSION_STRING << "\nplugin ABI " << MANGO_ABI_VERSION << "\n"
                  << (describe ? describe(g) : load_note) << "\n";
        return 0;
    }
    if (!cmd) {
        if (!w.words.empty() && !vm.count("help")) throw UsageError("'" + w.words + "' needs a subcommand");
        print_overview(vm.count("help") ? std::cout : std::cerr, cmds, load_note);
        return vm.count("help") ? 0 : 2;
    }
    if (vm.count("help")) {
        std::cout << "Usage: mango " << cmd->name << " " << cmd->usage << "\n" << cmd->summary << "\n\n" << opts;
        return 0;
    }

    if (!init_logging(g.log_level)) throw UsageError("unknown --log-level '" + g.log_level + "'");
    // More threads than cores only slow tensor math down (2,000 on 2 cores: a 1 s merge took 16 s).
    const int max_threads = 4 * static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    if (g.threads < 0 || g.threads > max_threads)
        throw UsageError("--threads must be 0 (every core) or 1.." + std::to_string(max_threads) + " (4 per core), not " +
                         std::to_string(g.threads));
    return cmd->run(g, vm);
}

// A message is for reading: one that echoes a huge value (a 2 MB token in a
// TOML file) keeps its head and tail.
std::string readable(const std::string &message) {
    std::string m = mango::without_backtrace(message);
    for (size_t at = m.find('\0'); at != std::string::npos; at = m.find('\0', at + 2)) m.replace(at, 1, "\\0");  // shown, not cut there
    constexpr size_t kMax = 2000;
    if (m.size() <= kMax) return m;
    return m.substr(0, 1400) + " [... " + std::to_string(m.size() - 1800) + " characters cut ...] " + m.substr(m.size() - 400);
}

}  // namespace
}  // namespace mango::cli

int main(int argc, char **argv) {
    // Before LibTorch (and its OpenMP) loads: workers sleep while BLAS runs (see abi/runtime.cpp).
    ::setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
    try {
        return mango::cli::run(argc, argv);
    } catch (const mango::cli::UsageError &e) {
        std::cerr << "mango: " << mango::cli::readable(e.what()) << "\nTry 'mango --help'.\n";
        return 2;
    } catch (const std::filesystem::filesystem_error &e) {  // "filesystem error: status: File name too long [<50,000 characters>]"
        const std::string path = e.path1().empty() ? "an empty path" : mango::clip(e.path1().string());
        std::cerr << "mango: error: " << mango::cli::readable(path + ": " + e.code().message()) << "\n";
        return 1;
    } catch (const std::exception &e) {
        std::cerr << "mango: error: " << mango::cli::readable(e.what()) << "\n";
        return 1;
    }
}
