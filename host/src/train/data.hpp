// Training data: plain text (one document per blank-line-separated block,
// or per line with line_documents) or JSONL (a "text" field per line),
// tokenised, joined with an EOS between documents, packed into fixed-length
// sequences, and split into train / validation deterministically.
#pragma once

#include "formats/tokenizer.hpp"

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace mango {

struct DataOptions {
    int64_t seq_len = 128;
    double validation_fraction = 0.1;  // of the packed sequences, taken from the end
    int64_t eos_id = -1;               // between documents; -1 = none
    bool line_documents = false;       // text: every non-empty line is a document
    std::string jsonl_field = "text";
};

struct PackedData {
    at::Tensor train;       // [N, seq_len] int64
    at::Tensor validation;  // [M, seq_len] int64
    int64_t documents = 0, tokens = 0;
};

// Documents of a .txt or .jsonl file; errors name the file and line.
std::vector<std::string> read_documents(const std::string &path, const DataOptions &options);
PackedData pack(const formats::Tokenizer &tok, const std::vector<std::string> &documents, const DataOptions &options,
                const std::string &where);

}  // namespace mango
