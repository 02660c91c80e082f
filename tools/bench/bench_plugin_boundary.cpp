// bench_plugin_boundary [--layers 6] [--hidden 512] [--tokens 128] [--reps 10]
// Cost of the plugin boundary: forward of a small LLaMA through the `llama`
// plugin (every op a boxed call through the host API) against the same math
// written directly with LibTorch here, same weights, same inputs, in one run.
// Also greedy decode tokens/s with the KV cache.
#include "model/generate.hpp"
#include "model/model.hpp"
#include "abi/runtime.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cfloat>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// The reference: LLaMA forward straight against ATen.
struct Direct {
    std::map<std::string, at::Tensor> w;
    int64_t layers, heads, kv, hd;
    double eps = 1e-6;
    at::Tensor inv_freq;

    at::Tensor rms(const at::Tensor &x, const at::Tensor &g) const { return g * (x * at::rsqrt(x.pow(2).mean(-1, true) + eps)); }
    at::Tensor rope(const at::Tensor &x, const at::Tensor &cos, const at::Tensor &sin) const {
        const int64_t h = x.size(-1) / 2;
        return x * cos + at::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1) * sin;
    }
    at::Tensor forward(const at::Tensor &ids, const at::Tensor &pos) const {
        const int64_t B = ids.size(0), T = ids.size(1);
        at::Tensor x = at::embedding(w.at("model.embed_tokens.weight"), ids);
        at::Tensor f = pos.to(at::kFloat).unsqueeze(-1) * inv_freq;
        at::Tensor emb = at::cat({f, f}, -1).unsqueeze(1), cos = emb.cos(), sin = emb.sin();
        at::Tensor mask = at::full({T, T}, -FLT_MAX).triu(1);
        for (int64_t i = 0; i < layers; ++i) {
            const std::string p = "model.layers." + std::to_string(i) + ".";
            at::Tensor h = rms(x, w.at(p + "input_layernorm.weight"));
            at::Tensor q = at::linear(h, w.at(p + "self_attn.q_proj.weight")).view({B, T, heads, hd}).transpose(1, 2);
            at::Tensor k = at::linear(h, w.at(p + "self_attn.k_proj.weight")).view({B, T, kv, hd}).transpose(1, 2);
            at::Tensor v = at::linear(h, w.at(p + "self_attn.v_proj.weight")).view({B, T, kv, hd}).transpose(1, 2);
            q = rope(q, cos, sin);
            k = rope(k, cos, sin);
            k = k.repeat_interleave(heads / kv, 1);
            v = v.repeat_interleave(heads / kv, 1);
            at::Tensor a = at::matmul(at::softmax(at::matmul(q, k.transpose(2, 3)) / std::sqrt(double(hd)) + mask, -1), v);
            x = x + at::linear(a.transpose(1, 2).reshape({B, T, heads * hd}), w.at(p + "self_attn.o_proj.weight"));
            h = rms(x, w.at(p + "post_attention_layernorm.weight"));
            x = x + at::linear(at::silu(at::linear(h, w.at(p + "mlp.gate_proj.weight"))) * at::linear(h, w.at(p + "mlp.up_proj.weight")),
                               w.at(p + "mlp.down_proj.weight"));
        }
        return at::linear(rms(x, w.at("model.norm.weight")), w.at("lm_head.weight"));
    }
};

template <class F>
double median_seconds(int reps, F &&f) {
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = Clock::now();
        f();
        t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

}  // namespace

int main(int argc, char **argv) {
    int64_t layers = 6, hidden = 512, tokens = 128;
    int reps = 10;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--layers")
            layers = std::stoll(argv[i + 1]);
        else if (a == "--hidden")
            hidden = std::stoll(argv[i + 1]);
        else if (a == "--tokens")
            tokens = std::stoll(argv[i + 1]);
        else if (a == "--reps")
            reps = std::stoi(argv[i + 1]);
    }
    mango::init_runtime(0);
    const int64_t heads = hidden / 64, kv = heads / 2;
    const fs::path dir = fs::temp_directory_path() / "mango-bench-llama";
    fs::create_directories(dir);
    std::ofstream(dir / "config.json") << nlohmann::json{{"model_type", "llama"},       {"hidden_size", hidden},
                                                         {"num_hidden_layers", layers}, {"num_attention_heads", heads},
                                                         {"num_key_value_heads", kv},   {"intermediate_size", hidden * 8 / 3},
                                                         {"vocab_size", 32000},         {"rms_norm_eps", 1e-6},
                                                         {"rope_theta", 10000.0},       {"max_position_embeddings", 4096}}
                                              .dump();

    mango::registry::Options o;
    const mango::PluginHost host(mango::registry::Registry::discover(o));
    auto model = mango::Model::init_random(host, dir.string(), 0);
    Direct direct{{}, layers, heads, kv, 64};
    for (auto &[n, t] : model->named_weights()) direct.w[n] = t;
    std::vector<double> inv;
    for (int64_t i = 0; i < 64; i += 2) inv.push_back(1.0 / std::pow(10000.0, double(i) / 64));
    direct.inv_freq = at::tensor(inv, at::kDouble).to(at::kFloat);

    at::NoGradGuard no_grad;
    at::Tensor ids = at::randint(32000, {1, tokens}), mask = at::ones({1, tokens}, at::kLong);
    at::Tensor pos = at::arange(tokens).unsqueeze(0);
    const double diff = (model->forward(ids, mask, pos) - direct.forward(ids, pos)).abs().max().item<double>();
    model->forward(ids, mask, pos);  // warm up both
    direct.forward(ids, pos);
    double tp = 0, td = 0;
    for (int r = 0; r < 3; ++r) {  // interleave to share machine noise
        tp += median_seconds(reps, [&] { model->forward(ids, mask, pos); });
        td += median_seconds(reps, [&] { direct.forward(ids, pos); });
    }
    mango::GenerateOptions g;
    g.max_new_tokens = 64;
    std::vector<std::vector<int64_t>> prompt = {std::vector<int64_t>(16, 5)};
    const double tg = median_seconds(3, [&] { mango::generate(*model, prompt, g); });
    std::cout << "LLaMA " << layers << " layers, hidden " << hidden << ", " << heads << " heads (" << kv << " kv), "
              << at::get_num_threads() << " threads, prefill " << tokens << " tokens\n"
              << "  max |logit diff| plugin vs direct: " << diff << "\n"
              << "  forward through plugin: " << tp / 3 * 1e3 << " ms\n"
              << "  forward direct LibTorch: " << td / 3 * 1e3 << " ms\n"
              << "  ratio plugin/direct:     " << tp / td << "\n"
              << "  greedy decode (KV cache, 16-token prompt, 64 new): " << 64 / tg << " tokens/s\n";
}
