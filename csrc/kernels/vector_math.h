/* Elementwise exp and sincos over arrays, vectorised with Sleef (torch's vector math library,
   exported by libtorch_cpu) in the widest registers the kernels are built for: 512 bits with
   AVX-512, 256 with AVX2, scalar std::exp / sin / cos otherwise and for the remainder. Inside
   the namespace of the level being built (kernels.h), since its definitions differ by level. */

#pragma once

#include <cmath>
#include <cstdint>

#if defined(__AVX2__)
#include <immintrin.h>
#include <sleef.h>
#endif

namespace reann {
namespace REANN_ISA {

// One register of Sleef's: lanes (0: no vector code), unaligned load and store, exp and sincos
// (whose result has the sines in .x and the cosines in .y)
template <typename T> struct SleefVector {
  static constexpr int64_t lanes = 0;
};

#if defined(__AVX512F__)
template <> struct SleefVector<float> {
  static constexpr int64_t lanes = 16;
  static __m512 load(const float *p) { return _mm512_loadu_ps(p); }
  static void store(float *p, __m512 v) { _mm512_storeu_ps(p, v); }
  static __m512 exp(__m512 v) { return Sleef_expf16_u10(v); }
  static Sleef___m512_2 sincos(__m512 v) { return Sleef_sincosf16_u10(v); }
};

template <> struct SleefVector<double> {
  static constexpr int64_t lanes = 8;
  static __m512d load(const double *p) { return _mm512_loadu_pd(p); }
  static void store(double *p, __m512d v) { _mm512_storeu_pd(p, v); }
  static __m512d exp(__m512d v) { return Sleef_expd8_u10(v); }
  static Sleef___m512d_2 sincos(__m512d v) { return Sleef_sincosd8_u10(v); }
};
#elif defined(__AVX2__)
template <> struct SleefVector<float> {
  static constexpr int64_t lanes = 8;
  static __m256 load(const float *p) { return _mm256_loadu_ps(p); }
  static void store(float *p, __m256 v) { _mm256_storeu_ps(p, v); }
  static __m256 exp(__m256 v) { return Sleef_expf8_u10(v); }
  static Sleef___m256_2 sincos(__m256 v) { return Sleef_sincosf8_u10(v); }
};

template <> struct SleefVector<double> {
  static constexpr int64_t lanes = 4;
  static __m256d load(const double *p) { return _mm256_loadu_pd(p); }
  static void store(double *p, __m256d v) { _mm256_storeu_pd(p, v); }
  static __m256d exp(__m256d v) { return Sleef_expd4_u10(v); }
  static Sleef___m256d_2 sincos(__m256d v) { return Sleef_sincosd4_u10(v); }
};
#endif

// x[i] = exp(x[i]), i < n
template <typename T> inline void exp_in_place(T *x, int64_t n)
{
  using V = SleefVector<T>;
  int64_t i = 0;
  if constexpr (V::lanes > 0)
    for (; i + V::lanes <= n; i += V::lanes) V::store(x + i, V::exp(V::load(x + i)));
  for (; i < n; ++i) x[i] = std::exp(x[i]);
}

// s[i] = sin(x[i]), c[i] = cos(x[i]), i < n
template <typename T> inline void sincos(const T *x, int64_t n, T *s, T *c)
{
  using V = SleefVector<T>;
  int64_t i = 0;
  if constexpr (V::lanes > 0)
    for (; i + V::lanes <= n; i += V::lanes) {
      const auto sc = V::sincos(V::load(x + i));
      V::store(s + i, sc.x);
      V::store(c + i, sc.y);
    }
  for (; i < n; ++i) {
    s[i] = std::sin(x[i]);
    c[i] = std::cos(x[i]);
  }
}

}  // namespace REANN_ISA
}  // namespace reann
