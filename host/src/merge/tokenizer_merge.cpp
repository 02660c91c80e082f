#include "merge/tokenizer_merge.hpp"

#include "formats/atomic_file.hpp"
#include "formats/bpe_merge.hpp"
#include "formats/json_file.hpp"
#include "util/error.hpp"

#include <ATen/ATen.h>

#include <filesystem>
#include <map>

namespace mango::merge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const char *const kOtherFiles[] = {"tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",   "vocab.json", "merges.txt",
                                   "added_tokens.json",     "chat_template.jinja",     "chat_template.json"};

json read_json(const fs::path &p) { return formats::read_json_file(p, "building the merged tokenizer needs it"); }

// token -> id of a tokenizer.json (model vocabulary and added tokens), ids below `limit`.
std::map<std::string, int64_t> vocabulary(const json &tok, int64_t limit, const std::string &where) {
    std::map<std::string, int64_t> v;
    const json &model = tok.contains("model") ? tok["model"] : json();
    if (model.contains("vocab") && model["vocab"].is_object()) {
        for (const auto &[k, id] : model["vocab"].items())
            if (id.get<int64_t>() < limit) v[k] = id.get<int64_t>();
    } else if (model.contains("vocab") && model["vocab"].is_array()) {  // Unigram: [[piece, score], ...]
        for (size_t i = 0; i < model["vocab"].size() && int64_t(i) < limit; ++i) v[model["vocab"][i][0].get<std::string>()] = int64_t(i);
    } else {
        throw HostError(where + ": tokenizer.json has no vocabulary (model.vocab)");
    }
    if (tok.contains("added_tokens"))
        for (const json &a : tok["added_tokens"])
            if (a.value("id", limit) < limit) v[a.value("content", "")] = a["id"].get<int64_t>();
    return v;
}

// Drops every id >= limit from a tokenizer.json (mergekit's "stripped" base).
json strip(json tok, int64_t limit) {
    json &model = tok["model"];
    if (model.contains("vocab") && model["vocab"].is_object()) {
        json kept = json::object();
        for (const auto &[k, id] : model["vocab"].items())
            if (id.get<int64_t>() < limit) kept[k] = id;
        model["vocab"] = kept;
        // A BPE merge needs its parts and its result in the vocabulary (tokenizers refuses the file
        // otherwise): merges of tokens cut above go with them, the others keep their order.
        if (model.contains("merges") && model["merges"].is_array()) {
            const std::string prefix = model.contains("continuing_subword_prefix") && model["continuing_subword_prefix"].is_string()
                                           ? model["continuing_subword_prefix"].get<std::string>()
                                           : "";
            json merges = json::array();
            for (const json &m : model["merges"]) {
                const std::optional<formats::BpeMerge> p = formats::parse_bpe_merge(m, prefix);
                if (p && kept.contains(p->a) && kept.contains(p->b) && kept.contains(p->merged)) merges.push_back(m);
            }
            model["merges"] = merges;
        }
    } else if (model.contains("vocab") && model["vocab"].is_array() && int64_t(model["vocab"].size()) > limit) {
        model["vocab"].erase(model["vocab"].begin() + limit, model["vocab"].end());  // Unigram: the id is the position
    }
    if (tok.contains("added_tokens")) {
        json kept = json::array();
        for (const json &a : tok["added_tokens"])
            if (a.value("id", limit) < limit) kept.push_back(a);
        tok["added_tokens"] = kept;
    }
    return tok;
}

const std::map<std::string, std::string> &builtin_templates() {
    static const std::map<std::string, std::string> t = {
        {"chatml",
         "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"},
        {"llama3",
         "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + "
         "'<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + "
         "content %}"
         "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% "
         "endif %}"},
        {"alpaca",
         "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}{% elif message['role'] == "
         "'user' %}"
         "{{ '### Instruction:\n' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + "
         "message['content'] + "
         "eos_token + '\n\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"},
        {"mistral",
         "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
         "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"},
    };
    return t;
}

}  // namespace

