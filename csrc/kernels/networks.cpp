/* The element-network kernels of reann::element_networks, compiled once per instruction-set
   level (kernels.h): a register-tiled GEMM for the per-element linear layers, and the
   activations and layer norms, row by row, forward and backward. */

#include "isa_kernels.h"
#include "vector_math.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace reann {
namespace REANN_ISA {
namespace {

// torch.nn.functional.layer_norm's default epsilon
constexpr double NORM_EPSILON = 1e-5;
// rows per task of the GEMM
constexpr int64_t ROW_GRAIN = 64;

// The register tile of gemm: `rows` rows by `vectors` SIMD vectors of columns, its accumulators
// in registers (AVX-512: 32 registers of 64 bytes; otherwise 16 of 32 bytes)
template <typename T> struct Tile {
#if defined(__AVX512F__)
  static constexpr int64_t bytes = 64, rows = 6, vectors = 4;
#else
  static constexpr int64_t bytes = 32, rows = 4, vectors = 3;
#endif
  typedef T vec __attribute__((vector_size(bytes)));
  // the same at any address, for loads and stores
  typedef T unaligned_vec __attribute__((vector_size(bytes), aligned(sizeof(T))));
  static constexpr int64_t lanes = bytes / sizeof(T);
  // the columns of one panel
  static constexpr int64_t width = vectors * lanes;
  static vec load(const T *p) { return *reinterpret_cast<const unaligned_vec *>(p); }
  static void store(T *p, const vec &v) { *reinterpret_cast<unaligned_vec *>(p) = v; }
};

// R rows of c = bias + a b over one panel of Tile::width columns: `panel` holds the bias row and
// then b's k rows, zero beyond b's columns; the first `columns` of them are stored
template <typename T, int64_t R>
void gemm_tile(const T *a, int64_t lda, int64_t k, const T *panel, int64_t columns, T *c,
               int64_t ldc)
{
  using V = Tile<T>;
  typename V::vec acc[R][V::vectors];
#pragma GCC unroll 8
  for (int64_t v = 0; v < V::vectors; ++v)
#pragma GCC unroll 8
    for (int64_t r = 0; r < R; ++r) acc[r][v] = V::load(panel + v * V::lanes);
  for (int64_t p = 0; p < k; ++p) {
    const T *b = panel + (p + 1) * V::width;
#pragma GCC unroll 8
    for (int64_t r = 0; r < R; ++r) {
      const T x = a[r * lda + p];
#pragma GCC unroll 8
      for (int64_t v = 0; v < V::vectors; ++v) acc[r][v] += x * V::load(b + v * V::lanes);
    }
  }
  T row[V::width];
#pragma GCC unroll 8
  for (int64_t r = 0; r < R; ++r) {
    // a whole panel's row, or the first `columns` of it through `row`
    T *out = columns == V::width ? c + r * ldc : row;
#pragma GCC unroll 8
    for (int64_t v = 0; v < V::vectors; ++v) V::store(out + v * V::lanes, acc[r][v]);
    if (columns < V::width) std::copy(row, row + columns, c + r * ldc);
  }
}

// gemm_tile with R = rows <= Tile::rows
template <typename T, int64_t R = Tile<T>::rows>
void gemm_rows(int64_t rows, const T *a, int64_t lda, int64_t k, const T *panel,
               int64_t columns, T *c, int64_t ldc)
{
  if (rows == R)
    gemm_tile<T, R>(a, lda, k, panel, columns, c, ldc);
  else if constexpr (R > 1)
    gemm_rows<T, R - 1>(rows, a, lda, k, panel, columns, c, ldc);
}

// c[i, j] = bias[j] + sum_p a[i, p] b[p * b_row + j * b_col] for i < m, j < n (no bias when
// null); a and c row-major with leading dimensions lda and ldc. b is packed into panels of tile
// width, and the row tiles run in parallel. The networks' GEMMs are small (k, n <= a few
// hundred) and many (one per layer and element); MKL runs them on AMD Zen 5 at the rates of its
// AVX2 code (at 8192 x 108 x 64: 95 GFLOP/s in float32, 30 in float64), this kernel built for
// AVX-512 at 240 and 111, and without the tensor views and library calls of each GEMM.
template <typename T>
void gemm(int64_t m, int64_t n, int64_t k, const T *a, int64_t lda, const T *b, int64_t b_row,
          int64_t b_col, const T *bias, T *c, int64_t ldc)
{
  using V = Tile<T>;
  if (m == 0 || n == 0) return;
  const int64_t panels = (n + V::width - 1) / V::width, panel_size = (k + 1) * V::width;
  std::vector<T> packed(panels * panel_size, T(0));
  for (int64_t q = 0; q < panels; ++q) {
    T *panel = packed.data() + q * panel_size;
    const int64_t j0 = q * V::width, columns = std::min(V::width, n - j0);
    if (bias != nullptr) std::copy(bias + j0, bias + j0 + columns, panel);
    for (int64_t p = 0; p < k; ++p)
      for (int64_t j = 0; j < columns; ++j)
        panel[(p + 1) * V::width + j] = b[p * b_row + (j0 + j) * b_col];
  }
  const int64_t tiles = (m + V::rows - 1) / V::rows;
  const int64_t grain = std::max<int64_t>(1, ROW_GRAIN / V::rows);
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i0 = t * V::rows, rows = std::min(V::rows, m - i0);
      for (int64_t q = 0; q < panels; ++q) {
        const int64_t j0 = q * V::width;
        gemm_rows<T>(rows, a + i0 * lda, lda, k, packed.data() + q * panel_size,
                     std::min(V::width, n - j0), c + i0 * ldc + j0, ldc);
      }
    }
  });
}

