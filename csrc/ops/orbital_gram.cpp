/* torch.ops.reann.orbital_gram: the Gram matrices of REANN's orbitals (CPU).

   reann::orbital_gram(vectors, radial, neighbor, coefficients, exponents, weights) -> gram

   vectors [N, 3, J], radial [N, J, K]: the dense neighbour blocks of N centres (J slots; padding
   slots have zero vectors and zero radial functions); neighbor [N * J] the atom in each slot;
   coefficients [atoms, K] the orbital coefficients; exponents [C, 3], weights [C] the Cartesian
   monomials  ->  G [N, (L + 1) P], the Gram matrices of each order L of the orbitals
   b_ck = sum_j A_c(v_j) R_jk coef_(n_j)k, for the pairs k <= k' (P = K (K + 1) / 2) row by row,
   as reann_nequip.nn.embedded_density computes them with torch operations (see kernels/gram.cpp
   for the kernels). Differentiable twice (force training); the forward pass keeps only its
   inputs and b [N, C, K]. */

#include "kernels.h"

#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/script.h>

#include <algorithm>
#include <vector>

namespace {

using reann::GramSizes;
using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// orders L = 0 .. MAX_ORDERS - 1 of the Cartesian monomials
constexpr int64_t MAX_ORDERS = 16;

GramSizes check_inputs(const Tensor &vectors, const Tensor &radial, const Tensor &neighbor,
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
  // a model file's monomial table, read as indices by the kernels: each exponent checked
  // before the orders are summed (no overflow), then the orders, which size the scratch
  TORCH_CHECK(exponents.numel() == 0 || (exponents.min().item<int64_t>() >= 0 &&
                                         exponents.max().item<int64_t>() < MAX_ORDERS),
              "reann::orbital_gram: monomial exponents must lie in 0 .. ", MAX_ORDERS - 1,
              ": a corrupted model file?");
  const int64_t orders =
      exponents.numel() > 0 ? exponents.sum(1).max().item<int64_t>() + 1 : int64_t(1);
  GramSizes s{vectors.size(0), exponents.size(0), vectors.size(2),
          radial.size(2),  orders,            coefficients.size(0)};
  TORCH_CHECK(orders <= MAX_ORDERS, "reann::orbital_gram: monomials of order ", orders - 1,
              ", beyond the largest supported (", MAX_ORDERS - 1, "): a corrupted model file?");
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
  // every pass reads the coefficients of these atoms: checked once, here
  const Tensor slots = neighbor.contiguous();
  const int64_t *n = slots.data_ptr<int64_t>();
  for (int64_t slot = 0; slot < slots.numel(); ++slot)
    TORCH_CHECK(n[slot] >= 0 && n[slot] < s.atoms, "reann::orbital_gram: neighbour index ",
                n[slot], " (centre ", slot / std::max<int64_t>(s.slots, 1), ", slot ",
                slot % std::max<int64_t>(s.slots, 1), ") is outside the ", s.atoms,
                " atoms with coefficients");
  return s;
}

int64_t pairs(const GramSizes &s) { return s.gaussians * (s.gaussians + 1) / 2; }

template <typename T> T *data_or_null(const Tensor &t)
{
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

GramSizes sizes_of(const Tensor &vectors, const Tensor &radial, const Tensor &coefficients,
               const Tensor &exponents, int64_t orders)
{
  return {vectors.size(0), exponents.size(0), vectors.size(2),
          radial.size(2),  orders,            coefficients.size(0)};
}

// (dG, vectors, radial, neighbor, coefficients, exponents, weights, b) -> (dv, dR, dcoef):
// gram_backward, differentiable once more by gram_double_backward
class OrbitalGramBackward : public torch::autograd::Function<OrbitalGramBackward> {
 public:
  static variable_list forward(AutogradContext *ctx, Tensor grad_gram, Tensor vectors,
                               Tensor radial, Tensor neighbor, Tensor coefficients,
                               Tensor exponents, Tensor weights, Tensor orbitals, int64_t orders)
  {
    const GramSizes s = sizes_of(vectors, radial, coefficients, exponents, orders);
    grad_gram = grad_gram.contiguous();
    Tensor grad_vectors = torch::empty_like(vectors);
    Tensor grad_radial = torch::empty_like(radial);
    Tensor grad_coefficients =
        torch::zeros({at::get_num_threads(), s.atoms, s.gaussians}, coefficients.options());
    AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "reann::orbital_gram backward", [&] {
      reann::kernels<scalar_t>().gram_backward(
          s, grad_gram.data_ptr<scalar_t>(), vectors.data_ptr<scalar_t>(),
          radial.data_ptr<scalar_t>(), neighbor.data_ptr<int64_t>(),
          coefficients.data_ptr<scalar_t>(), exponents.data_ptr<int64_t>(),
          weights.data_ptr<scalar_t>(), orbitals.data_ptr<scalar_t>(),
          grad_vectors.data_ptr<scalar_t>(), grad_radial.data_ptr<scalar_t>(),
          grad_coefficients.data_ptr<scalar_t>());
    });
    ctx->save_for_backward(
        {grad_gram, vectors, radial, neighbor, coefficients, exponents, weights, orbitals});
    ctx->saved_data["orders"] = orders;
    return {grad_vectors, grad_radial, grad_coefficients.sum(0)};
  }

  static variable_list backward(AutogradContext *ctx, variable_list grad_outputs)
  {
    TORCH_CHECK(!torch::GradMode::is_enabled(),
                "reann::orbital_gram has no third derivative (a second backward pass with "
                "create_graph=True)");
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &grad_gram = saved[0], &vectors = saved[1], &radial = saved[2];
    const Tensor &neighbor = saved[3], &coefficients = saved[4], &exponents = saved[5];
    const Tensor &weights = saved[6], &orbitals = saved[7];
    const GramSizes s =
        sizes_of(vectors, radial, coefficients, exponents, ctx->saved_data["orders"].toInt());
    variable_list h(3);
    for (size_t output = 0; output < 3; ++output)
      if (grad_outputs[output].defined()) h[output] = grad_outputs[output].contiguous();
    Tensor d_grad_gram = torch::empty_like(grad_gram), d_vectors = torch::empty_like(vectors);
    Tensor d_radial = torch::empty_like(radial);
    Tensor d_coefficients =
        torch::zeros({at::get_num_threads(), s.atoms, s.gaussians}, coefficients.options());
    AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "reann::orbital_gram double backward", [&] {
      reann::kernels<scalar_t>().gram_double_backward(
          s, grad_gram.data_ptr<scalar_t>(), vectors.data_ptr<scalar_t>(),
          radial.data_ptr<scalar_t>(), neighbor.data_ptr<int64_t>(),
          coefficients.data_ptr<scalar_t>(), exponents.data_ptr<int64_t>(),
          weights.data_ptr<scalar_t>(), orbitals.data_ptr<scalar_t>(),
          data_or_null<scalar_t>(h[0]), data_or_null<scalar_t>(h[1]),
          data_or_null<scalar_t>(h[2]), d_grad_gram.data_ptr<scalar_t>(),
          d_vectors.data_ptr<scalar_t>(), d_radial.data_ptr<scalar_t>(),
          d_coefficients.data_ptr<scalar_t>());
    });
    return {d_grad_gram, d_vectors, d_radial, Tensor(), d_coefficients.sum(0),
            Tensor(),    Tensor(),  Tensor(),  Tensor()};
  }
};

