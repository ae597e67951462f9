/* torch.ops.reann: the edge vectors a deployed model starts from and the forces and virial it
   ends with (CPU, no autograd: reann_nequip.deploy.deployed_model.DeployedEnergyModel calls them
   outside the graph it differentiates).

   reann::edge_vectors(pos, edge_index, shift, dtype) -> (exact, vectors)
       r_e = pos[j_e] - pos[i_e] + shift_e in float64 ([E, 3], Å), and r_e rounded to dtype
   reann::edge_forces(edge_gradient, edge_index, exact, num_atoms) -> (forces, virial)
       from g_e = dE/dr_e: F_i = sum_(e: i_e = i) g_e - sum_(e: j_e = i) g_e ([num_atoms, 3], eV/Å)
       and the virial -sym(sum_e r_e g_e^T) ([3, 3], eV), in float64

   One pass over the edges each, instead of index_select, sub, add, two casts, two index_add_ and
   a [3, E] x [E, 3] product. */

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/script.h>

#include <tuple>
#include <vector>

namespace {

using torch::Tensor;

// edges per task of the parallel loop
constexpr int64_t EDGE_GRAIN = 4096;

void check_edge_index(const Tensor &edge_index, const char *op)
{
  TORCH_CHECK(edge_index.dim() == 2 && edge_index.size(0) == 2 &&
                  edge_index.scalar_type() == torch::kInt64 && edge_index.device().is_cpu(),
              op, ": expected an int64 CPU edge_index [2, E], got ", edge_index.scalar_type(),
              " ", edge_index.sizes());
}

// the atoms i and j of edge e, each below num_atoms: checked where the loops read them
inline void check_edge(int64_t e, int64_t i, int64_t j, int64_t num_atoms, const char *op)
{
  TORCH_CHECK(i >= 0 && i < num_atoms, op, ": edge ", e, " has centre ", i, ", outside the ",
              num_atoms, " atoms");
  TORCH_CHECK(j >= 0 && j < num_atoms, op, ": edge ", e, " has neighbour ", j, ", outside the ",
              num_atoms, " atoms");
}

std::tuple<Tensor, Tensor> edge_vectors(const Tensor &pos_in, const Tensor &edge_index_in,
                                        const Tensor &shift_in, c10::ScalarType dtype)
{
  TORCH_CHECK(pos_in.dim() == 2 && pos_in.size(1) == 3 &&
                  pos_in.scalar_type() == torch::kFloat64 && pos_in.device().is_cpu(),
              "reann::edge_vectors: expected float64 CPU positions [N, 3], got ",
              pos_in.scalar_type(), " ", pos_in.sizes());
  check_edge_index(edge_index_in, "reann::edge_vectors");
  const int64_t edges = edge_index_in.size(1);
  TORCH_CHECK(shift_in.sizes() == torch::IntArrayRef({edges, 3}) &&
                  shift_in.scalar_type() == torch::kFloat64 && shift_in.device().is_cpu(),
              "reann::edge_vectors: expected float64 CPU shifts [E = ", edges, ", 3], got ",
              shift_in.scalar_type(), " ", shift_in.sizes());
  TORCH_CHECK(dtype == torch::kFloat32 || dtype == torch::kFloat64,
              "reann::edge_vectors: the model dtype must be float32 or float64, got ", dtype);
  const Tensor pos = pos_in.contiguous(), index = edge_index_in.contiguous();
  const Tensor shift = shift_in.contiguous();
  Tensor exact = torch::empty({edges, 3}, pos.options());
  Tensor vectors = torch::empty({edges, 3}, pos.options().dtype(dtype));
  const double *x = pos.data_ptr<double>(), *s = shift.data_ptr<double>();
  const int64_t *i = index.data_ptr<int64_t>(), *j = i + edges, num_atoms = pos.size(0);
  double *r = exact.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(dtype, "reann::edge_vectors", [&] {
    scalar_t *v = vectors.data_ptr<scalar_t>();
    at::parallel_for(0, edges, EDGE_GRAIN, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        check_edge(e, i[e], j[e], num_atoms, "reann::edge_vectors");
        for (int64_t a = 0; a < 3; ++a) {
          r[3 * e + a] = x[3 * j[e] + a] - x[3 * i[e] + a] + s[3 * e + a];
          v[3 * e + a] = static_cast<scalar_t>(r[3 * e + a]);
        }
      }
    });
  });
  return {exact, vectors};
}

std::tuple<Tensor, Tensor> edge_forces(const Tensor &edge_gradient_in,
                                       const Tensor &edge_index_in, const Tensor &exact_in,
                                       int64_t num_atoms)
{
  check_edge_index(edge_index_in, "reann::edge_forces");
  const int64_t edges = edge_index_in.size(1);
  const std::vector<int64_t> shape{edges, 3};
  TORCH_CHECK(edge_gradient_in.sizes() == shape && exact_in.sizes() == shape &&
                  exact_in.scalar_type() == torch::kFloat64 &&
                  edge_gradient_in.device().is_cpu() && exact_in.device().is_cpu(),
              "reann::edge_forces: expected CPU edge gradients and float64 edge vectors [E = ",
              edges, ", 3], got ", edge_gradient_in.sizes(), " and ", exact_in.scalar_type(), " ",
              exact_in.sizes());
  const Tensor index = edge_index_in.contiguous(), exact = exact_in.contiguous();
  const Tensor gradient = edge_gradient_in.contiguous();
  Tensor forces = torch::zeros({num_atoms, 3}, exact.options());
  Tensor virial = torch::empty({3, 3}, exact.options());
  const int64_t *i = index.data_ptr<int64_t>(), *j = i + edges;
  const double *r = exact.data_ptr<double>();
  double *f = forces.data_ptr<double>(), *w = virial.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(gradient.scalar_type(), "reann::edge_forces", [&] {
    const scalar_t *g = gradient.data_ptr<scalar_t>();
    double rg[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t e = 0; e < edges; ++e) {
      check_edge(e, i[e], j[e], num_atoms, "reann::edge_forces");
      for (int64_t a = 0; a < 3; ++a) {
        const double ga = static_cast<double>(g[3 * e + a]);
        f[3 * i[e] + a] += ga;
        f[3 * j[e] + a] -= ga;
        for (int64_t b = 0; b < 3; ++b) rg[3 * b + a] += r[3 * e + b] * ga;
      }
    }
    for (int64_t a = 0; a < 3; ++a)
      for (int64_t b = 0; b < 3; ++b) w[3 * a + b] = -0.5 * (rg[3 * a + b] + rg[3 * b + a]);
  });
  return {forces, virial};
}

}    // namespace

TORCH_LIBRARY_FRAGMENT(reann, m)
{
  m.def("edge_vectors(Tensor pos, Tensor edge_index, Tensor shift, ScalarType dtype) -> "
        "(Tensor, Tensor)",
        &edge_vectors);
  m.def("edge_forces(Tensor edge_gradient, Tensor edge_index, Tensor exact, int num_atoms) -> "
        "(Tensor, Tensor)",
        &edge_forces);
}
