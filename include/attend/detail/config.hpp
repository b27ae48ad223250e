// Compile-time configuration shared by every header.
#pragma once

// ATTEND_NO_SIMD: 1 compiles the portable path alone (see isa.hpp), 0 (the default) every
// SIMD path of the target architecture too.
#ifndef ATTEND_NO_SIMD
#define ATTEND_NO_SIMD 0
#endif

// Everything attend declares lives in an inline namespace named after the SIMD flags its
// translation unit is compiled with. attend is header-only, so its inline functions are
// compiled into every translation unit that includes it; without this, a program whose
// translation units use different flags (one -mavx512f, one baseline) would have the
// linker keep one copy of each function, and the baseline code could end up running a copy
// that the compiler auto-vectorised for AVX-512. With it, each flag set has its own
// symbols. Users never name the inline namespace: attend::attention is the same spelling.
// ATTEND_NO_SIMD builds dispatch differently (portable only), so they get namespaces of
// their own, v0_nosimd_<flags>.
#if ATTEND_NO_SIMD
#if defined(__AVX512F__)
#define ATTEND_ABI v0_nosimd_avx512
#elif defined(__AVX2__)
#define ATTEND_ABI v0_nosimd_avx2
#elif defined(__ARM_NEON)
#define ATTEND_ABI v0_nosimd_neon
#else
#define ATTEND_ABI v0_nosimd_base
#endif
#elif defined(__AVX512F__)
#define ATTEND_ABI v0_avx512
#elif defined(__AVX2__)
#define ATTEND_ABI v0_avx2
#elif defined(__ARM_NEON)
#define ATTEND_ABI v0_neon
#else
#define ATTEND_ABI v0_base
#endif

#define ATTEND_NAMESPACE_BEGIN \
  namespace attend {           \
  inline namespace ATTEND_ABI {
#define ATTEND_NAMESPACE_END \
  }                          \
  }
