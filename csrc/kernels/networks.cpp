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
// hundred) and many (one per layer and element): a BLAS call per GEMM, with its tensor views,
// costs more than the arithmetic, and a library may not use the widest vectors this level has.
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

// One neuron's activation at y: its first and second derivatives d1 = act', d2 = act'', and
// the derivatives of act and act' with respect to alpha and beta. relu_like is
// alpha silu(beta y), tanh_like alpha y (1 + (beta y)^2)^(-1/2); silu is relu_like with
// alpha = beta = 1
template <typename T> struct NeuronTerms {
  T d1, d2, f_alpha, f_beta, d1_alpha, d1_beta;
};

template <typename T> NeuronTerms<T> neuron_terms(T y, T alpha, T beta, int64_t kind)
{
  const T u = beta * y;
  if (kind == int64_t(Activation::tanh_like)) {
    const T r = T(1) / std::sqrt(T(1) + u * u), r3 = r * r * r, r5 = r3 * r * r;
    return {alpha * r3, -3 * alpha * beta * u * r5, y * r,
            -alpha * u * y * y * r3, r3, -3 * alpha * u * y * r5};
  }
  // silu(u) = u s(u), s the logistic; silu' = s (1 + u (1 - s)), silu'' = s (1 - s) (2 + u (1 - 2 s))
  const T s = T(1) / (T(1) + std::exp(-u));
  const T s1 = s * (T(1) + u * (T(1) - s)), s2 = s * (T(1) - s) * (T(2) + u * (T(1) - 2 * s));
  return {alpha * beta * s1, alpha * beta * beta * s2, u * s, alpha * y * s1, beta * s1,
          alpha * (s1 + u * s2)};
}

// sums[k * width + j] += values of neuron j, k = 0 .. 3 (gamma, delta, alpha, beta)
enum ParameterSum : int64_t { GAMMA = 0, DELTA = 1, ALPHA = 2, BETA = 3 };

// Rows r0 ... r1 - 1 of the gradient g [N, W] with respect to a layer norm's output, in place
// to the gradient with respect to the activation's input: through the norm (when `normalised`)
// and then the activation's slope d. With `sums`, also adds the gradients of the layer's
// parameters (gamma, delta with a norm; alpha, beta for relu_like and tanh_like, from the
// activation's input `pre`) to sums [4, W]
template <typename T>
void norm_activation_backward_rows(const T *gamma, const T *normalised, const T *inverse_sigma,
                                   const T *d, int64_t r0, int64_t r1, int64_t width, T *g,
                                   const T *pre, const T *alpha, const T *beta, int64_t kind,
                                   T *sums)
{
  const bool parametric = sums != nullptr && kind != int64_t(Activation::silu);
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
      for (int64_t j = 0; j < width; ++j) {
        if (sums != nullptr) {
          sums[GAMMA * width + j] += row[j] * n[j];
          sums[DELTA * width + j] += row[j];
        }
        row[j] = inverse_sigma[r] * (gamma[j] * row[j] - mean - n[j] * projection);
      }
    }
    if (parametric)
      for (int64_t j = 0; j < width; ++j) {
        const NeuronTerms<T> t = neuron_terms(pre[r * width + j], alpha[j], beta[j], kind);
        sums[ALPHA * width + j] += row[j] * t.f_alpha;
        sums[BETA * width + j] += row[j] * t.f_beta;
      }
    for (int64_t j = 0; j < width; ++j) row[j] *= sr[j];
  }
}

// Rows r0 ... r1 - 1 of an activation layer's tangents along t_pre (its input's): t_act =
// d t_pre, and with a norm t_normalised = J t_act (J the normalised output's Jacobian,
// (v - mean(v) - z mean(z v)) / sigma) and t_post = gamma t_normalised; without, t_post = t_act
template <typename T>
void tangent_rows(const T *d, const T *gamma, const T *normalised, const T *inverse_sigma,
                  const T *t_pre, int64_t r0, int64_t r1, int64_t width, T *t_act,
                  T *t_normalised, T *t_post)
{
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t o = r * width;
    for (int64_t j = 0; j < width; ++j) t_act[o + j] = d[o + j] * t_pre[o + j];
    if (normalised == nullptr) {
      std::copy(t_act + o, t_act + o + width, t_post + o);
      continue;
    }
    T mean = 0, projection = 0;
    for (int64_t j = 0; j < width; ++j) {
      mean += t_act[o + j];
      projection += normalised[o + j] * t_act[o + j];
    }
    mean /= T(width);
    projection /= T(width);
    for (int64_t j = 0; j < width; ++j) {
      t_normalised[o + j] =
          inverse_sigma[r] * (t_act[o + j] - mean - normalised[o + j] * projection);
      t_post[o + j] = gamma[j] * t_normalised[o + j];
    }
  }
}

