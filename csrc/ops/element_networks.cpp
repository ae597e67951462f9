/* torch.ops.reann: REANN's per-element residual networks in one op (CPU).

   reann::element_networks(x, atom_types, weights, biases, activation_parameters,
                           norm_parameters, activation, layers_per_block) -> y

   The network of each atom's element e, as reann_nequip.nn.ElementNetworks computes it in eval
   mode (dropout off):

       h = x W_0 + b_0
       per residual block: y = h; per layer l of the block: y = norm_l(act_l(y)) W_l + b_l;
                           h = h + y
       y = act_out(h) W_out + b_out

   - weights[k] [types, in_k, out_k], biases[k] [types, out_k]: the linear layers in that order,
     2 + blocks * layers_per_block of them;
   - activation_parameters: alpha_a, beta_a [types, width_a] of each activation in order (the
     last is act_out), alternating; empty for SiLU;
   - norm_parameters: gamma_l, delta_l [types, width_l] of each layer norm, alternating; empty
     without layer norm;
   - activation: 0 relu_like alpha silu(beta x), 1 tanh_like alpha x / sqrt(1 + (beta x)^2),
     2 silu.

   The atoms are grouped by element once (a counting sort; no copy when they already are), each
   linear layer is one GEMM per element over its rows (kernels/networks.cpp), and each
   activation with its layer norm is one pass that also keeps what the backward pass needs (the
   activation's slope, the normalised values and their 1/sigma). The backward pass gives the
   gradient with respect to x (forces) and, when the parameters require gradients, theirs; it is
   itself differentiable once (force training), with the second derivatives worked out layer by
   layer (network_double_backward). Third derivatives are refused. */

#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/script.h>

#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

using torch::Tensor;
using torch::TensorList;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t RELU_LIKE = int64_t(reann::Activation::relu_like);
constexpr int64_t TANH_LIKE = int64_t(reann::Activation::tanh_like);
constexpr int64_t SILU = int64_t(reann::Activation::silu);

// rows per task of the elementwise passes
constexpr int64_t ROW_GRAIN = 64;

// The atoms of each element as consecutive rows: sorted row r is atom order[r]; element e owns
// rows offset[e] ... offset[e + 1] - 1. `identity` when the atoms already come in that order
struct Groups {
  std::vector<int64_t> offset;
  Tensor order;
  bool identity;
};

Groups group_by_element(const Tensor &atom_types, int64_t types)
{
  const int64_t atoms = atom_types.size(0);
  const int64_t *t = atom_types.data_ptr<int64_t>();
  Groups g{std::vector<int64_t>(types + 1, 0), Tensor(), true};
  for (int64_t i = 0; i < atoms; ++i) {
    TORCH_CHECK(t[i] >= 0 && t[i] < types, "reann::element_networks: atom ", i, " has type ",
                t[i], ", outside the ", types, " types of the networks");
    ++g.offset[t[i] + 1];
    if (i > 0 && t[i] < t[i - 1]) g.identity = false;
  }
  for (int64_t e = 0; e < types; ++e) g.offset[e + 1] += g.offset[e];
  if (!g.identity) {
    g.order = torch::empty({atoms}, atom_types.options());
    int64_t *o = g.order.data_ptr<int64_t>();
    std::vector<int64_t> next(g.offset.begin(), g.offset.end() - 1);
    for (int64_t i = 0; i < atoms; ++i) o[next[t[i]]++] = i;
  }
  return g;
}

// rows of [N, F] values in element order (to_groups) and back in atom order (from_groups)
template <bool ToGroups> Tensor regroup(const Tensor &values_in, const Groups &g)
{
  const Tensor values = values_in.contiguous();
  if (g.identity) return values;
  Tensor out = torch::empty_like(values);
  const int64_t width = values.size(1);
  const int64_t *order = g.order.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "reann::element_networks regroup", [&] {
    const scalar_t *in = values.data_ptr<scalar_t>();
    scalar_t *o = out.data_ptr<scalar_t>();
    for (int64_t r = 0; r < values.size(0); ++r) {
      const int64_t from = ToGroups ? order[r] : r, to = ToGroups ? r : order[r];
      std::copy(in + from * width, in + from * width + width, o + to * width);
    }
  });
  return out;
}

Tensor to_groups(const Tensor &values, const Groups &g) { return regroup<true>(values, g); }

Tensor from_groups(const Tensor &grouped, const Groups &g) { return regroup<false>(grouped, g); }

