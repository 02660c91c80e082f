// make_merge_models DIR [--params 0.5B-like config] — three checkpoints for
// bench_merge.sh: DIR/base (random, Qwen2-0.5B shapes, bf16) and DIR/ft1,
// DIR/ft2 (the base plus small noise: fine-tunes), each a Hugging Face folder.
#include "model/model.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <iostream>

namespace fs = std::filesystem;

int main(int argc, char **argv) {
    if (argc < 2) {
        std::cerr << "usage: make_merge_models DIR [LAYERS]\n";
        return 2;
    }
    const fs::path dir = argv[1];
    const int layers = argc > 2 ? std::atoi(argv[2]) : 24;
    mango::registry::Options ro;
    ro.cache_file = "-";
    const mango::PluginHost host(mango::registry::Registry::discover(ro));
    fs::create_directories(dir / "config");
    // Qwen2-0.5B's shapes: 494M parameters with 24 layers.
    std::ofstream(dir / "config" / "config.json")
        << nlohmann::json{{"model_type", "qwen2"},     {"hidden_size", 896},          {"num_hidden_layers", layers},
                          {"num_attention_heads", 14}, {"num_key_value_heads", 2},    {"intermediate_size", 4864},
                          {"vocab_size", 151936},      {"tie_word_embeddings", true}, {"torch_dtype", "bfloat16"},
                          {"initializer_range", 0.02}}
               .dump(2);
    auto base = mango::Model::init_random(host, (dir / "config").string(), 1, at::kBFloat16);
    base->save((dir / "base").string());
    int64_t params = 0;
    for (auto &[_, t] : base->named_weights()) params += t.numel();
    for (int i = 1; i <= 2; ++i) {
        auto m = mango::Model::load(host, (dir / "base").string(), at::kBFloat16);
        at::NoGradGuard g;
        at::manual_seed(uint64_t(i) + 10);
        for (auto &[_, t] : m->named_weights()) t.add_(at::randn_like(t) * 0.002);
        m->save((dir / ("ft" + std::to_string(i))).string());
    }
    std::cout << params << " parameters per model\n";
    return 0;
}
