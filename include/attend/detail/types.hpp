// Arithmetic types of the kernels.
#pragma once

#include "attend/detail/config.hpp"

#include <type_traits>

ATTEND_NAMESPACE_BEGIN
namespace detail {

// The type sums are accumulated in: double for double data, float for everything else
// (float now; bf16 and fp16 storage later accumulate in float too).
template <class T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

}  // namespace detail
ATTEND_NAMESPACE_END
