/* torch.ops.reann: fused CPU kernels of REANN's embedded density, for deployed models.

   reann::orbital_gram(vectors, radial, neighbor, coefficients, exponents, weights) -> gram

   For every centre i, from its dense neighbour block (J slots; padding slots have zero vectors
   and zero radial functions), the weighted Cartesian monomials, the orbitals and their Gram
   matrices of each order L:

       A_cj  = w_c x_j^a_c y_j^b_c z_j^c_c                      [C, J]
       b_ck  = sum_j A_cj R_jk coef_(n_j)k                       [C, K]
       G_Lp  = sum_(c of order L) b_ck b_ck'   for p = (k <= k') row by row   [L + 1, P]

   as reann_nequip.nn.embedded_density.OrbitalGram computes them with torch operations. One pass
   per centre keeps A, R·coef and b in cache instead of writing [N, C, J], [N, J, K] and
   [N, C, P] tensors to memory; the backward pass recomputes them from the inputs. The backward
   pass is not itself differentiable: deployed models need forces, not gradients of forces, and
   training uses the torch form.

   Loaded by pair_reann (linked) and by Python (torch.ops.load_library). */

#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/script.h>

#include <algorithm>
#include <vector>

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Sizes {
  int64_t centers, components, slots, gaussians, orders, atoms;
  int64_t pairs() const { return gaussians * (gaussians + 1) / 2; }
};

// SIMD vectors of 32 bytes (GCC/Clang vector extensions; one AVX register, or two SSE ones)
template <typename T> struct Simd {
  typedef T vec __attribute__((vector_size(32)));
  static constexpr int64_t lanes = 32 / sizeof(T);
  static vec load(const T *p)
  {
    vec v;
    __builtin_memcpy(&v, p, sizeof(vec));
    return v;
  }
  static void store(T *p, const vec &v) { __builtin_memcpy(p, &v, sizeof(vec)); }
};

// What one thread needs for one centre: powers of the vector components, monomials, weighted
// radial functions, and their gradients. Rows over the J neighbour slots have `stride` >= J
// entries (a whole number of SIMD vector pairs), zero beyond J.
template <typename T> struct CentreScratch {
  int64_t stride;
  std::vector<T> powers, monomials, weighted, grad_monomials, grad_weighted, grad_orbitals;
  CentreScratch(const Sizes &s) :
      stride((s.slots + 2 * Simd<T>::lanes - 1) / (2 * Simd<T>::lanes) * (2 * Simd<T>::lanes)),
      powers(3 * s.orders * stride), monomials(s.components * stride),
      weighted(s.gaussians * stride), grad_monomials(s.components * stride),
      grad_weighted(s.gaussians * stride), grad_orbitals(s.components * s.gaussians)
  {
  }
};

// powers[(axis * orders + e) * stride + j] = v_j[axis]^e; monomials[c * stride + j] = A_cj
template <typename T>
void compute_monomials(const T *vectors, const int64_t *exponents, const T *weights,
                       const Sizes &s, int64_t stride, T *powers, T *monomials)
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

// weighted[k * stride + j] = R_jk coef_(n_j)k
template <typename T>
void weigh_radial(const T *radial, const int64_t *neighbor, const T *coefficients, const Sizes &s,
                  int64_t stride, T *weighted)
{
  for (int64_t j = 0; j < s.slots; ++j) {
    const T *c = coefficients + neighbor[j] * s.gaussians;
    for (int64_t k = 0; k < s.gaussians; ++k)
      weighted[k * stride + j] = radial[j * s.gaussians + k] * c[k];
  }
}

// out[r, :] = sum_q w[r * r_stride + q * q_stride] rows[q, :] for NR rows r; rows and out have
// `stride` columns, a multiple of two SIMD vectors
template <typename T, int NR>
void combine_row_block(const T *w, int64_t r_stride, int64_t q_stride, const T *rows,
                       int64_t num_rows, int64_t stride, T *out)
{
  using S = Simd<T>;
  for (int64_t j0 = 0; j0 < stride; j0 += 2 * S::lanes) {
    typename S::vec acc[NR][2] = {};
    for (int64_t q = 0; q < num_rows; ++q) {
      const typename S::vec x0 = S::load(rows + q * stride + j0);
      const typename S::vec x1 = S::load(rows + q * stride + j0 + S::lanes);
      for (int r = 0; r < NR; ++r) {
        const T weight = w[r * r_stride + q * q_stride];
        acc[r][0] += weight * x0;
        acc[r][1] += weight * x1;
      }
    }
    for (int r = 0; r < NR; ++r) {
      S::store(out + r * stride + j0, acc[r][0]);
      S::store(out + r * stride + j0 + S::lanes, acc[r][1]);
    }
  }
}

