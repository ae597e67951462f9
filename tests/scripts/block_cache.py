"""The block cache keeps a freed neighbour block for blocks a few slots wider or narrower and
returns what a whole step did not use. Run in a process of its own: the cache replaces torch's
CPU allocator for good."""

import torch

from reann_nequip.nn.kernels import load_kernels

load_kernels()
torch.ops.reann.block_cache_install()


def address_of_block(slots):
    """A float64 [centres, slots, Gaussians] neighbour block of 7-9 MiB, freed at once."""
    return torch.empty(2048, slots, 8, dtype=torch.float64).data_ptr()


first = address_of_block(62)
assert torch.ops.reann.block_cache_bytes() > 0, "the freed block was not kept"
for slots in (63, 65, 72, 58, 62):
    assert address_of_block(slots) == first, f"{slots} slots took a fresh block"
assert address_of_block(40) != first, "a much smaller block took the large one"
torch.ops.reann.block_cache_next_step()
torch.ops.reann.block_cache_next_step()
assert torch.ops.reann.block_cache_bytes() == 0, "blocks unused for a step were not returned"
