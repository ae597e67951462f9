/* torch.ops.reann: the edges of a graph as dense per-centre neighbour blocks (CPU).

   reann::neighbor_slots(center, num_centers) -> (slot, max_neighbors)
   reann::to_blocks(values, slot, num_centers, max_neighbors, feature_major) -> blocks
   reann::from_blocks(blocks, slot, feature_major) -> values

   Centre i owns the row of J = max_neighbors slots i * J ... i * J + J - 1 and holds its edges
   there in input order; the slots past its last edge are padding. to_blocks places the per-edge
   values [E, F] in their slots, [N, J, F] or, feature_major, [N, F, J] (each feature a contiguous
   row over the neighbours, as reann::orbital_gram reads the neighbour vectors), zero in padding;
   from_blocks reads them back. The slots must be distinct, as neighbor_slots makes them. The two
   are each other's adjoint and backward pass, so they can be differentiated any number of times
   (force training).

   The same as reann_nequip.nn.embedded_density.neighbor_slots and to_neighbor_blocks compute with
   torch operations (bincount, a stable sort when the edges are not in centre order, zeros and
   index_copy_ forward, index_select backward), in one pass over the edges each. */

#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/script.h>

#include <algorithm>
#include <tuple>
#include <vector>

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// edges per task of the parallel loops
constexpr int64_t EDGE_GRAIN = 4096;

std::tuple<Tensor, int64_t> neighbor_slots(const Tensor &center_in, int64_t num_centers)
{
  TORCH_CHECK(center_in.dim() == 1 && center_in.scalar_type() == torch::kInt64 &&
                  center_in.device().is_cpu(),
              "reann::neighbor_slots: expected an int64 CPU tensor of edge centres [E], got ",
              center_in.scalar_type(), " ", center_in.sizes());
  TORCH_CHECK(num_centers >= 0, "reann::neighbor_slots: negative number of centres");
  const Tensor center = center_in.contiguous();
  const int64_t edges = center.size(0);
  const int64_t *c = center.data_ptr<int64_t>();
  std::vector<int64_t> count(num_centers, 0);
  for (int64_t e = 0; e < edges; ++e) {
    TORCH_CHECK(c[e] >= 0 && c[e] < num_centers, "reann::neighbor_slots: edge ", e,
                " has centre ", c[e], ", outside the ", num_centers, " centres");
    ++count[c[e]];
  }
  const int64_t max_neighbors =
      num_centers > 0 ? *std::max_element(count.begin(), count.end()) : int64_t(0);
  // count becomes each centre's next free slot
  for (int64_t i = 0; i < num_centers; ++i) count[i] = i * max_neighbors;
  Tensor slot = torch::empty({edges}, center.options());
  int64_t *s = slot.data_ptr<int64_t>();
  for (int64_t e = 0; e < edges; ++e) s[e] = count[c[e]]++;
  return {slot, max_neighbors};
}

void check_slots(const Tensor &slot, int64_t edges, const char *op)
{
  TORCH_CHECK(slot.dim() == 1 && slot.size(0) == edges && slot.scalar_type() == torch::kInt64,
              op, ": expected int64 slots [E = ", edges, "], got ", slot.scalar_type(), " ",
              slot.sizes());
}

// slot / J without a 64-bit integer division (tens of cycles per edge): a rounded quotient in
// double, exact for slots below 2^52, corrected by one
struct SlotRow {
  int64_t J;
  double inverse;
  explicit SlotRow(int64_t J) : J(J), inverse(J > 0 ? 1.0 / double(J) : 0.0) {}
  int64_t operator()(int64_t slot) const
  {
    int64_t row = static_cast<int64_t>(double(slot) * inverse);
    if (row * J > slot) --row;
    if ((row + 1) * J <= slot) ++row;
    return row;
  }
};

// Between the per-edge values [E, F] and their block entries blocks[slot_e, f] (row-major
// [N * J, F]) or blocks[i, f, j] for slot_e = i J + j (feature-major): into the blocks when
// ToBlocks (the padding keeps its zeros), else out of them. Each slot is checked against the
// N * J slots before it is used; `op` names the operation in the error
template <bool ToBlocks, typename T>
void copy_slots(T *values, T *blocks, const int64_t *slot, int64_t edges, int64_t features,
                int64_t num_centers, int64_t J, bool feature_major, const char *op)
{
  const int64_t num_slots = num_centers * J;
  const SlotRow row_of(J);
  const auto copy = [](T &entry, T &value) {
    if constexpr (ToBlocks)
      entry = value;
    else
      value = entry;
  };
  at::parallel_for(0, edges, EDGE_GRAIN, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      TORCH_CHECK(slot[e] >= 0 && slot[e] < num_slots, op, ": edge ", e, " has slot ", slot[e],
                  ", outside the ", num_slots, " slots of the blocks");
      T *v = values + e * features;
      if (feature_major) {
        const int64_t row = row_of(slot[e]);
        T *b = blocks + row * features * J + (slot[e] - row * J);
        for (int64_t f = 0; f < features; ++f) copy(b[f * J], v[f]);
      } else {
        T *b = blocks + slot[e] * features;
        for (int64_t f = 0; f < features; ++f) copy(b[f], v[f]);
      }
    }
  });
}

