/* torch.ops.reann: REANN's per-element residual networks in one op, for inference (CPU).

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
   linear layer is one GEMM per element over its rows (the register-tiled `gemm` below), and
   each activation with its layer norm is one pass that also keeps what the backward pass needs
   (the activation's slope, the normalised values and their 1/sigma). The backward pass gives
   the gradient with respect to x only, which is what forces in deployed models and in eval mode
   need. Gradients with respect to the parameters and second derivatives are refused: training
   runs the torch form. */

#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/script.h>

#include "vector_math.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

using torch::Tensor;
using torch::TensorList;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

enum Activation : int64_t { RELU_LIKE = 0, TANH_LIKE = 1, SILU = 2 };

// torch.nn.functional.layer_norm's default epsilon
constexpr double NORM_EPSILON = 1e-5;
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

// out = in W_k[e] + b_k[e] for each element's rows (in: [N, in_k] contiguous, out: [N, out_k])
Tensor linear(const Tensor &in, const Tensor &weight, const Tensor &bias, const Groups &g)
{
  const int64_t width = in.size(1), out_width = weight.size(2);
  Tensor out = torch::empty({in.size(0), out_width}, in.options());
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "reann::element_networks linear", [&] {
    for (size_t e = 0; e + 1 < g.offset.size(); ++e)
      gemm<scalar_t>(g.offset[e + 1] - g.offset[e], out_width, width,
                     in.data_ptr<scalar_t>() + g.offset[e] * width, width,
                     weight.data_ptr<scalar_t>() + e * width * out_width, out_width, 1,
                     bias.data_ptr<scalar_t>() + e * out_width,
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
      gemm<scalar_t>(g.offset[e + 1] - g.offset[e], width, out_width,
                     grad.data_ptr<scalar_t>() + g.offset[e] * out_width, out_width,
                     weight.data_ptr<scalar_t>() + e * width * out_width, 1, out_width, nullptr,
                     out.data_ptr<scalar_t>() + g.offset[e] * width, width);
  });
  return out;
}

// Rows r0 ... r1 - 1 of [N, W] x through the activation: a = act(x) and its slope d = act'(x),
// with the per-neuron alpha, beta [W] of the rows' element
template <typename T>
void activate_rows(const T *x, const T *alpha, const T *beta, int64_t kind, int64_t r0,
                   int64_t r1, int64_t width, T *a, T *d)
{
  if (kind == TANH_LIKE) {
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
  reann::exp_in_place(d + r0 * width, (r1 - r0) * width);
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
// and then the activation's slope d
template <typename T>
void norm_activation_backward_rows(const T *gamma, const T *normalised, const T *inverse_sigma,
                                   const T *d, int64_t r0, int64_t r1, int64_t width, T *g)
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
    for (int64_t j = 0; j < width; ++j) row[j] *= sr[j];
  }
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

std::vector<Tensor> contiguous(TensorList list)
{
  std::vector<Tensor> out;
  out.reserve(list.size());
  for (const Tensor &t : list) out.push_back(t.contiguous());
  return out;
}

// What the backward pass reads, in element order: per activation its slope [N, W]; per layer
// norm the normalised values [N, W] and 1/sigma [N]
struct Intermediates {
  std::vector<Tensor> slope, normalised, inverse_sigma;
};

// act (and norm) of activation a on the element-ordered rows x, in a new tensor
Tensor activation_layer(const Tensor &x, int64_t a, const Layout &l,
                        const std::vector<Tensor> &activation_parameters,
                        const std::vector<Tensor> &norm_parameters, const Groups &g,
                        Intermediates &saved)
{
  const int64_t width = x.size(1);
  Tensor out = torch::empty_like(x), slope = torch::empty_like(x);
  Tensor ones = l.activation == SILU ? torch::ones({l.types, width}, x.options()) : Tensor();
  const Tensor &alpha = l.activation == SILU ? ones : activation_parameters[2 * a];
  const Tensor &beta = l.activation == SILU ? ones : activation_parameters[2 * a + 1];
  const bool norm = l.norm && a + 1 < l.activations();
  Tensor normalised, inverse_sigma;
  if (norm) {
    normalised = torch::empty_like(x);
    inverse_sigma = torch::empty({x.size(0)}, x.options());
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "reann::element_networks activation", [&] {
    for_element_rows(g, [&](int64_t e, int64_t r0, int64_t r1) {
      // the per-neuron parameters of element e: row e of the [types, W] tensors
      const int64_t row = e * width;
      activate_rows<scalar_t>(x.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>() + row,
                              beta.data_ptr<scalar_t>() + row, l.activation, r0, r1, width,
                              out.data_ptr<scalar_t>(), slope.data_ptr<scalar_t>());
      if (norm)
        normalise_rows<scalar_t>(norm_parameters[2 * a].data_ptr<scalar_t>() + row,
                                 norm_parameters[2 * a + 1].data_ptr<scalar_t>() + row, r0, r1,
                                 width, out.data_ptr<scalar_t>(),
                                 normalised.data_ptr<scalar_t>(),
                                 inverse_sigma.data_ptr<scalar_t>());
    });
  });
  saved.slope.push_back(slope);
  saved.normalised.push_back(normalised);
  saved.inverse_sigma.push_back(inverse_sigma);
  return out;
}

// the gradient with respect to the input of activation a, in place from that with respect to
// its (normalised) output
void activation_layer_backward(Tensor &grad, int64_t a,
                               const std::vector<Tensor> &norm_parameters, const Groups &g,
                               const Intermediates &saved)
{
  const bool norm = saved.normalised[a].defined();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "reann::element_networks backward", [&] {
    for_element_rows(g, [&](int64_t e, int64_t r0, int64_t r1) {
      norm_activation_backward_rows<scalar_t>(
          norm ? norm_parameters[2 * a].data_ptr<scalar_t>() + e * grad.size(1) : nullptr,
          norm ? saved.normalised[a].data_ptr<scalar_t>() : nullptr,
          norm ? saved.inverse_sigma[a].data_ptr<scalar_t>() : nullptr,
          saved.slope[a].data_ptr<scalar_t>(), r0, r1, grad.size(1),
          grad.data_ptr<scalar_t>());
    });
  });
}

