#include "merge/merge_config.hpp"

#include "util/error.hpp"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

namespace mango::merge {
namespace {

using nlohmann::json;

struct Reader {
    const std::string &file;
    std::string at(const YAML::Node &n) const { return file + ":" + std::to_string(n.Mark().line + 1); }
    [[noreturn]] void fail(const YAML::Node &n, const std::string &what) const { throw HostError(at(n) + ": " + what); }

    // A map's key: a plain scalar.
    std::string key(const YAML::Node &k) const {
        if (!k.IsScalar()) fail(k, "a key must be a plain name, not a list or a map");
        return k.Scalar();
    }

    // Keys of a map, refusing those not in `allowed`.
    void only(const YAML::Node &map, const std::set<std::string> &allowed, const std::string &what) const {
        for (const auto &kv : map) {
            const std::string k = key(kv.first);
            if (!allowed.count(k)) {
                std::string list;
                for (const auto &a : allowed) list += (list.empty() ? "" : ", ") + a;
                fail(kv.first, "unknown key '" + clip(k) + "' in " + what + " (allowed: " + list + ")");
            }
        }
    }

    std::string string(const YAML::Node &n, const std::string &key) const {
        if (!n.IsScalar()) fail(n, "'" + key + "' must be a string");
        return n.as<std::string>();
    }

    // A YAML scalar as a JSON number or boolean (strings are not parameter values).
    json scalar(const YAML::Node &n, const std::string &key) const {
        if (!n.IsScalar()) fail(n, "'" + key + "' must be a number, a boolean, a list of numbers or a list of {filter, value}");
        const std::string text = n.Scalar();
        static const std::set<std::string> yes = {"true", "True", "TRUE", "yes", "Yes", "on", "On"},
                                           no = {"false", "False", "FALSE", "no", "No", "off", "Off"};
        if (yes.count(text)) return true;
        if (no.count(text)) return false;
        try {
            size_t used = 0;
            const double v = std::stod(text, &used);
            if (used == text.size() && std::isfinite(v)) {
                if (text.find_first_of(".eE") == std::string::npos && std::abs(v) < 9e15) return int64_t(v);
                return v;
            }
        } catch (const std::exception &) {
        }
        fail(n, "'" + key + "' must be a number or a boolean, not \"" + clip(text) + "\"");
    }

    Setting setting(const YAML::Node &n, const std::string &key) const {
        if (n.IsScalar()) return scalar(n, key);
        if (n.IsMap())
            fail(n, "'" + key + "': a {filter, value} conditional must be inside a list: [{filter: ..., value: ...}, {value: ...}]");
        if (!n.IsSequence() || n.size() == 0)
            fail(n, "'" + key + "' must be a number, a non-empty list of numbers, or a list of {filter, value}");
        json out = json::array();
        const bool conditional = n[0].IsMap();
        for (const auto &item : n) {
            if (conditional != item.IsMap()) fail(item, "'" + key + "' mixes numbers and {filter, value} entries");
            if (!conditional) {
                json v = scalar(item, key);
                if (!v.is_number()) fail(item, "'" + key + "': a gradient lists numbers");
                out.push_back(v);
                continue;
            }
            only(item, {"filter", "value"}, "a conditional of '" + key + "'");
            if (!item["value"]) fail(item, "'" + key + "': conditional without 'value'");
            json c = {{"value", setting(item["value"], key)}};
            if (item["filter"]) c["filter"] = string(item["filter"], key + ".filter");
            out.push_back(c);
        }
        return out;
    }

    Settings settings(const YAML::Node &n, const std::string &what) const {
        Settings s;
        if (!n) return s;
        if (n.IsNull()) return s;
        if (!n.IsMap()) fail(n, what + " must be a map of parameter names to values");
        for (const auto &kv : n) {
            const std::string k = key(kv.first);
            s[k] = setting(kv.second, k);
        }
        return s;
    }

    // A model reference: "PATH", "PATH+LORA", or {model: PATH, lora: LORA}, read as "PATH+LORA";
    // a PATH may also be written {path: PATH}.
    std::string model_ref(const YAML::Node &n) const {
        if (n.IsMap()) {
            only(n, {"model", "lora", "override_architecture"}, "a model reference");
            if (n["override_architecture"]) fail(n, "override_architecture is not supported");
            if (!n["model"]) fail(n, "a model reference needs 'model'");
            std::string ref = model_path(n["model"]);
            if (n["lora"] && !n["lora"].IsNull()) ref += "+" + model_path(n["lora"]);
            return ref;
        }
        return string(n, "model");
    }

