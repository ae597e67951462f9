/* pair_style reann: REANN models deployed by `nequip-deploy build` (reann_nequip).

   An atom's REANN energy depends on every atom within (T + 1) r_max, T the number of recursions.
   Three exact ways to hand LAMMPS' atoms to the model:
   - images (one MPI rank): the model sees the local atoms only; each ghost neighbour is replaced
     by its owner plus the Cartesian image shift, i.e. the periodic graph used in training;
   - shell (any number of ranks): the model sees local atoms and ghosts out to (T + 1) r_max + skin;
     only local energies are summed, and forces on ghosts go back to their owners (newton on);
   - exchange (any number of ranks): ghosts out to r_max + skin only; the recursion runs one step
     at a time and the orbital coefficients of owned atoms are sent to their ghost copies between
     steps (forward comm); the backward pass runs the steps in reverse and sends the gradients on
     ghost coefficients to their owners (reverse comm).

   Several model files in pair_coeff make a committee: one graph per step for all of them; the
   first model (or the mean) drives the dynamics, and on deviation steps every model runs and
   the spread of their forces, energies and virials is written in DeePMD's model_devi format and
   kept per atom for `fix pair ... reann devi_f 1`. */

#ifdef PAIR_CLASS
// registration for a LAMMPS built from source with this file in src/ (the plugin needs none)
// clang-format off
PairStyle(reann,PairREANN);
// clang-format on
#else

#ifndef LMP_PAIR_REANN_H
#define LMP_PAIR_REANN_H

#include "pair.h"

#include <torch/script.h>

#include <cstdio>
#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairREANN : public Pair {
 public:
  PairREANN(class LAMMPS *);
  ~PairREANN() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  void *extract(const char *, int &) override;
  void *extract_peratom(const char *, int &) override;

  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;

 protected:
  enum class GhostMode { AUTO, IMAGES, SHELL, EXCHANGE };

  // one deployed file and the metadata this pair style reads from it
  struct ModelFile {
    torch::jit::Module module;
    std::string path;
    std::vector<std::string> type_names;    // the model's elements
    double r_max;
    int num_recursions;
    int coefficient_size;    // K, values per atom in the exchange
    double interaction_range;    // (T + 1) r_max
    torch::jit::ExtraFilesMap metadata;    // as written by nequip-deploy build
  };
  // one model on the current graph, float64: energies [nodes], forces [nodes, 3], virial [3, 3]
  struct ModelOutputs {
    torch::Tensor atomic_energy, forces, virial;
  };

  void allocate();
  ModelFile load_model(const std::string &path);
  void check_committee() const;
  static std::string torch_library();
  static std::string interposed_dgemm();
  GhostMode resolved_mode() const;
  // fill the model inputs; returns the number of atoms whose energies count
  int build_graph(GhostMode mode);
  ModelOutputs evaluate(ModelFile &model, GhostMode mode);
  // exchange mode: atomic energies of the local nodes and forces on all nodes
  std::pair<torch::Tensor, torch::Tensor> compute_exchange(ModelFile &model,
                                                           const std::vector<torch::jit::IValue> &);
  torch::Tensor coefficients_to_ghosts(const torch::Tensor &local_coefficients);
  void report_non_finite(const ModelFile &model, const ModelOutputs &outputs);
  torch::Tensor gradients_to_owners(const torch::Tensor &node_gradients);
  void record_deviation(const std::vector<ModelOutputs> &outputs, GhostMode mode);
  void write_deviation(const double *sums, double min_force, double max_force);

  GhostMode ghost_mode;
  int num_threads;
  bool keep_memory;

  std::vector<ModelFile> models;    // the committee; models[0] alone when there is one file
  bool potential_mean;    // forces, energies and virial: committee mean instead of models[0]
  int deviation_every;    // `out_freq`: steps between lines of the deviation file (0: none)
  std::string deviation_path;    // `out_file`
  bool deviation_options_given;    // out_freq, out_file or potential in pair_style
  FILE *deviation_file;    // rank 0, opened at the first line
  bigint last_deviation_step;    // one line per step, also where runs meet
  int per_atom_requested;    // set by `fix pair ... devi_f 1` on its steps (extract devi_f_flag)
  double *atom_force_deviation;    // per local atom, from the last committee step
  int atom_force_deviation_size;

  std::vector<int> type_map;    // LAMMPS type -> model type, -1 for NULL

  // model inputs, reused between steps
  std::vector<int> atom_of_node;    // LAMMPS index of each model node
  std::vector<int> node_of_atom;    // model node of each LAMMPS atom (-1: not in the graph)
  std::vector<int> local_of_tag;    // images mode: local index of each atom ID
  std::vector<double> node_pos;
  std::vector<int64_t> node_type;
  std::vector<int64_t> edge_center, edge_neighbor, edge_index;
  std::vector<double> edge_shift;
  int num_counted;                        // nodes whose energies count: the local ones
  // per LAMMPS atom, exchange_width values for forward/reverse comm: K orbital coefficients,
  // or 3 force components per model for the deviation
  std::vector<double> exchange_values;
  int exchange_width;
};

}    // namespace LAMMPS_NS

#endif
#endif
