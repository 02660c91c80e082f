// mango convert-moe MODEL_DIR OUT_DIR — a dense model's FFNs turned into
// experts by a converter plugin, each layer tested and reverted when it hurts.
#include "cli.hpp"

#include "abi/plugins.hpp"
#include "moe/convert.hpp"

#include <nlohmann/json.hpp>

#include <iostream>
#include <sstream>

namespace mango::cli {
namespace {

std::vector<std::string> split_list(const std::string &s) {
    std::vector<std::string> out;
    std::stringstream in(s);
    for (std::string item; std::getline(in, item, ',');)
        if (!item.empty()) out.push_back(item);
    return out;
}

std::vector<int32_t> parse_layers(const std::string &s) {
    std::vector<int32_t> out;
    for (const std::string &item : split_list(s)) {
        size_t used = 0;
        int v = 0;
        try {
            v = std::stoi(item, &used);
        } catch (const std::exception &) {
            used = 0;
        }
        if (used != item.size()) throw UsageError("--layers expects layer numbers like 1,3,5, not '" + s + "'");
        out.push_back(v);
    }
    if (out.empty()) throw UsageError("--layers names no layer; give layer numbers like 1,3,5, or leave it out to convert every layer");
    return out;
}

// --set KEY=VALUE: VALUE as JSON when it parses (numbers, true, lists), else as a string.
nlohmann::json parse_settings(const std::vector<std::string> &sets) {
    nlohmann::json o = nlohmann::json::object();
    for (const std::string &kv : sets) {
        const size_t eq = kv.find('=');
        if (eq == std::string::npos || eq == 0) throw UsageError("--set expects KEY=VALUE, not '" + kv + "'");
        const std::string v = kv.substr(eq + 1);
        nlohmann::json j = nlohmann::json::parse(v, nullptr, false);
        o[kv.substr(0, eq)] = j.is_discarded() ? nlohmann::json(v) : j;
    }
    return o;
}

int convert_cmd(const Global &g, const po::variables_map &vm) {
    const PluginHost host(registry::Registry::discover(registry_options(g)));
    moe::ConvertOptions o;
    o.converter = vm["converter"].as<std::string>();
    o.converter_options = parse_settings(vm.count("set") ? vm["set"].as<std::vector<std::string>>() : std::vector<std::string>{});
    o.where = "converter '" + o.converter + "'";
    o.experts = vm["experts"].as<int64_t>();
    o.top_k = vm["top-k"].as<int64_t>();
    if (vm.count("layers") && vm.count("every")) throw UsageError("give --layers or --every, not both");
    if (vm.count("layers")) o.layers = parse_layers(vm["layers"].as<std::string>());
    if (vm.count("every")) o.every = vm["every"].as<int64_t>();
    if (vm.count("format")) o.format = vm["format"].as<std::string>();
    if (vm.count("test-data")) o.test_data = vm["test-data"].as<std::string>();
    o.max_increase = vm["max-increase"].as<double>();
    o.metric = vm["metric"].as<std::string>();
    o.test_sequences = vm["test-sequences"].as<int64_t>();
    o.seq_len = vm["seq-len"].as<int64_t>();
    if (vm.count("calibration-data")) o.calibration_data = vm["calibration-data"].as<std::string>();
    o.calibration_tokens = vm["calibration-tokens"].as<int64_t>();
    if (vm.count("prompts")) o.prompts = vm["prompts"].as<std::string>();
    if (vm.count("gate-mode")) o.gate_mode = vm["gate-mode"].as<std::string>();
    if (vm.count("sources")) o.sources = split_list(vm["sources"].as<std::string>());
    o.rest = vm["rest"].as<std::string>();
    if (vm.count("tokenizer")) o.tokenizer = vm["tokenizer"].as<std::string>();
    o.seed = vm["seed"].as<uint64_t>();
    o.force = vm.count("force") > 0;
    o.progress = !g.json && !vm.count("no-progress");
    const moe::ConvertResult r = moe::convert(host, vm["model"].as<std::string>(), vm["out"].as<std::string>(), o);
    if (g.json) {
        nlohmann::json layers = nlohmann::json::array();
        for (const auto &x : r.layers)
            layers.push_back({{"layer", x.layer}, {"converted", x.converted}, {"before", x.before}, {"after", x.after}});
        nlohmann::json j = {{"output", r.out_dir}, {"format", r.format}, {"experts", r.experts}, {"top_k", r.top_k}, {"layers", layers}};
        if (!r.metric.empty()) j.update({{"metric", r.metric}, {"dense", r.dense_metric}, {"final", r.final_metric}});
        std::cout << j.dump(2) << "\n";
    } else {
        std::cout << moe::outcome_table(r) << "wrote " << r.format << " model (" << r.experts << " experts, top-" << r.top_k << ") to "
                  << r.out_dir << "\n";
    }
    return 0;
}

}  // namespace

std::vector<Command> convert_commands() {
    return {{"convert-moe",
             "MODEL_DIR OUT_DIR [--converter upcycle|split|from_models] [--experts N] [--top-k K] [--every N | --layers 1,3] "
             "[--test-data FILE --max-increase X] [--format mixtral|qwen2_moe|mango] [--json]",
             "turn a dense model into a mixture of experts, testing each converted layer and reverting the ones that hurt",
             [](po::options_description &d, po::positional_options_description &p) {
                 d.add_options()("model", po::value<std::string>()->required(), "dense model folder (llama, mistral, qwen2)")(
                     "out", po::value<std::string>()->required(), "output folder (written whole or not at all)")(
                     "converter", po::value<std::string>()->default_value("upcycle"),
                     "moe_converter plugin: upcycle, split, from_models (`mango plugins list`)")(
                     "set", po::value<std::vector<std::string>>()->composing(),
                     "converter option KEY=VALUE, repeatable (`mango plugins info CONVERTER` lists them)")(
                     "experts", po::value<int64_t>()->default_value(4), "experts per converted layer")(
                     "top-k", po::value<int64_t>()->default_value(2), "experts per token")(
                     "every", po::value<int64_t>(), "convert layers l with (l + 1) % N == 0 (default 1: every layer)")(
                     "layers", po::value<std::string>(), "convert these layers (0-based, comma-separated)")(
                     "format", po::value<std::string>(),
                     "mixtral (every layer converted) or qwen2_moe (any layers) for llama/mistral/qwen2 sources; mango (the source's own "
                     "layout plus experts: gpt2, gptj, gpt_neo) for others; default: mixtral when it can express the result")(
                     "test-data", po::value<std::string>(), "text (.txt/.jsonl) to test each converted layer on")(
                     "max-increase", po::value<double>()->default_value(0.02),
                     "revert a layer whose conversion raises the metric by more than this (perplexity: relative; kl: nats)")(
                     "metric", po::value<std::string>()->default_value("perplexity"),
                     "perplexity, or kl (divergence from the dense model's predictions)")(
                     "test-sequences", po::value<int64_t>()->default_value(16), "test sequences")(
                     "seq-len", po::value<int64_t>()->default_value(128), "tokens per test / calibration sequence")(
                     "calibration-data", po::value<std::string>(), "text whose FFN inputs initialise routers (router_init = data)")(
                     "calibration-tokens", po::value<int64_t>()->default_value(2048), "calibration tokens per layer")(
                     "prompts", po::value<std::string>(),
                     "per-expert prompts (YAML/JSON list of positive_prompts/negative_prompts, or a mergekit-moe config)")(
                     "gate-mode", po::value<std::string>(),
                     "router rows from prompts: hidden (default), hidden_avg, cheap_embed; or random, uniform_random")(
                     "sources", po::value<std::string>(), "from_models: one fine-tune folder per expert, comma-separated")(
                     "rest", po::value<std::string>()->default_value("base"),
                     "from_models: attention, norms and embeddings from the base, or the average of the sources")(
                     "tokenizer", po::value<std::string>(), "tokenizer.json (default: MODEL_DIR's)")(
                     "seed", po::value<uint64_t>()->default_value(0), "seed of random choices (noise, drops, splits, routers)")(
                     "force", "replace OUT_DIR if it exists")("no-progress", "no progress bars");
                 p.add("model", 1).add("out", 1);
             },
             convert_cmd}};
}

}  // namespace mango::cli
