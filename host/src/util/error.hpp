// The host runtime's error: configuration, plugins, data, files. Its message
// says what was expected, what was found, and where.
//
// Named HostError, not Error: the plugin SDK (mango/plugin.hpp) has a
// mango::Error for plugin code, and a program that includes both (a test
// with an in-process plugin) must not see two classes of one name.
#pragma once

#include <stdexcept>
#include <string>

namespace mango {

class HostError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// `value` cut to `max` characters with "... (N characters)" appended, for
// echoing user input in messages without flooding the terminal.
inline std::string clip(const std::string &value, size_t max = 200) {
    if (value.size() <= max) return value;
    return value.substr(0, max) + "... (" + std::to_string(value.size()) + " characters)";
}

// `message` without the C++ backtrace LibTorch's c10::Error::what() appends
// ("Exception raised from ... frame #0: ..."), wherever in a wrapped message
// it starts: the text a user reads.
inline std::string without_backtrace(const std::string &message) {
    const size_t at = message.find("\nException raised from ");
    return at == std::string::npos ? message : message.substr(0, at);
}

}  // namespace mango
