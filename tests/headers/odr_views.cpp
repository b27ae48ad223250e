#include <attend/attend.hpp>
#include <attend/eigen.hpp>

#include "odr.hpp"

std::vector<float> attention_through_views(const std::vector<float>& q, const std::vector<float>& k,
                                           const std::vector<float>& v, int sq, int sk, int d,
                                           int dv) {
  using Tensor = attend::TensorView<const float>;
  std::vector<float> o(static_cast<std::size_t>(sq * dv));
  attend::attention(Tensor::bhsd(q.data(), 1, 1, sq, d), Tensor::bhsd(k.data(), 1, 1, sk, d),
                    Tensor::bhsd(v.data(), 1, 1, sk, dv),
                    attend::TensorView<float>::bhsd(o.data(), 1, 1, sq, dv));
  return o;
}
