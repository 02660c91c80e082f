// mango run PIPELINE.toml [--output DIR] [--set KEY=VALUE ...] [--check]
#include "cli.hpp"

#include "pipeline/pipeline.hpp"

#include <iostream>

namespace mango::cli {
namespace {

int run_cmd(const Global &g, const po::variables_map &vm) {
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
    return {{"run", "PIPELINE.toml [--output DIR] [--set KEY=VALUE ...] [--check]",
             "run a pipeline: models, fusions, data, then train/eval/generate/save/load steps",
             [](po::options_description &d, po::positional_options_description &p) {
                 d.add_options()("pipeline", po::value<std::string>()->required(), "the pipeline file (TOML; see configs/README.md)")(
                     "output,o", po::value<std::string>(), "output folder (overrides the file's `output`)")(
                     "set", po::value<std::vector<std::string>>()->composing(),
                     "override a value: KEY.PATH=VALUE, e.g. steps.0.steps=10 or 'steps.*.batch_size=2' (repeatable)")(
                     "check", "validate the file (keys, files, models, plugins and their options) and stop")("no-progress",
                                                                                                             "no progress bars");
                 p.add("pipeline", 1);
             },
             run_cmd}};
}

}  // namespace mango::cli
