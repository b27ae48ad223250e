// Runs the attention of both ODR translation units (see odr.hpp) on a problem with a known
// answer: three queries over two equal keys. Equal keys get equal scores, so every output
// row is the mean of the two value rows, (v0 + v1) / 2.
#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "odr.hpp"

namespace {

int count_mismatches(const char* how, const std::vector<float>& o,
                     const std::vector<float>& expected, float tolerance) {
  int mismatches = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    if (i < o.size() && std::fabs(o[i] - expected[i]) <= tolerance) continue;
    std::fprintf(stderr, "%s: o[%zu] = %.9g, expected %.9g\n", how, i,
                 i < o.size() ? o[i] : std::nanf(""), expected[i]);
    ++mismatches;
  }
  return mismatches;
}

}  // namespace

int main() {
  const int sq = 3, sk = 2, d = 4, dv = 3;
  const std::vector<float> q = {0.5f,   -1.0f, 2.0f,  0.0f,  1.5f, 0.25f,
                                -0.75f, 3.0f,  -2.0f, -0.5f, 1.0f, 0.125f};
  const std::vector<float> k = {1.0f, -2.0f, 0.5f, 3.0f, 1.0f, -2.0f, 0.5f, 3.0f};
  const std::vector<float> v = {1.0f, -2.0f, 4.0f, 3.0f, 6.0f, -8.0f};
  std::vector<float> expected;
  for (int i = 0; i < sq; ++i)
    for (int j = 0; j < dv; ++j) expected.push_back((v[j] + v[dv + j]) / 2);

  // Weights of 1/2 up to a rounding or two: a few epsilons of the largest |v| (8).
  const float tolerance = 4 * std::numeric_limits<float>::epsilon() * 8;
  const int mismatches = count_mismatches("views", attention_through_views(q, k, v, sq, sk, d, dv),
                                          expected, tolerance) +
                         count_mismatches("eigen", attention_through_eigen(q, k, v, sq, sk, d, dv),
                                          expected, tolerance);
  return mismatches == 0 ? 0 : 1;
}
