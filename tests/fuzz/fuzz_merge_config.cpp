// Fuzz target: any bytes as a mergekit YAML parse or are refused with a
// HostError naming file, line and key; every parameter of a parsed config
// evaluates (gradients, conditionals) for a few tensors and layer fractions.
#include "merge/merge_config.hpp"
#include "util/error.hpp"

#include <string>

namespace {
void evaluate_all(const mango::merge::Settings &settings) {
    for (const auto &kv : settings)
        for (const char *tensor : {"model.layers.0.self_attn.q_proj.weight", "lm_head.weight", ""})
            for (double t : {0.0, 0.37, 1.0}) mango::merge::evaluate(kv.second, tensor, t);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    try {
        const auto c = mango::merge::parse_config(std::string(reinterpret_cast<const char *>(data), size), "fuzz.yml", "/nonexistent");
        evaluate_all(c.parameters);
        for (const auto &slice : c.slices) {
            evaluate_all(slice.parameters);
            for (const auto &source : slice.sources) evaluate_all(source.parameters);
        }
    } catch (const mango::HostError &) {
    }
    return 0;
}
