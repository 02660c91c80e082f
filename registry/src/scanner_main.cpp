// mango-plugin-scanner LIBRARY — loads one plugin library in this throwaway
// process and prints its description as one marked JSON line. The host runs
// it as a child (like gst-plugin-scanner), so whatever the library does at
// load time can only take this process down.
#include "mango/registry/registry.hpp"

#include <unistd.h>

#include <cstdio>
#include <string>

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: mango-plugin-scanner LIBRARY\n");
        return 2;
    }
    // The library may print to stdout while loading; keep our answer apart.
    const int answer_fd = dup(STDOUT_FILENO);
    dup2(STDERR_FILENO, STDOUT_FILENO);
    FILE *answer = fdopen(answer_fd, "w");
    if (!answer) return 3;

    mango::registry::LibraryScan scan;
    try {
        scan = mango::registry::describe_in_process(argv[1]);
    } catch (const std::exception &e) {
        scan.path = argv[1];
        scan.reason = std::string("error while describing: ") + e.what();
    }
    std::fprintf(answer, "MANGO-SCAN-RESULT %s\n", mango::registry::to_json(scan).c_str());
    std::fflush(answer);
    // Skip library destructors: a library that misbehaves at unload must not
    // turn a good answer into a crash report.
    _exit(0);
}
