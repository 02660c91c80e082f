// Pipeline files: every kind of bad input is refused before any work, with
// the file, line and key; --set overrides apply before validation.
#include "pipeline/pipeline.hpp"

#include "test_plugins.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
using namespace mango;

namespace {

// One folder per test: ctest runs the tests of this file as parallel processes.
fs::path test_dir() { return fs::path(MANGO_TEST_TMP) / "pipelines" / ::testing::UnitTest::GetInstance()->current_test_info()->name(); }

std::string models() { return (fs::path(MANGO_SOURCE_DIR) / "tests/golden/models").string(); }

// A valid pipeline: two golden llamas of hidden size 64 fused, one data file.
std::string valid() {
    const fs::path dir = test_dir();
    fs::create_directories(dir);
    std::ofstream(dir / "text.txt") << "one two three four five six seven eight nine ten eleven twelve\n\nthirteen fourteen fifteen\n";
    return "output = \"out\"\n"  // 1
           "[tokenizer]\n"       // 2
           "path = \"" +
           std::string(MANGO_SOURCE_DIR) +
           "/tests/fixtures/tokenizers/ascii_bytes\"\n"  // 3
           "[data.text]\n"                               // 4
           "path = \"text.txt\"\n"                       // 5
           "seq_len = 16\n"                              // 6
           "[models.a]\n"                                // 7
           "path = \"" +
           models() +
           "/llama\"\n"    // 8
           "[models.b]\n"  // 9
           "path = \"" +
           models() +
           "/mistral\"\n"                                                       // 10
           "[models.f]\n"                                                       // 11
           "fuse = [\"a\", \"b\"]\n"                                            // 12
           "router = { name = \"simple\", options = { pooling = \"max\" } }\n"  // 13
           "[[steps]]\n"                                                        // 14
           "run = \"train\"\n"                                                  // 15
           "model = \"f\"\n"                                                    // 16
           "data = \"text\"\n"                                                  // 17
           "steps = 2\n"                                                        // 18
           "[[steps]]\n"                                                        // 19
           "run = \"eval\"\n"                                                   // 20
           "models = [\"a\", \"f\"]\n"                                          // 21
           "data = [\"text\"]\n";                                               // 22
}

PipelineSpec parse(const std::string &text, std::vector<std::string> sets = {}) {
    const fs::path dir = test_dir();
    fs::create_directories(dir);
    const fs::path file = dir / "p.toml";
    std::ofstream(file) << text;
    RunSettings s;
    s.sets = std::move(sets);
    return Pipeline::parse(shared_plugins(), file.string(), s);
}

std::string replace(std::string s, const std::string &from, const std::string &to) {
    const size_t i = s.find(from);
    EXPECT_NE(i, std::string::npos) << from;
    return i == std::string::npos ? s : s.replace(i, from.size(), to);
}

// The error of parsing `text`, or "" when it parses.
std::string error_of(const std::string &text, std::vector<std::string> sets = {}) {
    try {
        parse(text, std::move(sets));
    } catch (const std::exception &e) {
        return e.what();
    }
    return "";
}

#define EXPECT_ERROR(text, ...)                                                                                                    \
    do {                                                                                                                           \
        const std::string e = error_of(text);                                                                                      \
        for (const char *part : {__VA_ARGS__}) EXPECT_NE(e.find(part), std::string::npos) << "missing '" << part << "' in: " << e; \
    } while (0)

}  // namespace

TEST(Pipeline, ValidFileParses) {
    const PipelineSpec s = parse(valid());
    ASSERT_EQ(s.steps.size(), 2u);
    ASSERT_EQ(s.models.size(), 3u);
    const ModelDef &f = s.models[2];
    ASSERT_EQ(f.kind, ModelDef::Kind::Fusion);
    ASSERT_EQ(f.fusion.layers.size(), 2u);  // "zip": layer i of each
    EXPECT_EQ(f.fusion.layers[1][1], (std::pair<std::string, int32_t>{"b", 1}));
    EXPECT_EQ(s.output, (test_dir() / "out").string());
    EXPECT_EQ(std::get<TrainStep>(s.steps[0].step).run.train.steps, 2);
}

