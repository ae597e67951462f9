/* A CPU allocator for torch that keeps large freed blocks for the next MD step.

   Every step the model allocates and frees the same large tensors (neighbour blocks, edge
   functions, their gradients), whose sizes change little from step to step. glibc either returns
   such blocks to the system and faults the pages in again next step (zeroed by the kernel, a
   large share of a step on big systems), or, told to keep everything on its heap, fragments it
   to several times the live size. This allocator keeps freed blocks of 1 MiB and more in free
   lists by size class (sizes rounded up by at most 1/8) and hands them out again, to requests up
   to a quarter smaller; a fresh block gets one class of headroom. So when the widest neighbour
   list gains or loses a slot or two, which resizes every [centres, slots, K] block, the freed
   blocks still serve instead of fresh pages. Blocks left unused for a whole step go back to the
   system at the end of the step. Smaller requests go to torch's default allocator.

   Part of the kernel library (libreann_ops.so): pair_reann installs it (`memory keep`), and so
   does Python through torch.ops.reann.block_cache_install (ReannCalculator(memory="keep")). */

#ifndef REANN_TENSOR_BLOCK_CACHE_H
#define REANN_TENSOR_BLOCK_CACHE_H

#include <c10/core/Allocator.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace reann {

class TensorBlockCache : public c10::Allocator {
 public:
  // the process-wide instance, installed as torch's CPU allocator on first use
  static TensorBlockCache &install();
  // whether install() has run in this process (it cannot be undone)
  static bool installed();

  c10::DataPtr allocate(size_t bytes) override;
  c10::DeleterFnPtr raw_deleter() const override { return &free_block; }
  void copy_data(void *dest, const void *src, std::size_t count) const override
  {
    default_copy_data(dest, src, count);
  }

  // call once per MD step, before the model: returns the blocks that the previous step did not use
  void next_step();
  // bytes held in free lists (for tests and diagnostics)
  size_t cached_bytes();

 private:
  struct FreeBlock {
    void *ptr;
    int64_t freed_in_step;
  };
  static void free_block(void *ptr);
  void release(void *ptr);

  std::mutex mutex;
  std::unordered_map<void *, size_t> size_of_block;      // every block handed out
  std::map<size_t, std::vector<FreeBlock>> free_blocks;   // by size class
  int64_t step = 0;
  static bool is_installed;
};

}    // namespace reann

#endif
