// Deterministic driver for the GGUF fuzz target, so every build (no clang, no
// libFuzzer) runs it: replays each file under the seed and regression folders
// (or the files and folders given as arguments, to reproduce a crash), then
// runs a fixed-seed mutation loop over the seeds: bit flips, interesting
// integers over length and count fields, truncations, insertions, deletions.
//
// GGUF_FUZZ_ITERATIONS overrides the number of mutations (default 50000).
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

struct Input {
  std::string path;
  std::vector<uint8_t> bytes;
};

void Collect(const std::string& path, std::vector<Input>& out) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    DIR* dir = ::opendir(path.c_str());
    if (dir == nullptr) return;
    std::vector<std::string> names;
    while (const dirent* e = ::readdir(dir)) {
      const std::string name = e->d_name;
      if (name != "." && name != ".." && name != "README.md" && name != "BUILD.bazel") {
        names.push_back(name);
      }
    }
    ::closedir(dir);
    std::sort(names.begin(), names.end());  // readdir order is not stable
    for (const std::string& name : names) Collect(path + "/" + name, out);
    return;
  }
  std::ifstream in(path, std::ios::binary);
  out.push_back({path, std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {})});
}

constexpr uint64_t kInteresting[] = {0,
                                     1,
                                     2,
                                     3,
                                     4,
                                     7,
                                     8,
                                     9,
                                     12,
                                     13,
                                     16,
                                     31,
                                     32,
                                     33,
                                     64,
                                     255,
                                     256,
                                     4096,
                                     0x7fff,
                                     0x8000,
                                     0xffff,
                                     0x10000,
                                     0x7fffffff,
                                     0x80000000,
                                     0xffffffff,
                                     0x100000000ull,
                                     0x7fffffffffffffffull,
                                     0x8000000000000000ull,
                                     0xffffffffffffffffull,
                                     0xfffffffffffffff0ull,
                                     1ull << 40,
                                     1ull << 62};

void Mutate(std::vector<uint8_t>& b, std::mt19937_64& rng) {
  const int n_mutations = 1 + static_cast<int>(rng() % 4);
  for (int m = 0; m < n_mutations; ++m) {
    const uint64_t r = rng();
    const size_t pos = b.empty() ? 0 : static_cast<size_t>(rng() % b.size());
    switch (r % 7) {
      case 0:  // flip a bit
        if (!b.empty()) b[pos] ^= static_cast<uint8_t>(1u << (rng() % 8));
        break;
      case 1:  // random byte
        if (!b.empty()) b[pos] = static_cast<uint8_t>(rng());
        break;
      case 2:
      case 3: {  // interesting integer (1, 2, 4 or 8 bytes, little-endian)
        const uint64_t v = kInteresting[rng() % (sizeof(kInteresting) / sizeof(kInteresting[0]))];
        const size_t width = size_t{1} << (rng() % 4);
        for (size_t i = 0; i < width && pos + i < b.size(); ++i) {
          b[pos + i] = static_cast<uint8_t>(v >> (8 * i));
        }
        break;
      }
      case 4:  // truncate
        b.resize(pos);
        break;
      case 5: {  // insert random bytes
        const size_t n = 1 + rng() % 16;
        std::vector<uint8_t> extra(n);
        for (uint8_t& x : extra) x = static_cast<uint8_t>(rng());
        b.insert(b.begin() + static_cast<std::ptrdiff_t>(std::min(pos, b.size())), extra.begin(),
                 extra.end());
        break;
      }
      case 6: {  // delete a chunk
        const size_t n = std::min<size_t>(1 + rng() % 16, b.size() - std::min(pos, b.size()));
        b.erase(b.begin() + static_cast<std::ptrdiff_t>(pos),
                b.begin() + static_cast<std::ptrdiff_t>(pos + n));
        break;
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> roots;
  for (int i = 1; i < argc; ++i) roots.push_back(argv[i]);
  const bool default_roots = roots.empty();
  if (default_roots) {
    roots = {"tests/data/gguf_fuzz/seeds", "tests/data/gguf_fuzz/regressions"};
  }
  std::vector<Input> inputs;
  for (const std::string& root : roots) Collect(root, inputs);
  if (inputs.empty()) {
    std::fprintf(stderr, "no fuzz inputs found under the given paths\n");
    return 1;
  }
  for (const Input& input : inputs) {
    std::fprintf(stderr, "replaying %s (%zu bytes)\n", input.path.c_str(), input.bytes.size());
    LLVMFuzzerTestOneInput(input.bytes.data(), input.bytes.size());
  }
  if (!default_roots) return 0;  // reproducing given files only

  std::vector<Input> seeds;
  Collect(roots[0], seeds);
  if (seeds.empty()) {
    std::fprintf(stderr, "no seeds under %s\n", roots[0].c_str());
    return 1;
  }
  long iterations = 50000;
  if (const char* env = std::getenv("GGUF_FUZZ_ITERATIONS")) iterations = std::atol(env);
  std::mt19937_64 rng(20240601);  // fixed: every run explores the same inputs
  for (long i = 0; i < iterations; ++i) {
    std::vector<uint8_t> bytes = seeds[rng() % seeds.size()].bytes;
    Mutate(bytes, rng);
    LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
  }
  std::fprintf(stderr, "replayed %zu files and %ld mutations without a crash\n", inputs.size(),
               iterations);
  return 0;
}