TEST(Pipeline, SetOverridesValuesBeforeValidation) {
    PipelineSpec s = parse(valid() + "batch_size = 8\n",
                           {"steps.0.steps=7", "steps.0.batch_size=1", "steps.*.batch_size=3", "models.f.router.options.pooling=mean"});
    EXPECT_EQ(std::get<TrainStep>(s.steps[0].step).run.train.steps, 7);
    EXPECT_EQ(std::get<TrainStep>(s.steps[0].step).run.train.batch_size, 3);
    EXPECT_EQ(std::get<EvalStep>(s.steps[1].step).batch_size, 3);
    // Below "*", only existing keys change: the eval step gets no "steps".
    EXPECT_EQ(error_of(valid(), {"steps.*.steps=5"}), "");
    EXPECT_EQ(s.models[2].fusion.routers[0].options["pooling"], "mean");
    EXPECT_NE(error_of(valid(), {"steps.9.steps=1"}).find("index 9 is beyond the array"), std::string::npos);
    EXPECT_NE(error_of(valid(), {"nonsense"}).find("expected KEY.PATH=VALUE"), std::string::npos);
    EXPECT_NE(error_of(valid(), {"models.f.router.options.pooling=median"}).find("pooling"), std::string::npos);
}

TEST(Pipeline, BadInputIsRefusedWithFileLineAndKey) {
    // TOML syntax.
    EXPECT_ERROR(valid() + "x = = 1\n", "p.toml:23");
    // Unknown key, with the allowed ones.
    EXPECT_ERROR(replace(valid(), "steps = 2\n", "stepz = 2\n"), "p.toml:18: steps[0].stepz: unknown key 'stepz'", "expected one of");
    // Wrong type.
    EXPECT_ERROR(replace(valid(), "steps = 2\n", "steps = \"two\"\n"), "p.toml:18: steps[0].steps: expected an integer, found a string");
    // Unknown plugin, with suggestions.
    EXPECT_ERROR(replace(valid(), "name = \"simple\"", "name = \"simpel\""), "p.toml:13", "simple");
    // Option outside its schema.
    EXPECT_ERROR(replace(valid(), "pooling = \"max\"", "pooling = \"median\""), "p.toml:13", "pooling");
    EXPECT_ERROR(replace(valid(), "pooling = \"max\"", "poolin = \"max\""), "p.toml:13", "poolin");
    // Layer out of range.
    EXPECT_ERROR(replace(valid(), "fuse = [\"a\", \"b\"]\n", "fuse = [\"a\", \"b\"]\nlayers = [[\"a:0\", \"b:2\"]]\n"), "layers[0]",
                 "layer 2 of 'b' is out of range (it has 2 layers: 0..1)");
    // Sizes that need an adapter.
    EXPECT_ERROR(replace(valid(), "fuse = [\"a\", \"b\"]\n", "fuse = [\"a\", \"b\"]\ntarget_hidden = 96\n"), "models.f",
                 "has hidden size 64 and the fused model 96", "configure an adapter");
    // Unknown model in a step, unknown data set.
    EXPECT_ERROR(replace(valid(), "model = \"f\"", "model = \"g\""), "p.toml:16: steps[0].model: no model 'g'", "defined: a, b, f");
    EXPECT_ERROR(replace(valid(), "data = \"text\"", "data = \"txt\""), "p.toml:17", "no data set 'txt'");
    // Missing and empty data files.
    EXPECT_ERROR(replace(valid(), "path = \"text.txt\"", "path = \"nothing.txt\""), "p.toml:5: data.text.path",
                 "nothing.txt does not exist");
    const fs::path dir = test_dir();
    std::ofstream(dir / "empty.txt") << "\n \n";
    EXPECT_ERROR(replace(valid(), "path = \"text.txt\"", "path = \"empty.txt\""), "p.toml:5", "holds no text");
    // A model folder whose model_type no plugin handles.
    fs::create_directories(dir / "odd");
    std::ofstream(dir / "odd" / "config.json") << R"({"model_type": "t5", "hidden_size": 8})";
    EXPECT_ERROR(replace(valid(), "path = \"" + models() + "/mistral\"", "path = \"odd\""), "p.toml:10", "model_type \"t5\"");
    // Unknown step kind.
    EXPECT_ERROR(replace(valid(), "run = \"eval\"", "run = \"evaluate\""), "p.toml:20", "unknown step \"evaluate\"");
    // A model trained after a fusion of it was used.
    EXPECT_ERROR(valid() + "[[steps]]\nrun = \"train\"\nmodel = \"a\"\ndata = \"text\"\n",
                 "'a' is trained after step 1 used a fusion of it");
    // No output folder.
    EXPECT_ERROR(replace(valid(), "output = \"out\"\n", ""), "no output folder");
}

