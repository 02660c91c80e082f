// A JSON file read whole, with errors that name the file: what it is needed for
// when it cannot be opened, the parser's message when it is not JSON.
#pragma once

#include "util/error.hpp"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <string>

namespace mango::formats {

// `Json` is nlohmann::json, or nlohmann::ordered_json where key order matters;
// `Error` the caller's error type. `needed_for` completes "cannot read (...)".
template <class Json = nlohmann::json, class Error = HostError>
Json read_json_file(const std::filesystem::path &path, const std::string &needed_for) {
    std::ifstream in(path);
    if (!in) throw Error(path.string() + ": cannot read (" + needed_for + ")");
    try {
        return Json::parse(in);
    } catch (const std::exception &e) {
        throw Error(path.string() + ": not valid JSON: " + e.what());
    }
}

}  // namespace mango::formats
