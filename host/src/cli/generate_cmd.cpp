// mango generate MODEL_DIR --prompt TEXT [--prompt TEXT...] [options]
#include "cli.hpp"

#include "formats/unicode.hpp"

#include "formats/json_file.hpp"
#include "formats/tokenizer.hpp"
#include "model/generate.hpp"
#include "util/error.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>

namespace mango::cli {
namespace {

at::ScalarType parse_dtype(const std::string &s) {
    if (s == "float32" || s == "fp32") return at::kFloat;
    if (s == "bfloat16" || s == "bf16") return at::kBFloat16;
    if (s == "float16" || s == "fp16") return at::kHalf;
    throw UsageError("--dtype must be float32, bfloat16 or float16, not '" + s + "'");
}

// eos ids from config.json and generation_config.json.
std::vector<int64_t> stop_ids(const Model &m) {
    std::vector<int64_t> ids = m.config().eos_token_ids;
    const auto gen = std::filesystem::path(m.dir()) / "generation_config.json";
    if (std::filesystem::exists(gen)) {
        const auto j = formats::read_json_file(gen, "the model's generation settings");
        if (j.contains("eos_token_id")) {
            const auto &e = j["eos_token_id"];
            const bool ok = e.is_null() || e.is_number_integer() ||
                            (e.is_array() && std::all_of(e.begin(), e.end(), [](auto &x) { return x.is_number_integer(); }));
            if (!ok) throw HostError(gen.string() + ": eos_token_id must be a token id or a list of them, not " + clip(e.dump()));
            if (e.is_number_integer()) ids.push_back(e.get<int64_t>());
            if (e.is_array())
                for (const auto &x : e) ids.push_back(x.get<int64_t>());
        }
    }
    return ids;
}

int generate_cmd(const Global &g, const po::variables_map &vm) {
    const std::string dir = vm["model"].as<std::string>();
    std::vector<std::string> prompts;
    for (const auto &p : vm["prompt"].as<std::vector<std::string>>())
        prompts.push_back(checked_utf8(p, "--prompt", vm.count("lossy-utf8") > 0));
    GenerateOptions o;
    o.max_new_tokens = vm["max-new-tokens"].as<int64_t>();
    const bool sampling = vm.count("temperature") || vm.count("top-k") || vm.count("top-p") || vm.count("seed");
    if (sampling && vm.count("greedy")) throw UsageError("--greedy cannot be combined with --temperature/--top-k/--top-p/--seed");
    o.greedy = !sampling;
    if (vm.count("temperature")) o.temperature = vm["temperature"].as<double>();
    if (vm.count("top-k")) o.top_k = vm["top-k"].as<int64_t>();
    if (vm.count("top-p")) o.top_p = vm["top-p"].as<double>();
    if (vm.count("seed")) o.seed = vm["seed"].as<uint64_t>();
    if (o.temperature <= 0 || o.top_p <= 0 || o.top_p > 1 || o.top_k < 0 || o.max_new_tokens < 0)
        throw UsageError("need --temperature > 0, 0 < --top-p <= 1, --top-k >= 0, --max-new-tokens >= 0");
    o.no_repeat_ngram_size = vm["no-repeat-ngram-size"].as<int64_t>();
    o.use_cache = !vm.count("no-cache");

    const PluginHost host(registry::Registry::discover(registry_options(g)));
    auto model = Model::load(host, dir, parse_dtype(vm["dtype"].as<std::string>()));
    const auto tok = formats::Tokenizer::from_file(vm.count("tokenizer") ? vm["tokenizer"].as<std::string>() : dir);
    o.stop_ids = stop_ids(*model);
    o.pad_id = model->config().pad_token_id.value_or(o.stop_ids.empty() ? 0 : o.stop_ids[0]);

    std::vector<std::vector<int64_t>> ids;
    for (const auto &p : prompts) {
        std::vector<int64_t> row;
        for (int32_t id : tok.encode(p, true)) row.push_back(id);
        if (row.empty()) throw std::runtime_error("prompt '" + clip(p) + "' encodes to no tokens");
        for (int64_t id : row)
            if (id >= model->info().vocab_size)
                throw std::runtime_error("prompt token id " + std::to_string(id) + " is outside the model's vocabulary of " +
                                         std::to_string(model->info().vocab_size) + " (tokenizer and model do not match)");
        ids.push_back(std::move(row));
    }
    // Lengths are checked before anything runs: past the model's positions only when asked.
    // (rotary models have no hard limit; config.json's max_position_embeddings is what they were trained for)
    const int64_t limit = model->max_positions() > 0 ? model->max_positions() : model->config().max_positions;
    size_t longest = 0;
    for (const auto &row : ids) longest = std::max(longest, row.size());
    if (limit > 0 && int64_t(longest) + o.max_new_tokens > limit && !vm.count("past-max-positions"))
        throw UsageError("a prompt of " + std::to_string(longest) + " tokens plus --max-new-tokens " + std::to_string(o.max_new_tokens) +
                         " exceeds the model's " + std::to_string(limit) +
                         " positions (max_position_embeddings); shorten them, or pass --past-max-positions");
    // One prompt, as text: print each piece as soon as it is generated.
    const bool stream = !g.json && prompts.size() == 1;
    std::vector<int32_t> streamed;
    std::string shown;
    if (stream) {
        std::cout << prompts[0] << std::flush;
        o.on_token = [&](size_t, int64_t token) {
            streamed.push_back(int32_t(token));
            const std::string text = tok.decode(streamed, true);
            // Print what is new once it is whole UTF-8 (a byte-level token may end mid-character).
            if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0 &&
                formats::unicode::first_invalid_utf8(text) == std::string::npos) {
                std::cout << text.substr(shown.size()) << std::flush;
                shown = text;
            }
        };
    }
    const auto t0 = std::chrono::steady_clock::now();
    const auto out = mango::generate(*model, ids, o);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    size_t n_new = 0;
    nlohmann::json results = nlohmann::json::array();
    for (size_t i = 0; i < prompts.size(); ++i) {
        n_new += out[i].size();
        std::vector<int32_t> gen(out[i].begin(), out[i].end());
        const std::string text = tok.decode(gen, true);
        results.push_back({{"prompt", prompts[i]}, {"prompt_ids", ids[i]}, {"generated_ids", out[i]}, {"text", text}});
        if (stream)
            std::cout << (text.size() >= shown.size() && text.compare(0, shown.size(), shown) == 0 ? text.substr(shown.size()) : "")
                      << "\n";
        else if (!g.json)
            std::cout << prompts[i] << text << "\n";
    }
    if (g.json)
        std::cout << nlohmann::json{{"results", results}, {"seconds", secs}, {"new_tokens", n_new}}.dump(2) << "\n";
    else
        std::cerr << n_new << " tokens in " << secs << " s (" << (secs > 0 ? n_new / secs : 0) << " tokens/s)\n";
    return 0;
}

}  // namespace

