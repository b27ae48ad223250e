// The avx512 path: every SIMD kernel compiled for avx512, in namespace detail::avx512.
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
#include "attend/detail/simd/avx512.hpp"
#include "attend/detail/unfused.hpp"
#include "attend/kv_cache.hpp"
#include "attend/options.hpp"
#include "attend/view.hpp"

ATTEND_BEGIN_TARGET_AVX512
ATTEND_NAMESPACE_BEGIN
namespace detail::avx512 {

#include "attend/detail/simd/flash-inl.hpp"
#include "attend/detail/simd/gemm-inl.hpp"
#include "attend/detail/simd/softmax-inl.hpp"

// After flash-inl.hpp, whose tiles it uses.
#include "attend/detail/simd/decode-inl.hpp"

}  // namespace detail::avx512
ATTEND_NAMESPACE_END
ATTEND_END_TARGET