// A step's output folder is replaced when it runs: an earlier run's model (config.json) or an empty
// folder may be; a folder holding anything else is refused at parse time, naming the line.
TEST(Pipeline, StepOutputThatHoldsNoModelIsRefused) {
    const fs::path dir = test_dir();
    fs::create_directories(dir / "notes");
    std::ofstream(dir / "notes" / "todo.txt") << "mine\n";
    fs::create_directories(dir / "model");
    std::ofstream(dir / "model" / "config.json") << "{}\n";
    fs::create_directories(dir / "empty");
    const std::string step = "[[steps]]\nrun = \"convert_moe\"\nmodel = \"moe\"\nfrom = \"a\"\noutput = \"OUT\"\n";
    EXPECT_ERROR(valid() + replace(step, "OUT", "notes"), "p.toml:27: steps[2].output", "exists and holds no model");
    EXPECT_ERROR(valid() + replace(step, "OUT", "/"), "steps[2].output", "exists and holds no model");
    EXPECT_EQ(error_of(valid() + replace(step, "OUT", "model")), "");
    EXPECT_EQ(error_of(valid() + replace(step, "OUT", "empty")), "");
    EXPECT_EQ(error_of(valid() + replace(step, "OUT", "new")), "");
    EXPECT_TRUE(fs::exists(dir / "notes" / "todo.txt"));
    // Values a step would read only when it runs are checked here too.
    EXPECT_ERROR(valid() + replace(step, "OUT", "new") + "max_increase = nan\n", "p.toml:28: steps[2].max_increase",
                 "expected a finite number, found nan");
    EXPECT_ERROR(valid() + replace(step, "OUT", "new") + "layers = []\n", "p.toml:28", "an empty list converts no layer");
    EXPECT_ERROR(valid() + replace(step, "OUT", "new") + "layers = [4294967297]\n", "p.toml:28", "is not a layer number");
}

// Per-model placement and expert parallelism are model keys of folders and
// random initialisations; a fusion takes neither, and training or saving an
// expert-parallel model is refused at parse time.
TEST(Pipeline, PlacementAndExpertParallelKeys) {
    const PipelineSpec s = parse(valid(), {"models.b.device=\"cuda:1\"", "models.a.expert_parallel=true"});
    ASSERT_TRUE(s.models[1].device.has_value());
    EXPECT_EQ(*s.models[1].device, at::Device("cuda:1"));
    EXPECT_FALSE(s.models[0].device.has_value());
    EXPECT_TRUE(s.models[0].expert_parallel);
    EXPECT_NE(error_of(valid(), {"models.b.device=\"tpu\""}).find("models.b.device: device must be \"cpu\" or \"cuda[:N]\", not \"tpu\""),
              std::string::npos)
        << error_of(valid(), {"models.b.device=\"tpu\""});
    EXPECT_NE(error_of(valid(), {"models.f.device=\"cpu\""}).find("unknown key 'device'"), std::string::npos);
    // Training the fusion's adapters and routers is fine; its members' weights or the model itself are not.
    EXPECT_EQ(error_of(valid(), {"models.a.expert_parallel=true"}), "");
    EXPECT_NE(error_of(valid(), {"models.a.expert_parallel=true", "steps.0.train=\"all\""}).find("expert-parallel"), std::string::npos);
    EXPECT_NE(error_of(valid(), {"models.a.expert_parallel=true", "steps.0.model=\"a\""}).find("expert-parallel"), std::string::npos);
}

// `offload = true` is a key of folders and random initialisations; a model
// (or a fusion including one) that is offloaded cannot be trained.
TEST(Pipeline, OffloadKeyAndTrainingRefusal) {
    EXPECT_FALSE(parse(valid()).models[1].offload);
    EXPECT_NE(error_of(valid(), {"models.f.offload=true"}).find("unknown key 'offload'"), std::string::npos);
    const std::string e = error_of(valid(), {"models.b.offload=true"});  // valid() trains the fusion f of a and b
    EXPECT_NE(e.find("includes 'b', which is offloaded"), std::string::npos) << e;
    EXPECT_NE(error_of(valid(), {"models.a.offload=true", "steps.0.model=\"a\""}).find("'a' is offloaded"), std::string::npos);
    const std::string save = replace(valid(), "[models.f]", "[models.o]\npath = \"" + models() + "/llama\"\noffload = true\n[models.f]") +
                             "[[steps]]\nrun = \"save\"\nmodel = \"o\"\npath = \"saved\"\n";
    EXPECT_NE(error_of(save).find("'o' is offloaded"), std::string::npos) << error_of(save);
}

TEST(Pipeline, ExpertParallelNeedsACheckpoint) {
    const std::string text =
        replace(valid(), "[models.f]", "[models.r]\nconfig = \"" + models() + "/mixtral\"\nexpert_parallel = true\n[models.f]");
    EXPECT_NE(error_of(text).find("expert parallelism needs a checkpoint"), std::string::npos) << error_of(text);
}
