#include "merge/lora.hpp"

#include "formats/json_file.hpp"
#include "util/error.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <regex>

namespace mango::merge {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

bool ends_with(const std::string &s, const std::string &tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

std::string shape_text(const std::vector<int64_t> &shape) { return c10::str(c10::IntArrayRef(shape)); }

// Suffixes of the LoRA tensors PEFT saves: (suffix, of an embedding, is A).
const std::tuple<const char *, bool, bool> kLoraParts[] = {{".lora_A.weight", false, true},
                                                           {".lora_B.weight", false, false},
                                                           {".lora_embedding_A", true, true},
                                                           {".lora_embedding_B", true, false}};

double number(const json &config, const std::string &key, const std::string &where) {
    if (!config.contains(key)) throw HostError(where + ": no '" + key + "'");
    if (!config[key].is_number() || !std::isfinite(config[key].get<double>()))
        throw HostError(where + ": '" + key + "' must be a number, not " + clip(config[key].dump()));
    return config[key].get<double>();
}

bool flag(const json &config, const std::string &key, const std::string &where) {
    if (!config.contains(key) || config[key].is_null()) return false;
    if (!config[key].is_boolean()) throw HostError(where + ": '" + key + "' must be true or false, not " + clip(config[key].dump()));
    return config[key].get<bool>();
}

}  // namespace

std::shared_ptr<const LoraAdapter> LoraAdapter::open(const std::string &dir,
                                                     const std::function<bool(const std::string &)> &stored_in_out) {
    auto out = std::make_shared<LoraAdapter>();
    out->dir_ = dir;
    const fs::path config_path = fs::path(dir) / "adapter_config.json";
    const std::string where = config_path.string();
    // ordered: alpha_pattern keys are tried in the file's order
    const json config = formats::read_json_file<json>(config_path, "a LoRA adapter folder holds adapter_config.json");
    if (!config.is_object()) throw HostError(where + ": expected a JSON object");
    const std::string type = config.value("peft_type", std::string("LORA"));
    if (type != "LORA") throw HostError(where + ": peft_type '" + clip(type) + "' is not supported (only LORA adapters are)");
    if (flag(config, "use_dora", where)) throw HostError(where + ": DoRA adapters (use_dora) are not supported");
    if (flag(config, "lora_bias", where)) throw HostError(where + ": LoRA biases (lora_bias) are not supported");
    if (config.contains("alora_invocation_tokens") && !config["alora_invocation_tokens"].is_null())
        throw HostError(where + ": activated LoRA (alora_invocation_tokens) cannot be merged into its model");
    if (config.contains("trainable_token_indices") && !config["trainable_token_indices"].is_null())
        throw HostError(where + ": trainable tokens (trainable_token_indices) are not supported");
    if (config.contains("init_lora_weights") && config["init_lora_weights"].is_string()) {
        // PiSSA, OLoRA, CorDA and LoftQ change the base weights when the adapter is made; PEFT redoes it on
        // load, and merging A and B into the original weights would be wrong.
        const std::string init = config["init_lora_weights"].get<std::string>();
        if (init != "gaussian" && init != "eva")
            throw HostError(where + ": init_lora_weights '" + clip(init) +
                            "' changes the base weights; only adapters initialised with true, false, gaussian or eva are merged");
    }
    const double alpha = number(config, "lora_alpha", where);
    const bool rslora = flag(config, "use_rslora", where);
    std::vector<std::pair<std::regex, double>> alpha_pattern;  // PEFT: a key matches a module name or its dotted tail
    if (config.contains("alpha_pattern") && config["alpha_pattern"].is_object()) {
        for (const auto &[pattern, value] : config["alpha_pattern"].items()) {
            if (!value.is_number()) throw HostError(where + ": alpha_pattern['" + clip(pattern) + "'] must be a number");
            try {
                alpha_pattern.emplace_back(std::regex("(.*\\.)?(" + pattern + ")"), value.get<double>());
            } catch (const std::regex_error &) {
                throw HostError(where + ": alpha_pattern key '" + clip(pattern) + "' is not a regular expression");
            }
        }
    }

    const fs::path weights = fs::path(dir) / "adapter_model.safetensors";
    if (!fs::exists(weights))
        throw HostError(
            dir + ": no adapter_model.safetensors" +
            (fs::exists(fs::path(dir) / "adapter_model.bin") ? " (adapter_model.bin, a pickle, is not read: save it as safetensors)" : ""));
    out->file_ = std::make_shared<formats::Checkpoint>(formats::Checkpoint::open(weights.string()));
    const std::string prefix = "base_model.model.";
    struct Pair {
        std::string a, b;
        bool embedding = false;
    };
    std::map<std::string, Pair> modules;  // module name -> its A and B
    for (const std::string &name : out->file_->names()) {
        const std::string at = weights.string() + ": tensor '" + clip(name) + "'";
        if (name.rfind(prefix, 0) != 0) throw HostError(at + " does not start with '" + prefix + "' (not a PEFT adapter?)");
        const std::string key = name.substr(prefix.size());
        if (key.find("lora_magnitude_vector") != std::string::npos) throw HostError(at + ": DoRA adapters are not supported");
        if (key.find("token_adapter") != std::string::npos) throw HostError(at + ": trainable tokens are not supported");
        bool found = false;
        for (const auto &[tail, embedding, is_a] : kLoraParts) {
            if (!ends_with(key, tail)) continue;
            Pair &p = modules[key.substr(0, key.size() - std::string(tail).size())];
            (is_a ? p.a : p.b) = name;
            p.embedding = embedding;
            found = true;
        }
        if (found) continue;
        if (key.find("lora_") != std::string::npos)
            throw HostError(at + " is not a LoRA tensor this reader knows (lora_A, lora_B, lora_embedding_A/B)");
        // modules_to_save, saved embedding layers, trained biases; "X.base_layer.weight" is X.weight
        std::string target = key;
        if (const size_t base = target.find(".base_layer."); base != std::string::npos)
            target.erase(base, std::string(".base_layer").size());
        if (!out->changes_[target].replacement.empty())
            throw HostError(at + " replaces '" + clip(target) + "', which " + out->changes_[target].replacement + " replaces too");
        out->changes_[target].replacement = name;
    }
    for (const auto &[module, p] : modules) {
        const std::string at = weights.string() + ": module '" + clip(module) + "'";
        if (p.a.empty() || p.b.empty()) throw HostError(at + " has " + (p.a.empty() ? "lora_B but no lora_A" : "lora_A but no lora_B"));
        const auto &a = out->file_->entry(p.a).shape, &b = out->file_->entry(p.b).shape;
        if (a.size() != 2 || b.size() != 2 || a[0] != b[1] || a[0] < 1)
            throw HostError(at + ": A " + shape_text(a) + " and B " + shape_text(b) + " are not [r, in] and [out, r]");
        double module_alpha = alpha;
        for (const auto &[re, value] : alpha_pattern)
            if (std::regex_match(module, re)) {
                module_alpha = value;
                break;
            }
        const double r = double(a[0]);
        Change &c = out->changes_[module + ".weight"];
        c.a = p.a, c.b = p.b;
        c.scale = rslora ? module_alpha / std::sqrt(r) : module_alpha / r;
        c.transposed = p.embedding || stored_in_out(module + ".weight");
    }
    if (out->changes_.empty()) throw HostError(weights.string() + ": holds no tensors");
    return out;
}

void LoraAdapter::check_fits(const formats::Checkpoint &model, const std::string &model_dir) const {
    for (const auto &entry : changes_) {  // not a structured binding: clang 14 cannot capture one in the lambda
        const std::string &name = entry.first;
        const Change &c = entry.second;
        if (!model.contains(name))
            throw HostError(dir_ + ": the adapter changes '" + clip(name) + "', which " + model_dir + " does not have");
        const std::vector<int64_t> &have = model.entry(name).shape;
        auto refuse = [&](const std::vector<int64_t> &want, const std::string &why) {
            throw HostError(dir_ + ": the adapter's change to '" + clip(name) + "' has shape " + shape_text(want) + ", but " + model_dir +
                            " holds it as " + shape_text(have) + why);
        };
        if (!c.replacement.empty() && file_->entry(c.replacement).shape != have)
            refuse(file_->entry(c.replacement).shape, " (an adapter saved with a resized vocabulary cannot be merged)");
        if (!c.a.empty()) {
            std::vector<int64_t> want = {file_->entry(c.b).shape[0], file_->entry(c.a).shape[1]};
            if (c.transposed) std::swap(want[0], want[1]);
            if (want != have) refuse(want, "");
        }
    }
}

at::Tensor LoraAdapter::apply(const std::string &name, const at::Tensor &weight) const {
    const auto it = changes_.find(name);
    if (it == changes_.end()) return weight;
    const Change &c = it->second;
    const at::Tensor base = c.replacement.empty() ? weight : file_->tensor(c.replacement).to(weight.device());
    if (c.a.empty()) return base.to(weight.scalar_type());
    const at::Tensor a = file_->tensor(c.a).to(weight.device(), at::kFloat), b = file_->tensor(c.b).to(weight.device(), at::kFloat);
    at::Tensor delta = at::matmul(b, a) * c.scale;
    if (c.transposed) delta = delta.t();
    return (base.to(at::kFloat) + delta).to(weight.scalar_type());
}

}  // namespace mango::merge
