// mango run PIPELINE.toml [--output DIR] [--set KEY=VALUE ...] [--check] [--nproc N]
#include "cli.hpp"
#include "launch.hpp"

#include "dist/process_group.hpp"
#include "pipeline/pipeline.hpp"

#include <cstdlib>
#include <iostream>

namespace mango::cli {
namespace {

int run_pipeline(const Global &g, const po::variables_map &vm);

int run_cmd(const Global &g, const po::variables_map &vm) {
    const int nproc = vm["nproc"].as<int>();
    if (nproc < 1 || nproc > 1024) throw UsageError("--nproc must be from 1 to 1024, not " + std::to_string(nproc));
    const char *world = std::getenv("WORLD_SIZE");
    if (nproc > 1 && !(world && *world)) return launch_local_ranks(nproc);  // this process only waits for its ranks
    try {
        dist::init_from_env(std::chrono::seconds(vm["dist-timeout"].as<int>()), vm["dist-backend"].as<std::string>());
        const int code = run_pipeline(g, vm);
        dist::end_nccl_rank(code);
        return code;
    } catch (const std::exception &e) {
        if (!dist::current().distributed()) throw;
        const std::string tag = dist::current().tag(), what = e.what();
        const std::string message = what.rfind(tag, 0) == 0 ? what : tag + what;
        if (dist::current().backend() == "nccl") {
            std::cerr << "mango: error: " << message << "\n";
            dist::end_nccl_rank(1);
        }
        throw HostError(message);
    }
}

int run_pipeline(const Global &g, const po::variables_map &vm) {
    const PluginHost host(registry::Registry::discover(registry_options(g)));
    RunSettings settings;
    settings.json = g.json;
    if (vm.count("output")) settings.output = vm["output"].as<std::string>();
    if (vm.count("set")) settings.sets = vm["set"].as<std::vector<std::string>>();
    settings.progress = !vm.count("no-progress");
    const PipelineSpec spec = Pipeline::parse(host, vm["pipeline"].as<std::string>(), settings);
    if (vm.count("check")) {
        if (g.json)
            std::cout << nlohmann::json{{"valid", true}, {"steps", spec.steps.size()}, {"output", spec.output}}.dump(2) << "\n";
        else
            std::cout << spec.file << ": valid (" << spec.models.size() << " models, " << spec.data.size() << " data sets, "
                      << spec.steps.size() << " steps)\n";
        return 0;
    }
    const nlohmann::json summary = Pipeline::run(host, spec, settings);
    if (g.json) std::cout << summary.dump(2) << "\n";
    return 0;
}

}  // namespace

std::vector<Command> run_commands() {
    return {{"run", "PIPELINE.toml [--output DIR] [--set KEY=VALUE ...] [--check] [--nproc N]",
             "run a pipeline: models, fusions, data, then train/eval/generate/save/load steps",
             [](po::options_description &d, po::positional_options_description &p) {
                 d.add_options()("pipeline", po::value<std::string>()->required(), "the pipeline file (TOML; see configs/README.md)")(
                     "output,o", po::value<std::string>(), "output folder (overrides the file's `output`)")(
                     "set", po::value<std::vector<std::string>>()->composing(),
                     "override a value: KEY.PATH=VALUE, e.g. steps.0.steps=10 or 'steps.*.batch_size=2' (repeatable)")(
                     "check", "validate the file (keys, files, models, plugins and their options) and stop")("no-progress",
                                                                                                             "no progress bars")(
                     "nproc", po::value<int>()->default_value(1),
                     "data-parallel training over N local processes (c10d): each takes its share of every batch; "
                     "under torchrun or srun (WORLD_SIZE set) each process is one rank and this is ignored")(
                     "dist-backend", po::value<std::string>()->default_value("auto"),
                     "c10d backend of a distributed run: auto (NCCL with GPUs, Gloo without), nccl or gloo; "
                     "with NCCL each rank drives GPU LOCAL_RANK and `device = \"cuda\"` means that GPU")(
                     "dist-timeout", po::value<int>()->default_value(1800),
                     "seconds a rank waits for the others (rendezvous, all-reduce, a step that rank 0 runs first) before failing");
                 p.add("pipeline", 1);
             },
             run_cmd}};
}

}  // namespace mango::cli
