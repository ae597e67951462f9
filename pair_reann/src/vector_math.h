/* Elementwise exp and sincos over arrays, vectorised with Sleef (torch's vector math library,
   exported by libtorch_cpu) when the kernels are built with AVX2. */

#pragma once

#include <cmath>
#include <cstdint>

#if defined(__AVX2__)
#include <immintrin.h>
#include <sleef.h>
#endif

namespace reann {

// x[i] = exp(x[i]), i < n
template <typename T> inline void exp_in_place(T *x, int64_t n)
{
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

#if defined(__AVX2__)
template <> inline void exp_in_place<float>(float *x, int64_t n)
{
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, Sleef_expf8_u10(_mm256_loadu_ps(x + i)));
  for (; i < n; ++i) x[i] = std::exp(x[i]);
}

template <> inline void exp_in_place<double>(double *x, int64_t n)
{
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) _mm256_storeu_pd(x + i, Sleef_expd4_u10(_mm256_loadu_pd(x + i)));
  for (; i < n; ++i) x[i] = std::exp(x[i]);
}
#endif

// c[i] = cos(x[i]), s[i] = sin(x[i]), i < n
template <typename T> inline void sincos(const T *x, int64_t n, T *s, T *c)
{
  for (int64_t i = 0; i < n; ++i) {
    s[i] = std::sin(x[i]);
    c[i] = std::cos(x[i]);
  }
}

#if defined(__AVX2__)
template <> inline void sincos<float>(const float *x, int64_t n, float *s, float *c)
{
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const Sleef___m256_2 sc = Sleef_sincosf8_u10(_mm256_loadu_ps(x + i));
    _mm256_storeu_ps(s + i, sc.x);
    _mm256_storeu_ps(c + i, sc.y);
  }
  for (; i < n; ++i) {
    s[i] = std::sin(x[i]);
    c[i] = std::cos(x[i]);
  }
}

template <> inline void sincos<double>(const double *x, int64_t n, double *s, double *c)
{
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const Sleef___m256d_2 sc = Sleef_sincosd4_u10(_mm256_loadu_pd(x + i));
    _mm256_storeu_pd(s + i, sc.x);
    _mm256_storeu_pd(c + i, sc.y);
  }
  for (; i < n; ++i) {
    s[i] = std::sin(x[i]);
    c[i] = std::cos(x[i]);
  }
}
#endif

}  // namespace reann
