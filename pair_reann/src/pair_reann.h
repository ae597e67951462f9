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
     ghost coefficients to their owners (reverse comm). */

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

  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;

 protected:
  enum class GhostMode { AUTO, IMAGES, SHELL, EXCHANGE };

  void allocate();
  void load_model(const std::string &path);
  static std::string torch_library();
  static std::string interposed_dgemm();
  GhostMode resolved_mode() const;
  // fill the model inputs; returns the number of atoms whose energies count
  int build_graph(GhostMode mode);
  // exchange mode: atomic energies of the local nodes and forces on all nodes
  std::pair<torch::Tensor, torch::Tensor> compute_exchange(const std::vector<torch::jit::IValue> &);
  torch::Tensor coefficients_to_ghosts(const torch::Tensor &local_coefficients);
  void report_non_finite(const torch::Tensor &atomic_energy, const torch::Tensor &forces);
  torch::Tensor gradients_to_owners(const torch::Tensor &node_gradients);

  GhostMode ghost_mode;
  int num_threads;
  bool keep_memory;

  torch::jit::Module model;
  std::string model_path;
  std::vector<std::string> type_names;    // the model's elements
  double r_max;
  int num_recursions;
  int coefficient_size;    // K, values per atom in the exchange
  double interaction_range;    // (T + 1) r_max
  std::string model_units;

  std::vector<int> type_map;    // LAMMPS type -> model type, -1 for NULL

  // model inputs, reused between steps
  std::vector<int> atom_of_node;    // LAMMPS index of each model node
  std::vector<int> node_of_atom;    // model node of each LAMMPS atom (-1: not in the graph)
  std::vector<int> local_of_tag;    // images mode: local index of each atom ID
  std::vector<double> node_pos;
  std::vector<int64_t> node_type;
  std::vector<int64_t> edge_center, edge_neighbor;
  std::vector<double> edge_shift;
  int num_counted;                        // nodes whose energies count: the local ones
  std::vector<double> exchange_values;    // K values per LAMMPS atom, for forward/reverse comm
};

}    // namespace LAMMPS_NS

#endif
#endif
