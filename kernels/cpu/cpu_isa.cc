// CPUID detection of the ISA variants kernels/cpu runs, and MOEFLOW_ISA (see
// matmul.h: CpuIsa, CpuSupportsIsa, SelectedIsa).
#include <cpuid.h>

#include <string>

#include "base/knobs.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/matmul_internal.h"

namespace moeflow {
namespace {

// ---------------------------------------------------------------------------
// CPU features.

uint64_t Xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

struct CpuFeatures {
  bool avx2 = false;
  bool avx512 = false;
  bool avx512_no_vnni = false;  // F, BW, VL, DQ (VNNI or not)
  bool avx512bf16 = false;
  bool amx = false;  // AMX-TILE + AMX-INT8, enabled in XCR0, permitted by the kernel
};

CpuFeatures DetectFeatures() {
  CpuFeatures f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1;
  const bool fma = (c >> 12) & 1;
  const bool f16c = (c >> 29) & 1;
  if (!osxsave) return f;
  const uint64_t xcr0 = Xgetbv0();
  const bool os_avx = (xcr0 & 0x6) == 0x6;       // XMM and YMM state
  const bool os_avx512 = (xcr0 & 0xe6) == 0xe6;  // + opmask, ZMM_Hi256, Hi16_ZMM
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = (b >> 5) & 1;
  const bool avx512f = (b >> 16) & 1;
  const bool avx512dq = (b >> 17) & 1;
  const bool avx512bw = (b >> 30) & 1;
  const bool avx512vl = (b >> 31) & 1;
  const bool avx512vnni = (c >> 11) & 1;
  f.avx2 = os_avx && avx2 && fma && f16c;
  f.avx512_no_vnni = f.avx2 && os_avx512 && avx512f && avx512dq && avx512bw && avx512vl;
  f.avx512 = f.avx512_no_vnni && avx512vnni;
  const bool amx_tile = (d >> 24) & 1;
  const bool amx_int8 = (d >> 25) & 1;
  __cpuid_count(7, 1, a, b, c, d);
  f.avx512bf16 = f.avx512 && ((a >> 5) & 1);
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;  // XTILECFG, XTILEDATA
  f.amx = f.avx512bf16 && amx_tile && amx_int8 && os_amx && AmxRequestPermission();
  return f;
}

const CpuFeatures& Features() {
  static const CpuFeatures features = DetectFeatures();
  return features;
}

CpuIsa BestIsa() {
  if (Features().amx) return CpuIsa::kAmx;
  if (Features().avx512bf16) return CpuIsa::kAvx512Bf16;
  if (Features().avx512) return CpuIsa::kAvx512;
  if (Features().avx512_no_vnni) return CpuIsa::kAvx512NoVnni;
  if (Features().avx2) return CpuIsa::kAvx2;
  return CpuIsa::kScalar;
}

CpuIsa IsaFromEnvironment() {
  CpuIsa isa = BestIsa();
  const std::string v = KnobString(Knob::kIsa);
  if (v.empty()) return isa;
  CpuIsa wanted = isa;
  if (v == "scalar") wanted = CpuIsa::kScalar;
  if (v == "avx2") wanted = CpuIsa::kAvx2;
  if (v == "avx512") wanted = CpuIsa::kAvx512;
  if (v == "avx512f") wanted = CpuIsa::kAvx512NoVnni;
  if (v == "avx512bf16") wanted = CpuIsa::kAvx512Bf16;
  if (v == "amx") wanted = CpuIsa::kAmx;
  // An ISA the CPU lacks falls back to the best it has.
  return CpuSupportsIsa(wanted) ? wanted : isa;
}

}  // namespace

const char* CpuIsaName(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar:
      return "scalar";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kAvx512:
      return "avx512";
    case CpuIsa::kAvx512NoVnni:
      return "avx512f";
    case CpuIsa::kAvx512Bf16:
      return "avx512bf16";
    case CpuIsa::kAmx:
      return "amx";
  }
  return "?";
}

bool CpuSupportsIsa(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar:
      return true;
    case CpuIsa::kAvx2:
      return Features().avx2;
    case CpuIsa::kAvx512:
      return Features().avx512;
    case CpuIsa::kAvx512NoVnni:
      return Features().avx512_no_vnni;
    case CpuIsa::kAvx512Bf16:
      return Features().avx512bf16;
    case CpuIsa::kAmx:
      return Features().amx;
  }
  return false;
}

bool IqGridByGather() {
  static const bool gather = [] {
    const std::string v = KnobString(Knob::kGridLookup);
    if (v == "gather") return true;
    if (v == "loads") return false;
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return true;
    const bool amd = b == 0x68747541 && d == 0x69746e65 && c == 0x444d4163;  // "AuthenticAMD"
    return !amd;
  }();
  return gather;
}

CpuIsa SelectedIsa() {
  static const CpuIsa isa = IsaFromEnvironment();
  return isa;
}

}  // namespace moeflow