    std::string model_path(const YAML::Node &n) const {
        if (!n.IsMap()) return string(n, "model");
        only(n, {"path", "revision"}, "a model path");
        if (n["revision"] && !n["revision"].IsNull()) fail(n["revision"], "a revision needs the model hub; give a local folder");
        if (!n["path"]) fail(n, "a model path needs 'path'");
        return string(n["path"], "path");
    }

    // tokenizer.tokens.TOKEN: {source: MODEL | {kind: zero} | {kind: model_token, model: MODEL,
    // token_id: N | token: TEXT}, force: BOOL}.
    TokenSource token_source(const std::string &token, const YAML::Node &n) const {
        const std::string what = "tokenizer.tokens['" + clip(token) + "']";
        if (!n.IsMap()) fail(n, what + " must be a map: {source: ..., force: ...}");
        only(n, {"source", "force"}, what);
        TokenSource t;
        t.token = token;
        t.where = at(n);
        if (const YAML::Node f = n["force"]) {
            const json v = scalar(f, "force");
            if (!v.is_boolean()) fail(f, what + ": 'force' must be true or false");
            t.force = v.get<bool>();
        }
        const YAML::Node src = n["source"];
        if (!src || src.IsNull()) fail(n, what + " needs a 'source': a model, {kind: zero} or {kind: model_token, model: ..., token: ...}");
        if (!src.IsMap() || !src["kind"]) {  // a model reference
            t.model = model_ref(src);
            return t;
        }
        const std::string kind = string(src["kind"], "kind");
        if (kind == "zero") {
            only(src, {"kind"}, what + ".source");
            t.kind = TokenSource::Kind::zero;
            return t;
        }
        if (kind != "model_token") fail(src["kind"], what + ": source kind must be zero or model_token, not '" + clip(kind) + "'");
        only(src, {"kind", "model", "token_id", "token"}, what + ".source");
        t.kind = TokenSource::Kind::model_token;
        if (!src["model"]) fail(src, what + ": a model_token source needs 'model'");
        t.model = model_ref(src["model"]);
        if (bool(src["token_id"]) == bool(src["token"])) fail(src, what + ": a model_token source needs one of token_id and token");
        if (const YAML::Node id = src["token_id"]) {
            const json v = scalar(id, "token_id");
            if (!v.is_number_integer() || v.get<int64_t>() < 0) fail(id, what + ": token_id must be an integer >= 0");
            t.token_id = v.get<int64_t>();
        } else {
            t.source_token = string(src["token"], "token");
        }
        return t;
    }

