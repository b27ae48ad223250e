// Compiling SIMD code for one instruction set inside a program built for another.
//
// Code between ATTEND_BEGIN_TARGET_<ISA> and ATTEND_END_TARGET is compiled as if the
// compiler had been given that ISA's flags (GCC's `#pragma GCC target`, clang's attribute
// push), whatever flags the translation unit was built with. Only functions reached through
// the run-time dispatch (isa.hpp) may live there: calling one on a CPU without that ISA
// executes an illegal instruction.
//
// Every standard and intrinsics header must be included before a region begins, so that
// their inline functions keep the translation unit's own flags. GCC does not give lambdas
// the region's target: SIMD code inside a region uses named functions only.
#pragma once

#include <immintrin.h>

#if defined(__clang__)
#define ATTEND_PRAGMA(x) _Pragma(#x)
#define ATTEND_BEGIN_TARGET(features) \
  ATTEND_PRAGMA(clang attribute push(__attribute__((target(features))), apply_to = function))
#define ATTEND_END_TARGET ATTEND_PRAGMA(clang attribute pop)
#elif defined(__GNUC__)
#define ATTEND_PRAGMA(x) _Pragma(#x)
// GCC 12's AVX-512 intrinsics trip its own -Wuninitialized (GCC bug 105593: they start
// from a self-initialised "undefined" register), so the region silences that warning.
#define ATTEND_BEGIN_TARGET(features)                     \
  ATTEND_PRAGMA(GCC push_options)                         \
  ATTEND_PRAGMA(GCC target(features))                     \
  ATTEND_PRAGMA(GCC diagnostic push)                      \
  ATTEND_PRAGMA(GCC diagnostic ignored "-Wuninitialized") \
  ATTEND_PRAGMA(GCC diagnostic ignored "-Wmaybe-uninitialized")
#define ATTEND_END_TARGET ATTEND_PRAGMA(GCC diagnostic pop) ATTEND_PRAGMA(GCC pop_options)
#else
#error "attend's SIMD paths need GCC or clang (target pragmas)"
#endif

#define ATTEND_BEGIN_TARGET_AVX2 ATTEND_BEGIN_TARGET("avx,avx2,fma,f16c")
#define ATTEND_BEGIN_TARGET_AVX512 \
  ATTEND_BEGIN_TARGET("avx,avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl")
