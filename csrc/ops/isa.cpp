/* Which kernel table (kernels.h) runs: the highest instruction-set level this CPU supports, or
   the lower one asked for by the environment variable REANN_NEQUIP_ISA (baseline, avx2, avx512),
   e.g. to compare levels or to rule a level out. Chosen at the first kernel call, so a bad value
   is an error there, with the reason.

   reann::kernel_isa() -> str               the level in use
   reann::supported_kernel_isas() -> str[]  the levels this CPU runs, lowest first
   reann::set_kernel_isa(str level)         use another supported level from now on (tests) */

#include "kernels.h"

#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

namespace reann {
namespace {

constexpr const char *ISA_VARIABLE = "REANN_NEQUIP_ISA";
const char *const ISA_NAMES[] = {"baseline", "avx2", "avx512"};

Isa highest_supported()
{
#if defined(__x86_64__)
  // the same feature sets as the -march levels the kernels are built for (setup.py)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return Isa::avx512;
  if (__builtin_cpu_supports("x86-64-v3")) return Isa::avx2;
#endif
  return Isa::baseline;
}

std::string levels_up_to(Isa highest)
{
  std::string names;
  for (int level = 0; level <= int(highest); ++level)
    names += (level ? ", " : "") + std::string(ISA_NAMES[level]);
  return names;
}

// the level named `name`, checked against what this CPU supports; `source` says who asked
Isa supported_level(const std::string &name, const std::string &source)
{
  const Isa highest = highest_supported();
  for (int level = 0; level <= int(Isa::avx512); ++level)
    if (name == ISA_NAMES[level]) {
      TORCH_CHECK(level <= int(highest), source, " asks for the ", name,
                  " kernels, but this CPU runs only ", levels_up_to(highest));
      return Isa(level);
    }
  TORCH_CHECK(false, source, " must be one of baseline, avx2, avx512; found `", name, "`");
}

const KernelTable &table_of(Isa isa)
{
  switch (isa) {
#if defined(__x86_64__)
  case Isa::avx512: return avx512::table();
  case Isa::avx2: return avx2::table();
#endif
  default: return baseline::table();
  }
}

std::atomic<const KernelTable *> active{nullptr};

const KernelTable &choose_table()
{
  const char *requested = std::getenv(ISA_VARIABLE);
  const Isa isa = requested && *requested
                      ? supported_level(requested, std::string(ISA_VARIABLE) + "=" + requested)
                      : highest_supported();
  return table_of(isa);
}

std::string kernel_isa() { return ISA_NAMES[int(active_kernels().isa)]; }

std::vector<std::string> supported_kernel_isas()
{
  std::vector<std::string> names;
  for (int level = 0; level <= int(highest_supported()); ++level)
    names.push_back(ISA_NAMES[level]);
  return names;
}

void set_kernel_isa(const std::string &name)
{
  active.store(&table_of(supported_level(name, "reann::set_kernel_isa")));
}

}  // namespace

const KernelTable &active_kernels()
{
  const KernelTable *table = active.load();
  if (table == nullptr) {
    table = &choose_table();
    active.store(table);
  }
  return *table;
}

template <> const KernelSet<float> &kernels<float>() { return active_kernels().f32; }
template <> const KernelSet<double> &kernels<double>() { return active_kernels().f64; }

}  // namespace reann

TORCH_LIBRARY_FRAGMENT(reann, m)
{
  m.def("kernel_isa() -> str", &reann::kernel_isa);
  m.def("supported_kernel_isas() -> str[]", &reann::supported_kernel_isas);
  m.def("set_kernel_isa(str level) -> ()", &reann::set_kernel_isa);
}
