/* The orbital Gram kernels of reann::orbital_gram, compiled once per instruction-set level
   (kernels.h).

   For every centre i, from its dense neighbour block (J slots; padding slots have zero vectors
   and zero radial functions), the weighted Cartesian monomials, the orbitals and their Gram
   matrices of each order L:

       A_cj  = w_c x_j^a_c y_j^b_c z_j^c_c                      [C, J]
       W_jk  = R_jk coef_(n_j)k                                  [J, K]
       b_ck  = sum_j A_cj W_jk                                   [C, K]
       G_Lp  = sum_(c of order L) b_ck b_ck'   for p = (k <= k') row by row   [L + 1, P]

   One pass per centre keeps A, W and b in cache instead of writing [N, C, J], [N, J, K] and
   [N, C, P] tensors to memory. The backward pass recomputes them from the inputs, and so does its
   own backward pass (force training differentiates forces once more). */

#include "isa_kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace reann {
namespace REANN_ISA {
namespace {

// Sizes for the per-centre kernels, with the number of Gaussians K a compile-time constant when
// FixedK > 0: REANN's default K = 8 gets its own instantiation, in which the loops over K
// unroll and keep their rows in registers (with_kernel_sizes)
template <int FixedK> struct KernelSizes : GramSizes {
  int64_t K() const { return FixedK > 0 ? FixedK : gaussians; }
  int64_t pairs() const { return K() * (K() + 1) / 2; }
};

// f(KernelSizes<8>) when s has 8 Gaussians, f(KernelSizes<0>) otherwise
template <typename F> void with_kernel_sizes(const GramSizes &s, F &&f)
{
  if (s.gaussians == 8)
    f(KernelSizes<8>{s});
  else
    f(KernelSizes<0>{s});
}

// SIMD vectors (GCC/Clang vector extensions) of 8 lanes with AVX-512, so that REANN's K = 8
// Gaussians fill one register in float32 (256 bits) and in float64 (512 bits) alike; of 32 bytes
// otherwise (one AVX register or two SSE ones: 8 floats, 4 doubles)
template <typename T> struct Simd {
#if defined(__AVX512F__)
  static constexpr int64_t bytes = 8 * sizeof(T);
#else
  static constexpr int64_t bytes = 32;
#endif
  typedef T vec __attribute__((vector_size(bytes)));
  static constexpr int64_t lanes = bytes / sizeof(T);
  static vec load(const T *p)
  {
    vec v;
    __builtin_memcpy(&v, p, sizeof(vec));
    return v;
  }
  static void store(T *p, const vec &v) { __builtin_memcpy(p, &v, sizeof(vec)); }
};

// Vectors of 8 neighbour slots, the chunks the density kernel works in: one AVX register of
// floats, two of doubles (one with AVX-512)
template <typename T> struct SlotChunk {
  typedef T vec __attribute__((vector_size(8 * sizeof(T))));
  static constexpr int64_t lanes = 8;
  static void store(T *p, const vec &v) { __builtin_memcpy(p, &v, sizeof(vec)); }
};

// What one thread needs for one centre: powers of the vector components, monomials, weighted
// radial functions, and their gradients. Rows over the J neighbour slots have `stride` >= J
// entries (a whole number of SIMD vector pairs), zero beyond J. Slot-major rows over the K
// Gaussians (`slot_weighted` [J, padded], orbitals [C, padded]) have `padded` >= K entries (a
// whole number of SIMD vectors), zero beyond K.
template <typename T> struct CentreScratch {
  int64_t stride, padded;
  std::vector<T> powers, monomials, weighted, grad_monomials, grad_weighted, grad_orbitals;
  std::vector<T> slot_weighted, padded_orbitals;
  CentreScratch(const GramSizes &s) :
      stride((s.slots + 2 * Simd<T>::lanes - 1) / (2 * Simd<T>::lanes) * (2 * Simd<T>::lanes)),
      padded((s.gaussians + Simd<T>::lanes - 1) / Simd<T>::lanes * Simd<T>::lanes),
      powers(3 * s.orders * stride), monomials(s.components * stride),
      weighted(s.gaussians * stride), grad_monomials(s.components * stride),
      grad_weighted(s.gaussians * stride), grad_orbitals(s.components * s.gaussians),
      slot_weighted(s.slots * padded), padded_orbitals(s.components * padded)
  {
  }
};

// powers[(axis * orders + e) * stride + j] = v_j[axis]^e; monomials[c * stride + j] = A_cj
template <typename T>
void compute_monomials(const T *vectors, const int64_t *exponents, const T *weights,
                       const GramSizes &s, int64_t stride, T *powers, T *monomials)
{
  const int64_t J = s.slots;
  for (int64_t axis = 0; axis < 3; ++axis) {
    T *p = powers + axis * s.orders * stride;
    std::fill(p, p + J, T(1));
    for (int64_t e = 1; e < s.orders; ++e)
      for (int64_t j = 0; j < J; ++j)
        p[e * stride + j] = p[(e - 1) * stride + j] * vectors[axis * J + j];
  }
  for (int64_t c = 0; c < s.components; ++c) {
    const T *x = powers + exponents[3 * c] * stride;
    const T *y = powers + (s.orders + exponents[3 * c + 1]) * stride;
    const T *z = powers + (2 * s.orders + exponents[3 * c + 2]) * stride;
    for (int64_t j = 0; j < J; ++j) monomials[c * stride + j] = weights[c] * x[j] * y[j] * z[j];
  }
}

// slot_weighted[j * padded + k] = R_jk coef_(n_j)k for `num_slots` slots j
template <typename T, int FixedK>
void weigh_radial(const T *radial, const int64_t *neighbor, const T *coefficients,
                  int64_t num_slots, const KernelSizes<FixedK> &s, int64_t padded,
                  T *slot_weighted)
{
  const int64_t K = s.K();
  for (int64_t j = 0; j < num_slots; ++j) {
    const T *c = coefficients + neighbor[j] * K;
    const T *r = radial + j * K;
    T *w = slot_weighted + j * padded;
#pragma omp simd
    for (int64_t k = 0; k < K; ++k) w[k] = r[k] * c[k];
  }
}

// weighted[k * stride + j] = R_jk coef_(n_j)k: weigh_radial (vectorised over k, reading the
// radial block in order) into `slot_weighted`, then transposed to rows over the slots
template <typename T, int FixedK>
void weigh_radial_rows(const T *radial, const int64_t *neighbor, const T *coefficients,
                       const KernelSizes<FixedK> &s, int64_t padded, T *slot_weighted,
                       int64_t stride, T *weighted)
{
  weigh_radial(radial, neighbor, coefficients, s.slots, s, padded, slot_weighted);
  for (int64_t j = 0; j < s.slots; ++j)
    for (int64_t k = 0; k < s.K(); ++k)
      weighted[k * stride + j] = slot_weighted[j * padded + k];
}

// padded_rows[r * padded + k] = rows[r * K + k] for `num_rows` rows of K entries
template <typename T, int FixedK>
void pad_rows(const T *rows, int64_t num_rows, const KernelSizes<FixedK> &s, int64_t padded,
              T *padded_rows)
{
  for (int64_t r = 0; r < num_rows; ++r)
    std::copy(rows + r * s.K(), rows + (r + 1) * s.K(), padded_rows + r * padded);
}

// out[r, :] = sum_q w[r * r_stride + q * q_stride] rows[q, :] for NR rows r; rows and out have
// `stride` columns, a multiple of V SIMD vectors
template <typename T, int NR, int V>
void combine_row_block(const T *w, int64_t r_stride, int64_t q_stride, const T *rows,
                       int64_t num_rows, int64_t stride, T *out)
{
  using S = Simd<T>;
  for (int64_t j0 = 0; j0 < stride; j0 += V * S::lanes) {
    typename S::vec acc[NR][V] = {};
    for (int64_t q = 0; q < num_rows; ++q) {
      typename S::vec x[V];
      for (int v = 0; v < V; ++v) x[v] = S::load(rows + q * stride + j0 + v * S::lanes);
      for (int r = 0; r < NR; ++r) {
        const T weight = w[r * r_stride + q * q_stride];
        for (int v = 0; v < V; ++v) acc[r][v] += weight * x[v];
      }
    }
    for (int r = 0; r < NR; ++r)
      for (int v = 0; v < V; ++v) S::store(out + r * stride + j0 + v * S::lanes, acc[r][v]);
  }
}

template <typename T, int V>
void combine_rows_of_width(const T *w, int64_t r_stride, int64_t q_stride, const T *rows,
                           int64_t num_rows, int64_t num_out, int64_t stride, T *out)
{
  int64_t r = 0;
  for (; r + 4 <= num_out; r += 4)
    combine_row_block<T, 4, V>(w + r * r_stride, r_stride, q_stride, rows, num_rows, stride,
                               out + r * stride);
  const T *w_rest = w + r * r_stride;
  T *out_rest = out + r * stride;
  switch (num_out - r) {
  case 3: combine_row_block<T, 3, V>(w_rest, r_stride, q_stride, rows, num_rows, stride, out_rest); break;
  case 2: combine_row_block<T, 2, V>(w_rest, r_stride, q_stride, rows, num_rows, stride, out_rest); break;
  case 1: combine_row_block<T, 1, V>(w_rest, r_stride, q_stride, rows, num_rows, stride, out_rest); break;
  default: break;
  }
}

// out[r, :] = sum_q w[r * r_stride + q * q_stride] rows[q, :], r < num_out, q < num_rows; rows
// and out have `stride` columns, a multiple of one SIMD vector
template <typename T>
void combine_rows(const T *w, int64_t r_stride, int64_t q_stride, const T *rows, int64_t num_rows,
                  int64_t num_out, int64_t stride, T *out)
{
  if (stride % (2 * Simd<T>::lanes) == 0)
    combine_rows_of_width<T, 2>(w, r_stride, q_stride, rows, num_rows, num_out, stride, out);
  else
    combine_rows_of_width<T, 1>(w, r_stride, q_stride, rows, num_rows, num_out, stride, out);
}

// out[r * num_y + q] = sum_j x[r, j] y[q, j] for NQ rows q of y; x and y have `stride` columns
template <typename T, int NQ>
void dot_row_block(const T *x, const T *y, int64_t stride, T *out)
{
  using S = Simd<T>;
  typename S::vec acc[NQ] = {};
  for (int64_t j0 = 0; j0 < stride; j0 += S::lanes) {
    const typename S::vec xv = S::load(x + j0);
    for (int q = 0; q < NQ; ++q) acc[q] += xv * S::load(y + q * stride + j0);
  }
  for (int q = 0; q < NQ; ++q) {
    T total = 0;
    for (int64_t l = 0; l < S::lanes; ++l) total += acc[q][l];
    out[q] = total;
  }
}

// out[r, q] = sum_j x[r, j] y[q, j], r < num_x, q < num_y; x and y have `stride` columns
template <typename T>
void dot_rows(const T *x, int64_t num_x, const T *y, int64_t num_y, int64_t stride, T *out)
{
  for (int64_t r = 0; r < num_x; ++r) {
    const T *xr = x + r * stride;
    T *o = out + r * num_y;
    int64_t q = 0;
    for (; q + 4 <= num_y; q += 4) dot_row_block<T, 4>(xr, y + q * stride, stride, o + q);
    for (; q < num_y; ++q) dot_row_block<T, 1>(xr, y + q * stride, stride, o + q);
  }
}

int64_t order_of(const int64_t *exponents, int64_t c)
{
  return exponents[3 * c] + exponents[3 * c + 1] + exponents[3 * c + 2];
}

// The [K, K] symmetric matrix of each order that maps b to dG/db: with S_kk = 2 dG_kk and
// S_kk' = S_k'k = dG_kk', d(sum_p dG_p G_p)/db_c = S_L(c) b_c
template <typename T, int FixedK>
void symmetric_of(const T *grad_gram, const KernelSizes<FixedK> &s, T *sym)
{
  const int64_t K = s.K();
  for (int64_t order = 0; order < s.orders; ++order) {
    const T *gg = grad_gram + order * s.pairs();
    T *sy = sym + order * K * K;
    for (int64_t k = 0, p = 0; k < K; ++k) {
      sy[k * K + k] = 2 * gg[p++];
      for (int64_t q = k + 1; q < K; ++q, ++p) sy[k * K + q] = sy[q * K + k] = gg[p];
    }
  }
}

// out_c = S_L(c) x_c for every component c; x and out are [C, K]
template <typename T, int FixedK>
void apply_symmetric(const T *sym, const T *x, const int64_t *exponents,
                     const KernelSizes<FixedK> &s, T *out)
{
  const int64_t K = s.K();
  for (int64_t c = 0; c < s.components; ++c) {
    const T *sy = sym + order_of(exponents, c) * K * K;
    const T *xc = x + c * K;
    T *oc = out + c * K;
    std::fill(oc, oc + K, T(0));
    for (int64_t q = 0; q < K; ++q) {
      const T xq = xc[q];
#pragma omp simd
      for (int64_t k = 0; k < K; ++k) oc[k] += xq * sy[q * K + k];
    }
  }
}

// f[axis] = the row of v[axis]^(e[axis] - [axis == first] - [axis == second]) in the power table
// of compute_monomials: the factors of a monomial's derivative along `first` (and `second`;
// -1 for none)
template <typename T>
void lowered_power_rows(const T *powers, const GramSizes &s, int64_t stride, const int64_t *e,
                        int64_t first, int64_t second, const T *f[3])
{
  for (int64_t axis = 0; axis < 3; ++axis)
    f[axis] = powers + (axis * s.orders + e[axis] - (axis == first) - (axis == second)) * stride;
}

// gv[axis * J + j] = sum_c ga_cj dA_cj/dv_j[axis]; dA/dv[axis] = w_c e_axis (that power less)
template <typename T>
void monomial_gradient(const T *ga, const int64_t *exponents, const T *weights, const T *powers,
                       const GramSizes &s, int64_t stride, T *gv)
{
  const int64_t J = s.slots;
  std::fill(gv, gv + 3 * J, T(0));
  for (int64_t c = 0; c < s.components; ++c) {
    const int64_t *e = exponents + 3 * c;
    for (int64_t axis = 0; axis < 3; ++axis) {
      if (e[axis] == 0) continue;
      const T scale = weights[c] * T(e[axis]);
      const T *f[3];
      lowered_power_rows(powers, s, stride, e, axis, int64_t(-1), f);
      T *gva = gv + axis * J;
      const T *gac = ga + c * stride;
#pragma omp simd
      for (int64_t j = 0; j < J; ++j) gva[j] += scale * gac[j] * f[0][j] * f[1][j] * f[2][j];
    }
  }
}

// hA_cj = sum_axis hv[axis * J + j] dA_cj/dv_j[axis] (A's change along hv); rows of `stride`
template <typename T>
void monomial_directional(const T *hv, const int64_t *exponents, const T *weights,
                          const T *powers, const GramSizes &s, int64_t stride, T *ha)
{
  const int64_t J = s.slots;
  for (int64_t c = 0; c < s.components; ++c) {
    const int64_t *e = exponents + 3 * c;
    T *hac = ha + c * stride;
    std::fill(hac, hac + J, T(0));
    for (int64_t axis = 0; axis < 3; ++axis) {
      if (e[axis] == 0) continue;
      const T scale = weights[c] * T(e[axis]);
      const T *f[3];
      lowered_power_rows(powers, s, stride, e, axis, int64_t(-1), f);
      const T *hva = hv + axis * J;
#pragma omp simd
      for (int64_t j = 0; j < J; ++j) hac[j] += scale * hva[j] * f[0][j] * f[1][j] * f[2][j];
    }
  }
}

// gv[second * J + j] += sum_c ga_cj sum_first hv[first * J + j] d2A_cj/dv[first]dv[second]
template <typename T>
void add_monomial_hessian(const T *ga, const T *hv, const int64_t *exponents, const T *weights,
                          const T *powers, const GramSizes &s, int64_t stride, T *gv)
{
  const int64_t J = s.slots;
  for (int64_t c = 0; c < s.components; ++c) {
    const int64_t *e = exponents + 3 * c;
    const T *gac = ga + c * stride;
    for (int64_t first = 0; first < 3; ++first)
      for (int64_t second = 0; second < 3; ++second) {
        const int64_t lowered = e[second] - (first == second);
        if (e[first] == 0 || lowered <= 0) continue;
        const T scale = weights[c] * T(e[first]) * T(lowered);
        const T *f[3];
        lowered_power_rows(powers, s, stride, e, first, second, f);
        const T *hvf = hv + first * J;
        T *gvs = gv + second * J;
#pragma omp simd
        for (int64_t j = 0; j < J; ++j)
          gvs[j] += scale * gac[j] * hvf[j] * f[0][j] * f[1][j] * f[2][j];
      }
  }
}

// out[m * 8 + l] = in[l * in_stride + m], l, m < 8: an 8 x 8 block transposed in registers
// by unpacking pairs, then pairs of pairs, then halves (8 lanes: float, and double with
// AVX-512), or as four 4 x 4 blocks (4 lanes: double without AVX-512)
template <typename T> void transpose_block(const T *in, int64_t in_stride, T *out)
{
  using S = Simd<T>;
  using vec = typename S::vec;
  if constexpr (S::lanes == 8) {
    vec r[8], t[8], u[8];
    for (int l = 0; l < 8; ++l) r[l] = S::load(in + l * in_stride);
    for (int l = 0; l < 8; l += 2) {
      t[l] = __builtin_shufflevector(r[l], r[l + 1], 0, 8, 1, 9, 4, 12, 5, 13);
      t[l + 1] = __builtin_shufflevector(r[l], r[l + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int l = 0; l < 8; l += 4)
      for (int h = 0; h < 2; ++h) {
        u[l + 2 * h] = __builtin_shufflevector(t[l + h], t[l + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        u[l + 2 * h + 1] =
            __builtin_shufflevector(t[l + h], t[l + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
      }
    for (int m = 0; m < 4; ++m) {
      S::store(out + m * 8, __builtin_shufflevector(u[m], u[m + 4], 0, 1, 2, 3, 8, 9, 10, 11));
      S::store(out + (m + 4) * 8,
               __builtin_shufflevector(u[m], u[m + 4], 4, 5, 6, 7, 12, 13, 14, 15));
    }
  } else {
    static_assert(S::lanes == 4, "transpose_block: SIMD vectors of 8 or 4 lanes");
    for (int l0 = 0; l0 < 8; l0 += 4)
      for (int m0 = 0; m0 < 8; m0 += 4) {
        vec r[4], t[4];
        for (int l = 0; l < 4; ++l) r[l] = S::load(in + (l0 + l) * in_stride + m0);
        for (int l = 0; l < 4; l += 2) {
          t[l] = __builtin_shufflevector(r[l], r[l + 1], 0, 4, 2, 6);
          t[l + 1] = __builtin_shufflevector(r[l], r[l + 1], 1, 5, 3, 7);
        }
        for (int m = 0; m < 2; ++m) {
          S::store(out + (m0 + m) * 8 + l0, __builtin_shufflevector(t[m], t[m + 2], 0, 1, 4, 5));
          S::store(out + (m0 + m + 2) * 8 + l0,
                   __builtin_shufflevector(t[m], t[m + 2], 2, 3, 6, 7));
        }
      }
  }
}

// dA_c/dv[axis] = factor x^e0 y^e1 z^e2, e = c's exponents with e_axis lowered by one and
// factor = w_c e_axis: one term of the force sum of gram_backward
template <typename T> struct MonomialDerivative {
  int64_t component, lowered[3];
  T factor;
};

// The nonzero first derivatives of the monomials, along x, then y, then z: those along `axis`
// are terms[first[axis]] .. terms[first[axis + 1] - 1]
template <typename T> struct MonomialDerivatives {
  std::vector<MonomialDerivative<T>> terms;
  int64_t first[4];
  MonomialDerivatives(const int64_t *exponents, const T *weights, const GramSizes &s)
  {
    for (int64_t axis = 0; axis < 3; ++axis) {
      first[axis] = static_cast<int64_t>(terms.size());
      for (int64_t c = 0; c < s.components; ++c) {
        const int64_t *e = exponents + 3 * c;
        if (e[axis] == 0) continue;
        MonomialDerivative<T> d{c, {e[0], e[1], e[2]}, weights[c] * T(e[axis])};
        --d.lowered[axis];
        terms.push_back(d);
      }
    }
    first[3] = static_cast<int64_t>(terms.size());
  }
};

// The 8 slots j0 .. j0 + 7 of a centre (zero vectors beyond J), slot by slot in rows of 8:
// powers[(axis * orders + e) * 8 + l] = v_(j0+l)[axis]^e, monomials[c * 8 + l] = A_c(j0+l).
// Inlined into the passes, which call it for every 8 slots: as a call it would cost them time
template <typename T>
__attribute__((always_inline)) inline void
chunk_monomials(const T *vectors, int64_t j0, const int64_t *exponents, const T *weights,
                const GramSizes &s, T *powers, T *monomials)
{
  using S = Simd<T>;
  constexpr int64_t L = SlotChunk<T>::lanes;
  const int64_t J = s.slots, orders = s.orders, C = s.components;
  const int64_t filled = std::min(L, J - j0);
  T padded_rows[3][L];
  const T *rows[3];
  for (int64_t axis = 0; axis < 3; ++axis) {
    rows[axis] = vectors + axis * J + j0;
    if (filled < L) {
      for (int64_t l = 0; l < L; ++l) padded_rows[axis][l] = l < filled ? rows[axis][l] : T(0);
      rows[axis] = padded_rows[axis];
    }
  }
  for (int64_t h = 0; h < L; h += S::lanes) {
    for (int64_t axis = 0; axis < 3; ++axis) {
      const typename S::vec v = S::load(rows[axis] + h);
      typename S::vec p = v * T(0) + T(1);
      T *pa = powers + axis * orders * L + h;
      S::store(pa, p);
      for (int64_t e = 1; e < orders; ++e) {
        p *= v;
        S::store(pa + e * L, p);
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      const int64_t *e = exponents + 3 * c;
      S::store(monomials + c * L + h, weights[c] * S::load(powers + e[0] * L + h) *
                                          S::load(powers + (orders + e[1]) * L + h) *
                                          S::load(powers + (2 * orders + e[2]) * L + h));
    }
  }
}

// asks the cache for the lines of x[0 .. count - 1]
template <typename T> void prefetch(const T *x, int64_t count)
{
  const char *bytes = reinterpret_cast<const char *>(x);
  for (int64_t offset = 0; offset < count * int64_t(sizeof(T)); offset += 64)
    __builtin_prefetch(bytes + offset);
}

// b_c = sum_j A_cj W_j slot chunk by slot chunk (chunk_monomials), then G from b
template <typename T, int FixedK>
void gram_forward_sized(const T *vectors, const T *radial, const int64_t *neighbor,
                  const T *coefficients, const int64_t *exponents, const T *weights,
                  const KernelSizes<FixedK> &s, T *gram, T *orbitals)
{
  using V = Simd<T>;
  constexpr int64_t L = SlotChunk<T>::lanes;
  const int64_t J = s.slots, K = s.K(), C = s.components, P = s.pairs(), orders = s.orders;
  at::parallel_for(0, s.centers, 16, [&](int64_t begin, int64_t end) {
    CentreScratch<T> scratch(s);
    const int64_t padded = scratch.padded;
    // one chunk: powers and monomials slot by slot in rows of 8, W slot-major (rows of
    // `padded`, zero beyond K and beyond J)
    std::vector<T> chunk((3 * orders + C) * L + L * padded);
    T *powers = chunk.data(), *monomials = powers + 3 * orders * L;
    T *w_rows = monomials + C * L;
    T *bp = scratch.padded_orbitals.data();
    std::vector<T> outer(orders * K * padded);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t *n = neighbor + i * J;
      const T *r = radial + i * J * K;
      if (i + 1 < end) prefetch(vectors + (i + 1) * 3 * J, 3 * J);
      std::fill(bp, bp + C * padded, T(0));
      for (int64_t j0 = 0; j0 < J; j0 += L) {
        const int64_t filled = std::min(L, J - j0);
        chunk_monomials(vectors + i * 3 * J, j0, exponents, weights, s, powers, monomials);
        weigh_radial(r + j0 * K, n + j0, coefficients, filled, s, padded, w_rows);
        std::fill(w_rows + filled * padded, w_rows + L * padded, T(0));
        for (int64_t k0 = 0; k0 < padded; k0 += V::lanes) {
          typename V::vec w[L];
          for (int64_t l = 0; l < L; ++l) w[l] = V::load(w_rows + l * padded + k0);
          for (int64_t c = 0; c < C; ++c) {
            typename V::vec sum = V::load(bp + c * padded + k0);
            for (int64_t l = 0; l < L; ++l) sum += monomials[c * L + l] * w[l];
            V::store(bp + c * padded + k0, sum);
          }
        }
      }
      T *b = orbitals + i * C * K;
      for (int64_t c = 0; c < C; ++c)
        std::copy(bp + c * padded, bp + c * padded + K, b + c * K);
      // G_L = sum_(c of order L) b_c b_c^T in rows of `padded`, then its upper triangle
      std::fill(outer.begin(), outer.end(), T(0));
      for (int64_t c = 0; c < C; ++c) {
        const T *bc = bp + c * padded;
        T *o = outer.data() + order_of(exponents, c) * K * padded;
        for (int64_t k = 0; k < K; ++k)
          for (int64_t k0 = 0; k0 < padded; k0 += V::lanes)
            V::store(o + k * padded + k0,
                     V::load(o + k * padded + k0) + bc[k] * V::load(bc + k0));
      }
      T *g = gram + i * orders * P;
      for (int64_t order = 0; order < orders; ++order) {
        const T *o = outer.data() + order * K * padded;
        for (int64_t k = 0; k < K; ++k)
          for (int64_t q = k; q < K; ++q) *g++ = o[k * padded + q];
      }
    }
  });
}

// dv, dR and dcoef from dG, slot chunk by slot chunk (chunk_monomials): with gb_c = S_L(c) b_c,
// gA_c = sum_k gb_ck W_k in slot lanes (W transposed), dv = (dA/dv)^T gA, and slot by slot
// gW_j = sum_c A_cj gb_c, dR_jk = gW_jk coef_(n_j)k, dcoef_(n_j)k += gW_jk R_jk
template <typename T, int FixedK>
void gram_backward_sized(const T *grad_gram, const T *vectors, const T *radial, const int64_t *neighbor,
                   const T *coefficients, const int64_t *exponents, const T *weights,
                   const T *orbitals, const KernelSizes<FixedK> &s, T *grad_vectors, T *grad_radial,
                   T *grad_coefficients_per_thread)
{
  using S = SlotChunk<T>;
  using vec = typename S::vec;
  constexpr int64_t L = S::lanes;
  const int64_t J = s.slots, K = s.K(), C = s.components, orders = s.orders;
  // W's rows in the chunk: whole 8 x 8 blocks
  const int64_t w_padded = (K + L - 1) / L * L;
  const MonomialDerivatives<T> derivatives(exponents, weights, s);
  at::parallel_for(0, s.centers, 16, [&](int64_t begin, int64_t end) {
    // each thread sums the gradients of the neighbours' coefficients into its own copy
    T *grad_c = grad_coefficients_per_thread + at::get_thread_num() * s.atoms * K;
    CentreScratch<T> scratch(s);
    const int64_t padded = scratch.padded;
    T *gb = scratch.grad_orbitals.data(), *gbp = scratch.padded_orbitals.data();
    std::vector<T> symmetric(orders * K * K);
    // one chunk: powers, monomials, gA and W in slot lanes; W and gW slot-major (rows of
    // `padded`, zero beyond K and, for W, beyond J)
    std::vector<vec> lanes(3 * orders + 2 * C + w_padded);
    vec *powers = lanes.data(), *monomials = powers + 3 * orders, *ga = monomials + C;
    vec *w_lanes = ga + C;
    std::vector<T> slot_major(L * (w_padded + padded));
    T *w_rows = slot_major.data(), *gw = w_rows + L * w_padded;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t *n = neighbor + i * J;
      const T *r = radial + i * J * K;
      T *gv = grad_vectors + i * 3 * J, *gr = grad_radial + i * J * K;
      // the chunks read the vectors 8 slots at a time, too little at once to hide the memory's
      // latency: ask for the next centre's vectors now
      if (i + 1 < end) prefetch(vectors + (i + 1) * 3 * J, 3 * J);
      symmetric_of(grad_gram + i * orders * s.pairs(), s, symmetric.data());
      apply_symmetric(symmetric.data(), orbitals + i * C * K, exponents, s, gb);
      pad_rows(gb, C, s, padded, gbp);
      for (int64_t j0 = 0; j0 < J; j0 += L) {
        const int64_t filled = std::min(L, J - j0);
        chunk_monomials(vectors + i * 3 * J, j0, exponents, weights, s,
                        reinterpret_cast<T *>(powers), reinterpret_cast<T *>(monomials));
        weigh_radial(r + j0 * K, n + j0, coefficients, filled, s, w_padded, w_rows);
        std::fill(w_rows + filled * w_padded, w_rows + L * w_padded, T(0));
        for (int64_t k0 = 0; k0 < w_padded; k0 += L)
          transpose_block(w_rows + k0, w_padded, reinterpret_cast<T *>(w_lanes + k0));
        int64_t c = 0;
        for (; c + 4 <= C; c += 4) {
          vec sum[4] = {};
          for (int64_t k = 0; k < K; ++k)
            for (int q = 0; q < 4; ++q) sum[q] += gb[(c + q) * K + k] * w_lanes[k];
          for (int q = 0; q < 4; ++q) ga[c + q] = sum[q];
        }
        for (; c < C; ++c) {
          vec sum = {};
          for (int64_t k = 0; k < K; ++k) sum += gb[c * K + k] * w_lanes[k];
          ga[c] = sum;
        }
        for (int64_t axis = 0; axis < 3; ++axis) {
          vec sum = {};
          for (int64_t t = derivatives.first[axis]; t < derivatives.first[axis + 1]; ++t) {
            const MonomialDerivative<T> &d = derivatives.terms[t];
            sum += d.factor * ga[d.component] * powers[d.lowered[0]] *
                   powers[orders + d.lowered[1]] * powers[2 * orders + d.lowered[2]];
          }
          if (filled == L)
            S::store(gv + axis * J + j0, sum);
          else
            for (int64_t l = 0; l < filled; ++l) gv[axis * J + j0 + l] = sum[l];
        }
        for (int64_t k0 = 0; k0 < padded; k0 += Simd<T>::lanes) {
          typename Simd<T>::vec sum[L] = {};
          for (int64_t c = 0; c < C; ++c) {
            const typename Simd<T>::vec g = Simd<T>::load(gbp + c * padded + k0);
            for (int64_t l = 0; l < L; ++l) sum[l] += monomials[c][l] * g;
          }
          for (int64_t l = 0; l < filled; ++l) Simd<T>::store(gw + l * padded + k0, sum[l]);
        }
        for (int64_t l = 0; l < filled; ++l) {
          const int64_t j = j0 + l;
          const T *coef = coefficients + n[j] * K;
          const T *rj = r + j * K;
          const T *g = gw + l * padded;
          T *gc = grad_c + n[j] * K;
          T *grj = gr + j * K;
#pragma omp simd
          for (int64_t k = 0; k < K; ++k) {
            grj[k] = g[k] * coef[k];
            gc[k] += g[k] * rj[k];
          }
        }
      }
    }
  });
}

// The gradients of sum(h_v · dv) + sum(h_R · dR) + sum(h_c · dc), (dv, dR, dc) gram_backward's
// outputs for dG, with respect to dG, v, R and the coefficients. With gb_c = S_L(c) b_c,
// gA = gb W^T and gW = A^T gb (gram_backward's), hA = A's change along h_v:
//   hW_jk = h_R_jk coef_(n_j)k + h_c_(n_j)k R_jk        (the gradient reaching gW)
//   hgb   = hA W + A hW;   hS_L = sum_(c of order L) hgb_c b_c^T;   db_c = S_L hgb_c
//   dA = gb hW^T + db W^T;   dW = hA^T gb + A^T db
//   dv = (dA/dv)^T dA + gA · d2A/dv2 · h_v
//   dR_jk = dW_jk coef_(n_j)k + h_c_(n_j)k gW_jk;   dcoef_(n_j)k += dW_jk R_jk + h_R_jk gW_jk
// h_v, h_R, h_c may be null (no gradient arrived).
template <typename T, int FixedK>
void gram_double_backward_sized(const T *grad_gram, const T *vectors, const T *radial,
                          const int64_t *neighbor, const T *coefficients,
                          const int64_t *exponents, const T *weights, const T *orbitals,
                          const T *h_vectors, const T *h_radial, const T *h_coefficients,
                          const KernelSizes<FixedK> &s, T *d_grad_gram, T *d_vectors, T *d_radial,
                          T *d_coefficients_per_thread)
{
  const int64_t J = s.slots, K = s.K(), C = s.components, P = s.pairs();
  at::parallel_for(0, s.centers, 16, [&](int64_t begin, int64_t end) {
    T *d_coef = d_coefficients_per_thread + at::get_thread_num() * s.atoms * K;
    CentreScratch<T> scratch(s);
    const int64_t stride = scratch.stride;
    const T *powers = scratch.powers.data();
    T *A = scratch.monomials.data(), *W = scratch.weighted.data();
    T *gA = scratch.grad_monomials.data(), *gW = scratch.grad_weighted.data();
    T *gb = scratch.grad_orbitals.data();
    // rows over the slots, zero beyond J
    std::vector<T> rows_c(3 * C * stride), rows_k(3 * K * stride);
    T *hA = rows_c.data(), *dA = hA + C * stride, *part_c = dA + C * stride;
    T *hW = rows_k.data(), *dW = hW + K * stride, *part_k = dW + K * stride;
    std::vector<T> per_component(3 * C * K), per_order(2 * s.orders * K * K);
    T *hgb = per_component.data(), *db = hgb + C * K, *part_ck = db + C * K;
    T *sym = per_order.data(), *hsym = sym + s.orders * K * K;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t *n = neighbor + i * J;
      const T *r = radial + i * J * K;
      const T *b = orbitals + i * C * K;
      const T *hv = h_vectors ? h_vectors + i * 3 * J : nullptr;
      compute_monomials(vectors + i * 3 * J, exponents, weights, s, stride, scratch.powers.data(),
                        A);
      weigh_radial_rows(r, n, coefficients, s, scratch.padded, scratch.slot_weighted.data(),
                        stride, W);
      symmetric_of(grad_gram + i * s.orders * P, s, sym);
      apply_symmetric(sym, b, exponents, s, gb);
      combine_rows(gb, 1, K, A, C, K, stride, gW);
      for (int64_t j = 0; j < J; ++j) {
        const T *c = coefficients + n[j] * K;
        const T *hc = h_coefficients ? h_coefficients + n[j] * K : nullptr;
        const T *hr = h_radial ? h_radial + (i * J + j) * K : nullptr;
        for (int64_t k = 0; k < K; ++k)
          hW[k * stride + j] = (hr ? hr[k] * c[k] : T(0)) + (hc ? hc[k] * r[j * K + k] : T(0));
      }
      dot_rows(A, C, hW, K, stride, hgb);
      if (hv) {
        monomial_directional(hv, exponents, weights, powers, s, stride, hA);
        dot_rows(hA, C, W, K, stride, part_ck);
        for (int64_t e = 0; e < C * K; ++e) hgb[e] += part_ck[e];
      }
      std::fill(hsym, hsym + s.orders * K * K, T(0));
      for (int64_t c = 0; c < C; ++c) {
        T *hs = hsym + order_of(exponents, c) * K * K;
        for (int64_t k = 0; k < K; ++k)
          for (int64_t q = 0; q < K; ++q) hs[k * K + q] += hgb[c * K + k] * b[c * K + q];
      }
      for (int64_t order = 0; order < s.orders; ++order) {
        const T *hs = hsym + order * K * K;
        T *dgg = d_grad_gram + (i * s.orders + order) * P;
        for (int64_t k = 0, p = 0; k < K; ++k) {
          dgg[p++] = 2 * hs[k * K + k];
          for (int64_t q = k + 1; q < K; ++q, ++p) dgg[p] = hs[k * K + q] + hs[q * K + k];
        }
      }
      apply_symmetric(sym, hgb, exponents, s, db);
      combine_rows(gb, K, 1, hW, K, C, stride, dA);
      combine_rows(db, K, 1, W, K, C, stride, part_c);
      for (int64_t e = 0; e < C * stride; ++e) dA[e] += part_c[e];
      combine_rows(db, 1, K, A, C, K, stride, dW);
      T *dv = d_vectors + i * 3 * J;
      monomial_gradient(dA, exponents, weights, powers, s, stride, dv);
      if (hv) {
        combine_rows(gb, 1, K, hA, C, K, stride, part_k);
        for (int64_t e = 0; e < K * stride; ++e) dW[e] += part_k[e];
        combine_rows(gb, K, 1, W, K, C, stride, gA);
        add_monomial_hessian(gA, hv, exponents, weights, powers, s, stride, dv);
      }
      T *dr = d_radial + i * J * K;
      for (int64_t j = 0; j < J; ++j) {
        const T *c = coefficients + n[j] * K;
        const T *hc = h_coefficients ? h_coefficients + n[j] * K : nullptr;
        const T *hr = h_radial ? h_radial + (i * J + j) * K : nullptr;
        T *dc = d_coef + n[j] * K;
        for (int64_t k = 0; k < K; ++k) {
          const T first = gW[k * stride + j], second = dW[k * stride + j];
          dr[j * K + k] = second * c[k] + (hc ? hc[k] * first : T(0));
          dc[k] += second * r[j * K + k] + (hr ? hr[k] * first : T(0));
        }
      }
    }
  });
}

template <typename T>
void gram_forward(const GramSizes &s, const T *vectors, const T *radial, const int64_t *neighbor,
                  const T *coefficients, const int64_t *exponents, const T *weights, T *gram,
                  T *orbitals)
{
  with_kernel_sizes(s, [&](const auto &ks) {
    gram_forward_sized<T>(vectors, radial, neighbor, coefficients, exponents, weights, ks, gram,
                          orbitals);
  });
}

template <typename T>
void gram_backward(const GramSizes &s, const T *grad_gram, const T *vectors, const T *radial,
                   const int64_t *neighbor, const T *coefficients, const int64_t *exponents,
                   const T *weights, const T *orbitals, T *grad_vectors, T *grad_radial,
                   T *grad_coefficients_per_thread)
{
  with_kernel_sizes(s, [&](const auto &ks) {
    gram_backward_sized<T>(grad_gram, vectors, radial, neighbor, coefficients, exponents, weights,
                           orbitals, ks, grad_vectors, grad_radial, grad_coefficients_per_thread);
  });
}

template <typename T>
void gram_double_backward(const GramSizes &s, const T *grad_gram, const T *vectors,
                          const T *radial, const int64_t *neighbor, const T *coefficients,
                          const int64_t *exponents, const T *weights, const T *orbitals,
                          const T *h_vectors, const T *h_radial, const T *h_coefficients,
                          T *d_grad_gram, T *d_vectors, T *d_radial, T *d_coefficients_per_thread)
{
  with_kernel_sizes(s, [&](const auto &ks) {
    gram_double_backward_sized<T>(grad_gram, vectors, radial, neighbor, coefficients, exponents,
                                  weights, orbitals, h_vectors, h_radial, h_coefficients, ks,
                                  d_grad_gram, d_vectors, d_radial, d_coefficients_per_thread);
  });
}

}  // namespace

template <typename T> void add_gram_kernels(KernelSet<T> &set)
{
  set.gram_forward = &gram_forward<T>;
  set.gram_backward = &gram_backward<T>;
  set.gram_double_backward = &gram_double_backward<T>;
}

REANN_INSTANTIATE_FOR_FLOATS(add_gram_kernels)

}  // namespace REANN_ISA
}  // namespace reann