template <typename T>
void combine_rows(const T *w, int64_t r_stride, int64_t q_stride, const T *rows, int64_t num_rows,
                  int64_t num_out, int64_t stride, T *out)
{
  int64_t r = 0;
  for (; r + 4 <= num_out; r += 4)
    combine_row_block<T, 4>(w + r * r_stride, r_stride, q_stride, rows, num_rows, stride,
                            out + r * stride);
  const T *w_rest = w + r * r_stride;
  T *out_rest = out + r * stride;
  switch (num_out - r) {
  case 3: combine_row_block<T, 3>(w_rest, r_stride, q_stride, rows, num_rows, stride, out_rest); break;
  case 2: combine_row_block<T, 2>(w_rest, r_stride, q_stride, rows, num_rows, stride, out_rest); break;
  case 1: combine_row_block<T, 1>(w_rest, r_stride, q_stride, rows, num_rows, stride, out_rest); break;
  default: break;
  }
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

template <typename T>
void gram_forward(const T *vectors, const T *radial, const int64_t *neighbor,
                  const T *coefficients, const int64_t *exponents, const T *weights,
                  const Sizes &s, T *gram, T *orbitals)
{
  const int64_t J = s.slots, K = s.gaussians, C = s.components, P = s.pairs();
  at::parallel_for(0, s.centers, 16, [&](int64_t begin, int64_t end) {
    CentreScratch<T> scratch(s);
    for (int64_t i = begin; i < end; ++i) {
      compute_monomials(vectors + i * 3 * J, exponents, weights, s, scratch.stride,
                        scratch.powers.data(), scratch.monomials.data());
      weigh_radial(radial + i * J * K, neighbor + i * J, coefficients, s, scratch.stride,
                   scratch.weighted.data());
      T *b = orbitals + i * C * K;
      dot_rows(scratch.monomials.data(), C, scratch.weighted.data(), K, scratch.stride, b);
      T *g = gram + i * s.orders * P;
      std::fill(g, g + s.orders * P, T(0));
      for (int64_t c = 0; c < C; ++c) {
        T *g_order = g + order_of(exponents, c) * P;
        const T *bc = b + c * K;
        for (int64_t k = 0, p = 0; k < K; ++k)
          for (int64_t q = k; q < K; ++q, ++p) g_order[p] += bc[k] * bc[q];
      }
    }
  });
}

template <typename T>
void gram_backward(const T *grad_gram, const T *vectors, const T *radial, const int64_t *neighbor,
                   const T *coefficients, const int64_t *exponents, const T *weights,
                   const T *orbitals, const Sizes &s, T *grad_vectors, T *grad_radial,
                   T *grad_coefficients_per_thread)
{
  const int64_t J = s.slots, K = s.gaussians, C = s.components, P = s.pairs();
  at::parallel_for(0, s.centers, 16, [&](int64_t begin, int64_t end) {
    // each thread sums the gradients of the neighbours' coefficients into its own copy
    T *grad_c = grad_coefficients_per_thread + at::get_thread_num() * s.atoms * K;
    CentreScratch<T> scratch(s);
    const int64_t stride = scratch.stride;
    const T *powers = scratch.powers.data();
    T *gb = scratch.grad_orbitals.data();
    T *ga = scratch.grad_monomials.data();
    T *gw = scratch.grad_weighted.data();
    std::vector<T> symmetric_per_order(s.orders * K * K);
    T *symmetric = symmetric_per_order.data();
    for (int64_t i = begin; i < end; ++i) {
      const int64_t *n = neighbor + i * J;
      const T *r = radial + i * J * K;
      compute_monomials(vectors + i * 3 * J, exponents, weights, s, stride, scratch.powers.data(),
                        scratch.monomials.data());
      weigh_radial(r, n, coefficients, s, stride, scratch.weighted.data());
      // dG_p/db_ck: with the symmetric [K, K] matrix S of each order (S_kk = 2 dG_kk,
      // S_kk' = S_k'k = dG_kk'), db_c = S b_c
      for (int64_t order = 0; order < s.orders; ++order) {
        const T *gg = grad_gram + (i * s.orders + order) * P;
        T *sym = symmetric + order * K * K;
        for (int64_t k = 0, p = 0; k < K; ++k) {
          sym[k * K + k] = 2 * gg[p++];
          for (int64_t q = k + 1; q < K; ++q, ++p) sym[k * K + q] = sym[q * K + k] = gg[p];
        }
      }
      const T *b = orbitals + i * C * K;
      for (int64_t c = 0; c < C; ++c) {
        const T *sym = symmetric + order_of(exponents, c) * K * K;
        const T *bc = b + c * K;
        T *gbc = gb + c * K;
        std::fill(gbc, gbc + K, T(0));
        for (int64_t q = 0; q < K; ++q) {
          const T bq = bc[q];
#pragma omp simd
          for (int64_t k = 0; k < K; ++k) gbc[k] += bq * sym[q * K + k];
        }
      }
      // dA_cj = sum_k gb_ck weighted_kj;  dweighted_kj = sum_c gb_ck A_cj
      combine_rows(gb, K, 1, scratch.weighted.data(), K, C, stride, ga);
      combine_rows(gb, 1, K, scratch.monomials.data(), C, K, stride, gw);
      // d v_j[axis] = sum_c dA_cj w_c e_axis x^.. (one power of that axis less)
      T *gv = grad_vectors + i * 3 * J;
      std::fill(gv, gv + 3 * J, T(0));
      for (int64_t c = 0; c < C; ++c) {
        const int64_t *e = exponents + 3 * c;
        for (int64_t axis = 0; axis < 3; ++axis) {
          if (e[axis] == 0) continue;
          const T scale = weights[c] * T(e[axis]);
          const T *f[3];
          for (int64_t other = 0; other < 3; ++other)
            f[other] = powers + (other * s.orders + e[other] - (other == axis)) * stride;
          T *gva = gv + axis * J;
          const T *gac = ga + c * stride;
#pragma omp simd
          for (int64_t j = 0; j < J; ++j) gva[j] += scale * gac[j] * f[0][j] * f[1][j] * f[2][j];
        }
      }
      T *gr = grad_radial + i * J * K;
      for (int64_t j = 0; j < J; ++j) {
        const T *c = coefficients + n[j] * K;
        T *gc = grad_c + n[j] * K;
        for (int64_t k = 0; k < K; ++k) {
          const T g = gw[k * stride + j];
          gr[j * K + k] = g * c[k];
          gc[k] += g * r[j * K + k];
        }
      }
    }
  });
}

Sizes check_inputs(const Tensor &vectors, const Tensor &radial, const Tensor &neighbor,
                   const Tensor &coefficients, const Tensor &exponents, const Tensor &weights)
{
  TORCH_CHECK(vectors.dim() == 3 && vectors.size(1) == 3 && radial.dim() == 3 &&
                  coefficients.dim() == 2,
              "reann::orbital_gram: expected vectors [N, 3, J], radial [N, J, K], coefficients "
              "[atoms, K]; got ",
              vectors.sizes(), ", ", radial.sizes(), ", ", coefficients.sizes());
  TORCH_CHECK(exponents.dim() == 2 && exponents.size(1) == 3 &&
                  exponents.scalar_type() == torch::kInt64 && weights.dim() == 1 &&
                  weights.size(0) == exponents.size(0),
              "reann::orbital_gram: expected int64 exponents [C, 3] and weights [C]; got ",
              exponents.sizes(), ", ", weights.sizes());
  const int64_t orders =
      exponents.numel() > 0 ? exponents.sum(1).max().item<int64_t>() + 1 : int64_t(1);
  Sizes s{vectors.size(0), exponents.size(0), vectors.size(2),
          radial.size(2),  orders,            coefficients.size(0)};
  TORCH_CHECK(exponents.numel() == 0 || exponents.min().item<int64_t>() >= 0,
              "reann::orbital_gram: negative exponent");
  TORCH_CHECK(radial.size(0) == s.centers && radial.size(1) == s.slots &&
                  coefficients.size(1) == s.gaussians,
              "reann::orbital_gram: radial ", radial.sizes(), " and coefficients ",
              coefficients.sizes(), " do not match vectors ", vectors.sizes());
  TORCH_CHECK(neighbor.dim() == 1 && neighbor.size(0) == s.centers * s.slots &&
                  neighbor.scalar_type() == torch::kInt64,
              "reann::orbital_gram: neighbor must be int64 [N * J] = [", s.centers * s.slots,
              "], got ", neighbor.scalar_type(), " ", neighbor.sizes());
  TORCH_CHECK(vectors.scalar_type() == radial.scalar_type() &&
                  vectors.scalar_type() == coefficients.scalar_type() &&
                  vectors.scalar_type() == weights.scalar_type(),
              "reann::orbital_gram: vectors, radial, coefficients and weights must share one "
              "dtype");
  for (const Tensor *t : {&vectors, &radial, &neighbor, &coefficients, &exponents, &weights})
    TORCH_CHECK(t->device().is_cpu(), "reann::orbital_gram runs on CPU tensors only");
  if (neighbor.numel() > 0)
    TORCH_CHECK(neighbor.min().item<int64_t>() >= 0 && neighbor.max().item<int64_t>() < s.atoms,
                "reann::orbital_gram: a neighbour index is outside the ", s.atoms,
                " atoms with coefficients");
  return s;
}

class OrbitalGram : public torch::autograd::Function<OrbitalGram> {
 public:
  static Tensor forward(AutogradContext *ctx, Tensor vectors, Tensor radial, Tensor neighbor,
                        Tensor coefficients, Tensor exponents, Tensor weights)
  {
    const Sizes s = check_inputs(vectors, radial, neighbor, coefficients, exponents, weights);
    vectors = vectors.contiguous();
    radial = radial.contiguous();
    neighbor = neighbor.contiguous();
    coefficients = coefficients.contiguous();
    exponents = exponents.contiguous();
    weights = weights.contiguous();
    Tensor gram = torch::empty({s.centers, s.orders * s.pairs()}, vectors.options());
    Tensor orbitals = torch::empty({s.centers, s.components, s.gaussians}, vectors.options());
    AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "reann::orbital_gram", [&] {
      gram_forward<scalar_t>(vectors.data_ptr<scalar_t>(), radial.data_ptr<scalar_t>(),
                             neighbor.data_ptr<int64_t>(), coefficients.data_ptr<scalar_t>(),
                             exponents.data_ptr<int64_t>(), weights.data_ptr<scalar_t>(), s,
                             gram.data_ptr<scalar_t>(), orbitals.data_ptr<scalar_t>());
    });
    ctx->save_for_backward({vectors, radial, neighbor, coefficients, exponents, weights, orbitals});
    ctx->saved_data["orders"] = s.orders;
    return gram;
  }

  static variable_list backward(AutogradContext *ctx, variable_list grad_outputs)
  {
    TORCH_CHECK(!torch::GradMode::is_enabled(),
                "reann::orbital_gram has no second derivative (a backward pass with "
                "create_graph=True); deployed models compute forces, train with the torch form");
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &vectors = saved[0], &radial = saved[1], &neighbor = saved[2];
    const Tensor &coefficients = saved[3], &exponents = saved[4], &weights = saved[5];
    const Tensor &orbitals = saved[6];
    const Sizes s{vectors.size(0),  exponents.size(0),
                  vectors.size(2),  radial.size(2),
                  ctx->saved_data["orders"].toInt(), coefficients.size(0)};
    const Tensor grad_gram = grad_outputs[0].contiguous();
    Tensor grad_vectors = torch::empty_like(vectors);
    Tensor grad_radial = torch::empty_like(radial);
    Tensor grad_coefficients =
        torch::zeros({at::get_num_threads(), s.atoms, s.gaussians}, coefficients.options());
    AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "reann::orbital_gram backward", [&] {
      gram_backward<scalar_t>(
          grad_gram.data_ptr<scalar_t>(), vectors.data_ptr<scalar_t>(),
          radial.data_ptr<scalar_t>(), neighbor.data_ptr<int64_t>(),
          coefficients.data_ptr<scalar_t>(), exponents.data_ptr<int64_t>(),
          weights.data_ptr<scalar_t>(), orbitals.data_ptr<scalar_t>(), s,
          grad_vectors.data_ptr<scalar_t>(), grad_radial.data_ptr<scalar_t>(),
          grad_coefficients.data_ptr<scalar_t>());
    });
    return {grad_vectors, grad_radial, Tensor(), grad_coefficients.sum(0), Tensor(), Tensor()};
  }
};

Tensor orbital_gram(const Tensor &vectors, const Tensor &radial, const Tensor &neighbor,
                    const Tensor &coefficients, const Tensor &exponents, const Tensor &weights)
{
  return OrbitalGram::apply(vectors, radial, neighbor, coefficients, exponents, weights);
}

}    // namespace

TORCH_LIBRARY(reann, m)
{
  m.def("orbital_gram(Tensor vectors, Tensor radial, Tensor neighbor, Tensor coefficients, "
        "Tensor exponents, Tensor weights) -> Tensor",
        &orbital_gram);
}
