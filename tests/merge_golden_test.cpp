// Every deterministic merge method against mergekit itself: the inputs and
// mergekit's outputs in tests/golden/merge/*.safetensors were made by
// running mergekit's own method code (tools/golden/make_merge_golden.py);
// here the same inputs go through Mango's plugins.
#include "abi/plugins.hpp"
#include "formats/safetensors.hpp"

#include <mango/registry/options.hpp>

#include "test_plugins.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>

namespace fs = std::filesystem;
using namespace mango;

namespace {

const fs::path kDir = fs::path(MANGO_SOURCE_DIR) / "tests/golden/merge";

std::vector<std::string> cases() {
    std::vector<std::string> out;
    if (!fs::exists(kDir)) return out;
    for (const auto &e : fs::directory_iterator(kDir))
        if (e.path().extension() == ".safetensors") out.push_back(e.path().stem().string());
    std::sort(out.begin(), out.end());
    return out;
}

class MergeGolden : public ::testing::TestWithParam<std::string> {};

}  // namespace

TEST_P(MergeGolden, MatchesMergekit) {
    auto file = formats::SafetensorsFile::open((kDir / (GetParam() + ".safetensors")).string());
    const auto &meta = file->header().metadata;
    MergeCall call;
    call.name = meta.at("is_embed") == "1" ? "model.embed_tokens.weight" : "model.layers.0.mlp.up_proj.weight";
    call.role = meta.at("is_embed") == "1" ? "embed.tokens.weight" : "mlp.up.weight";
    call.layer = meta.at("is_embed") == "1" ? -1 : 0;
    call.is_embed = meta.at("is_embed") == "1";
    call.base = std::stoi(meta.at("base"));
    for (size_t i = 0; file->find("input." + std::to_string(i)); ++i)
        call.models.push_back(file->tensor("input." + std::to_string(i)).clone());
    InstanceSpec spec;
    spec.name = meta.at("method");
    auto method = MergeInstance::create(shared_plugins(), spec);
    // Parameters as the host resolves them: the plugin's defaults filled in.
    const auto *info = shared_plugins().registry().find("merge", spec.name);
    ASSERT_NE(info, nullptr);
    call.options = registry::resolve_options(info->options_schema, nlohmann::json::parse(meta.at("globals")), GetParam());
    for (const auto &m : nlohmann::json::parse(meta.at("per_model"))) {
        nlohmann::json schema =
            info->model_options_schema.empty() ? nlohmann::json::object() : nlohmann::json::parse(info->model_options_schema);
        schema.erase("required");
        call.model_options.push_back(registry::resolve_options(schema.dump(), m, GetParam()));
    }
    at::Tensor got = method->merge(call);
    const at::Tensor want = file->tensor("output");
    ASSERT_TRUE(got.defined());
    ASSERT_EQ(got.sizes(), want.sizes()) << GetParam();
    const double err = (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>();
    const double scale = want.abs().max().item<double>() + 1e-6;
    EXPECT_LE(err, 2e-5 * scale) << GetParam() << ": max difference " << err;
}

INSTANTIATE_TEST_SUITE_P(Mergekit, MergeGolden, ::testing::ValuesIn(cases()), [](const auto &info) {
    std::string n = info.param;
    for (char &c : n)
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
    return n;
});
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(MergeGolden);
