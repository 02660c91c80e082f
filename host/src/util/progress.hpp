// A progress bar on stderr: redrawn in place on a terminal, a plain line
// every few seconds otherwise (logs, CI). Off when quiet.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace mango {

class Progress {
public:
    Progress(std::string label, int64_t total, bool enabled = true);
    // Position `done` of `total`, with a status text ("loss 3.2 ppl 24.5 ...").
    void update(int64_t done, const std::string &status);
    void finish(const std::string &status);
    double elapsed_s() const;

private:
    std::string label_;
    int64_t total_;
    bool enabled_, tty_;
    std::chrono::steady_clock::time_point start_, last_;
    size_t width_ = 0;
};

// "1:05" / "1:02:03"
std::string format_duration(double seconds);
// v with `digits` decimals: format_fixed(3.14159, 2) == "3.14".
std::string format_fixed(double v, int digits);
// "1.5 GB", "320 MB", "12 KB", "7 B" (decimal units).
std::string format_bytes(double bytes);

}  // namespace mango
