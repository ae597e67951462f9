/* The numerical kernels of torch.ops.reann, compiled once per x86-64 instruction-set level.

   kernels/*.cpp are built three times (setup.py): for the x86-64 baseline (SSE2), for AVX2 + FMA
   (-march=x86-64-v3) and for AVX-512 (-march=x86-64-v4), each time inside its own namespace
   reann::REANN_ISA (baseline, avx2, avx512), and each build fills one KernelTable. The ops
   (ops/*.cpp, built once for the baseline) check their inputs, allocate the outputs and call the
   kernels of the table that isa.cpp picked for this CPU, through kernels<T>().

   This header is read by both kinds of code, so it holds only plain structs and declarations:
   an inline function defined here would be compiled for every level, and the linker would keep
   one copy for all callers. The kernels take valid inputs (indices in range, sizes consistent):
   the ops check them. */

#pragma once

#include <cstdint>

namespace reann {

// the instruction-set levels, lowest first
enum class Isa : int { baseline = 0, avx2 = 1, avx512 = 2 };

// the activations of the element networks (ElementActivation.kind in Python, in this order)
enum class Activation : int64_t { relu_like = 0, tanh_like = 1, silu = 2 };

// The per-centre neighbour blocks of reann::orbital_gram: `centers` centres of `slots` slots
// each, `components` Cartesian monomials of orders 0 .. orders - 1, `gaussians` radial functions,
// coefficients of `atoms` atoms
struct GramSizes {
  int64_t centers, components, slots, gaussians, orders, atoms;
};

// The kernels of one floating-point type. Arrays are contiguous and row-major; the shapes are
// those of the ops that call them (ops/orbital_gram.cpp, ops/radial_functions.cpp,
// ops/element_networks.cpp). `_per_thread` outputs are [threads, ...] zero-initialised sums, one
// per at::parallel_for thread.
template <typename T> struct KernelSet {
  // === orbital Gram matrices: G and the orbitals b from the neighbour blocks ===
  void (*gram_forward)(const GramSizes &s, const T *vectors, const T *radial,
                       const int64_t *neighbor, const T *coefficients, const int64_t *exponents,
                       const T *weights, T *gram, T *orbitals);
  // dv, dR and dcoef from dG
  void (*gram_backward)(const GramSizes &s, const T *grad_gram, const T *vectors,
                        const T *radial, const int64_t *neighbor, const T *coefficients,
                        const int64_t *exponents, const T *weights, const T *orbitals,
                        T *grad_vectors, T *grad_radial, T *grad_coefficients_per_thread);
  // the gradients of <h, (dv, dR, dcoef)> with respect to dG, v, R and coef (h_* may be null)
  void (*gram_double_backward)(const GramSizes &s, const T *grad_gram, const T *vectors,
                               const T *radial, const int64_t *neighbor, const T *coefficients,
                               const int64_t *exponents, const T *weights, const T *orbitals,
                               const T *h_vectors, const T *h_radial, const T *h_coefficients,
                               T *d_grad_gram, T *d_vectors, T *d_radial,
                               T *d_coefficients_per_thread);

  // === radial functions of `edges` edges, K Gaussians of `species` species ===
  void (*radial_forward)(int64_t edges, int64_t K, const T *length, const T *norm_length,
                         const int64_t *species, const T *centers, const T *exponents,
                         T *gaussians, T *radial, T *cutoff, T *cutoff_slope);
  // dL/dd, dL/dx and (when not null) dL/dmu, dL/dalpha [threads, species, K]
  void (*radial_backward)(int64_t edges, int64_t K, int64_t num_species, const T *grad,
                          const T *length, const T *cutoff, const T *cutoff_slope,
                          const int64_t *species, const T *centers, const T *exponents,
                          const T *gaussians, T *grad_length, T *grad_norm_length,
                          T *grad_centers_per_thread, T *grad_exponents_per_thread);

  // the gradients of <h_length, dL/dd> + <h_norm_length, dL/dx> (the backward pass's outputs
  // for grad) with respect to grad [E, K], d, x and (when not null) mu, alpha [threads, species,
  // K]; h_* may be null (no gradient arrived)
  void (*radial_double_backward)(int64_t edges, int64_t K, int64_t num_species, const T *grad,
                                 const T *length, const T *norm_length, const T *cutoff,
                                 const T *cutoff_slope, const int64_t *species,
                                 const T *centers, const T *exponents, const T *gaussians,
                                 const T *h_length, const T *h_norm_length, T *d_grad,
                                 T *d_length, T *d_norm_length, T *d_centers_per_thread,
                                 T *d_exponents_per_thread);

  // === element networks ===
  // c[i, j] = bias[j] + sum_p a[i * lda + p] b[p * b_row + j * b_col], i < m, j < n (no bias when
  // null)
  void (*gemm)(int64_t m, int64_t n, int64_t k, const T *a, int64_t lda, const T *b,
               int64_t b_row, int64_t b_col, const T *bias, T *c, int64_t ldc);
  // rows r0 .. r1 - 1 of [N, width] x: a = act(x), d = act'(x) (kind 0 relu_like, 1 tanh_like,
  // 2 silu), with the per-neuron alpha, beta [width]
  void (*activate_rows)(const T *x, const T *alpha, const T *beta, int64_t kind, int64_t r0,
                        int64_t r1, int64_t width, T *a, T *d);
  // rows r0 .. r1 - 1 of a normalised in place, a = gamma (a - mean) / sigma + delta; keeps
  // (a - mean) / sigma and 1 / sigma
  void (*normalise_rows)(const T *gamma, const T *delta, int64_t r0, int64_t r1, int64_t width,
                         T *a, T *normalised, T *inverse_sigma);
  // rows r0 .. r1 - 1 of g, the gradient with respect to a layer norm's output, in place to that
  // with respect to the activation's input (no norm when `normalised` is null); with `sums`
  // [4, width], also adds the gradients of the layer's gamma, delta, alpha and beta (the latter
  // two from the activation's input `pre` and the element's alpha, beta)
  void (*norm_activation_backward_rows)(const T *gamma, const T *normalised,
                                        const T *inverse_sigma, const T *d, int64_t r0,
                                        int64_t r1, int64_t width, T *g, const T *pre,
                                        const T *alpha, const T *beta, int64_t kind, T *sums);
  // rows r0 .. r1 - 1 of an activation layer's tangents along its input's t_pre (second
  // derivatives): t_act, and with a norm (gamma, normalised not null) t_normalised; t_post
  void (*tangent_rows)(const T *d, const T *gamma, const T *normalised, const T *inverse_sigma,
                       const T *t_pre, int64_t r0, int64_t r1, int64_t width, T *t_act,
                       T *t_normalised, T *t_post);
  // rows r0 .. r1 - 1 of an activation layer backwards for its output and that output's
  // tangent (second derivatives): bar_pre and t_bar_pre from bar_post (may be null) and
  // t_bar_post; the parameters' gradients added to sums [4, width]
  void (*dual_backward_rows)(const T *pre, const T *alpha, const T *beta, int64_t kind,
                             const T *gamma, const T *normalised, const T *inverse_sigma,
                             const T *t_pre, const T *t_act, const T *t_normalised,
                             const T *bar_post, const T *t_bar_post, int64_t r0, int64_t r1,
                             int64_t width, T *bar_pre, T *t_bar_pre, T *sums);
};

struct KernelTable {
  Isa isa;
  KernelSet<float> f32;
  KernelSet<double> f64;
};

// one table per level, defined by kernels/table.cpp in each build
namespace baseline {
const KernelTable &table();
}
namespace avx2 {
const KernelTable &table();
}
namespace avx512 {
const KernelTable &table();
}

// the table in use (isa.cpp)
const KernelTable &active_kernels();

template <typename T> const KernelSet<T> &kernels();
template <> const KernelSet<float> &kernels<float>();
template <> const KernelSet<double> &kernels<double>();

}  // namespace reann
