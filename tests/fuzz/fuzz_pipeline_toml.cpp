// Fuzz target: any bytes as a TOML pipeline go through Pipeline::parse, the
// whole validation a `mango run` does before its first step (keys, types,
// plugins and their options, models' config.json, tokenizers, data files,
// merge YAML, fusion layouts). Lines starting with "#set " (TOML comments)
// are also applied as --set overrides. Either a spec comes back or an error
// of ours names the problem; a crash, a sanitizer report or a foreign
// exception is a finding.
//
// The file is written to ROOT/configs/fuzz.toml, where ROOT links the
// source tree's tests/ and configs/ folders, so the seeds (the shipped
// configs) find the models, tokenizers and data they name.
#include "test_plugins.hpp"
#include "formats/hf_config.hpp"
#include "formats/safetensors_header.hpp"
#include "formats/tokenizer.hpp"
#include "pipeline/pipeline.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <unistd.h>

namespace fs = std::filesystem;

namespace {
const fs::path &root() {
    static const fs::path r = [] {
        const fs::path dir = fs::temp_directory_path() / ("mango-fuzz-pipeline-" + std::to_string(::getpid()));
        fs::create_directories(dir / "configs");
        const fs::path src = MANGO_SOURCE_DIR;
        fs::create_directory_symlink(src / "tests", dir / "tests");
        for (const auto &e : fs::directory_iterator(src / "configs"))
            if (e.is_directory()) fs::create_directory_symlink(e.path(), dir / "configs" / e.path().filename());
        return dir;
    }();
    return r;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const mango::PluginHost &host = shared_plugins();
    const std::string text(reinterpret_cast<const char *>(data), size);
    const fs::path file = root() / "configs" / "fuzz.toml";
    std::ofstream(file, std::ios::binary | std::ios::trunc) << text;
    mango::RunSettings settings;
    settings.output = (root() / "out").string();
    settings.progress = false;
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);)
        if (line.rfind("#set ", 0) == 0) settings.sets.push_back(line.substr(5));
    try {
        mango::Pipeline::parse(host, file.string(), settings);
    } catch (const mango::HostError &) {
    } catch (const mango::formats::ConfigError &) {
    } catch (const mango::formats::TokenizerError &) {
    } catch (const mango::formats::FormatError &) {
    }
    return 0;
}
