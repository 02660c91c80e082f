// Logging through spdlog, kept in its own library: LibTorch 2.x ships fmt
// headers of its own that must never meet spdlog's in one translation unit.
#pragma once

#include <string>

namespace mango {

// Levels as in mango/plugin.h: 0 trace .. 4 error.
void log_message(int level, const std::string &message);
// Sets up the stderr logger; false when `level` is not trace|debug|info|warn|error|off.
bool init_logging(const std::string &level);

}  // namespace mango