// out = in W_k[e] + b_k[e] for each element's rows (in: [N, in_k] contiguous, out: [N, out_k]);
// no bias when it is undefined
Tensor linear(const Tensor &in, const Tensor &weight, const Tensor &bias, const Groups &g)
{
  const int64_t width = in.size(1), out_width = weight.size(2);
  Tensor out = torch::empty({in.size(0), out_width}, in.options());
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "reann::element_networks linear", [&] {
    for (size_t e = 0; e + 1 < g.offset.size(); ++e)
      reann::kernels<scalar_t>().gemm(g.offset[e + 1] - g.offset[e], out_width, width,
                     in.data_ptr<scalar_t>() + g.offset[e] * width, width,
                     weight.data_ptr<scalar_t>() + e * width * out_width, out_width, 1,
                     bias.defined() ? bias.data_ptr<scalar_t>() + e * out_width : nullptr,
                     out.data_ptr<scalar_t>() + g.offset[e] * out_width, out_width);
  });
  return out;
}

// out = grad W_k[e]^T for each element's rows: the gradient with respect to the layer's input
// (grad: [N, out_k] contiguous, out: [N, in_k])
Tensor linear_backward(const Tensor &grad, const Tensor &weight, const Groups &g)
{
  const int64_t width = weight.size(1), out_width = weight.size(2);
  Tensor out = torch::empty({grad.size(0), width}, grad.options());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "reann::element_networks linear backward", [&] {
    for (size_t e = 0; e + 1 < g.offset.size(); ++e)
      reann::kernels<scalar_t>().gemm(g.offset[e + 1] - g.offset[e], width, out_width,
                     grad.data_ptr<scalar_t>() + g.offset[e] * out_width, out_width,
                     weight.data_ptr<scalar_t>() + e * width * out_width, 1, out_width, nullptr,
                     out.data_ptr<scalar_t>() + g.offset[e] * width, width);
  });
  return out;
}

// f(e, r0, r1) over the rows of every element, in parallel tasks of rows
template <typename F> void for_element_rows(const Groups &g, F &&f)
{
  for (size_t e = 0; e + 1 < g.offset.size(); ++e)
    at::parallel_for(g.offset[e], g.offset[e + 1], ROW_GRAIN,
                     [&](int64_t r0, int64_t r1) { f(int64_t(e), r0, r1); });
}

struct Layout {
  int64_t types, blocks, layers_per_block, activation;
  bool norm;
  int64_t activations() const { return blocks * layers_per_block + 1; }
};

