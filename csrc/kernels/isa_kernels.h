/* Included by the kernel sources (kernels/*.cpp) only: the namespace of the instruction-set level
   being built, and the functions that put each source's kernels into that level's table. */

#pragma once

#include "kernels.h"

// the level being built: baseline, avx2 or avx512, set by setup.py
#ifndef REANN_ISA
#error "kernels/*.cpp are compiled with -DREANN_ISA=<baseline|avx2|avx512> (see setup.py)"
#endif

namespace reann {
namespace REANN_ISA {

// set.<kernel> = this level's <kernel>, for the kernels of gram.cpp, radial.cpp, networks.cpp
template <typename T> void add_gram_kernels(KernelSet<T> &set);
template <typename T> void add_radial_kernels(KernelSet<T> &set);
template <typename T> void add_network_kernels(KernelSet<T> &set);

}  // namespace REANN_ISA
}  // namespace reann

// explicit instantiations of a function template for the two floating-point types
#define REANN_INSTANTIATE_FOR_FLOATS(function)                                                   \
  template void function<float>(KernelSet<float> &);                                             \
  template void function<double>(KernelSet<double> &);