    Source source(const YAML::Node &n, bool with_range) const {
        if (!n.IsMap()) fail(n, "expected {model: ..., parameters: ...}");
        only(n, with_range ? std::set<std::string>{"model", "layer_range", "parameters"} : std::set<std::string>{"model", "parameters"},
             with_range ? "a slice source" : "a model entry");
        Source s;
        s.where = at(n);
        if (!n["model"]) fail(n, "missing 'model'");
        s.model = model_ref(n["model"]);
        s.parameters = settings(n["parameters"], "parameters");
        if (with_range) {
            const YAML::Node r = n["layer_range"];
            if (!r) fail(n, "missing 'layer_range' ([start, end), e.g. [0, 16])");
            if (!r.IsSequence() || r.size() != 2) fail(r, "layer_range must be [start, end)");
            try {
                s.start = r[0].as<int64_t>();
                s.end = r[1].as<int64_t>();
            } catch (const YAML::Exception &) {
                fail(r, "layer_range must hold two integers");
            }
            if (s.start < 0 || s.end <= s.start)
                fail(r, "layer_range [" + std::to_string(s.start) + ", " + std::to_string(s.end) + ") is empty or negative");
        }
        return s;
    }
};

}  // namespace

namespace {
// No key twice in one map: PyYAML, which mergekit reads with, keeps a repeated key's last value and
// yaml-cpp its first, so a repeat is refused rather than read either way. A node reached again through
// an alias is checked once (an alias bomb stays linear).
void check_no_repeated_keys(const YAML::Node &n, const Reader &r, std::set<std::pair<int, int>> &seen) {
    if (!n.IsMap() && !n.IsSequence()) return;
    if (!seen.insert({n.Mark().line, n.Mark().column}).second) return;
    if (n.IsSequence()) {
        for (const YAML::Node &x : n) check_no_repeated_keys(x, r, seen);
        return;
    }
    std::set<std::string> keys;
    for (const auto &kv : n) {
        if (kv.first.IsScalar() && !keys.insert(kv.first.Scalar()).second)
            r.fail(kv.first, "key '" + clip(kv.first.Scalar()) + "' is given twice in this map");
        check_no_repeated_keys(kv.second, r, seen);
    }
}

// Counts a document's content (scalars, maps, sequences, aliases) as the parser reads it.
struct ContentCounter : YAML::EventHandler {
    int content = 0;
    void OnDocumentStart(const YAML::Mark &) override {}
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark &, YAML::anchor_t) override {}
    void OnAlias(const YAML::Mark &, YAML::anchor_t) override { ++content; }
    void OnScalar(const YAML::Mark &, const std::string &, YAML::anchor_t, const std::string &) override { ++content; }
    void OnSequenceStart(const YAML::Mark &, const std::string &, YAML::anchor_t, YAML::EmitterStyle::value) override { ++content; }
    void OnSequenceEnd() override {}
    void OnMapStart(const YAML::Mark &, const std::string &, YAML::anchor_t, YAML::EmitterStyle::value) override { ++content; }
    void OnMapEnd() override {}
};

// Whether `text` holds a second YAML document with content. Two documents are read at most: yaml-cpp's
// LoadAll never ends on some malformed input (its parser reports a document again without advancing).
bool several_documents(const std::string &text) {
    std::istringstream in(text);
    YAML::Parser parser(in);
    ContentCounter first, second;
    return parser.HandleNextDocument(first) && parser.HandleNextDocument(second) && second.content > 0;
}

Config parse_checked(const std::string &text, const std::string &file, const std::string &dir) {
    Config c;
    c.file = file;
    c.dir = dir;
    c.text = text;
    const YAML::Node root = YAML::Load(text);
    if (several_documents(text))
        throw HostError(file + ": holds several YAML documents (separated by ---); a mergekit configuration is one");
    const Reader r{file};
    std::set<std::pair<int, int>> seen;
    check_no_repeated_keys(root, r, seen);
    if (!root.IsMap()) throw HostError(file + ": expected a mergekit configuration (a YAML map with merge_method and models or slices)");
    r.only(root,
           {"merge_method", "models", "slices", "modules", "base_model", "parameters", "dtype", "out_dtype", "tokenizer_source",
            "tokenizer", "chat_template"},
           "the configuration");
    if (!root["merge_method"]) throw HostError(file + ": missing 'merge_method'");
    c.method = r.string(root["merge_method"], "merge_method");
    c.method_where = r.at(root["merge_method"]);
    if (root["modules"]) r.fail(root["modules"], "'modules' (multi-module architectures) is not supported; use 'models' or 'slices'");
    const bool has_models = bool(root["models"]), has_slices = bool(root["slices"]);
    if (has_models == has_slices) throw HostError(file + ": give exactly one of 'models' or 'slices'");
    if (root["base_model"]) {
        c.base_model = r.model_ref(root["base_model"]);
        c.base_where = r.at(root["base_model"]);
    }
    c.parameters = r.settings(root["parameters"], "parameters");
    if (has_models) {
        const YAML::Node m = root["models"];
        if (!m.IsSequence() || m.size() == 0) r.fail(m, "'models' must be a non-empty list of {model: ..., parameters: ...}");
        Slice s;
        s.where = r.at(m);
        std::map<std::string, size_t> seen;
        for (const auto &e : m) {
            Source src = r.source(e, false);
            if (auto it = seen.find(src.model); it != seen.end()) {
                s.sources[it->second] = src;  // as mergekit: a repeated model keeps its last entry
                continue;
            }
            seen[src.model] = s.sources.size();
            s.sources.push_back(src);
        }
        c.slices.push_back(std::move(s));
    } else {
        c.slices_syntax = true;
        const YAML::Node sl = root["slices"];
        if (!sl.IsSequence() || sl.size() == 0) r.fail(sl, "'slices' must be a non-empty list of {sources: [...]}");
        for (const auto &e : sl) {
            if (!e.IsMap()) r.fail(e, "a slice must be a map with 'sources'");
            r.only(e, {"sources", "base_model", "parameters", "residual_weight"}, "a slice");
            Slice s;
            s.where = r.at(e);
            if (!e["sources"] || !e["sources"].IsSequence() || e["sources"].size() == 0)
                r.fail(e, "a slice needs a non-empty 'sources' list");
            for (const auto &src : e["sources"]) s.sources.push_back(r.source(src, true));
            if (e["base_model"]) s.base_model = r.model_ref(e["base_model"]);
            s.parameters = r.settings(e["parameters"], "parameters");
            const int64_t len = s.sources[0].end - s.sources[0].start;
            for (const auto &src : s.sources)
                if (src.end - src.start != len)
                    throw HostError(src.where + ": all sources of a slice must hold the same number of layers (" + std::to_string(len) +
                                    " in the first, " + std::to_string(src.end - src.start) + " here)");
            c.slices.push_back(std::move(s));
        }
    }
    static const std::set<std::string> dtypes = {"float32", "bfloat16", "float16", "torch.float32", "torch.bfloat16", "torch.float16"};
    for (auto [key, into] : {std::pair<const char *, std::string *>{"dtype", &c.dtype}, {"out_dtype", &c.out_dtype}}) {
        if (!root[key]) continue;
        std::string d = r.string(root[key], key);
        if (d.rfind("torch.", 0) == 0) d = d.substr(6);
        if (!dtypes.count(d)) r.fail(root[key], std::string(key) + " must be float32, bfloat16 or float16, not \"" + clip(d) + "\"");
        *into = d;
    }
    if (root["tokenizer_source"] && root["tokenizer"]) throw HostError(file + ": give tokenizer_source or tokenizer, not both");
    if (root["tokenizer_source"]) {
        c.tokenizer_source = root["tokenizer_source"].IsMap() ? r.model_ref(root["tokenizer_source"])
                                                              : r.string(root["tokenizer_source"], "tokenizer_source");
        c.tokenizer_where = r.at(root["tokenizer_source"]);
    }
    if (const YAML::Node t = root["tokenizer"]) {
        if (!t.IsMap()) r.fail(t, "'tokenizer' must be a map (source, tokens, pad_to_multiple_of)");
        r.only(t, {"source", "tokens", "pad_to_multiple_of"}, "tokenizer");
        c.tokenizer_source = t["source"] ? (t["source"].IsMap() ? r.model_ref(t["source"]) : r.string(t["source"], "source")) : "union";
        c.tokenizer_where = r.at(t);
        if (const YAML::Node tokens = t["tokens"]; tokens && !tokens.IsNull()) {
            if (!tokens.IsMap()) r.fail(tokens, "'tokenizer.tokens' must be a map of tokens to {source, force}");
            for (const auto &kv : tokens) c.tokens.push_back(r.token_source(r.key(kv.first), kv.second));
        }
        if (const YAML::Node p = t["pad_to_multiple_of"]) {
            const json v = r.scalar(p, "pad_to_multiple_of");
            if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > (1 << 20))
                r.fail(p, "pad_to_multiple_of must be an integer from 0 to 1048576");
            c.pad_to_multiple_of = v.get<int64_t>();
        }
    }
    if (root["chat_template"]) c.chat_template = r.string(root["chat_template"], "chat_template");
    return c;
}
}  // namespace

