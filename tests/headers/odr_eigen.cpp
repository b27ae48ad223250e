#include <attend/attend.hpp>
#include <attend/eigen.hpp>

#include "odr.hpp"

std::vector<float> attention_through_eigen(const std::vector<float>& q, const std::vector<float>& k,
                                           const std::vector<float>& v, int sq, int sk, int d,
                                           int dv) {
  using Map = Eigen::Map<const attend::eigen::RowMatrix<float>>;
  attend::eigen::RowMatrix<float> o(sq, dv);
  attend::eigen::attention(Map(q.data(), sq, d), Map(k.data(), sk, d), Map(v.data(), sk, dv), o);
  return {o.data(), o.data() + o.size()};
}
