/* The radial-function kernels of reann::radial_functions, compiled once per instruction-set
   level (kernels.h): for every edge e, in one pass,

       R_ek = f(x_e) exp(alpha_(s_e)k (d_e - mu_(s_e)k)^2),   f(x) = (cos(pi x) / 2 + 1/2)^2 (x < 1)

   (d the length, x = d / r_c, f the cutoff, s the neighbour's species), with exp, sin and cos in
   SIMD registers (vector_math.h), and the backward pass. */

#include "isa_kernels.h"
#include "vector_math.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

namespace reann {
namespace REANN_ISA {
namespace {

// edges per pass of the Gaussians: their [edges, K] rows stay in cache between the passes
constexpr int64_t GAUSSIAN_EDGES = 256;

// The cutoff f_e = (cos(pi x_e) / 2 + 1/2)^2 of x_e = d_e / r_c (0 from x_e = 1 on) and its slope
// df_e/dx_e; gaussians[e, k] = exp(alpha_(s_e)k (d_e - mu_(s_e)k)^2), radial = f_e gaussians
template <typename T>
void radial_forward(int64_t edges, int64_t K, const T *length, const T *norm_length,
                    const int64_t *species, const T *centers, const T *exponents, T *gaussians,
                    T *radial, T *cutoff, T *cutoff_slope)
{
  const T pi = T(M_PI);
  at::parallel_for(0, edges, GAUSSIAN_EDGES, [&](int64_t begin, int64_t end) {
    T angle[GAUSSIAN_EDGES], sine[GAUSSIAN_EDGES], cosine[GAUSSIAN_EDGES];
    for (int64_t first = begin; first < end; first += GAUSSIAN_EDGES) {
      const int64_t last = std::min(end, first + GAUSSIAN_EDGES), count = last - first;
      for (int64_t e = first; e < last; ++e) angle[e - first] = pi * norm_length[e];
      sincos(angle, count, sine, cosine);
      for (int64_t e = first; e < last; ++e) {
        const T half = T(0.5) * cosine[e - first] + T(0.5);
        const bool inside = norm_length[e] < T(1);
        cutoff[e] = inside ? half * half : T(0);
        cutoff_slope[e] = inside ? -pi * half * sine[e - first] : T(0);
      }
      for (int64_t e = first; e < last; ++e) {
        const T *mu = centers + species[e] * K, *alpha = exponents + species[e] * K;
        T *g = gaussians + e * K;
        for (int64_t k = 0; k < K; ++k) {
          const T u = length[e] - mu[k];
          g[k] = alpha[k] * u * u;
        }
      }
      exp_in_place(gaussians + first * K, count * K);
      for (int64_t e = first; e < last; ++e)
        for (int64_t k = 0; k < K; ++k) radial[e * K + k] = cutoff[e] * gaussians[e * K + k];
    }
  });
}

// From dL/dradial: dL/dd_e, dL/dx_e (through the cutoff) and, when asked for (non-null),
// dL/dmu and dL/dalpha summed per thread into [threads, species, K]
template <typename T>
void radial_backward(int64_t edges, int64_t K, int64_t num_species, const T *grad,
                     const T *length, const T *cutoff, const T *cutoff_slope,
                     const int64_t *species, const T *centers, const T *exponents,
                     const T *gaussians, T *grad_length, T *grad_norm_length,
                     T *grad_centers_per_thread, T *grad_exponents_per_thread)
{
  at::parallel_for(0, edges, GAUSSIAN_EDGES, [&](int64_t begin, int64_t end) {
    const int64_t offset = at::get_thread_num() * num_species * K;
    T *grad_mu = grad_centers_per_thread ? grad_centers_per_thread + offset : nullptr;
    T *grad_alpha = grad_exponents_per_thread ? grad_exponents_per_thread + offset : nullptr;
    for (int64_t e = begin; e < end; ++e) {
      const int64_t row = species[e] * K;
      const T *mu = centers + row, *alpha = exponents + row;
      const T *g = gaussians + e * K, *gr = grad + e * K;
      T d_length = 0, d_cutoff = 0;
      for (int64_t k = 0; k < K; ++k) {
        const T u = length[e] - mu[k];
        const T weighted = gr[k] * g[k];
        const T slope = cutoff[e] * weighted * 2 * alpha[k] * u;
        d_cutoff += weighted;
        d_length += slope;
        if (grad_mu) grad_mu[row + k] -= slope;
        if (grad_alpha) grad_alpha[row + k] += cutoff[e] * weighted * u * u;
      }
      grad_length[e] = d_length;
      grad_norm_length[e] = d_cutoff * cutoff_slope[e];
    }
  });
}

// The second derivatives for force training. With u = d - mu, G = exp(alpha u^2), f the cutoff
// and a, b the gradients arriving for dL/dd and dL/dx (h_length, h_norm_length), the loss's
// gradient with respect to grad_ek is Z_ek = G (a f 2 alpha u + b f'); those with respect to d,
// x, mu and alpha are the sums over k of grad_ek times Z_ek's derivatives
template <typename T>
void radial_double_backward(int64_t edges, int64_t K, int64_t num_species, const T *grad,
                            const T *length, const T *norm_length, const T *cutoff,
                            const T *cutoff_slope, const int64_t *species, const T *centers,
                            const T *exponents, const T *gaussians, const T *h_length,
                            const T *h_norm_length, T *d_grad, T *d_length, T *d_norm_length,
                            T *d_centers_per_thread, T *d_exponents_per_thread)
{
  const T pi = T(M_PI);
  at::parallel_for(0, edges, GAUSSIAN_EDGES, [&](int64_t begin, int64_t end) {
    const int64_t offset = at::get_thread_num() * num_species * K;
    T *d_mu = d_centers_per_thread ? d_centers_per_thread + offset : nullptr;
    T *d_alpha = d_exponents_per_thread ? d_exponents_per_thread + offset : nullptr;
    for (int64_t e = begin; e < end; ++e) {
      const T a = h_length ? h_length[e] : T(0), b = h_norm_length ? h_norm_length[e] : T(0);
      const T f = cutoff[e], f1 = cutoff_slope[e];
      // f'' = (pi^2 / 2) sin^2(pi x) - pi^2 (cos(pi x) / 2 + 1/2) cos(pi x), 0 from x = 1 on
      T f2 = 0;
      if (norm_length[e] < T(1)) {
        const T c = std::cos(pi * norm_length[e]), sn = std::sin(pi * norm_length[e]);
        f2 = T(0.5) * pi * pi * sn * sn - pi * pi * (T(0.5) * c + T(0.5)) * c;
      }
      const int64_t row = species[e] * K;
      const T *mu = centers + row, *alpha = exponents + row;
      const T *g = gaussians + e * K, *gr = grad + e * K;
      T *dg = d_grad + e * K;
      T dd = 0, dx = 0;
      for (int64_t k = 0; k < K; ++k) {
        const T u = length[e] - mu[k], two_alpha = 2 * alpha[k];
        dg[k] = g[k] * (a * f * two_alpha * u + b * f1);
        const T weight = gr[k] * g[k];
        // dZ/dd (= -dZ/dmu) and dZ/dalpha, over G
        const T by_d = a * f * two_alpha * (two_alpha * u * u + 1) + b * f1 * two_alpha * u;
        dd += weight * by_d;
        dx += weight * (a * two_alpha * u * f1 + b * f2);
        if (d_mu) d_mu[row + k] -= weight * by_d;
        if (d_alpha) d_alpha[row + k] += weight * (a * f * 2 * u * (alpha[k] * u * u + 1) + b * f1 * u * u);
      }
      d_length[e] = dd;
      d_norm_length[e] = dx;
    }
  });
}

}  // namespace

template <typename T> void add_radial_kernels(KernelSet<T> &set)
{
  set.radial_forward = &radial_forward<T>;
  set.radial_backward = &radial_backward<T>;
  set.radial_double_backward = &radial_double_backward<T>;
}

REANN_INSTANTIATE_FOR_FLOATS(add_radial_kernels)

}  // namespace REANN_ISA
}  // namespace reann
