#include "util/progress.hpp"

#include <cstdio>
#include <iostream>
#include <unistd.h>

namespace mango {

std::string format_duration(double s) {
    if (!(s >= 0) || s > 1e7) return "?";
    const int64_t t = static_cast<int64_t>(s + 0.5), h = t / 3600, m = t / 60 % 60, sec = t % 60;
    char buf[32];
    if (h)
        std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", (long long)h, (long long)m, (long long)sec);
    else
        std::snprintf(buf, sizeof buf, "%lld:%02lld", (long long)m, (long long)sec);
    return buf;
}

std::string format_fixed(double v, int digits) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", digits, v);
    return buf;
}

Progress::Progress(std::string label, int64_t total, bool enabled)
    : label_(std::move(label)),
      total_(total),
      enabled_(enabled),
      tty_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()),
      last_(start_) {}

double Progress::elapsed_s() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }

void Progress::update(int64_t done, const std::string &status) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    const double since = std::chrono::duration<double>(now - last_).count();
    if (tty_ ? since < 0.1 && done < total_ : since < 5.0 && done < total_) return;
    last_ = now;
    const double el = elapsed_s();
    const double eta = done > 0 ? el * double(total_ - done) / double(done) : -1;
    const int bars = total_ > 0 ? static_cast<int>(24.0 * double(done) / double(total_)) : 0;
    std::string line = label_ + " " + (tty_ ? "[" + std::string(bars, '#') + std::string(24 - bars, ' ') + "] " : "") +
                       std::to_string(done) + "/" + std::to_string(total_) + "  " + status + "  " + format_duration(el) + " elapsed, ETA " +
                       (eta < 0 ? "?" : format_duration(eta));
    if (tty_) {
        const size_t w = line.size();
        if (line.size() < width_) line += std::string(width_ - line.size(), ' ');
        width_ = w;
        std::cerr << "\r" << line << std::flush;
    } else {
        std::cerr << line << "\n";
    }
}

void Progress::finish(const std::string &status) {
    if (!enabled_) return;
    std::string line = label_ + " done  " + status + "  " + format_duration(elapsed_s());
    if (tty_ && line.size() < width_) line += std::string(width_ - line.size(), ' ');
    std::cerr << (tty_ ? "\r" : "") << line << "\n";
}

std::string format_bytes(double bytes) {
    const char *units[] = {"B", "KB", "MB", "GB", "TB", "PB"};
    int u = 0;
    while (bytes >= 1000 && u < 5) bytes /= 1000, ++u;
    return format_fixed(bytes, bytes < 10 && u > 0 ? 1 : 0) + " " + units[u];
}

}  // namespace mango