Config parse_config(const std::string &text, const std::string &file, const std::string &dir) {
    try {
        return parse_checked(text, file, dir);
    } catch (const YAML::Exception &e) {  // what the checks above did not foresee, still placed in the file
        if (e.mark.is_null()) throw HostError(file + ": " + e.msg);
        throw HostError(file + ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1) + ": " + e.msg);
    }
}

Config load_config(const std::string &path) {
    std::ifstream in(path);
    if (!in) throw HostError(path + ": cannot read the merge configuration");
    std::stringstream ss;
    ss << in.rdbuf();
    return parse_config(ss.str(), path, std::filesystem::absolute(path).parent_path().string());
}

nlohmann::json evaluate(const Setting &s, const std::string &tensor, double t) {
    if (!s.is_array()) return s;
    if (s.empty()) return nullptr;
    if (s[0].is_object()) {
        for (const auto &c : s) {
            const std::string filter = c.value("filter", "*");
            if (filter == "*" || tensor.find(filter) != std::string::npos) return evaluate(c["value"], tensor, t);
        }
        return nullptr;
    }
    // A gradient: np.interp(t, linspace(0, 1, n), s).
    const size_t n = s.size();
    if (n == 1) return s[0];
    const double scaled = t * double(n - 1);
    const size_t i0 = std::min(n - 1, size_t(std::max(0.0, std::floor(scaled))));
    const size_t i1 = std::min(n - 1, i0 + 1);
    const double frac = scaled - double(i0);
    return (1 - frac) * s[i0].get<double>() + frac * s[i1].get<double>();
}

}  // namespace mango::merge