Layout check_inputs(const Tensor &x, const Tensor &atom_types, TensorList weights,
                    TensorList biases, TensorList activation_parameters,
                    TensorList norm_parameters, int64_t activation, int64_t layers_per_block)
{
  const char *op = "reann::element_networks: ";
  TORCH_CHECK(x.dim() == 2 && x.device().is_cpu() &&
                  (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kFloat64),
              op, "expected a float32 or float64 CPU input [atoms, features], got ",
              x.scalar_type(), " ", x.sizes(), " on ", x.device());
  TORCH_CHECK(atom_types.dim() == 1 && atom_types.scalar_type() == torch::kInt64 &&
                  atom_types.size(0) == x.size(0),
              op, "expected int64 atom types [", x.size(0), "], got ", atom_types.scalar_type(),
              " ", atom_types.sizes());
  TORCH_CHECK(activation == RELU_LIKE || activation == TANH_LIKE || activation == SILU, op,
              "activation must be 0 (relu_like), 1 (tanh_like) or 2 (silu), got ", activation);
  TORCH_CHECK(layers_per_block >= 1, op, "layers_per_block must be >= 1, got ",
              layers_per_block);
  const int64_t linears = int64_t(weights.size());
  TORCH_CHECK(linears >= 2 && (linears - 2) % layers_per_block == 0 &&
                  int64_t(biases.size()) == linears,
              op, "expected 2 + blocks * ", layers_per_block, " weights and as many biases, got ",
              linears, " weights and ", biases.size(), " biases");
  TORCH_CHECK(weights[0].dim() == 3, op, "weights[0] must be [types, in, out], got ",
              weights[0].sizes());
  Layout l{weights[0].size(0), (linears - 2) / layers_per_block, layers_per_block, activation,
           !norm_parameters.empty()};
  TORCH_CHECK(int64_t(activation_parameters.size()) ==
                  (activation == SILU ? 0 : 2 * l.activations()),
              op, "expected alpha and beta of ", l.activations(), " activations (none for silu), got ",
              activation_parameters.size(), " tensors");
  TORCH_CHECK(norm_parameters.empty() ||
                  int64_t(norm_parameters.size()) == 2 * (l.activations() - 1),
              op, "expected gamma and delta of ", l.activations() - 1,
              " layer norms (or none), got ", norm_parameters.size(), " tensors");
  auto check = [&](const Tensor &t, const char *name, int64_t k, std::vector<int64_t> sizes) {
    TORCH_CHECK(t.sizes() == c10::IntArrayRef(sizes) && t.scalar_type() == x.scalar_type() &&
                    t.device().is_cpu(),
                op, name, "[", k, "] must be ", x.scalar_type(), " ", c10::IntArrayRef(sizes),
                " on the CPU, got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
  };
  int64_t width = x.size(1);
  for (int64_t k = 0; k < linears; ++k) {
    TORCH_CHECK(weights[k].dim() == 3, op, "weights[", k, "] must be [types, in, out], got ",
                weights[k].sizes());
    const int64_t out = weights[k].size(2);
    check(weights[k], "weights", k, {l.types, width, out});
    check(biases[k], "biases", k, {l.types, out});
    // the activation (and norm) in front of linear k + 1 reads this width
    if (k + 1 < linears) {
      if (activation != SILU) {
        check(activation_parameters[2 * k], "activation_parameters", 2 * k, {l.types, out});
        check(activation_parameters[2 * k + 1], "activation_parameters", 2 * k + 1,
              {l.types, out});
      }
      if (l.norm && k + 2 < linears) {
        check(norm_parameters[2 * k], "norm_parameters", 2 * k, {l.types, out});
        check(norm_parameters[2 * k + 1], "norm_parameters", 2 * k + 1, {l.types, out});
      }
    }
    width = out;
    // a residual block ends at the width it started from
    if (k >= 1 && k + 1 < linears && k % layers_per_block == 0)
      TORCH_CHECK(out == weights[0].size(2), op, "the last layer of residual block ",
                  k / layers_per_block - 1, " must return to width ", weights[0].size(2),
                  ", got ", out);
  }
  return l;
}

template <typename T> T *data_or_null(const Tensor &t)
{
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

std::vector<Tensor> contiguous(TensorList list)
{
  std::vector<Tensor> out;
  out.reserve(list.size());
  for (const Tensor &t : list) out.push_back(t.contiguous());
  return out;
}

// The networks' parameters, contiguous, and their layout
struct Network {
  Layout layout;
  std::vector<Tensor> weights, biases, activation_parameters, norm_parameters;

  // every parameter tensor in the op's argument order
  std::vector<Tensor> parameters() const
  {
    std::vector<Tensor> all(weights);
    all.insert(all.end(), biases.begin(), biases.end());
    all.insert(all.end(), activation_parameters.begin(), activation_parameters.end());
    all.insert(all.end(), norm_parameters.begin(), norm_parameters.end());
    return all;
  }
  bool parametric() const { return layout.activation != SILU; }
  bool has_norm(int64_t a) const { return layout.norm && a + 1 < layout.activations(); }
};

// What the backward passes read, in element order. Per activation a: its slope act'(pre) [N, W];
// when it has a layer norm, the normalised values [N, W] and 1/sigma [N]. With `training`, also
// the network's input [N, in], each activation's input `pre` and output `post` (after its norm,
// the next linear layer's input) [N, W]: what the parameters' gradients and the second
// derivatives need
struct Record {
  bool training = false;
  Tensor input;
  std::vector<Tensor> slope, normalised, inverse_sigma, pre, post;
};

// act (and norm) of activation a on the element-ordered rows x, in a new tensor
Tensor activation_layer(const Tensor &x, int64_t a, const Network &net, const Groups &g,
                        Record &record)
{
  const Layout &l = net.layout;
  const int64_t width = x.size(1);
  Tensor out = torch::empty_like(x), slope = torch::empty_like(x);
  Tensor ones = net.parametric() ? Tensor() : torch::ones({l.types, width}, x.options());
  const Tensor &alpha = net.parametric() ? net.activation_parameters[2 * a] : ones;
  const Tensor &beta = net.parametric() ? net.activation_parameters[2 * a + 1] : ones;
  const bool norm = net.has_norm(a);
  Tensor normalised, inverse_sigma;
  if (norm) {
    normalised = torch::empty_like(x);
    inverse_sigma = torch::empty({x.size(0)}, x.options());
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "reann::element_networks activation", [&] {
    const auto &kernels = reann::kernels<scalar_t>();
    for_element_rows(g, [&](int64_t e, int64_t r0, int64_t r1) {
      // the per-neuron parameters of element e: row e of the [types, W] tensors
      const int64_t row = e * width;
      kernels.activate_rows(x.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>() + row,
                            beta.data_ptr<scalar_t>() + row, l.activation, r0, r1, width,
                            out.data_ptr<scalar_t>(), slope.data_ptr<scalar_t>());
      if (norm)
        kernels.normalise_rows(net.norm_parameters[2 * a].data_ptr<scalar_t>() + row,
                               net.norm_parameters[2 * a + 1].data_ptr<scalar_t>() + row, r0, r1,
                               width, out.data_ptr<scalar_t>(), normalised.data_ptr<scalar_t>(),
                               inverse_sigma.data_ptr<scalar_t>());
    });
  });
  record.slope.push_back(slope);
  record.normalised.push_back(normalised);
  record.inverse_sigma.push_back(inverse_sigma);
  if (record.training) {
    record.pre.push_back(x);
    record.post.push_back(out);
  }
  return out;
}

// The forward pass on element-ordered rows, recording what the backward passes need
Tensor network_forward(const Tensor &grouped_input, const Network &net, const Groups &g,
                       Record &record)
{
  const Layout &l = net.layout;
  if (record.training) record.input = grouped_input;
  Tensor h = linear(grouped_input, net.weights[0], net.biases[0], g);
  int64_t k = 1;
  for (int64_t block = 0; block < l.blocks; ++block) {
    Tensor y = h;
    for (int64_t layer = 0; layer < l.layers_per_block; ++layer, ++k)
      y = linear(activation_layer(y, k - 1, net, g, record), net.weights[k], net.biases[k], g);
    h = y.add_(h);
  }
  return linear(activation_layer(h, k - 1, net, g, record), net.weights[k], net.biases[k], g);
}

// [N, W] sums of rows, per element: [types, W]
Tensor element_sums(const Tensor &rows, const Tensor &row_types, int64_t types)
{
  return torch::zeros({types, rows.size(1)}, rows.options()).index_add_(0, row_types, rows);
}

// the element of each element-ordered row [N]
Tensor row_types_of(const Groups &g, const Tensor &like)
{
  const int64_t types = int64_t(g.offset.size()) - 1;
  Tensor counts = torch::empty({types}, like.options().dtype(torch::kInt64));
  int64_t *c = counts.data_ptr<int64_t>();
  for (int64_t e = 0; e < types; ++e) c[e] = g.offset[e + 1] - g.offset[e];
  return torch::repeat_interleave(counts);
}

// into[e] += a[rows of e]^T b[rows of e], the gradient of a per-element weight
void add_weight_gradient(Tensor &into, const Tensor &a, const Tensor &b, const Groups &g)
{
  for (size_t e = 0; e + 1 < g.offset.size(); ++e) {
    const int64_t first = g.offset[e], rows = g.offset[e + 1] - g.offset[e];
    if (rows > 0)
      into.select(0, int64_t(e)).addmm_(a.narrow(0, first, rows).t(), b.narrow(0, first, rows));
  }
}

// The gradients of the parameters, in the order of Network::parameters(), zero
std::vector<Tensor> zero_gradients(const Network &net)
{
  std::vector<Tensor> grads;
  for (const Tensor &p : net.parameters()) grads.push_back(torch::zeros_like(p));
  return grads;
}

// index of each parameter in Network::parameters()
struct ParameterIndex {
  int64_t linears, activations;
  int64_t weight(int64_t k) const { return k; }
  int64_t bias(int64_t k) const { return linears + k; }
  int64_t alpha(int64_t a) const { return 2 * linears + 2 * a; }
  int64_t beta(int64_t a) const { return 2 * linears + 2 * a + 1; }
  int64_t gamma(int64_t a) const { return 2 * linears + activations + 2 * a; }
  int64_t delta(int64_t a) const { return 2 * linears + activations + 2 * a + 1; }
};

ParameterIndex parameter_index(const Network &net)
{
  return {int64_t(net.weights.size()), int64_t(net.activation_parameters.size())};
}

// A row kernel f(e, r0, r1, sums) over every element's rows, in parallel tasks, each task adding
// the gradients of activation layer a's parameters to its thread's sums [4, W] (gamma, delta,
// alpha, beta); those of the layer's parameters then receive them
template <typename T, typename F>
void with_parameter_sums(const Groups &g, int64_t a, int64_t width, const Network &net,
                         std::vector<Tensor> &grads, const Tensor &like, F &&f)
{
  const int64_t types = int64_t(g.offset.size()) - 1;
  Tensor sums = torch::zeros({at::get_num_threads(), types, 4, width}, like.options());
  T *base = sums.data_ptr<T>();
  for_element_rows(g, [&](int64_t e, int64_t r0, int64_t r1) {
    f(e, r0, r1, base + ((at::get_thread_num() * types + e) * 4) * width);
  });
  const Tensor total = sums.sum(0);  // [types, 4, W]
  const ParameterIndex index = parameter_index(net);
  if (net.has_norm(a)) {
    grads[index.gamma(a)] += total.select(1, 0);
    grads[index.delta(a)] += total.select(1, 1);
  }
  if (net.parametric()) {
    grads[index.alpha(a)] += total.select(1, 2);
    grads[index.beta(a)] += total.select(1, 3);
  }
}

// pointers at element e's row of a per-element parameter [types, W], null for an undefined one
template <typename T> const T *element_row(const Tensor &parameter, int64_t e)
{
  return parameter.defined() ? parameter.data_ptr<T>() + e * parameter.size(1) : nullptr;
}

// activation a's alpha, beta and its norm's gamma (undefined where the layer has none)
std::tuple<Tensor, Tensor, Tensor> layer_parameters(const Network &net, int64_t a)
{
  return {net.parametric() ? net.activation_parameters[2 * a] : Tensor(),
          net.parametric() ? net.activation_parameters[2 * a + 1] : Tensor(),
          net.has_norm(a) ? net.norm_parameters[2 * a] : Tensor()};
}

// The gradient with respect to the network's input of sum(grad * output), element-ordered, and
// (when `gradients` is not null) the parameters' gradients added to *gradients
Tensor network_backward(const Tensor &grad, const Network &net, const Groups &g,
                        const Record &record, std::vector<Tensor> *gradients)
{
  const Layout &l = net.layout;
  const ParameterIndex index = parameter_index(net);
  const Tensor row_types = gradients ? row_types_of(g, grad) : Tensor();
  // the gradient with respect to the input of linear k, from that w.r.t. its output
  auto through_linear = [&](const Tensor &grad_out, int64_t k) {
    if (gradients) {
      const Tensor &in = k == 0 ? record.input : record.post[k - 1];
      add_weight_gradient((*gradients)[index.weight(k)], in, grad_out, g);
      (*gradients)[index.bias(k)] += element_sums(grad_out, row_types, l.types);
    }
    return linear_backward(grad_out, net.weights[k], g);
  };
  // in place, from the gradient w.r.t. activation a's (normalised) output to that w.r.t. its input
  auto through_activation = [&](Tensor &grad_post, int64_t a) {
    const int64_t width = grad_post.size(1);
    const auto [alpha, beta, gamma] = layer_parameters(net, a);
    AT_DISPATCH_FLOATING_TYPES(grad_post.scalar_type(), "reann::element_networks backward", [&] {
      const auto &kernels = reann::kernels<scalar_t>();
      auto rows = [&](int64_t e, int64_t r0, int64_t r1, scalar_t *sums) {
        kernels.norm_activation_backward_rows(
            element_row<scalar_t>(gamma, e), data_or_null<scalar_t>(record.normalised[a]),
            data_or_null<scalar_t>(record.inverse_sigma[a]),
            record.slope[a].data_ptr<scalar_t>(), r0, r1, width, grad_post.data_ptr<scalar_t>(),
            sums ? record.pre[a].data_ptr<scalar_t>() : nullptr, element_row<scalar_t>(alpha, e),
            element_row<scalar_t>(beta, e), l.activation, sums);
      };
      if (gradients)
        with_parameter_sums<scalar_t>(g, a, width, net, *gradients, grad_post, rows);
      else
        for_element_rows(g, [&](int64_t e, int64_t r0, int64_t r1) { rows(e, r0, r1, nullptr); });
    });
  };

  int64_t k = int64_t(net.weights.size()) - 1;
  Tensor grad_h = through_linear(grad, k);
  through_activation(grad_h, k - 1);
  for (int64_t block = l.blocks - 1; block >= 0; --block) {
    Tensor grad_y = grad_h;
    for (int64_t layer = l.layers_per_block - 1; layer >= 0; --layer) {
      --k;
      grad_y = through_linear(grad_y, k);
      through_activation(grad_y, k - 1);
    }
    grad_h = grad_y.add_(grad_h);
  }
  return through_linear(grad_h, 0);
}

// out = in W_k[e] for each element's rows, without the bias: a linear layer's tangent
Tensor tangent_linear(const Tensor &in, const Tensor &weight, const Groups &g)
{
  return linear(in, weight, Tensor(), g);
}

// The second derivatives, for force training. network_backward maps (grad, x, parameters) to
// grad_x; for the gradient v of a loss with respect to grad_x, this gives that loss's gradients
// with respect to grad, x and the parameters (added to grads). With the tangent t of every
// quantity along x -> x + v (forward mode), <v, grad_x> = <grad, t_out> = S: its derivative with
// respect to grad is t_out, and those with respect to x and the parameters come from running
// the network's layers backwards for both the values and their tangents (`bar` dS/d(value),
// `t_bar` dS/d(tangent)).
std::pair<Tensor, Tensor> network_double_backward(const Tensor &v, const Tensor &grad,
                                                  const Network &net, const Groups &g,
                                                  const Record &record,
                                                  std::vector<Tensor> &grads)
{
  const Layout &l = net.layout;
  const ParameterIndex index = parameter_index(net);
  const Tensor row_types = row_types_of(g, grad);
  const int64_t A = l.activations();

  // === tangents of each activation's input, output, normalised output and layer output ===
  std::vector<Tensor> t_pre(A), t_act(A), t_normalised(A), t_post(A);
  auto tangent_activation = [&](const Tensor &t_in, int64_t a) {
    const int64_t width = t_in.size(1);
    const auto gamma = std::get<2>(layer_parameters(net, a));
    t_pre[a] = t_in;
    t_act[a] = torch::empty_like(t_in);
    t_post[a] = torch::empty_like(t_in);
    if (gamma.defined()) t_normalised[a] = torch::empty_like(t_in);
    AT_DISPATCH_FLOATING_TYPES(t_in.scalar_type(), "reann::element_networks tangent", [&] {
      const auto &kernels = reann::kernels<scalar_t>();
      for_element_rows(g, [&](int64_t e, int64_t r0, int64_t r1) {
        kernels.tangent_rows(record.slope[a].data_ptr<scalar_t>(),
                             element_row<scalar_t>(gamma, e),
                             data_or_null<scalar_t>(record.normalised[a]),
                             data_or_null<scalar_t>(record.inverse_sigma[a]),
                             t_in.data_ptr<scalar_t>(), r0, r1, width,
                             t_act[a].data_ptr<scalar_t>(),
                             data_or_null<scalar_t>(t_normalised[a]),
                             t_post[a].data_ptr<scalar_t>());
      });
    });
    return t_post[a];
  };
  Tensor t_h = tangent_linear(v, net.weights[0], g);
  int64_t k = 1;
  for (int64_t block = 0; block < l.blocks; ++block) {
    Tensor t_y = t_h;
    for (int64_t layer = 0; layer < l.layers_per_block; ++layer, ++k)
      t_y = tangent_linear(tangent_activation(t_y, k - 1), net.weights[k], g);
    t_h = t_h + t_y;
  }
  const Tensor t_out = tangent_linear(tangent_activation(t_h, k - 1), net.weights[k], g);

  // === backwards for S ===
  auto through_linear = [&](const Tensor &bar_out, const Tensor &t_bar_out, int64_t linear) {
    const Tensor &in = linear == 0 ? record.input : record.post[linear - 1];
    const Tensor &t_in = linear == 0 ? v : t_post[linear - 1];
    const Tensor &weight = net.weights[linear];
    if (bar_out.defined()) {
      add_weight_gradient(grads[index.weight(linear)], in, bar_out, g);
      grads[index.bias(linear)] += element_sums(bar_out, row_types, l.types);
    }
    add_weight_gradient(grads[index.weight(linear)], t_in, t_bar_out, g);
    return std::make_pair(bar_out.defined() ? linear_backward(bar_out, weight, g) : Tensor(),
                          linear_backward(t_bar_out, weight, g));
  };
  // from (bar, t_bar) of activation a's layer output to those of its input
  auto through_activation = [&](const Tensor &bar_post, const Tensor &t_bar_post, int64_t a) {
    const int64_t width = t_bar_post.size(1);
    const auto [alpha, beta, gamma] = layer_parameters(net, a);
    Tensor bar_pre = torch::empty_like(t_bar_post), t_bar_pre = torch::empty_like(t_bar_post);
    AT_DISPATCH_FLOATING_TYPES(t_bar_post.scalar_type(), "reann::element_networks dual", [&] {
      const auto &kernels = reann::kernels<scalar_t>();
      with_parameter_sums<scalar_t>(
          g, a, width, net, grads, t_bar_post,
          [&](int64_t e, int64_t r0, int64_t r1, scalar_t *sums) {
            kernels.dual_backward_rows(
                record.pre[a].data_ptr<scalar_t>(), element_row<scalar_t>(alpha, e),
                element_row<scalar_t>(beta, e), l.activation, element_row<scalar_t>(gamma, e),
                data_or_null<scalar_t>(record.normalised[a]),
                data_or_null<scalar_t>(record.inverse_sigma[a]), t_pre[a].data_ptr<scalar_t>(),
                t_act[a].data_ptr<scalar_t>(), data_or_null<scalar_t>(t_normalised[a]),
                data_or_null<scalar_t>(bar_post), t_bar_post.data_ptr<scalar_t>(), r0, r1, width,
                bar_pre.data_ptr<scalar_t>(), t_bar_pre.data_ptr<scalar_t>(), sums);
          });
    });
    return std::make_pair(bar_pre, t_bar_pre);
  };

  // the output itself does not enter S: no `bar` for it
  auto [bar_h, t_bar_h] = through_linear(Tensor(), grad, k);
  std::tie(bar_h, t_bar_h) = through_activation(bar_h, t_bar_h, k - 1);
  for (int64_t block = l.blocks - 1; block >= 0; --block) {
    Tensor bar_y = bar_h, t_bar_y = t_bar_h;
    for (int64_t layer = l.layers_per_block - 1; layer >= 0; --layer) {
      --k;
      std::tie(bar_y, t_bar_y) = through_linear(bar_y, t_bar_y, k);
      std::tie(bar_y, t_bar_y) = through_activation(bar_y, t_bar_y, k - 1);
    }
    bar_h = bar_h + bar_y;
    t_bar_h = t_bar_h + t_bar_y;
  }
  const Tensor bar_x = through_linear(bar_h, t_bar_h, 0).first;
  return {t_out, bar_x};
}

// What the backward nodes keep: the parameters (contiguous, and as given: the backward node's
// inputs, through which the second derivatives reach them), the forward pass's record and the
// groups; held by torch's IValue as a registered class
struct Saved : torch::CustomClassHolder {
  Network net;
  std::vector<Tensor> inputs;
  Record record;
  Groups groups;
};

// (grad, x, parameters...) -> grad_x: the backward pass of ElementNetworksFunction for forces,
// differentiable once more (force training) by network_double_backward
class ElementNetworksBackward : public torch::autograd::Function<ElementNetworksBackward> {
 public:
  static Tensor forward(AutogradContext *ctx, Tensor grad, Tensor x, TensorList parameters,
                        c10::intrusive_ptr<Saved> saved)
  {
    const Tensor grad_x = from_groups(
        network_backward(to_groups(grad.contiguous(), saved->groups), saved->net, saved->groups,
                         saved->record, nullptr),
        saved->groups);
    ctx->saved_data["forward"] = saved;
    ctx->save_for_backward({grad});
    return grad_x;
  }

  static variable_list backward(AutogradContext *ctx, variable_list grad_outputs)
  {
    TORCH_CHECK(!torch::GradMode::is_enabled(),
                "reann::element_networks has no third derivative (a second backward pass with "
                "create_graph=True)");
    const c10::intrusive_ptr<Saved> saved = ctx->saved_data["forward"].toCustomClass<Saved>();
    const Saved &s = *saved;
    const size_t num_parameters = s.inputs.size();
    variable_list out(2 + num_parameters + 1);
    if (!grad_outputs[0].defined()) return out;
    TORCH_CHECK(s.record.training,
                "reann::element_networks: second derivatives need a forward pass that records "
                "them (parameters requiring gradients)");
    const Tensor grad = ctx->get_saved_variables()[0];
    std::vector<Tensor> grads = zero_gradients(s.net);
    const auto [grad_of_grad, grad_of_x] = network_double_backward(
        to_groups(grad_outputs[0].contiguous(), s.groups), to_groups(grad.contiguous(), s.groups),
        s.net, s.groups, s.record, grads);
    out[0] = from_groups(grad_of_grad, s.groups);
    out[1] = from_groups(grad_of_x, s.groups);
    for (size_t i = 0; i < num_parameters; ++i) out[2 + i] = grads[i];
    return out;
  }
};

class ElementNetworksFunction : public torch::autograd::Function<ElementNetworksFunction> {
 public:
  static Tensor forward(AutogradContext *ctx, Tensor x, Tensor atom_types, TensorList weights,
                        TensorList biases, TensorList activation_parameters,
                        TensorList norm_parameters, int64_t activation, int64_t layers_per_block)
  {
    auto saved = c10::make_intrusive<Saved>();
    Saved &s = *saved;
    s.net = {check_inputs(x, atom_types, weights, biases, activation_parameters, norm_parameters,
                          activation, layers_per_block),
             contiguous(weights), contiguous(biases), contiguous(activation_parameters),
             contiguous(norm_parameters)};
    for (TensorList list : {weights, biases, activation_parameters, norm_parameters})
      s.inputs.insert(s.inputs.end(), list.begin(), list.end());
    s.groups = group_by_element(atom_types.contiguous(), s.net.layout.types);
    // the forward pass keeps what the parameters' gradients and second derivatives need only
    // when they can be asked for
    for (const Tensor &p : s.inputs) s.record.training |= p.requires_grad();
    const Tensor out = from_groups(
        network_forward(to_groups(x.contiguous(), s.groups), s.net, s.groups, s.record),
        s.groups);
    ctx->saved_data["forward"] = saved;
    ctx->save_for_backward({x});
    return out;
  }

  static variable_list backward(AutogradContext *ctx, variable_list grad_outputs)
  {
    const c10::intrusive_ptr<Saved> saved = ctx->saved_data["forward"].toCustomClass<Saved>();
    const int64_t num_parameters = int64_t(saved->inputs.size());
    variable_list grads(2 + num_parameters + 2);
    if (!grad_outputs[0].defined()) return grads;
    bool parameter_gradients = false;
    for (int64_t i = 0; i < num_parameters; ++i)
      parameter_gradients |= ctx->needs_input_grad(2 + i);
    if (!parameter_gradients) {
      // forces: grad_x, itself differentiable when the graph is kept (force training)
      grads[0] = ElementNetworksBackward::apply(grad_outputs[0], ctx->get_saved_variables()[0],
                                                TensorList(saved->inputs), saved);
      return grads;
    }
    TORCH_CHECK(!torch::GradMode::is_enabled(),
                "reann::element_networks: the gradients of the parameters are not "
                "differentiable (a backward pass with create_graph=True that asks for them)");
    TORCH_CHECK(saved->record.training,
                "reann::element_networks: gradients with respect to the parameters need a "
                "forward pass that records them (parameters requiring gradients)");
    std::vector<Tensor> parameter_grads = zero_gradients(saved->net);
    grads[0] = from_groups(network_backward(to_groups(grad_outputs[0].contiguous(), saved->groups),
                                            saved->net, saved->groups, saved->record,
                                            &parameter_grads),
                           saved->groups);
    for (int64_t i = 0; i < num_parameters; ++i) grads[2 + i] = parameter_grads[i];
    return grads;
  }
};

Tensor element_networks(const Tensor &x, const Tensor &atom_types,
                        const std::vector<Tensor> &weights, const std::vector<Tensor> &biases,
                        const std::vector<Tensor> &activation_parameters,
                        const std::vector<Tensor> &norm_parameters, int64_t activation,
                        int64_t layers_per_block)
{
  return ElementNetworksFunction::apply(x, atom_types, TensorList(weights), TensorList(biases),
                                        TensorList(activation_parameters),
                                        TensorList(norm_parameters), activation,
                                        layers_per_block);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(reann, m)
{
  m.class_<Saved>("ElementNetworksRecord");
  m.def("element_networks(Tensor x, Tensor atom_types, Tensor[] weights, Tensor[] biases, "
        "Tensor[] activation_parameters, Tensor[] norm_parameters, int activation, "
        "int layers_per_block) -> Tensor",
        &element_networks);
}