class OrbitalGram : public torch::autograd::Function<OrbitalGram> {
 public:
  static Tensor forward(AutogradContext *ctx, Tensor vectors, Tensor radial, Tensor neighbor,
                        Tensor coefficients, Tensor exponents, Tensor weights)
  {
    const GramSizes s = check_inputs(vectors, radial, neighbor, coefficients, exponents, weights);
    vectors = vectors.contiguous();
    radial = radial.contiguous();
    neighbor = neighbor.contiguous();
    coefficients = coefficients.contiguous();
    exponents = exponents.contiguous();
    weights = weights.contiguous();
    Tensor gram = torch::empty({s.centers, s.orders * pairs(s)}, vectors.options());
    Tensor orbitals = torch::empty({s.centers, s.components, s.gaussians}, vectors.options());
    AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "reann::orbital_gram", [&] {
      reann::kernels<scalar_t>().gram_forward(
          s, vectors.data_ptr<scalar_t>(), radial.data_ptr<scalar_t>(),
          neighbor.data_ptr<int64_t>(), coefficients.data_ptr<scalar_t>(),
          exponents.data_ptr<int64_t>(), weights.data_ptr<scalar_t>(),
          gram.data_ptr<scalar_t>(), orbitals.data_ptr<scalar_t>());
    });
    ctx->save_for_backward({vectors, radial, neighbor, coefficients, exponents, weights, orbitals});
    ctx->saved_data["orders"] = s.orders;
    return gram;
  }

  static variable_list backward(AutogradContext *ctx, variable_list grad_outputs)
  {
    const variable_list saved = ctx->get_saved_variables();
    const variable_list grads = OrbitalGramBackward::apply(
        grad_outputs[0], saved[0], saved[1], saved[2], saved[3], saved[4], saved[5], saved[6],
        ctx->saved_data["orders"].toInt());
    return {grads[0], grads[1], Tensor(), grads[2], Tensor(), Tensor()};
  }
};

Tensor orbital_gram(const Tensor &vectors, const Tensor &radial, const Tensor &neighbor,
                    const Tensor &coefficients, const Tensor &exponents, const Tensor &weights)
{
  return OrbitalGram::apply(vectors, radial, neighbor, coefficients, exponents, weights);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(reann, m)
{
  m.def("orbital_gram(Tensor vectors, Tensor radial, Tensor neighbor, Tensor coefficients, "
        "Tensor exponents, Tensor weights) -> Tensor",
        &orbital_gram);
}
