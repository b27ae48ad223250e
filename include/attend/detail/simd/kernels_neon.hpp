// The neon path: every SIMD kernel compiled for AArch64's Advanced SIMD, in namespace
// detail::neon. Unlike kernels_avx512.hpp and kernels_avx2.hpp, there is no target region:
// Advanced SIMD (NEON) is part of the AArch64 baseline, which every aarch64 compiler
// targets by default, so the kernels compile with the translation unit's own flags.
//
// Register tiles with 4 lanes and 32 registers. The kernels size their tiles from
// Vec::lanes and Vec::registers:
//   gemm-inl.hpp: 6 rows x 4 vectors (6 x 16), AVX-512's shape, as its tile follows the
//     register count: 24 accumulators, enough FMA chains for the 4 pipes of Neoverse V1/V2
//     (4-cycle latency: 16 needed).
//   flash-inl.hpp: kRows = 6 rows x 2 vectors (6 x 8 keys), AVX2's shape, as kRows follows
//     the width: 12 accumulators + 2 + 1 of 32 registers, enough for 2-pipe cores
//     (Neoverse N1/N2: 8 chains needed) but a quarter short on 4-pipe ones, where 12 rows
//     (Vec::registers == 32 ? 12 : 6, x86 unchanged) would fit in 27 registers.
// Neither is timed: tested under qemu, no aarch64 machine at hand.
#pragma once

#include "attend/detail/config.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "attend/context.hpp"
#include "attend/detail/portable/gemm.hpp"
#include "attend/detail/portable/softmax.hpp"
#include "attend/detail/score_rule.hpp"
#include "attend/detail/simd/neon.hpp"
#include "attend/detail/unfused.hpp"
#include "attend/kv_cache.hpp"
#include "attend/options.hpp"
#include "attend/view.hpp"

ATTEND_NAMESPACE_BEGIN
namespace detail::neon {

#include "attend/detail/simd/flash-inl.hpp"
#include "attend/detail/simd/gemm-inl.hpp"
#include "attend/detail/simd/softmax-inl.hpp"

// After flash-inl.hpp, whose tiles it uses.
#include "attend/detail/simd/decode-inl.hpp"

}  // namespace detail::neon
ATTEND_NAMESPACE_END