class ElementNetworksFunction : public torch::autograd::Function<ElementNetworksFunction> {
 public:
  static Tensor forward(AutogradContext *ctx, Tensor x, Tensor atom_types, TensorList weights_in,
                        TensorList biases_in, TensorList activation_in, TensorList norm_in,
                        int64_t activation, int64_t layers_per_block)
  {
    const Layout l = check_inputs(x, atom_types, weights_in, biases_in, activation_in, norm_in,
                                  activation, layers_per_block);
    const std::vector<Tensor> weights = contiguous(weights_in), biases = contiguous(biases_in);
    const std::vector<Tensor> activation_parameters = contiguous(activation_in);
    const std::vector<Tensor> norm_parameters = contiguous(norm_in);
    const Groups g = group_by_element(atom_types.contiguous(), l.types);
    Intermediates saved;
    Tensor h = linear(to_groups(x, g), weights[0], biases[0], g);
    int64_t k = 1;
    for (int64_t block = 0; block < l.blocks; ++block) {
      Tensor y = h;
      for (int64_t layer = 0; layer < l.layers_per_block; ++layer, ++k)
        y = linear(activation_layer(y, k - 1, l, activation_parameters, norm_parameters, g, saved),
                   weights[k], biases[k], g);
      h = y.add_(h);
    }
    Tensor z = activation_layer(h, k - 1, l, activation_parameters, norm_parameters, g, saved);
    Tensor out = from_groups(linear(z, weights[k], biases[k], g), g);

    ctx->saved_data["weights"] = c10::List<Tensor>(weights);
    ctx->saved_data["norm_parameters"] = c10::List<Tensor>(norm_parameters);
    ctx->saved_data["slope"] = c10::List<Tensor>(saved.slope);
    ctx->saved_data["normalised"] = c10::List<Tensor>(saved.normalised);
    ctx->saved_data["inverse_sigma"] = c10::List<Tensor>(saved.inverse_sigma);
    ctx->saved_data["offset"] = g.offset;
    ctx->saved_data["order"] = g.order;
    ctx->saved_data["layout"] =
        std::vector<int64_t>{l.types, l.blocks, l.layers_per_block, l.activation, l.norm};
    ctx->saved_data["num_parameters"] =
        int64_t(weights.size() + biases.size() + activation_parameters.size() +
                norm_parameters.size());
    return out;
  }

  static variable_list backward(AutogradContext *ctx, variable_list grad_outputs)
  {
    TORCH_CHECK(!torch::GradMode::is_enabled(),
                "reann::element_networks has no second derivative (a backward pass with "
                "create_graph=True, as in training on forces): train in model.train() mode, "
                "which runs the element networks with torch operations");
    const int64_t num_parameters = ctx->saved_data["num_parameters"].toInt();
    for (int64_t i = 0; i < num_parameters; ++i)
      TORCH_CHECK(!ctx->needs_input_grad(2 + i),
                  "reann::element_networks gives no gradients with respect to the network "
                  "parameters: train in model.train() mode, which runs the element networks with "
                  "torch operations");
    variable_list grads(2 + num_parameters + 2);
    if (!ctx->needs_input_grad(0) || !grad_outputs[0].defined()) return grads;

    const std::vector<int64_t> layout = ctx->saved_data["layout"].toIntVector();
    const Layout l{layout[0], layout[1], layout[2], layout[3], layout[4] != 0};
    const std::vector<Tensor> weights = ctx->saved_data["weights"].toTensorVector();
    const std::vector<Tensor> norm_parameters =
        ctx->saved_data["norm_parameters"].toTensorVector();
    Intermediates saved;
    saved.slope = ctx->saved_data["slope"].toTensorVector();
    saved.normalised = ctx->saved_data["normalised"].toTensorVector();
    saved.inverse_sigma = ctx->saved_data["inverse_sigma"].toTensorVector();
    const Tensor order = ctx->saved_data["order"].toTensor();
    const Groups g{ctx->saved_data["offset"].toIntVector(), order, !order.defined()};

    int64_t k = int64_t(weights.size()) - 1;
    Tensor grad_h = linear_backward(to_groups(grad_outputs[0], g), weights[k], g);
    activation_layer_backward(grad_h, k - 1, norm_parameters, g, saved);
    for (int64_t block = l.blocks - 1; block >= 0; --block) {
      Tensor grad_y = grad_h;
      for (int64_t layer = l.layers_per_block - 1; layer >= 0; --layer) {
        --k;
        grad_y = linear_backward(grad_y, weights[k], g);
        activation_layer_backward(grad_y, k - 1, norm_parameters, g, saved);
      }
      grad_h = grad_y.add_(grad_h);
    }
    grads[0] = from_groups(linear_backward(grad_h, weights[0], g), g);
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
  m.def("element_networks(Tensor x, Tensor atom_types, Tensor[] weights, Tensor[] biases, "
        "Tensor[] activation_parameters, Tensor[] norm_parameters, int activation, "
        "int layers_per_block) -> Tensor",
        &element_networks);
}
