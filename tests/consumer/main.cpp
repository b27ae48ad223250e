// What a consumer of attend builds: it includes <attend/attend.hpp>, links attend::attend
// and nothing else, and checks one attention result that can be worked out by hand.
//
// One batch and head, two queries, two equal keys, causal. Query 0 sees key 0 alone, so
// its softmax weight is exactly 1 and its output is v's row 0. Query 1 sees both keys;
// equal keys give equal scores whatever the query, so the weights are 1/2 each and the
// output is the mean of v's rows.
#include <attend/attend.hpp>

#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

static_assert(ATTEND_VERSION_MAJOR == EXPECTED_VERSION_MAJOR &&
                  ATTEND_VERSION_MINOR == EXPECTED_VERSION_MINOR &&
                  ATTEND_VERSION_PATCH == EXPECTED_VERSION_PATCH,
              "the ATTEND_VERSION_* macros of attend.hpp disagree with the CMake project version");

int main() {
  using Tensor = attend::TensorView<float>;
  // q, k [1, 1, 2, 3] and v, o [1, 1, 2, 2], all dense BHSD.
  std::vector<float> q = {0.5f, -1.0f, 2.0f, 1.5f, 0.25f, -0.75f};
  std::vector<float> k = {1.0f, 2.0f, -1.0f, 1.0f, 2.0f, -1.0f};
  std::vector<float> v = {1.0f, -2.0f, 3.0f, 6.0f};
  std::vector<float> o(4, std::numeric_limits<float>::quiet_NaN());

  attend::AttentionOptions opts;
  opts.causal = true;
  attend::attention(Tensor::bhsd(q.data(), 1, 1, 2, 3), Tensor::bhsd(k.data(), 1, 1, 2, 3),
                    Tensor::bhsd(v.data(), 1, 1, 2, 2), Tensor::bhsd(o.data(), 1, 1, 2, 2), opts);

  const float expected[] = {1.0f, -2.0f, 2.0f, 2.0f};
  // The weights 1 and 1/2 are exact up to a rounding or two in the softmax; the output
  // error is then a few epsilons of the largest |v| (6).
  const float tolerance = 4 * std::numeric_limits<float>::epsilon() * 6;
  int failures = 0;
  for (int i = 0; i < 4; ++i) {
    if (!(std::fabs(o[i] - expected[i]) <= tolerance)) {  // NaN fails too
      std::fprintf(stderr, "o[%d] = %.9g, expected %.9g\n", i, o[i], expected[i]);
      ++failures;
    }
  }
  if (failures == 0)
    std::printf("attend %d.%d.%d: attention as expected\n", ATTEND_VERSION_MAJOR,
                ATTEND_VERSION_MINOR, ATTEND_VERSION_PATCH);
  return failures == 0 ? 0 : 1;
}
