// bench_safetensors [--file PATH] [--size-mb N] [--reps R]
// Time to open a ~1 GB safetensors file and read every tensor's bytes through
// Mango's reader, against plain read() of the same file into memory, side by
// side in one run (warm page cache, median of R alternating runs). Prints the
// ratio mango / read().
#include "formats/safetensors.hpp"

#include <ATen/ATen.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

using Clock = std::chrono::steady_clock;

int main(int argc, char **argv) {
    std::string file = "/tmp/mango-bench-1g.safetensors";
    int64_t size_mb = 1024;
    int reps = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--file")
            file = argv[i + 1];
        else if (a == "--size-mb")
            size_mb = std::stoll(argv[i + 1]);
        else if (a == "--reps")
            reps = std::stoi(argv[i + 1]);
    }
    if (!std::filesystem::exists(file)) {
        std::cerr << "writing " << size_mb << " MB test file " << file << "\n";
        mango::formats::NamedTensors ts;
        const int64_t per = 4 << 20;  // 4 MB tensors, a mix of dtypes
        for (int64_t i = 0; i < size_mb / 4; ++i) {
            const auto dt = i % 3 == 0 ? at::kFloat : i % 3 == 1 ? at::kBFloat16 : at::kHalf;
            ts.emplace_back("layers." + std::to_string(i) + ".weight", at::randn({per / static_cast<int64_t>(at::elementSize(dt))}).to(dt));
        }
        mango::formats::write_safetensors(file, ts);
    }
    const size_t bytes = std::filesystem::file_size(file);
    std::vector<char> buf(bytes);

    auto plain = [&] {
        const auto t0 = Clock::now();
        const int fd = ::open(file.c_str(), O_RDONLY);
        size_t got = 0;
        while (got < bytes) {
            const ssize_t n = ::read(fd, buf.data() + got, std::min<size_t>(bytes - got, 16 << 20));
            if (n <= 0) break;
            got += static_cast<size_t>(n);
        }
        ::close(fd);
        return std::chrono::duration<double>(Clock::now() - t0).count();
    };
    auto mango = [&] {
        const auto t0 = Clock::now();
        auto f = mango::formats::SafetensorsFile::open(file);
        size_t off = 0;
        for (const auto &e : f->header().tensors) {
            at::Tensor t = f->tensor(e);
            std::memcpy(buf.data() + off, t.data_ptr(), t.nbytes());  // touch every byte once
            off += t.nbytes();
        }
        return std::chrono::duration<double>(Clock::now() - t0).count();
    };
    plain();  // warm the page cache
    std::vector<double> a, b;
    for (int r = 0; r < reps; ++r) {
        a.push_back(plain());
        b.push_back(mango());
    }
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    const double pa = a[a.size() / 2], pb = b[b.size() / 2], gb = bytes / 1e9;
    std::cout << "file " << file << ": " << gb << " GB, median of " << reps << " (warm cache)\n"
              << "  read():           " << pa << " s  (" << gb / pa << " GB/s)\n"
              << "  mango open+read:  " << pb << " s  (" << gb / pb << " GB/s)\n"
              << "  ratio mango/read: " << pb / pa << "\n";
}
