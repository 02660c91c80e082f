// Without libFuzzer (gcc builds): run a fuzz target over every file of the
// given corpus folders, so the seeds are regression tests in ctest.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv) {
    size_t n = 0;
    for (int i = 1; i < argc; ++i)
        for (const auto &e : std::filesystem::recursive_directory_iterator(argv[i])) {
            if (!e.is_regular_file()) continue;
            std::ifstream in(e.path(), std::ios::binary);
            std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
            LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
            ++n;
        }
    std::printf("replayed %zu inputs\n", n);
    return n > 0 ? 0 : 1;
}
