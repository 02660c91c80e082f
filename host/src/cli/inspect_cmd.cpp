// mango inspect PATH — what a checkpoint holds, read from headers only.
#include "cli.hpp"
#include "util/error.hpp"

#include "formats/json_file.hpp"
#include "formats/safetensors.hpp"
#include "formats/tokenizer.hpp"
#include "model/model.hpp"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <iostream>
#include <set>

namespace fs = std::filesystem;

namespace mango::cli {
namespace {

using nlohmann::json;

std::string shape_text(const std::vector<int64_t> &s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
}

std::string human(uint64_t n) {
    const char *units[] = {"", "K", "M", "B", "T"};
    double v = static_cast<double>(n);
    int u = 0;
    while (v >= 1000 && u < 4) {
        v /= 1000;
        ++u;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, u ? "%.2f%s" : "%.0f%s", v, units[u]);
    return buf;
}

std::string flags_text(uint32_t flags, const std::string &tied_to) {
    std::string t;
    if (flags & MANGO_TENSOR_OPTIONAL) t += "optional";
    if (flags & MANGO_TENSOR_TIED) t += std::string(t.empty() ? "" : ",") + "tied to " + tied_to;
    if (flags & MANGO_TENSOR_F32) t += std::string(t.empty() ? "" : ",") + "float32";
    return t;
}

// --roles: every tensor the architecture declares for this config, without loading weights.
int inspect_roles(const Global &g, const std::string &dir) {
    const PluginHost host(registry::Registry::discover(registry_options(g)));
    const bool has_checkpoint =
        fs::exists(fs::path(dir) / "model.safetensors") || fs::exists(fs::path(dir) / "model.safetensors.index.json");
    std::vector<TensorDecl> table = Model::tensor_table(host, dir, has_checkpoint);
    // Model-level tensors first, then layer by layer, each in declaration order.
    std::stable_sort(table.begin(), table.end(), [](const TensorDecl &a, const TensorDecl &b) { return a.layer < b.layer; });
    json rows = json::array();
    for (const auto &t : table) {
        json r = {{"layer", t.layer}, {"role", t.role}, {"name", t.name}, {"shape", t.shape}};
        if (t.flags & MANGO_TENSOR_OPTIONAL) r["optional"] = true;
        if (t.flags & MANGO_TENSOR_TIED) r["tied_to"] = t.tied_to;
        if (t.flags & MANGO_TENSOR_F32) r["float32"] = true;
        rows.push_back(r);
    }
    if (g.json) {
        std::cout << json{{"path", dir}, {"tensors", rows}}.dump(2) << "\n";
        return 0;
    }
    size_t rw = 4, nw = 4;
    for (const auto &t : table) rw = std::max(rw, t.role.size()), nw = std::max(nw, t.name.size());
    std::cout << "LAYER  ROLE" << std::string(rw - 2, ' ') << "NAME" << std::string(nw - 2, ' ') << "SHAPE\n";
    for (const auto &t : table) {
        const std::string layer = t.layer < 0 ? "-" : std::to_string(t.layer);
        std::cout << layer << std::string(7 - std::min<size_t>(6, layer.size()), ' ') << t.role << std::string(rw - t.role.size() + 2, ' ')
                  << t.name << std::string(nw - t.name.size() + 2, ' ') << shape_text(t.shape);
        const std::string f = flags_text(t.flags, t.tied_to);
        if (!f.empty()) std::cout << "  (" << f << ")";
        std::cout << "\n";
    }
    std::cout << table.size() << " tensors (from " << dir << "/config.json"
              << (has_checkpoint ? "; optional ones checked against the checkpoint" : "") << ")\n";
    return 0;
}

// What is wrong with a model folder, as a user would want to hear before
// running it: a config its architecture refuses, tensors missing or of the
// wrong shape, tensors nobody reads, a tokenizer that does not load.
std::vector<std::string> check_folder(const Global &g, const std::string &dir, bool &checked) {
    checked = false;
    if (!fs::is_directory(dir) || !fs::exists(fs::path(dir) / "config.json")) return {};
    checked = true;
    const PluginHost host(registry::Registry::discover(registry_options(g)));
    return Model::folder_problems(host, dir);
}

int inspect(const Global &g, const po::variables_map &vm) {
    const std::string path = vm["path"].as<std::string>();
    if (vm.count("roles")) return inspect_roles(g, path);
    const formats::Checkpoint ckpt = formats::Checkpoint::open(path);

    json config;
    const fs::path config_path = fs::is_directory(path) ? fs::path(path) / "config.json" : fs::path(path).parent_path() / "config.json";
    if (fs::exists(config_path)) {
        config = formats::read_json_file(config_path, "the checkpoint's config.json");
    }
    uint64_t params = 0, bytes = 0;
    std::map<std::string, uint64_t> by_dtype;
    json tensors = json::array();
    for (const std::string &name : ckpt.names()) {
        const formats::TensorEntry &e = ckpt.entry(name);
        params += e.numel();
        bytes += e.end - e.begin;
        by_dtype[e.dtype] += e.numel();
        tensors.push_back({{"name", name}, {"dtype", e.dtype}, {"shape", e.shape}});
    }
    json files = json::array();
    for (const auto &f : ckpt.files())
        files.push_back({{"path", f->path()}, {"tensors", f->header().tensors.size()}, {"metadata", f->header().metadata}});
    json out = {{"path", path}, {"parameters", params}, {"bytes", bytes}, {"dtypes", by_dtype}, {"files", files}, {"tensors", tensors}};
    bool checked = false;
    const std::vector<std::string> problems = check_folder(g, path, checked);
    if (checked) {
        out["ok"] = problems.empty();
        out["problems"] = problems;
    }
    if (config.is_object()) {
        out["model_type"] = config.contains("model_type") ? config["model_type"] : json("");  // as written (a bad one is a problem above)
        if (config.contains("architectures")) out["architectures"] = config["architectures"];
    }
    if (g.json) {
        std::cout << out.dump(2) << "\n";
        return problems.empty() ? 0 : 1;
    }
    if (config.is_object()) {
        const json type = config.contains("model_type") ? config["model_type"] : json("(none)");
        std::cout << "model_type: " << (type.is_string() ? type.get<std::string>() : clip(type.dump()));
        if (config.contains("architectures") && config["architectures"].is_array() && !config["architectures"].empty() &&
            config["architectures"][0].is_string())
            std::cout << " (" << config["architectures"][0].get<std::string>() << ")";
        std::cout << "\n";
    } else {
        std::cout << "model_type: (no config.json)\n";
    }
    std::cout << "parameters: " << params << " (" << human(params) << "), " << human(bytes) << "B\n"
              << "dtypes:";
    for (const auto &[d, n] : by_dtype) std::cout << " " << d << "=" << n;
    std::cout << "\nfiles: " << ckpt.files().size() << "\n";
    for (const auto &f : ckpt.files()) std::cout << "  " << f->path() << " (" << f->header().tensors.size() << " tensors)\n";
    size_t width = 4;
    for (const auto &t : tensors) width = std::max(width, t["name"].get<std::string>().size());
    std::cout << "\n"
              << "NAME" << std::string(width - 2, ' ') << "DTYPE    SHAPE\n";
    for (const auto &t : tensors) {
        const std::string name = t["name"], dtype = t["dtype"];
        std::cout << name << std::string(width - name.size() + 2, ' ') << dtype << std::string(dtype.size() < 9 ? 9 - dtype.size() : 1, ' ')
                  << shape_text(t["shape"].get<std::vector<int64_t>>()) << "\n";
    }
    if (checked) {
        std::cout << "\ncheck: " << (problems.empty() ? "OK (config.json accepted; every tensor present with its shape)" : "FAILED")
                  << "\n";
        for (const auto &p : problems) std::cout << "  " << p << "\n";
    }
    return problems.empty() ? 0 : 1;
}

}  // namespace

std::vector<Command> inspect_commands() {
    return {{"inspect", "PATH [--roles] [--json]", "show a checkpoint (folder or .safetensors): architecture, parameters, dtypes, tensors",
             [](po::options_description &d, po::positional_options_description &p) {
                 d.add_options()("path", po::value<std::string>()->required(), "checkpoint folder or .safetensors file")(
                     "roles", "list every tensor the architecture declares (layer, role, name, shape) from config.json alone");
                 p.add("path", 1);
             },
             inspect}};
}

}  // namespace mango::cli
