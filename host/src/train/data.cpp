#include "train/data.hpp"

#include "abi/host_api.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>

namespace mango {

std::vector<std::string> read_documents(const std::string &path, const DataOptions &o) {
    std::ifstream in(path);
    if (!in) throw HostError(path + ": cannot read the data file");
    std::vector<std::string> docs;
    const bool jsonl = path.size() >= 6 && path.compare(path.size() - 6, 6, ".jsonl") == 0;
    std::string line, block;
    int64_t n = 0;
    while (std::getline(in, line)) {
        ++n;
        if (jsonl) {
            if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
            nlohmann::json j;
            try {
                j = nlohmann::json::parse(line);
            } catch (const std::exception &e) {
                throw HostError(path + ":" + std::to_string(n) + ": not a JSON line: " + e.what());
            }
            if (!j.is_object() || !j.contains(o.jsonl_field) || !j[o.jsonl_field].is_string())
                throw HostError(path + ":" + std::to_string(n) + ": expected an object with a string \"" + o.jsonl_field + "\" field");
            docs.push_back(j[o.jsonl_field].get<std::string>());
        } else if (o.line_documents) {
            if (line.find_first_not_of(" \t\r") != std::string::npos) docs.push_back(line);
        } else if (line.find_first_not_of(" \t\r") == std::string::npos) {
            if (!block.empty()) docs.push_back(block);
            block.clear();
        } else {
            block += (block.empty() ? "" : "\n") + line;
        }
    }
    if (!block.empty()) docs.push_back(block);
    if (docs.empty()) throw HostError(path + ": the data file holds no text");
    return docs;
}

PackedData pack(const formats::Tokenizer &tok, const std::vector<std::string> &documents, const DataOptions &o, const std::string &where) {
    if (o.seq_len < 2) throw HostError(where + ": seq_len must be at least 2");
    if (o.validation_fraction < 0 || o.validation_fraction >= 1) throw HostError(where + ": validation fraction must be in [0, 1)");
    std::vector<int64_t> stream;
    for (const std::string &d : documents) {
        for (int32_t id : tok.encode(d, false)) stream.push_back(id);
        if (o.eos_id >= 0) stream.push_back(o.eos_id);
    }
    const int64_t n_seq = static_cast<int64_t>(stream.size()) / o.seq_len;
    if (n_seq < 1)
        throw HostError(where + ": " + std::to_string(stream.size()) + " tokens do not fill one sequence of " + std::to_string(o.seq_len));
    at::Tensor all =
        at::tensor(std::vector<int64_t>(stream.begin(), stream.begin() + n_seq * o.seq_len), at::kLong).reshape({n_seq, o.seq_len});
    int64_t n_val = static_cast<int64_t>(std::floor(double(n_seq) * o.validation_fraction));
    if (o.validation_fraction > 0 && n_val == 0 && n_seq > 1) n_val = 1;
    PackedData p;
    p.train = all.narrow(0, 0, n_seq - n_val);
    p.validation = all.narrow(0, n_seq - n_val, n_val);
    p.documents = static_cast<int64_t>(documents.size());
    p.tokens = static_cast<int64_t>(stream.size());
    return p;
}

}  // namespace mango