// Rows r0 ... r1 - 1 of [N, W] x through the activation: a = act(x) and its slope d = act'(x),
// with the per-neuron alpha, beta [W] of the rows' element
template <typename T>
void activate_rows(const T *x, const T *alpha, const T *beta, int64_t kind, int64_t r0,
                   int64_t r1, int64_t width, T *a, T *d)
{
  if (kind == int64_t(Activation::tanh_like)) {
    for (int64_t i = r0 * width; i < r1 * width; i += width)
      for (int64_t j = 0; j < width; ++j) {
        const T t = beta[j] * x[i + j];
        const T r = T(1) / std::sqrt(T(1) + t * t);
        a[i + j] = alpha[j] * x[i + j] * r;
        d[i + j] = alpha[j] * r * r * r;
      }
    return;
  }
  // alpha silu(t), t = beta x, with the logistic s = 1 / (1 + exp(-t)):
  // slope alpha beta s (1 + t (1 - s))
  for (int64_t i = r0 * width; i < r1 * width; i += width)
    for (int64_t j = 0; j < width; ++j) d[i + j] = -beta[j] * x[i + j];
  exp_in_place(d + r0 * width, (r1 - r0) * width);
  for (int64_t i = r0 * width; i < r1 * width; i += width)
    for (int64_t j = 0; j < width; ++j) {
      const T t = beta[j] * x[i + j];
      const T s = T(1) / (T(1) + d[i + j]);
      a[i + j] = alpha[j] * t * s;
      d[i + j] = alpha[j] * beta[j] * s * (T(1) + t * (T(1) - s));
    }
}

// Rows r0 ... r1 - 1 of [N, W] a normalised in place, a = gamma (a - mean) / sigma + delta;
// keeps the normalised values (a - mean) / sigma and 1/sigma of each row
template <typename T>
void normalise_rows(const T *gamma, const T *delta, int64_t r0, int64_t r1, int64_t width, T *a,
                    T *normalised, T *inverse_sigma)
{
  for (int64_t r = r0; r < r1; ++r) {
    T *row = a + r * width;
    T *n = normalised + r * width;
    T mean = 0, variance = 0;
#pragma omp simd reduction(+ : mean)
    for (int64_t j = 0; j < width; ++j) mean += row[j];
    mean /= T(width);
#pragma omp simd reduction(+ : variance)
    for (int64_t j = 0; j < width; ++j) variance += (row[j] - mean) * (row[j] - mean);
    const T is = T(1) / std::sqrt(variance / T(width) + T(NORM_EPSILON));
    inverse_sigma[r] = is;
    for (int64_t j = 0; j < width; ++j) {
      n[j] = (row[j] - mean) * is;
      row[j] = gamma[j] * n[j] + delta[j];
    }
  }
}

// Rows r0 ... r1 - 1 of the gradient g [N, W] with respect to a layer norm's output, in place
// to the gradient with respect to the activation's input: through the norm (when `normalised`)
// and then the activation's slope d. `activation_grad` (when not null) receives the gradient
// with respect to the activation's output on the way (for its parameters' gradients)
template <typename T>
void norm_activation_backward_rows(const T *gamma, const T *normalised, const T *inverse_sigma,
                                   const T *d, int64_t r0, int64_t r1, int64_t width, T *g,
                                   T *activation_grad)
{
  for (int64_t r = r0; r < r1; ++r) {
    T *row = g + r * width;
    const T *sr = d + r * width;
    if (normalised != nullptr) {
      const T *n = normalised + r * width;
      T mean = 0, projection = 0;
#pragma omp simd reduction(+ : mean, projection)
      for (int64_t j = 0; j < width; ++j) {
        mean += gamma[j] * row[j];
        projection += gamma[j] * row[j] * n[j];
      }
      mean /= T(width);
      projection /= T(width);
      for (int64_t j = 0; j < width; ++j)
        row[j] = inverse_sigma[r] * (gamma[j] * row[j] - mean - n[j] * projection);
    }
    if (activation_grad != nullptr) std::copy(row, row + width, activation_grad + r * width);
    for (int64_t j = 0; j < width; ++j) row[j] *= sr[j];
  }
}

}  // namespace

template <typename T> void add_network_kernels(KernelSet<T> &set)
{
  set.gemm = &gemm<T>;
  set.activate_rows = &activate_rows<T>;
  set.normalise_rows = &normalise_rows<T>;
  set.norm_activation_backward_rows = &norm_activation_backward_rows<T>;
}

REANN_INSTANTIATE_FOR_FLOATS(add_network_kernels)

}  // namespace REANN_ISA
}  // namespace reann
