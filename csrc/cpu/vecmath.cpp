// The vector functions of vecmath.h over arrays, for tests/test_cpu_vecmath.py: the same inlined
// code in the same vectorised loops as the kernels (and under the same flush-to-zero mode).

#include "kernels.h"
#include "vecmath.h"

namespace srem {
namespace {

template <class F>
void apply(const float* __restrict x, float* __restrict out, int64_t n, F f) {
  flush_subnormals([&] {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) out[j] = f(x[j]);
  });
}

}  // namespace
}  // namespace srem

using namespace srem;

extern "C" int srem_cpu_vecmath_d(int fn, const double* x, double* out, int64_t n) {
  if (fn != 0) return 1;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) out[j] = exp_neg_d(x[j]);
  return 0;
}

extern "C" int srem_cpu_vecmath(int fn, const float* x, float* out, int64_t n) {
  switch (fn) {
    case 0: apply(x, out, n, [](float v) { return exp_neg(v); }); return 0;
    case 1: apply(x, out, n, [](float v) { return exp_pq(v).p; }); return 0;
    case 2: apply(x, out, n, [](float v) { return exp_pq(v).q; }); return 0;
    case 3: apply(x, out, n, [](float v) { return log_pos(v); }); return 0;
    case 4: apply(x, out, n, [](float v) { return log1p_neg(v); }); return 0;
    default: return 1;
  }
}
