#include "util/logging.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace mango {

void log_message(int level, const std::string &message) {
    static const spdlog::level::level_enum levels[] = {spdlog::level::trace, spdlog::level::debug, spdlog::level::info, spdlog::level::warn,
                                                       spdlog::level::err};
    spdlog::log(levels[level < 0 ? 0 : level > 4 ? 4 : level], "{}", message);
}

bool init_logging(const std::string &name) {
    const auto level = spdlog::level::from_str(name);
    if (level == spdlog::level::off && name != "off") return false;
    if (!spdlog::get("mango")) spdlog::set_default_logger(spdlog::stderr_color_mt("mango"));
    spdlog::set_level(level);
    spdlog::set_pattern("%^%l%$: %v");
    return true;
}

}  // namespace mango
