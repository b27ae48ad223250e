// The ODR test: odr_views.cpp and odr_eigen.cpp each include all of attend (attend.hpp and
// eigen.hpp) and run one single-head attention, through the views and through the Eigen
// adapter. Both instantiate the same kernels, which the linker must be able to merge.
#pragma once

#include <vector>

// o [sq, dv] = attention(q [sq, d], k [sk, d], v [sk, dv]), dense row-major, default options.
std::vector<float> attention_through_views(const std::vector<float>& q, const std::vector<float>& k,
                                           const std::vector<float>& v, int sq, int sk, int d,
                                           int dv);
std::vector<float> attention_through_eigen(const std::vector<float>& q, const std::vector<float>& k,
                                           const std::vector<float>& v, int sq, int sk, int d,
                                           int dv);
