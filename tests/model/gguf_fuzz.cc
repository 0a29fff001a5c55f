// Fuzz target for the GGUF reader: any byte string must parse to a valid file
// or an error, never a crash, leak or undefined behaviour. On success every
// metadata value and tensor info is touched, and the invariants Open
// promises (tensors inside the data section, lookups consistent) are checked.
//
// Built two ways: with libFuzzer (tests/model/run_libfuzzer.sh) and with the
// deterministic replay driver (tests/model/fuzz_replay_main.cc).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/types/span.h"
#include "model/gguf.h"

namespace {

// Aborts (a crash the fuzzer reports) when an invariant of a parsed file is
// broken.
void Require(bool condition) {
  if (!condition) std::abort();
}

void TouchValue(const moeflow::GgufValue& v, size_t& sink) {
  sink += v.DebugString(4).size();
  sink += v.is_integer() + v.is_float();
  if (v.type() == moeflow::GgufType::kArray) {
    for (const moeflow::GgufValue& e : v.as_array()) {
      Require(e.type() == v.element_type());
      TouchValue(e, sink);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::StatusOr<std::unique_ptr<moeflow::GgufFile>> file =
      moeflow::GgufFile::FromBytes(absl::MakeConstSpan(data, size), "fuzz.gguf");
  if (!file.ok()) {
    Require(file.status().code() == absl::StatusCode::kInvalidArgument);
    Require(!file.status().message().empty());
    return 0;
  }
  const moeflow::GgufFile& f = **file;
  volatile size_t sink = 0;
  size_t local = 0;
  Require(f.alignment() != 0 && (f.alignment() & (f.alignment() - 1)) == 0);
  Require(f.data_offset() <= f.file_size());
  for (const moeflow::GgufKeyValue& kv : f.metadata()) {
    Require(f.Find(kv.key) == &kv.value);
    TouchValue(kv.value, local);
    // Getters must answer (value or error) for every key and type.
    local += f.GetInt(kv.key).ok() + f.GetFloat(kv.key).ok() + f.GetBool(kv.key).ok() +
             f.GetString(kv.key).ok() + f.GetStringArray(kv.key).ok() + f.GetIntArray(kv.key).ok() +
             f.GetFloatArray(kv.key).ok() + f.GetIntOr(kv.key, 0).ok();
  }
  const uint64_t data_bytes = f.file_size() - f.data_offset();
  for (const moeflow::GgufTensorInfo& t : f.tensors()) {
    Require(f.FindTensor(t.name) == &t);
    Require(!t.ne.empty() && t.ne.size() <= 4);
    Require(t.n_bytes > 0 && t.offset <= data_bytes && t.n_bytes <= data_bytes - t.offset);
    Require(t.offset % f.alignment() == 0);
    Require(t.rows() * t.ne[0] == t.n_elements);
    local += t.ShapeString().size();
    // Reading the first and last byte lets ASan check the bounds.
    const uint8_t* bytes = f.TensorData(t);
    local += bytes[0] + bytes[t.n_bytes - 1];
  }
  sink = local;
  (void)sink;
  return 0;
}
