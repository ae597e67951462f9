/* pair_style reann: REANN models deployed by `nequip-deploy build` (reann_nequip).

   An atom's REANN energy depends on every atom within (T + 1) r_max, T the number of recursions.
   Two exact ways to hand LAMMPS' atoms to the model:
   - images (one MPI rank): the model sees the local atoms only; each ghost neighbour is replaced
     by its owner plus the Cartesian image shift, i.e. the periodic graph used in training;
   - shell (any number of ranks): the model sees local atoms and ghosts out to (T + 1) r_max + skin;
     only local energies are summed, and forces on ghosts go back to their owners (newton on). */

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

 protected:
  enum class GhostMode { AUTO, IMAGES, SHELL };

  void allocate();
  void load_model(const std::string &path);
  bool use_shell() const;
  // fill the model inputs; returns the number of atoms whose energies count
  int build_graph(bool shell);

  GhostMode ghost_mode;
  int num_threads;

  torch::jit::Module model;
  std::string model_path;
  std::vector<std::string> type_names;    // the model's elements
  double r_max;
  int num_recursions;
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
};

}    // namespace LAMMPS_NS

#endif
#endif
