// Merging models as mergekit does, streamed: the configuration's models are
// opened (memory-mapped, lazy), the output's tensors listed from its
// architecture's tensor table, and each output tensor computed by the merge
// method's plugin from the sources that hold it and written at once; only
// one tensor's inputs and result are in memory at a time. The output folder
// (config.json, safetensors shards + index, tokenizer files, the
// configuration) appears complete or not at all.
#pragma once

#include "abi/plugins.hpp"
#include "merge/merge_config.hpp"

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace mango::merge {

struct Options {
    std::string device = "cpu";     // "cpu" or "cuda[:N]"
    std::string dtype;              // overrides the configuration's dtype ("" = as configured)
    bool force = false;             // replace an existing OUT_DIR
    bool keep_other_files = false;  // with force: files of the replaced OUT_DIR the merge does not write stay
    bool progress = true;
    uint64_t seed = 0;                         // random methods (DARE, DELLA, ...): per tensor, from this and the tensor's name
    uint64_t max_shard_bytes = 5000000000ULL;  // as mergekit's default (bytes)
    // Names a model reference may use instead of a folder (pipeline models).
    std::map<std::string, std::string> aliases;
    // Called once per written tensor (name, bytes read, bytes written).
    std::function<void(const std::string &, uint64_t, uint64_t)> on_tensor;
};

struct Result {
    std::string out_dir;
    std::string method;
    int64_t tensors = 0, skipped = 0, layers = 0;
    uint64_t bytes_read = 0, bytes_written = 0;
    double seconds = 0;
    std::vector<std::string> files;
    std::vector<std::string> models;  // the input folders, in configuration order ("MODEL+LORA" for an adapted one)
};

// Checks everything that can be checked without merging: the models exist
// and share an architecture, the method is installed and gets the base it
// needs, layer ranges, every parameter name and type. Returns the plan's
// size (tensors, output layers). Throws HostError.
Result check(const PluginHost &host, const Config &config, const Options &options);

Result run(const PluginHost &host, const Config &config, const std::string &out_dir, const Options &options);

}  // namespace mango::merge
