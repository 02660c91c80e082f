// Pipelines: one TOML file names a tokenizer, data sets, models (existing
// folders, random initialisations from a config.json, fusions of other
// models, saved fusions) and ordered steps (train, eval, generate, save,
// load, merge). `Pipeline::parse` reads and validates the whole file (keys, types,
// files, model configs, layer ranges, hidden sizes, plugin names and their
// option schemas) before anything runs; every error names file, line and key.
// configs/README.md documents every key.
#pragma once

#include "train/data.hpp"
#include "fusion/fusion.hpp"
#include "model/generate.hpp"
#include "moe/convert.hpp"
#include "train/training_run.hpp"

#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace mango {

struct PipelineError : HostError {
    using HostError::HostError;
};

struct DataDef {
    std::string name, where;
    std::string path;              // a .txt or .jsonl file
    std::vector<std::string> mix;  // or: the union of other data sets
    DataOptions options;
    int64_t max_documents = 0;           // 0 = all
    std::vector<std::string> documents;  // read while validating
};

struct FusionDef {
    std::vector<std::string> members;  // model names; the base first unless `base`
    std::string base;
    int64_t target_hidden = 0;
    bool always_adapt = false;
    InstanceSpec adapter;
    std::vector<std::vector<std::pair<std::string, int32_t>>> layers;  // (model, layer) per fusion layer
    InstanceSpec router;                                               // for layers that name none
    std::vector<InstanceSpec> routers;                                 // one per fusion layer
    std::vector<std::string> layer_where;                              // "p.toml:14: models.f.layers[1]"
};

// The FusionSpec (model indices) of a fusion defined by model names.
FusionSpec fusion_spec(const FusionDef &f, uint64_t seed);

struct ModelDef {
    enum class Kind { Folder, RandomInit, Fusion, SavedFusion } kind = Kind::Folder;
    std::string name, where;
    std::string path;  // Folder / SavedFusion: the folder; RandomInit: the folder holding config.json
    uint64_t seed = 0;
    FusionDef fusion;
    int64_t hidden_size = 0, n_layers = 0;  // from config.json (not for fusions)
    bool expert_parallel = false;           // distributed runs: each rank holds its share of the experts
    bool offload = false;                   // per-layer weights in host memory between blocks (inference only)
    std::optional<at::Device> device;       // placement of this model (else the pipeline's `device`)
};

struct TrainStep {
    std::string model;
    std::vector<std::string> data;
    bool all_weights = false;  // fusions: also the experts' weights
    TrainRunOptions run;
};
struct EvalStep {
    std::vector<std::string> models, data;
    int64_t batch_size = 8, max_sequences = 0;
    std::string heatmap;  // fused model whose router weights to draw ("" = the first fused one)
};
struct GenerateStep {
    std::string model;
    std::vector<std::string> prompts;
    GenerateOptions options;
};
struct SaveStep {
    std::string model, path;
    bool self_contained = false;
};
struct LoadStep {
    std::string model, path;  // binds `model` to the folder (a model or a saved fusion)
};
struct MergeStep {
    std::string model;            // the merged model's name in later steps
    std::string yaml, yaml_file;  // mergekit configuration text ({output} replaced) and where it came from
    std::string yaml_dir;         // relative model paths resolve here
    std::string output;           // the merged folder
    std::string dtype;            // overrides the YAML's ("" = as configured)
    uint64_t seed = 0;
};
struct ConvertMoeStep {
    std::string model;                        // the converted model's name in later steps
    std::string from;                         // the dense model: a pipeline model name or a folder
    std::vector<std::string> sources;         // from_models: names or folders
    std::string test_data, calibration_data;  // data set names ("" = none): validation / training sequences
    std::string output;                       // the converted folder
    moe::ConvertOptions options;
};
struct StepDef {
    std::string kind, where;
    std::variant<TrainStep, EvalStep, GenerateStep, SaveStep, LoadStep, MergeStep, ConvertMoeStep> step;
};

struct PipelineSpec {
    std::string file, output;
    std::string tokenizer;  // tokenizer.json (or its folder)
    std::optional<int64_t> eos_id;
    at::ScalarType dtype = at::kFloat;
    at::Device device = at::kCPU;
    std::vector<DataDef> data;
    std::vector<ModelDef> models;
    std::vector<StepDef> steps;
};

struct RunSettings {
    std::string output;             // overrides the file's `output`
    std::vector<std::string> sets;  // "key.path=value" overrides
    bool progress = true;
    bool json = false;  // machine-readable summary on stdout
};

class Pipeline {
public:
    // Reads, applies --set overrides, validates. Throws PipelineError.
    static PipelineSpec parse(const PluginHost &host, const std::string &file, const RunSettings &settings);
    // Runs the steps in order; returns the summary (also written to OUTPUT/summary.json).
    static nlohmann::json run(const PluginHost &host, const PipelineSpec &spec, const RunSettings &settings);
};

}  // namespace mango
