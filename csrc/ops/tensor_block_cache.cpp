#include "tensor_block_cache.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

#include <cstdlib>
#include <new>

using reann::TensorBlockCache;

namespace {

constexpr size_t kCachedMin = size_t(1) << 20;
constexpr size_t kAlignment = 64;

// round up to one of 8 classes per power of two: at most 1/8 more than asked for
size_t size_class(size_t bytes)
{
  size_t power = kCachedMin;
  while (power * 2 <= bytes) power *= 2;
  const size_t step = power / 8;
  return (bytes + step - 1) / step * step;
}

// the largest free block a request of `size` (a size class) may take: a quarter more
size_t largest_fit(size_t size)
{
  return size + size / 4;
}

}    // namespace

bool TensorBlockCache::is_installed = false;

bool TensorBlockCache::installed()
{
  return is_installed;
}

TensorBlockCache &TensorBlockCache::install()
{
  // never destroyed: tensors it allocated may outlive every pair style
  static TensorBlockCache *cache = [] {
    auto *instance = new TensorBlockCache();
    c10::SetCPUAllocator(instance, /*priority=*/1);
    is_installed = true;
    return instance;
  }();
  return *cache;
}

c10::DataPtr TensorBlockCache::allocate(size_t bytes)
{
  if (bytes < kCachedMin) {
    void *small = c10::alloc_cpu(bytes);
    return {small, small, &free_block, c10::Device(c10::DeviceType::CPU)};
  }
  const size_t size = size_class(bytes);
  void *ptr = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (auto found = free_blocks.lower_bound(size);
         found != free_blocks.end() && found->first <= largest_fit(size); ++found)
      if (!found->second.empty()) {
        ptr = found->second.back().ptr;
        found->second.pop_back();
        break;
      }
  }
  if (ptr == nullptr) {
    // one class of headroom, so that the block still fits when the neighbour blocks grow by a
    // slot or two: fresh pages cost more than the memory (they are faulted in and zeroed)
    const size_t fresh = size_class(size + 1);
    if (posix_memalign(&ptr, kAlignment, fresh) != 0) throw std::bad_alloc();
    std::lock_guard<std::mutex> lock(mutex);
    size_of_block[ptr] = fresh;
  }
  return {ptr, ptr, &free_block, c10::Device(c10::DeviceType::CPU)};
}

void TensorBlockCache::free_block(void *ptr)
{
  install().release(ptr);
}

void TensorBlockCache::release(void *ptr)
{
  {
    std::lock_guard<std::mutex> lock(mutex);
    const auto found = size_of_block.find(ptr);
    if (found != size_of_block.end()) {
      free_blocks[found->second].push_back({ptr, step});
      return;
    }
  }
  c10::free_cpu(ptr);
}

void TensorBlockCache::next_step()
{
  std::lock_guard<std::mutex> lock(mutex);
  for (auto &entry : free_blocks) {
    std::vector<FreeBlock> kept;
    for (const FreeBlock &block : entry.second) {
      if (block.freed_in_step == step) {
        kept.push_back(block);
      } else {
        size_of_block.erase(block.ptr);
        std::free(block.ptr);
      }
    }
    entry.second.swap(kept);
  }
  step++;
}

size_t TensorBlockCache::cached_bytes()
{
  std::lock_guard<std::mutex> lock(mutex);
  size_t total = 0;
  for (const auto &entry : free_blocks) total += entry.first * entry.second.size();
  return total;
}

// The ops through which Python (ReannCalculator(memory="keep")) and pair_reann (`memory keep`)
// use the cache: pair_reann calls them through torch's op registry, so it needs no header of
// this library
namespace {

void block_cache_install() { TensorBlockCache::install(); }

bool block_cache_installed() { return TensorBlockCache::installed(); }

void block_cache_next_step()
{
  TORCH_CHECK(TensorBlockCache::installed(),
              "reann::block_cache_next_step: the block cache is not installed "
              "(reann::block_cache_install)");
  TensorBlockCache::install().next_step();
}

int64_t block_cache_bytes()
{
  return TensorBlockCache::installed()
             ? static_cast<int64_t>(TensorBlockCache::install().cached_bytes())
             : 0;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(reann, m)
{
  m.def("block_cache_install() -> ()", &block_cache_install);
  m.def("block_cache_installed() -> bool", &block_cache_installed);
  m.def("block_cache_next_step() -> ()", &block_cache_next_step);
  m.def("block_cache_bytes() -> int", &block_cache_bytes);
}