Tensor place_values(const Tensor &values_in, const Tensor &slot_in, int64_t num_centers,
                    int64_t max_neighbors, bool feature_major)
{
  TORCH_CHECK(values_in.dim() == 2 && values_in.device().is_cpu() && slot_in.device().is_cpu(),
              "reann::to_blocks: expected CPU values [E, F], got ", values_in.sizes());
  TORCH_CHECK(num_centers >= 0 && max_neighbors >= 0,
              "reann::to_blocks: negative block sizes");
  const Tensor values = values_in.contiguous(), slot = slot_in.contiguous();
  const int64_t edges = values.size(0), features = values.size(1);
  check_slots(slot, edges, "reann::to_blocks");
  const std::vector<int64_t> shape = feature_major
                                         ? std::vector<int64_t>{num_centers, features, max_neighbors}
                                         : std::vector<int64_t>{num_centers, max_neighbors, features};
  Tensor blocks = torch::zeros(shape, values.options());
  AT_DISPATCH_ALL_TYPES(values.scalar_type(), "reann::to_blocks", [&] {
    copy_slots<true>(values.data_ptr<scalar_t>(), blocks.data_ptr<scalar_t>(),
                     slot.data_ptr<int64_t>(), edges, features, num_centers, max_neighbors,
                     feature_major, "reann::to_blocks");
  });
  return blocks;
}

Tensor gather_values(const Tensor &blocks_in, const Tensor &slot_in, bool feature_major)
{
  TORCH_CHECK(blocks_in.dim() == 3 && blocks_in.device().is_cpu() && slot_in.device().is_cpu(),
              "reann::from_blocks: expected CPU blocks [N, J, F] or [N, F, J], got ",
              blocks_in.sizes());
  const Tensor blocks = blocks_in.contiguous(), slot = slot_in.contiguous();
  const int64_t J = blocks.size(feature_major ? 2 : 1);
  const int64_t features = blocks.size(feature_major ? 1 : 2);
  const int64_t edges = slot.dim() == 1 ? slot.size(0) : -1;
  check_slots(slot, edges, "reann::from_blocks");
  Tensor values = torch::empty({edges, features}, blocks.options());
  AT_DISPATCH_ALL_TYPES(blocks.scalar_type(), "reann::from_blocks", [&] {
    copy_slots<false>(values.data_ptr<scalar_t>(), blocks.data_ptr<scalar_t>(),
                      slot.data_ptr<int64_t>(), edges, features, blocks.size(0), J,
                      feature_major, "reann::from_blocks");
  });
  return values;
}

class FromBlocks;

class ToBlocks : public torch::autograd::Function<ToBlocks> {
 public:
  static Tensor forward(AutogradContext *ctx, Tensor values, Tensor slot, int64_t num_centers,
                        int64_t max_neighbors, bool feature_major)
  {
    ctx->save_for_backward({slot});
    ctx->saved_data["feature_major"] = feature_major;
    return place_values(values, slot, num_centers, max_neighbors, feature_major);
  }

  static variable_list backward(AutogradContext *ctx, variable_list grad_outputs);
};

class FromBlocks : public torch::autograd::Function<FromBlocks> {
 public:
  static Tensor forward(AutogradContext *ctx, Tensor blocks, Tensor slot, bool feature_major)
  {
    ctx->save_for_backward({slot});
    ctx->saved_data["feature_major"] = feature_major;
    ctx->saved_data["num_centers"] = blocks.size(0);
    ctx->saved_data["max_neighbors"] = blocks.size(feature_major ? 2 : 1);
    return gather_values(blocks, slot, feature_major);
  }

  static variable_list backward(AutogradContext *ctx, variable_list grad_outputs)
  {
    const Tensor slot = ctx->get_saved_variables()[0];
    return {ToBlocks::apply(grad_outputs[0], slot, ctx->saved_data["num_centers"].toInt(),
                            ctx->saved_data["max_neighbors"].toInt(),
                            ctx->saved_data["feature_major"].toBool()),
            Tensor(), Tensor()};
  }
};

variable_list ToBlocks::backward(AutogradContext *ctx, variable_list grad_outputs)
{
  const Tensor slot = ctx->get_saved_variables()[0];
  return {FromBlocks::apply(grad_outputs[0], slot, ctx->saved_data["feature_major"].toBool()),
          Tensor(), Tensor(), Tensor(), Tensor()};
}

Tensor to_blocks(const Tensor &values, const Tensor &slot, int64_t num_centers,
                 int64_t max_neighbors, bool feature_major)
{
  return ToBlocks::apply(values, slot, num_centers, max_neighbors, feature_major);
}

Tensor from_blocks(const Tensor &blocks, const Tensor &slot, bool feature_major)
{
  return FromBlocks::apply(blocks, slot, feature_major);
}

}    // namespace

TORCH_LIBRARY_FRAGMENT(reann, m)
{
  m.def("neighbor_slots(Tensor center, int num_centers) -> (Tensor, int)", &neighbor_slots);
  m.def("to_blocks(Tensor values, Tensor slot, int num_centers, int max_neighbors, "
        "bool feature_major) -> Tensor",
        &to_blocks);
  m.def("from_blocks(Tensor blocks, Tensor slot, bool feature_major) -> Tensor", &from_blocks);
}
