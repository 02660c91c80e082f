// bench_tokenizer TOKENIZER_JSON TEXT_FILE [--reps R]
// Encodes TEXT_FILE line by line (one thread) and prints MB/s; run
// bench_tokenizer_hf.py on the same files for Hugging Face tokenizers' figure.
#include "formats/tokenizer.hpp"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

int main(int argc, char **argv) {
    if (argc < 3) {
        std::cerr << "usage: bench_tokenizer TOKENIZER_JSON TEXT_FILE [--reps R]\n";
        return 2;
    }
    const int reps = argc >= 5 ? std::stoi(argv[4]) : 3;
    std::ifstream in(argv[2]);
    std::vector<std::string> lines;
    size_t bytes = 0;
    for (std::string l; std::getline(in, l);) {
        bytes += l.size();
        lines.push_back(std::move(l));
    }
    std::vector<double> secs;
    size_t tokens = 0;
    for (int r = 0; r < reps; ++r) {  // a fresh tokenizer per pass: its word cache starts cold, as HF's does
        const auto tok = mango::formats::Tokenizer::from_file(argv[1]);
        tokens = 0;
        const auto t0 = std::chrono::steady_clock::now();
        for (const auto &l : lines) tokens += tok.encode(l, false).size();
        secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(secs.begin(), secs.end());
    const double s = secs[secs.size() / 2];
    std::cout << "{\"impl\": \"mango\", \"tokenizer\": \"" << argv[1] << "\", \"mb\": " << bytes / 1e6 << ", \"lines\": " << lines.size()
              << ", \"tokens\": " << tokens << ", \"seconds\": " << s << ", \"mb_per_s\": " << bytes / 1e6 / s << "}\n";
}
