/* Registers pair_style reann with LAMMPS when the plugin is loaded. */

#include "lammps.h"
#include "lammpsplugin.h"
#include "pair_reann.h"

using namespace LAMMPS_NS;

static Pair *reann_creator(LAMMPS *lmp)
{
  return new PairREANN(lmp);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  // stamping the host's version avoids LAMMPS' version-mismatch warning; the plugin only uses
  // the stable Pair/Neighbor/Comm API
  plugin.version = static_cast<LAMMPS *>(lmp)->version;
  plugin.style = "pair";
  plugin.name = "reann";
  plugin.info = "REANN potentials trained with reann_nequip (deployed by nequip-deploy)";
  plugin.author = "reann_nequip developers";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &reann_creator;
  plugin.handle = handle;
  (*(lammpsplugin_regfunc) regfunc)(&plugin, lmp);
}
