// The merged model's tokenizer, as mergekit builds it: tokenizer_source
// "base" (the base model's vocabulary, cut to its config's vocab_size), a
// model reference (that model's tokenizer), or "union" (the base's plus every
// other model's tokens it lacks, appended as added tokens: plain ones first,
// then the models' own added tokens with their settings). Models whose
// vocabulary differs from the output's get their embedding and LM-head rows
// permuted to the output's ids before merging; a token a model lacks takes
// the default row (the one model that has it, else the base's, else the mean
// of those that have it, else zeros). tokenizer.tokens names a token's default
// row (a model's row for it, a row of a model's own embedding, or zeros), with
// `force` every model takes that row, and a token the vocabulary lacks is
// added. With no tokenizer_source the donor's files are copied and nothing is
// permuted (mergekit's default).
#pragma once

#include "merge/merge_config.hpp"

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

namespace mango::merge {

struct VocabModel {
    std::string dir;
    int64_t vocab_size = 0;  // config.json's
};

struct VocabPlan {
    bool active = false;  // some model's ids differ from the output's
    int64_t rows = 0;     // output vocabulary (padded to pad_to_multiple_of)
    int64_t real = 0;     // tokens before padding
    // Per model: for every output id, the model's own id, or -1.
    std::vector<std::vector<int64_t>> source_id;
    // tokenizer.tokens, resolved: the default row of output id `id` is row `row` of model `model`'s
    // own matrix (model -1: zeros); with `force` every model takes it.
    struct TokenRow {
        int64_t id = 0, model = -1, row = 0;
        bool force = false;
        std::string what;  // "merge.yml:12: tokenizer.tokens['<|im_end|>']"
    };
    std::vector<TokenRow> token_rows;
    nlohmann::json tokenizer;  // tokenizer.json to write (null: copy the donor's files)
    std::string files_from;    // folder to copy the other tokenizer files from
};

// base: index into models of the base model, or -1. donor: the config donor.
VocabPlan plan_vocabulary(const Config &config, const std::vector<VocabModel> &models, int64_t base, size_t donor,
                          const std::function<int64_t(const std::string &ref)> &model_index);

// Each model's [V, D] matrix rebuilt on the output's ids (tensors[k] belongs
// to model model_ids[k]); `base` indexes `tensors` or is -1. `name` (the
// tensor's) is for errors.
std::vector<at::Tensor> permute_rows(const VocabPlan &plan, const std::vector<at::Tensor> &tensors, const std::vector<size_t> &model_ids,
                                     int32_t base, const std::string &name);

// Writes tokenizer files into `out`: the plan's tokenizer.json (and its
// other files from files_from), or the donor's files when the plan has none.
void write_tokenizer(const VocabPlan &plan, const std::string &donor_dir, const std::string &out);

// chat_template: "auto" (the template most inputs share), a Jinja text, or a
// built-in name (chatml, llama3, alpaca, mistral); written into
// tokenizer_config.json of `out`.
void apply_chat_template(const Config &config, const std::string &out, const std::vector<std::string> &input_dirs);

}  // namespace mango::merge
