/* The kernel table of the instruction-set level being built (kernels.h). */

#include "isa_kernels.h"

namespace reann {
namespace REANN_ISA {

namespace {

template <typename T> KernelSet<T> kernel_set()
{
  KernelSet<T> set{};
  add_gram_kernels(set);
  add_radial_kernels(set);
  add_network_kernels(set);
  return set;
}

}  // namespace

const KernelTable &table()
{
  static const KernelTable kernels{Isa::REANN_ISA, kernel_set<float>(), kernel_set<double>()};
  return kernels;
}

}  // namespace REANN_ISA
}  // namespace reann