VocabPlan plan_vocabulary(const Config &c, const std::vector<VocabModel> &models, int64_t base, size_t donor,
                          const std::function<int64_t(const std::string &ref)> &model_index) {
    VocabPlan plan;
    if (c.tokenizer_source.empty()) return plan;  // the donor's files, no permutation
    const size_t owner = base >= 0 ? size_t(base) : donor;
    std::vector<std::map<std::string, int64_t>> vocabs;
    std::vector<json> toks;
    for (const VocabModel &m : models) {
        toks.push_back(read_json(fs::path(m.dir) / "tokenizer.json"));
        vocabs.push_back(vocabulary(toks.back(), m.vocab_size, m.dir + "/tokenizer.json"));
    }
    std::map<std::string, int64_t> out;  // token -> output id
    if (c.tokenizer_source == "base" || c.tokenizer_source == "union") {
        out = vocabs[owner];
        plan.tokenizer = strip(toks[owner], models[owner].vocab_size);
        plan.files_from = models[owner].dir;
    } else {
        const int64_t k = model_index(c.tokenizer_source);
        if (k < 0)
            throw HostError(c.tokenizer_where + ": tokenizer_source '" + clip(c.tokenizer_source) +
                            "' is not one of the merged models (or base, union)");
        out = vocabs[size_t(k)];
        plan.tokenizer = toks[size_t(k)];
        plan.files_from = models[size_t(k)].dir;
    }
    // New tokens are added tokens at the next ids: plain ones as transformers' add_tokens makes them,
    // or a model's added token with its own settings.
    int64_t next = 0;
    for (const auto &[_, id] : out) next = std::max(next, id + 1);
    json &added = plan.tokenizer["added_tokens"];
    if (!added.is_array()) added = json::array();
    const json plain = {{"single_word", false}, {"lstrip", false}, {"rstrip", false}, {"normalized", true}, {"special", false}};
    auto add = [&](const std::string &tok, json entry) {
        entry["id"] = next;
        entry["content"] = tok;
        added.push_back(entry);
        out[tok] = next++;
    };
    if (c.tokenizer_source == "union") {  // as mergekit: the other models' tokens first, then their added tokens
        for (const bool added_pass : {false, true}) {
            for (size_t m = 0; m < models.size(); ++m) {
                std::map<std::string, json> own_added;
                if (toks[m].contains("added_tokens") && toks[m]["added_tokens"].is_array())
                    for (const json &a : toks[m]["added_tokens"])
                        if (a.is_object() && a.contains("content") && a["content"].is_string())
                            own_added[a["content"].get<std::string>()] = a;
                std::vector<std::pair<int64_t, std::string>> by_id;
                for (const auto &[tok, id] : vocabs[m]) by_id.push_back({id, tok});
                std::sort(by_id.begin(), by_id.end());
                for (const auto &[id, tok] : by_id) {
                    const auto a = own_added.find(tok);
                    if (out.count(tok) || (a != own_added.end()) != added_pass) continue;
                    add(tok, added_pass ? a->second : plain);
                }
            }
        }
    }
    for (const TokenSource &t : c.tokens)  // mergekit adds the tokens it is told about
        if (!out.count(t.token)) add(t.token, plain);
    for (const TokenSource &t : c.tokens) {
        const std::string what = t.where + ": tokenizer.tokens['" + clip(t.token) + "']";
        const auto id = out.find(t.token);
        VocabPlan::TokenRow row{id->second, -1, 0, t.force, what};
        if (t.kind != TokenSource::Kind::zero) {
            row.model = model_index(t.model);
            if (row.model < 0) throw HostError(what + ": '" + clip(t.model) + "' is not one of the merged models");
            const VocabModel &m = models[size_t(row.model)];
            if (t.kind == TokenSource::Kind::model_token && t.token_id >= 0) {
                if (t.token_id >= m.vocab_size)
                    throw HostError(what + ": token_id " + std::to_string(t.token_id) + " is past " + m.dir + "'s vocab_size (" +
                                    std::to_string(m.vocab_size) + ")");
                row.row = t.token_id;
            } else {
                const std::string &name = t.kind == TokenSource::Kind::model ? t.token : t.source_token;
                const auto it = vocabs[size_t(row.model)].find(name);
                if (it == vocabs[size_t(row.model)].end())
                    throw HostError(what + ": '" + clip(name) + "' is not a token of " + m.dir + "/tokenizer.json");
                row.row = it->second;
            }
        }
        plan.token_rows.push_back(row);
    }
    plan.real = next;  // every id in `out` is below it
    plan.rows = plan.real;
    if (c.pad_to_multiple_of > 0) plan.rows = (plan.real + c.pad_to_multiple_of - 1) / c.pad_to_multiple_of * c.pad_to_multiple_of;
    plan.source_id.assign(models.size(), std::vector<int64_t>(size_t(plan.rows), -1));
    for (size_t m = 0; m < models.size(); ++m) {
        for (const auto &[tok, id] : out) {
            auto it = vocabs[m].find(tok);
            if (it != vocabs[m].end()) plan.source_id[m][size_t(id)] = it->second;
        }
        bool identity = models[m].vocab_size == plan.rows;
        for (int64_t i = 0; identity && i < plan.rows; ++i) identity = plan.source_id[m][size_t(i)] == i;
        plan.active = plan.active || !identity;
    }
    plan.active = plan.active || !plan.token_rows.empty();
    return plan;
}