std::vector<Command> generate_commands() {
    return {{"generate", "MODEL_DIR --prompt TEXT... [--max-new-tokens N] [--greedy | --temperature T --top-k K --top-p P --seed S]",
             "continue prompts with a causal LM (several --prompt run as one padded batch)",
             [](po::options_description &d, po::positional_options_description &p) {
                 d.add_options()("model", po::value<std::string>()->required(), "model folder (config.json, safetensors, tokenizer.json)")(
                     "prompt", po::value<std::vector<std::string>>()->required(), "prompt text (repeatable: one batch)")(
                     "max-new-tokens", po::value<int64_t>()->default_value(32), "tokens to generate per prompt")(
                     "greedy", "pick the most likely token (the default)")(
                     "temperature", po::value<double>(), "sample with this temperature")("top-k", po::value<int64_t>(),
                                                                                         "sample among the k most likely tokens")(
                     "top-p", po::value<double>(), "sample from the smallest set with probability >= p")("seed", po::value<uint64_t>(),
                                                                                                         "random seed for sampling")(
                     "no-repeat-ngram-size", po::value<int64_t>()->default_value(0), "never repeat an n-gram of this size")(
                     "dtype", po::value<std::string>()->default_value("float32"), "float32 | bfloat16 | float16")(
                     "tokenizer", po::value<std::string>(), "tokenizer.json or folder (default: MODEL_DIR)")(
                     "no-cache", "recompute the whole sequence every step (no KV cache)")(
                     "past-max-positions", "allow prompt + new tokens beyond max_position_embeddings")(
                     "lossy-utf8", "replace invalid UTF-8 in prompts with U+FFFD instead of refusing them");
                 p.add("model", 1);
             },
             generate_cmd}};
}

}  // namespace mango::cli
