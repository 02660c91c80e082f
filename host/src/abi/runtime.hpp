// Process-wide runtime setup: threads, seeding, Ctrl-C.
#pragma once

#include <string>

namespace mango {

// Sets LibTorch's thread count (0 = all cores) and installs a SIGINT handler
// that asks running work to stop (a second Ctrl-C exits at once), and the
// fatal-signal handlers that name the plugin call a crash happened in.
void init_runtime(int threads);
// "LibTorch 1.13.1, 2 threads, CUDA: not built" — for --version.
std::string runtime_description();

}  // namespace mango