std::vector<at::Tensor> permute_rows(const VocabPlan &plan, const std::vector<at::Tensor> &tensors, const std::vector<size_t> &model_ids,
                                     int32_t base, const std::string &name) {
    const int64_t D = tensors[0].size(1);
    for (const at::Tensor &t : tensors)
        if (t.dim() != 2 || t.size(1) != D) throw HostError("embedding matrices differ in width; tokenizers cannot be merged");
    // The default row of each token: the one model that has it, else the base's, else the mean.
    at::Tensor sum = at::zeros({plan.rows, D}, tensors[0].options()), count = at::zeros({plan.rows, 1}, tensors[0].options());
    std::vector<at::Tensor> own;  // [rows] gather index and mask per model
    for (size_t k = 0; k < tensors.size(); ++k) {
        const auto &ids = plan.source_id[model_ids[k]];
        at::Tensor idx = at::tensor(ids, at::kLong);
        at::Tensor has = (idx >= 0) & (idx < tensors[k].size(0));
        at::Tensor rows = tensors[k].index_select(0, idx.clamp(0, tensors[k].size(0) - 1).to(tensors[k].device()));
        at::Tensor m = has.to(tensors[k].device()).unsqueeze(1).to(rows.scalar_type());
        own.push_back(rows * m);
        own.push_back(m);
        sum = sum + rows * m;
        count = count + m;
    }
    at::Tensor fallback = sum / count.clamp_min(1);
    if (base >= 0) {
        const at::Tensor &bm = own[2 * size_t(base) + 1];
        fallback = at::where(bm > 0, own[2 * size_t(base)], fallback);
    }
    // tokenizer.tokens: the named row is the default; forced, it replaces every model's own.
    at::Tensor forced = at::zeros({plan.rows, 1}, at::kBool);
    for (const VocabPlan::TokenRow &r : plan.token_rows) {
        at::Tensor row = at::zeros({D}, fallback.options());
        if (r.model >= 0) {
            const size_t k = size_t(std::find(model_ids.begin(), model_ids.end(), size_t(r.model)) - model_ids.begin());
            if (k == model_ids.size()) throw HostError(r.what + ": its model has no '" + name + "' among this merge's inputs");
            if (r.row >= tensors[k].size(0))
                throw HostError(r.what + ": row " + std::to_string(r.row) + " is past the " + std::to_string(tensors[k].size(0)) +
                                " rows of '" + name + "'");
            row = tensors[k][r.row];
        }
        fallback[r.id].copy_(row);
        if (r.force) forced[r.id] = true;
    }
    forced = forced.to(fallback.device());
    std::vector<at::Tensor> out;
    for (size_t k = 0; k < tensors.size(); ++k) {
        at::Tensor t = at::where((own[2 * k + 1] > 0) & ~forced, own[2 * k], fallback);
        if (plan.rows > plan.real) {  // padding rows: the mean of the real ones
            at::Tensor mean = t.narrow(0, 0, plan.real).mean(0, true);
            t = at::cat({t.narrow(0, 0, plan.real), mean.expand({plan.rows - plan.real, D})});
        }
        out.push_back(t.contiguous());
    }
    return out;
}

void write_tokenizer(const VocabPlan &plan, const std::string &donor_dir, const std::string &out) {
    if (plan.tokenizer.is_null()) {
        for (const char *f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
                              "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json"})
            if (fs::exists(fs::path(donor_dir) / f))
                formats::copy_file_atomic((fs::path(donor_dir) / f).string(), (fs::path(out) / f).string());
        return;
    }
    formats::write_file_atomic((fs::path(out) / "tokenizer.json").string(), plan.tokenizer.dump(2) + "\n");
    for (const char *f : kOtherFiles)
        if (fs::exists(fs::path(plan.files_from) / f))
            formats::copy_file_atomic((fs::path(plan.files_from) / f).string(), (fs::path(out) / f).string());
}

void apply_chat_template(const Config &c, const std::string &out, const std::vector<std::string> &input_dirs) {
    if (c.chat_template.empty()) return;
    std::string tmpl = c.chat_template;
    if (tmpl == "auto") {
        std::map<std::string, int> votes;
        for (const std::string &d : input_dirs) {
            const fs::path p = fs::path(d) / "tokenizer_config.json";
            if (!fs::exists(p)) continue;
            const json j = read_json(p);
            if (j.contains("chat_template") && j["chat_template"].is_string()) ++votes[j["chat_template"].get<std::string>()];
        }
        if (votes.empty()) return;  // no input has one
        tmpl = std::max_element(votes.begin(), votes.end(), [](auto &a, auto &b) { return a.second < b.second; })->first;
    } else if (auto it = builtin_templates().find(tmpl); it != builtin_templates().end()) {
        tmpl = it->second;
    } else if (tmpl.find("{{") == std::string::npos && tmpl.find("{%") == std::string::npos) {
        throw HostError(c.file + ": chat_template '" + clip(tmpl) +
                        "' is neither a Jinja template nor one of auto, chatml, llama3, alpaca, mistral");
    }
    const fs::path p = fs::path(out) / "tokenizer_config.json";
    json j = fs::exists(p) ? read_json(p) : json::object();
    j["chat_template"] = tmpl;
    formats::write_file_atomic(p.string(), j.dump(2) + "\n");
}

}  // namespace mango::merge
