// Instruction-set paths and their choice at run time.
//
// attend compiles every path of the target architecture into every program: on x86-64 the
// avx2 and avx512 paths, each inside functions that carry their own target attributes, so
// a program built with baseline flags (no -march) runs the best path the CPU offers and
// never executes an instruction the CPU lacks; on aarch64 the neon path (Advanced SIMD is
// part of the AArch64 baseline, so every aarch64 CPU runs it). The choice is made once,
// from CPUID and the operating system's saved-state mask (XGETBV) on x86-64, unless the
// environment variable ATTEND_ISA names a path (portable, avx2, avx512, neon), and any
// call can override it through its Context (attend/context.hpp) — that is how the tests
// run every path this CPU can execute.
//
// Defining ATTEND_NO_SIMD to 1 before including attend (CMake: -DATTEND_NO_SIMD=ON for
// attend's own tests) compiles the portable path alone, on any architecture: no target
// pragmas, no intrinsics headers, no CPUID, and supported_isas() is {portable}. Its
// translation units get an inline namespace of their own (detail/config.hpp), so they
// link with normal ones into one program.
#pragma once

#include "attend/detail/config.hpp"

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

// ATTEND_X86_64, ATTEND_AARCH64: 1 where attend compiles that architecture's SIMD paths.
#if ATTEND_NO_SIMD
#define ATTEND_X86_64 0
#define ATTEND_AARCH64 0
#elif defined(__x86_64__) || defined(_M_X64)
#define ATTEND_X86_64 1
#define ATTEND_AARCH64 0
#include <cpuid.h>
#elif defined(__aarch64__) || defined(_M_ARM64)
#define ATTEND_X86_64 0
#define ATTEND_AARCH64 1
#else
#define ATTEND_X86_64 0
#define ATTEND_AARCH64 0
#endif

ATTEND_NAMESPACE_BEGIN

enum class Isa : std::uint8_t {
  automatic,  // the process-wide choice: ATTEND_ISA if set, else the best supported
  portable,   // plain C++: the reference every other path is tested against
  avx2,       // AVX2 + FMA (x86-64 since 2013)
  avx512,     // AVX-512 F/BW/DQ/VL (x86-64 servers since 2017)
  neon,       // Advanced SIMD (every aarch64 CPU)
};

inline const char* name(Isa isa) {
  switch (isa) {
    case Isa::automatic:
      return "automatic";
    case Isa::portable:
      return "portable";
    case Isa::avx2:
      return "avx2";
    case Isa::avx512:
      return "avx512";
    case Isa::neon:
      return "neon";
  }
  return "unknown";
}

namespace detail {

// What the CPU and the operating system together support.
struct CpuFeatures {
  bool avx2 = false;    // AVX2 and FMA, with the OS saving ymm state
  bool avx512 = false;  // AVX-512 F, BW, DQ, VL, with the OS saving zmm and mask state
  bool neon = false;    // Advanced SIMD: every aarch64 CPU
};

inline CpuFeatures detect_cpu() {
  CpuFeatures f;
#if ATTEND_X86_64
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28);
  if (!osxsave || !avx) return f;
  // XCR0: which register state the OS saves on a context switch. Bits 1-2 are xmm/ymm;
  // bits 5-7 are the AVX-512 opmask and zmm state.
  unsigned xcr0_lo = 0, xcr0_hi = 0;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  const bool os_ymm = (xcr0_lo & 0x6) == 0x6, os_zmm = (xcr0_lo & 0xe6) == 0xe6;
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5);
  const bool avx512 = (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 30)) &&
                      (b & (1u << 31));  // F, DQ, BW, VL
  f.avx2 = os_ymm && avx2 && fma;
  f.avx512 = f.avx2 && os_zmm && avx512;
#elif ATTEND_AARCH64
  f.neon = true;
#endif
  return f;
}

inline const CpuFeatures& cpu() {
  static const CpuFeatures features = detect_cpu();
  return features;
}

}  // namespace detail

// Can this CPU (and OS) run the path? automatic and portable always can.
inline bool supported(Isa isa) {
  switch (isa) {
    case Isa::automatic:
    case Isa::portable:
      return true;
    case Isa::avx2:
      return detail::cpu().avx2;
    case Isa::avx512:
      return detail::cpu().avx512;
    case Isa::neon:
      return detail::cpu().neon;
  }
  return false;
}

// Every path this CPU can run, slowest first (automatic excluded).
inline std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512, Isa::neon})
    if (supported(isa)) out.push_back(isa);
  return out;
}

// The best path this CPU can run.
inline Isa best_isa() {
  return supported_isas().back();
}

// Parses a path name as ATTEND_ISA spells it; throws std::invalid_argument otherwise.
inline Isa parse_isa(const std::string& s) {
  for (Isa isa : {Isa::automatic, Isa::portable, Isa::avx2, Isa::avx512, Isa::neon})
    if (s == name(isa)) return isa;
  throw std::invalid_argument(
      "attend: ATTEND_ISA: expected one of automatic, portable, avx2, avx512, neon, got '" + s +
      "'");
}

namespace detail {
inline Isa choose_default_isa() {
  const char* env = std::getenv("ATTEND_ISA");
  if (!env || !*env) return best_isa();
  const Isa isa = parse_isa(env);
  if (isa == Isa::automatic) return best_isa();
  if (!supported(isa))
    throw std::invalid_argument(std::string("attend: ATTEND_ISA: this CPU cannot run ") + env);
  return isa;
}
}  // namespace detail

// The process-wide path: chosen on first use, then fixed.
inline Isa default_isa() {
  static const Isa isa = detail::choose_default_isa();
  return isa;
}

// The path a call with `requested` runs: the default for automatic, else `requested`, which
// must be supported.
inline Isa resolve(Isa requested) {
  if (requested == Isa::automatic) return default_isa();
  if (!supported(requested))
    throw std::invalid_argument(std::string("attend: isa: this CPU cannot run the ") +
                                name(requested) + " path");
  return requested;
}

ATTEND_NAMESPACE_END
