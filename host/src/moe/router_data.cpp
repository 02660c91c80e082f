#include "moe/router_data.hpp"

#include "util/error.hpp"

#include <ATen/ATen.h>
#include <yaml-cpp/yaml.h>
#include <cerrno>
#include <cstring>
#include <fstream>

#include <cmath>

namespace mango::moe {

namespace {

using Tensors = std::map<std::string, at::Tensor>;

std::unique_ptr<Model> model_of(const PluginHost &host, const DenseModel &d, Tensors tensors) {
    return Model::from_tensors(host, d.config.raw, std::make_shared<const Tensors>(std::move(tensors)), d.dir);
}

// The residual stream entering every layer: L tensors [B, T, H].
std::vector<at::Tensor> layer_inputs(Model &m, const at::Tensor &ids) {
    at::NoGradGuard no_grad;
    const at::Tensor mask = at::ones_like(ids);
    const at::Tensor pos = at::arange(ids.size(1), ids.options()).unsqueeze(0).expand_as(ids);
    std::vector<at::Tensor> in;
    at::Tensor h = m.embed(ids, pos);
    for (int32_t l = 0; l < m.info().n_layers; ++l) {
        in.push_back(h);
        h = m.block(l, h, mask, pos, false);
    }
    return in;
}

std::vector<std::string> strings(const YAML::Node &n, const std::string &where) {
    std::vector<std::string> out;
    if (!n) return out;
    if (!n.IsSequence()) throw HostError(where + ": expected a list of strings");
    for (const auto &s : n) out.push_back(s.as<std::string>());
    return out;
}

at::Tensor unit(const at::Tensor &v) { return v / v.norm(2, -1, true).clamp_min(1e-8); }

}  // namespace

std::vector<at::Tensor> ffn_inputs(const PluginHost &host, const DenseModel &d, const at::Tensor &seqs, int64_t max_tokens) {
    if (!llama_style(d))
        throw HostError(
            "routers from data (calibration data, gate_mode hidden) read the FFN inputs of LLaMA-style layers (RMSNorm "
            "before a gated FFN); for a " +
            d.config.model_type + " model use router_init = \"zero\" or \"random\"");
    at::NoGradGuard no_grad;
    auto model = model_of(host, d, d.tensors);
    // The same model with every FFN silenced: its block output is the residual after attention.
    Tensors silent = d.tensors;
    for (const TensorDecl &t : d.table)
        if (t.role == "mlp.down.weight") silent[t.name] = at::zeros_like(d.tensors.at(t.name));
    auto attention_only = model_of(host, d, std::move(silent));
    const double eps = d.config.raw.value("rms_norm_eps", 1e-6);
    const int64_t L = model->info().n_layers;
    std::vector<std::vector<at::Tensor>> rows(static_cast<size_t>(L));
    int64_t taken = 0;
    for (int64_t s = 0; s < seqs.size(0) && taken < max_tokens; s += 8) {
        const at::Tensor ids = seqs.narrow(0, s, std::min<int64_t>(8, seqs.size(0) - s));
        const at::Tensor mask = at::ones_like(ids);
        const at::Tensor pos = at::arange(ids.size(1), ids.options()).unsqueeze(0).expand_as(ids);
        const std::vector<at::Tensor> in = layer_inputs(*model, ids);
        const int64_t n = std::min(ids.numel(), max_tokens - taken);
        for (int32_t l = 0; l < L; ++l) {
            at::Tensor mid = attention_only->block(l, in[size_t(l)], mask, pos, false).to(at::kFloat);
            at::Tensor x = mid * at::rsqrt(mid.pow(2).mean(-1, true) + eps) * d.find(l, "norm.mlp.weight").to(at::kFloat);
            rows[size_t(l)].push_back(x.reshape({-1, x.size(-1)}).narrow(0, 0, n));
        }
        taken += n;
    }
    std::vector<at::Tensor> out;
    for (auto &r : rows) out.push_back(at::cat(r, 0));
    return out;
}

std::vector<ExpertPrompts> read_prompts(const std::string &path) {
    YAML::Node root;
    if (!std::ifstream(path)) throw HostError(path + ": cannot read the prompts file (" + std::strerror(errno) + ")");
    try {
        root = YAML::LoadFile(path);
    } catch (const YAML::Exception &e) {
        throw HostError(path + ": not valid YAML/JSON: " + e.what());
    }
    YAML::Node list = root.IsMap() && root["experts"] ? root["experts"] : root;
    if (!list.IsSequence() || list.size() == 0)
        throw HostError(path +
                        ": expected a list of experts (each with positive_prompts, optional negative_prompts), or a mergekit-moe "
                        "configuration with an `experts` list");
    std::vector<ExpertPrompts> out;
    for (size_t i = 0; i < list.size(); ++i) {
        const std::string where = path + ": experts[" + std::to_string(i) + "]";
        const YAML::Node e = list[i];
        if (!e.IsMap()) throw HostError(where + ": expected a map with positive_prompts");
        ExpertPrompts p;
        try {
            p.positive = strings(e["positive_prompts"], where + ".positive_prompts");
            p.negative = strings(e["negative_prompts"], where + ".negative_prompts");
            if (e["source_model"]) p.source_model = e["source_model"].as<std::string>();
        } catch (const YAML::Exception &x) {
            throw HostError(where + ": " + x.what());
        }
        for (const auto &kv : e) {
            const std::string k = kv.first.as<std::string>();
            if (k != "positive_prompts" && k != "negative_prompts" && k != "source_model" && k != "noise_scale" && k != "residual_scale")
                throw HostError(where + ": unknown key '" + clip(k) + "' (expected positive_prompts, negative_prompts, source_model)");
        }
        out.push_back(std::move(p));
    }
    return out;
}

void check_gate_mode(const std::string &mode, const std::string &at) {
    static const std::vector<std::string> known = {"hidden", "hidden_avg", "cheap_embed", "random", "uniform_random"};
    if (std::find(known.begin(), known.end(), mode) != known.end()) return;
    std::string list;
    for (const std::string &m : known) list += (list.empty() ? "" : ", ") + m;
    throw HostError("unknown gate mode '" + clip(mode) + "' (known: " + list + ")" + at);
}

std::vector<at::Tensor> prompt_router_rows(const PluginHost &host, const DenseModel &d, const formats::Tokenizer *tok,
                                           const std::vector<ExpertPrompts> &prompts, const std::string &mode, int64_t E, uint64_t seed) {
    const int64_t L = d.config.num_layers, H = d.config.hidden_size;
    check_gate_mode(mode);
    std::vector<at::Tensor> out;
    if (mode == "random" || mode == "uniform_random") {
        auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
        for (int64_t l = 0; l < L; ++l)
            out.push_back(mode == "random" ? at::normal(0.0, 1.0, {E, H}, gen)
                                           : (at::rand({E, H}, gen) * 2 - 1) * (1.0 / std::sqrt(double(H))));
        return out;
    }
    if (int64_t(prompts.size()) != E)
        throw HostError("gate mode " + mode + " needs prompts for each of the " + std::to_string(E) + " experts (the prompts file has " +
                        std::to_string(prompts.size()) + ")");
    if (!tok) throw HostError("gate mode " + mode + " needs the model's tokenizer");
    for (size_t e = 0; e < prompts.size(); ++e)
        if (prompts[e].positive.empty())
            throw HostError("gate mode " + mode + ": expert " + std::to_string(e) + " has no positive_prompts");
    auto encode = [&](const std::string &text) {
        std::vector<int32_t> ids = tok->encode(text, true);
        if (ids.empty()) throw HostError("a prompt gives no tokens: \"" + clip(text, 60) + "\"");
        return at::tensor(std::vector<int64_t>(ids.begin(), ids.end())).unsqueeze(0);
    };
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> rows;
    for (int64_t l = 0; l < L; ++l) rows.push_back(at::zeros({E, H}));
    if (mode == "cheap_embed") {
        const at::Tensor emb = d.find(-1, "embed.tokens.weight").to(at::kFloat);
        auto direction = [&](const std::vector<std::string> &texts) {
            at::Tensor s = at::zeros({H});
            for (const auto &t : texts) s += emb.index_select(0, encode(t).squeeze(0)).sum(0);
            return unit(s);
        };
        for (int64_t e = 0; e < E; ++e) {
            at::Tensor v = direction(prompts[size_t(e)].positive);
            if (!prompts[size_t(e)].negative.empty()) v = v - direction(prompts[size_t(e)].negative);
            v = unit(v);
            for (int64_t l = 0; l < L; ++l) rows[size_t(l)][e] = v;
        }
        return rows;
    }
    auto model = Model::from_tensors(host, d.config.raw, std::make_shared<const Tensors>(d.tensors), d.dir);
    // [L, H]: each layer's input state of the prompts, averaged over prompts.
    auto states = [&](const std::vector<std::string> &texts) {
        at::Tensor sum = at::zeros({L, H});
        for (const auto &t : texts) {
            const std::vector<at::Tensor> in = layer_inputs(*model, encode(t));
            for (int64_t l = 0; l < L; ++l) {
                const at::Tensor x = in[size_t(l)][0].to(at::kFloat);  // [T, H]
                sum[l] += mode == "hidden_avg" ? x.mean(0) : x[-1];
            }
        }
        return sum / double(texts.size());
    };
    for (int64_t e = 0; e < E; ++e) {
        at::Tensor v = states(prompts[size_t(e)].positive);
        if (!prompts[size_t(e)].negative.empty()) v = v - states(prompts[size_t(e)].negative);
        v = unit(v);
        for (int64_t l = 0; l < L; ++l) rows[size_t(l)][e] = v[l];
    }
    return rows;
}

}  // namespace mango::moe
