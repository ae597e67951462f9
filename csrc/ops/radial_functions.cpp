/* torch.ops.reann.radial_functions: REANN's radial functions of every edge (CPU).

   reann::radial_functions(length, norm_length, species, centers, exponents) -> radial

   length d [E] (Å), norm_length x = d / r_c [E], species [E] of the neighbour, centers mu and
   exponents alpha [species, K]  ->  R [E, K] = f(x) exp(alpha_sk (d - mu_sk)^2) with the
   squared-cosine cutoff f (0 from x = 1 on), as reann_nequip.nn.radial_basis computes it with a
   dozen [E, K] torch operations (see kernels/radial.cpp for the kernels). Differentiable twice
   (force training). */

#include "kernels.h"

#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/script.h>

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename T> T *data_or_null(const Tensor &t)
{
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// saved = (length, norm_length, species, centers, exponents, cutoff, cutoff_slope, gaussians)
// -> dL/dd, dL/dx and, where asked for, dL/dmu, dL/dalpha (else undefined)
variable_list radial_backward(const Tensor &grad_in, const variable_list &saved, bool centers_grad,
                              bool exponents_grad)
{
  const Tensor &length = saved[0], &species = saved[2], &centers = saved[3];
  const Tensor &exponents = saved[4], &cutoff = saved[5], &cutoff_slope = saved[6];
  const Tensor &gaussians = saved[7];
  const Tensor grad = grad_in.contiguous();
  const int64_t edges = length.size(0), num_species = centers.size(0), K = centers.size(1);
  Tensor grad_length = torch::empty_like(length), grad_norm_length = torch::empty_like(length);
  Tensor grad_centers, grad_exponents;
  if (centers_grad)
    grad_centers = torch::zeros({at::get_num_threads(), num_species, K}, centers.options());
  if (exponents_grad)
    grad_exponents = torch::zeros({at::get_num_threads(), num_species, K}, centers.options());
  AT_DISPATCH_FLOATING_TYPES(length.scalar_type(), "reann::radial_functions backward", [&] {
    reann::kernels<scalar_t>().radial_backward(
        edges, K, num_species, grad.data_ptr<scalar_t>(), length.data_ptr<scalar_t>(),
        cutoff.data_ptr<scalar_t>(), cutoff_slope.data_ptr<scalar_t>(),
        species.data_ptr<int64_t>(), centers.data_ptr<scalar_t>(),
        exponents.data_ptr<scalar_t>(), gaussians.data_ptr<scalar_t>(),
        grad_length.data_ptr<scalar_t>(), grad_norm_length.data_ptr<scalar_t>(),
        data_or_null<scalar_t>(grad_centers), data_or_null<scalar_t>(grad_exponents));
  });
  return {grad_length, grad_norm_length,
          grad_centers.defined() ? grad_centers.sum(0) : Tensor(),
          grad_exponents.defined() ? grad_exponents.sum(0) : Tensor()};
}

// (grad, saved...) -> (dL/dd, dL/dx): the backward pass for forces, differentiable once more
// (force training) by the radial_double_backward kernel
class RadialFunctionsBackward : public torch::autograd::Function<RadialFunctionsBackward> {
 public:
  static variable_list forward(AutogradContext *ctx, Tensor grad, Tensor length,
                               Tensor norm_length, Tensor species, Tensor centers,
                               Tensor exponents, Tensor cutoff, Tensor cutoff_slope,
                               Tensor gaussians)
  {
    const variable_list saved{length, norm_length, species, centers,
                              exponents, cutoff, cutoff_slope, gaussians};
    const variable_list grads = radial_backward(grad, saved, false, false);
    ctx->save_for_backward({grad.contiguous(), length, norm_length, species, centers, exponents,
                            cutoff, cutoff_slope, gaussians});
    return {grads[0], grads[1]};
  }

  static variable_list backward(AutogradContext *ctx, variable_list grad_outputs)
  {
    TORCH_CHECK(!torch::GradMode::is_enabled(),
                "reann::radial_functions has no third derivative (a second backward pass with "
                "create_graph=True)");
    const variable_list s = ctx->get_saved_variables();
    const Tensor &grad = s[0], &length = s[1], &norm_length = s[2], &species = s[3];
    const Tensor &centers = s[4], &exponents = s[5], &cutoff = s[6], &cutoff_slope = s[7];
    const Tensor &gaussians = s[8];
    const int64_t edges = length.size(0), num_species = centers.size(0), K = centers.size(1);
    const Tensor h_length = grad_outputs[0].defined() ? grad_outputs[0].contiguous() : Tensor();
    const Tensor h_norm_length =
        grad_outputs[1].defined() ? grad_outputs[1].contiguous() : Tensor();
    Tensor d_grad = torch::empty_like(grad), d_length = torch::empty_like(length);
    Tensor d_norm_length = torch::empty_like(length), d_centers, d_exponents;
    if (ctx->needs_input_grad(4))
      d_centers = torch::zeros({at::get_num_threads(), num_species, K}, centers.options());
    if (ctx->needs_input_grad(5))
      d_exponents = torch::zeros({at::get_num_threads(), num_species, K}, centers.options());
    AT_DISPATCH_FLOATING_TYPES(length.scalar_type(), "reann::radial_functions double backward",
                               [&] {
      reann::kernels<scalar_t>().radial_double_backward(
          edges, K, num_species, grad.data_ptr<scalar_t>(), length.data_ptr<scalar_t>(),
          norm_length.data_ptr<scalar_t>(), cutoff.data_ptr<scalar_t>(),
          cutoff_slope.data_ptr<scalar_t>(), species.data_ptr<int64_t>(),
          centers.data_ptr<scalar_t>(), exponents.data_ptr<scalar_t>(),
          gaussians.data_ptr<scalar_t>(), data_or_null<scalar_t>(h_length),
          data_or_null<scalar_t>(h_norm_length), d_grad.data_ptr<scalar_t>(),
          d_length.data_ptr<scalar_t>(), d_norm_length.data_ptr<scalar_t>(),
          data_or_null<scalar_t>(d_centers), data_or_null<scalar_t>(d_exponents));
    });
    return {d_grad,
            d_length,
            d_norm_length,
            Tensor(),
            d_centers.defined() ? d_centers.sum(0) : Tensor(),
            d_exponents.defined() ? d_exponents.sum(0) : Tensor(),
            Tensor(),
            Tensor(),
            Tensor()};
  }
};

class RadialFunctions : public torch::autograd::Function<RadialFunctions> {
 public:
  static Tensor forward(AutogradContext *ctx, Tensor length, Tensor norm_length,
                        Tensor species, Tensor centers, Tensor exponents)
  {
    TORCH_CHECK(length.dim() == 1 && norm_length.sizes() == length.sizes() &&
                    species.sizes() == length.sizes() && centers.dim() == 2 &&
                    exponents.sizes() == centers.sizes(),
                "reann::radial_functions: expected length, norm_length and species [E] and "
                "centers, exponents [species, K]; got ",
                length.sizes(), ", ", norm_length.sizes(), ", ", species.sizes(), ", ",
                centers.sizes(), ", ", exponents.sizes());
    TORCH_CHECK(species.scalar_type() == torch::kInt64 &&
                    norm_length.scalar_type() == length.scalar_type() &&
                    centers.scalar_type() == length.scalar_type() &&
                    exponents.scalar_type() == length.scalar_type(),
                "reann::radial_functions: int64 species and one floating dtype for the rest");
    for (const Tensor *t : {&length, &norm_length, &species, &centers, &exponents})
      TORCH_CHECK(t->device().is_cpu(), "reann::radial_functions runs on CPU tensors only");
    length = length.contiguous();
    norm_length = norm_length.contiguous();
    species = species.contiguous();
    centers = centers.contiguous();
    exponents = exponents.contiguous();
    const int64_t edges = length.size(0), num_species = centers.size(0), K = centers.size(1);
    Tensor gaussians = torch::empty({edges, K}, length.options());
    Tensor radial = torch::empty({edges, K}, length.options());
    Tensor cutoff = torch::empty({edges}, length.options());
    Tensor cutoff_slope = torch::empty({edges}, length.options());
    const int64_t *s = species.data_ptr<int64_t>();
    for (int64_t e = 0; e < edges; ++e)
      TORCH_CHECK(s[e] >= 0 && s[e] < num_species,
                  "reann::radial_functions: a species index is outside the ", num_species,
                  " rows of centers (edge ", e, " has species ", s[e], ")");
    AT_DISPATCH_FLOATING_TYPES(length.scalar_type(), "reann::radial_functions", [&] {
      reann::kernels<scalar_t>().radial_forward(
          edges, K, length.data_ptr<scalar_t>(), norm_length.data_ptr<scalar_t>(),
          species.data_ptr<int64_t>(), centers.data_ptr<scalar_t>(),
          exponents.data_ptr<scalar_t>(), gaussians.data_ptr<scalar_t>(),
          radial.data_ptr<scalar_t>(), cutoff.data_ptr<scalar_t>(),
          cutoff_slope.data_ptr<scalar_t>());
    });
    ctx->save_for_backward({length, norm_length, species, centers, exponents, cutoff,
                            cutoff_slope, gaussians});
    return radial;
  }

  static variable_list backward(AutogradContext *ctx, variable_list grad_outputs)
  {
    variable_list saved = ctx->get_saved_variables();
    if (torch::GradMode::is_enabled()) {
      // forces with the graph kept (force training): dL/dd and dL/dx, differentiable once more
      TORCH_CHECK(!ctx->needs_input_grad(3) && !ctx->needs_input_grad(4),
                  "reann::radial_functions: the gradients of the centres and exponents are not "
                  "differentiable (a backward pass with create_graph=True that asks for them)");
      const variable_list grads =
          RadialFunctionsBackward::apply(grad_outputs[0], saved[0], saved[1], saved[2], saved[3],
                                         saved[4], saved[5], saved[6], saved[7]);
      return {grads[0], grads[1], Tensor(), Tensor(), Tensor()};
    }
    const variable_list grads =
        radial_backward(grad_outputs[0], saved, ctx->needs_input_grad(3), ctx->needs_input_grad(4));
    return {grads[0], grads[1], Tensor(), grads[2], grads[3]};
  }
};

Tensor radial_functions(const Tensor &length, const Tensor &norm_length, const Tensor &species,
                        const Tensor &centers, const Tensor &exponents)
{
  return RadialFunctions::apply(length, norm_length, species, centers, exponents);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(reann, m)
{
  m.def("radial_functions(Tensor length, Tensor norm_length, Tensor species, Tensor centers, "
        "Tensor exponents) -> Tensor",
        &radial_functions);
}
