// mango tokenize MODEL_DIR TEXT [--decode] [--no-special] [--json]
#include "cli.hpp"

#include "formats/tokenizer.hpp"
#include "formats/unicode.hpp"

#include <nlohmann/json.hpp>

#include <iostream>
#include <sstream>

namespace mango::cli {

std::string checked_utf8(const std::string &text, const std::string &what, bool lossy) {
    const size_t bad = formats::unicode::first_invalid_utf8(text);
    if (bad == std::string::npos) return text;
    if (lossy) return formats::unicode::from_bytes_lossy(text);
    throw UsageError(what + " is not valid UTF-8 (byte " + std::to_string(bad) +
                     "); pass --lossy-utf8 to replace invalid bytes with U+FFFD, as Hugging Face tokenizers receive them from Python");
}

namespace {

int tokenize(const Global &g, const po::variables_map &vm) {
    const formats::Tokenizer tok = formats::Tokenizer::from_file(vm["model"].as<std::string>());
    const bool special = !vm.count("no-special");
    const std::string input = checked_utf8(vm["text"].as<std::string>(), "TEXT", vm.count("lossy-utf8") > 0);
    if (vm.count("decode")) {
        std::vector<int32_t> ids;
        std::stringstream ss(input);
        for (std::string word; ss >> word;) {
            try {
                ids.push_back(std::stoi(word));
            } catch (const std::exception &) {
                throw UsageError("--decode expects ids separated by spaces, found '" + word + "'");
            }
        }
        const std::string text = tok.decode(ids, !special);
        if (g.json)
            std::cout << nlohmann::json{{"ids", ids}, {"text", text}}.dump() << "\n";
        else
            std::cout << text << "\n";
        return 0;
    }
    const std::vector<int32_t> ids = tok.encode(input, special);
    if (g.json) {
        nlohmann::json tokens = nlohmann::json::array();
        for (int32_t id : ids) tokens.push_back(tok.id_to_token(id));
        std::cout << nlohmann::json{{"text", input}, {"ids", ids}, {"tokens", tokens}}.dump() << "\n";
        return 0;
    }
    for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
    std::cout << "\n";
    return 0;
}

}  // namespace

std::vector<Command> tokenize_commands() {
    return {{"tokenize", "MODEL_DIR TEXT [--decode] [--no-special] [--json]",
             "encode TEXT with MODEL_DIR/tokenizer.json (or decode space-separated ids with --decode)",
             [](po::options_description &d, po::positional_options_description &p) {
                 d.add_options()("model", po::value<std::string>()->required(), "model folder or tokenizer.json")(
                     "text", po::value<std::string>()->required(), "text to encode (ids with --decode)")(
                     "decode", "decode ids instead of encoding text")("no-special",
                                                                      "no BOS/CLS/SEP when encoding; drop special tokens when decoding")(
                     "lossy-utf8", "replace invalid UTF-8 in TEXT with U+FFFD instead of refusing it");
                 p.add("model", 1).add("text", 1);
             },
             tokenize}};
}

}  // namespace mango::cli
