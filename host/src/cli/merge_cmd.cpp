// mango merge CONFIG.yml OUT_DIR — mergekit's YAML, merged tensor by tensor.
#include "cli.hpp"

#include "merge/merge.hpp"

#include <nlohmann/json.hpp>

#include <iostream>

#include <cmath>

namespace mango::cli {
namespace {

uint64_t parse_size(const std::string &s) {
    // "5B", "500M", "2G", "1000000" (decimal units, bytes; as mergekit's --out-shard-size)
    size_t used = 0;
    double v = 0;
    try {
        v = std::stod(s, &used);
    } catch (const std::exception &) {
        throw UsageError("--max-shard-size expects a size like 5B, 500M or 2000000000, not '" + s + "'");
    }
    const std::string unit = s.substr(used);
    const double scale = unit.empty() ? 1 : unit == "K" ? 1e3 : unit == "M" ? 1e6 : unit == "B" || unit == "G" ? 1e9 : -1;
    if (scale < 0 || !(v >= 0) || !std::isfinite(v * scale) || v * scale >= 9.2e18)
        throw UsageError("--max-shard-size expects a size like 5B, 500M or 2000000000, not '" + s + "'");
    return uint64_t(v * scale);
}

int merge_cmd(const Global &g, const po::variables_map &vm) {
    const PluginHost host(registry::Registry::discover(registry_options(g)));
    const merge::Config config = merge::load_config(vm["config"].as<std::string>());
    merge::Options o;
    o.device = vm["device"].as<std::string>();
    if (vm.count("dtype")) o.dtype = vm["dtype"].as<std::string>();
    if (!o.dtype.empty() && o.dtype != "float32" && o.dtype != "bfloat16" && o.dtype != "float16")
        throw UsageError("--dtype must be float32, bfloat16 or float16, not '" + o.dtype + "'");
    o.force = vm.count("force") > 0;
    o.seed = vm["seed"].as<uint64_t>();
    o.max_shard_bytes = parse_size(vm["max-shard-size"].as<std::string>());
    o.progress = !g.json && !vm.count("no-progress");
    if (vm.count("check")) {
        const merge::Result r = merge::check(host, config, o);
        if (g.json)
            std::cout
                << nlohmann::json{{"valid", true}, {"method", r.method}, {"tensors", r.tensors}, {"layers", r.layers}, {"models", r.models}}
                       .dump(2)
                << "\n";
        else
            std::cout << config.file << ": valid (" << r.method << ", " << r.models.size() << " models, " << r.tensors << " tensors, "
                      << r.layers << " layers)\n";
        return 0;
    }
    if (!vm.count("out")) throw UsageError("mango merge needs OUT_DIR (or --check)");
    const merge::Result r = merge::run(host, config, vm["out"].as<std::string>(), o);
    const nlohmann::json j = {{"output", r.out_dir},
                              {"method", r.method},
                              {"tensors", r.tensors},
                              {"skipped", r.skipped},
                              {"layers", r.layers},
                              {"bytes_read", r.bytes_read},
                              {"bytes_written", r.bytes_written},
                              {"seconds", r.seconds},
                              {"files", r.files},
                              {"models", r.models}};
    if (g.json)
        std::cout << j.dump(2) << "\n";
    else
        std::cout << "merged " << r.models.size() << " models with " << r.method << " into " << r.out_dir << " (" << r.tensors
                  << " tensors)\n";
    return 0;
}

}  // namespace

std::vector<Command> merge_commands() {
    return {{"merge", "CONFIG.yml OUT_DIR [--dtype D] [--device cpu|cuda] [--force] [--check] [--json]",
             "merge models as a mergekit YAML says (every mergekit method), tensor by tensor, into a Hugging Face folder",
             [](po::options_description &d, po::positional_options_description &p) {
                 d.add_options()("config", po::value<std::string>()->required(), "mergekit configuration (YAML)")(
                     "out", po::value<std::string>(), "output folder (written whole or not at all)")(
                     "dtype", po::value<std::string>(), "compute dtype: float32|bfloat16|float16 (overrides the YAML's dtype)")(
                     "device", po::value<std::string>()->default_value("cpu"), "cpu or cuda[:N]")("force", "replace OUT_DIR if it exists")(
                     "seed", po::value<uint64_t>()->default_value(0), "seed of random methods (DARE, DELLA)")(
                     "max-shard-size", po::value<std::string>()->default_value("5B"), "bytes per output shard: 5B, 500M, ...")(
                     "check", "validate the configuration (models, method, parameters, layer ranges) and stop")("no-progress",
                                                                                                                "no progress bar");
                 p.add("config", 1).add("out", 1);
             },
             merge_cmd}};
}

}  // namespace mango::cli