// Rows r0 ... r1 - 1 of an activation layer run backwards for a function S of its output and
// that output's tangent: from bar_post = dS/d(output) (null: 0) and t_bar_post = dS/d(tangent)
// to bar_pre and t_bar_pre of its input, adding the parameters' gradients to sums [4, W]. With
// p = gamma t_bar_post and q = t_act, the norm's part of S is <p, J(act) q>, differentiated in
// act as well: -z (c1 - P Q / w) / (w sigma^2) - (Q J p + P J q) / (w sigma), P = p.z, Q = q.z,
// c1 = p.q - sum(p) sum(q) / w
template <typename T>
void dual_backward_rows(const T *pre, const T *alpha, const T *beta, int64_t kind,
                        const T *gamma, const T *normalised, const T *inverse_sigma,
                        const T *t_pre, const T *t_act, const T *t_normalised, const T *bar_post,
                        const T *t_bar_post, int64_t r0, int64_t r1, int64_t width, T *bar_pre,
                        T *t_bar_pre, T *sums)
{
  const bool parametric = kind != int64_t(Activation::silu);
  const T one = 1;
  std::vector<T> bar_act(width), t_bar_act(width);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t o = r * width;
    if (normalised != nullptr) {
      const T *z = normalised + o, is = inverse_sigma[r], w = T(width);
      T P = 0, Q = 0, sum_p = 0, sum_q = 0, pq = 0, R = 0, sum_r = 0;
      for (int64_t j = 0; j < width; ++j) {
        const T p = gamma[j] * t_bar_post[o + j], q = t_act[o + j];
        P += p * z[j];
        Q += q * z[j];
        sum_p += p;
        sum_q += q;
        pq += p * q;
        if (bar_post != nullptr) {
          const T rr = gamma[j] * bar_post[o + j];
          R += rr * z[j];
          sum_r += rr;
        }
      }
      const T c1 = pq - sum_p * sum_q / w;
      for (int64_t j = 0; j < width; ++j) {
        const T p = gamma[j] * t_bar_post[o + j], q = t_act[o + j];
        const T jp = is * (p - sum_p / w - z[j] * P / w);
        const T jq = is * (q - sum_q / w - z[j] * Q / w);
        t_bar_act[j] = jp;
        bar_act[j] = -is * is / w * z[j] * (c1 - P * Q / w) - is / w * (Q * jp + P * jq);
        sums[GAMMA * width + j] += t_bar_post[o + j] * t_normalised[o + j];
        if (bar_post != nullptr) {
          const T rr = gamma[j] * bar_post[o + j];
          bar_act[j] += is * (rr - sum_r / w - z[j] * R / w);
          sums[GAMMA * width + j] += bar_post[o + j] * z[j];
          sums[DELTA * width + j] += bar_post[o + j];
        }
      }
    } else {
      for (int64_t j = 0; j < width; ++j) {
        t_bar_act[j] = t_bar_post[o + j];
        bar_act[j] = bar_post != nullptr ? bar_post[o + j] : T(0);
      }
    }
    for (int64_t j = 0; j < width; ++j) {
      const NeuronTerms<T> t = neuron_terms(pre[o + j], parametric ? alpha[j] : one,
                                            parametric ? beta[j] : one, kind);
      bar_pre[o + j] = t_bar_act[j] * t.d2 * t_pre[o + j] + bar_act[j] * t.d1;
      t_bar_pre[o + j] = t_bar_act[j] * t.d1;
      if (parametric) {
        sums[ALPHA * width + j] += t_bar_act[j] * t_pre[o + j] * t.d1_alpha + bar_act[j] * t.f_alpha;
        sums[BETA * width + j] += t_bar_act[j] * t_pre[o + j] * t.d1_beta + bar_act[j] * t.f_beta;
      }
    }
  }
}

}  // namespace

template <typename T> void add_network_kernels(KernelSet<T> &set)
{
  set.gemm = &gemm<T>;
  set.activate_rows = &activate_rows<T>;
  set.normalise_rows = &normalise_rows<T>;
  set.norm_activation_backward_rows = &norm_activation_backward_rows<T>;
  set.tangent_rows = &tangent_rows<T>;
  set.dual_backward_rows = &dual_backward_rows<T>;
}

REANN_INSTANTIATE_FOR_FLOATS(add_network_kernels)

}  // namespace REANN_ISA
}  // namespace reann
