/* torch.ops.reann.neighbor_list: every ordered pair of atoms closer than a cutoff, periodic images
   included, by a cell list (CPU, float64). The ASE calculator's neighbour list.

   reann::neighbor_list(pos, cell, pbc, cutoff) -> (edge_index, shift, length)
       pos [N, 3] Å, cell [3, 3] Å (cell vectors as rows; rows of non-periodic directions are not
       read), pbc bool [3], cutoff Å  ->  edge_index [2, E] int64 (centre i, neighbour j), the
       Cartesian image shifts [E, 3] float64 Å, r_ij = pos[j] - pos[i] + shift, and the lengths
       |r_ij| [E] Å. Edges are ordered by centre; an atom is its own neighbour only through a
       periodic image.

   The atoms are binned in the fractional coordinates of a basis H whose periodic rows are the
   cell vectors and whose other rows are orthonormal and orthogonal to them (so that they measure
   Cartesian distance). Bins are at least half a cutoff wide (at most ~2 N + 27 of them), and each
   atom's search reaches as many bins, and periodic images, as the cutoff spans. The edges go
   straight into tensors from torch's allocator, so pair_reann's block cache (`memory keep`)
   recycles them between calls. */

#include <torch/library.h>
#include <torch/script.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>
#include <vector>

namespace {

using torch::Tensor;
using Vec3 = std::array<double, 3>;

Vec3 cross(const Vec3 &a, const Vec3 &b)
{
  return {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
}

double dot(const Vec3 &a, const Vec3 &b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

double norm(const Vec3 &a) { return std::sqrt(dot(a, a)); }

Vec3 scaled(const Vec3 &a, double s) { return {a[0] * s, a[1] * s, a[2] * s}; }

// prints as [x, y, z] in error messages
c10::ArrayRef<double> printable(const Vec3 &a) { return {a.data(), 3}; }

// the binning basis: periodic rows from the cell, the others an orthonormal complement
std::array<Vec3, 3> binning_basis(const std::array<Vec3, 3> &cell, const std::array<bool, 3> &pbc)
{
  std::vector<int> periodic, open;
  for (int k = 0; k < 3; ++k) (pbc[k] ? periodic : open).push_back(k);
  std::array<Vec3, 3> basis{Vec3{1, 0, 0}, Vec3{0, 1, 0}, Vec3{0, 0, 1}};
  for (int k : periodic) basis[k] = cell[k];
  const auto singular = [&]() {
    TORCH_CHECK(false, "reann::neighbor_list: the cell is singular, the vectors of its periodic ",
                "directions linearly dependent (cell ", printable(cell[0]), " ",
                printable(cell[1]), " ", printable(cell[2]), ")");
  };
  if (periodic.size() == 1) {
    const Vec3 &a = cell[periodic[0]];
    if (!(norm(a) > 0)) singular();
    const Vec3 unit_a = scaled(a, 1.0 / norm(a));
    // the axis least aligned with a, made orthogonal to it
    int m = 0;
    for (int d = 1; d < 3; ++d)
      if (std::abs(unit_a[d]) < std::abs(unit_a[m])) m = d;
    Vec3 u{0, 0, 0};
    u[m] = 1;
    const double along = dot(u, unit_a);
    for (int d = 0; d < 3; ++d) u[d] -= along * unit_a[d];
    u = scaled(u, 1.0 / norm(u));
    basis[open[0]] = u;
    basis[open[1]] = cross(unit_a, u);
  } else if (periodic.size() == 2) {
    const Vec3 normal = cross(cell[periodic[0]], cell[periodic[1]]);
    if (!(norm(normal) > 0)) singular();
    basis[open[0]] = scaled(normal, 1.0 / norm(normal));
  } else if (periodic.size() == 3) {
    if (!(std::abs(dot(cell[0], cross(cell[1], cell[2]))) > 0)) singular();
  }
  return basis;
}

// The edges as they are found: centre and neighbour, Cartesian image shift (Å) and length (Å),
// written into tensors whose capacity doubles when it runs out
class EdgeBuffers {
 public:
  EdgeBuffers(const torch::TensorOptions &options, int64_t capacity) : options(options)
  {
    reallocate(std::max<int64_t>(capacity, 16));
  }

  void add(int64_t center, int64_t neighbor, const Vec3 &shift, double length)
  {
    if (count == capacity) reallocate(2 * capacity);
    center_data[count] = center;
    neighbor_data[count] = neighbor;
    for (int d = 0; d < 3; ++d) shift_data[3 * count + d] = shift[d];
    length_data[count] = length;
    ++count;
  }

  // edge_index [2, E], shift [E, 3], length [E]
  std::tuple<Tensor, Tensor, Tensor> finished() const
  {
    return {torch::stack({centers.narrow(0, 0, count), neighbors.narrow(0, 0, count)}),
            shifts.narrow(0, 0, count), lengths.narrow(0, 0, count)};
  }

 private:
  void reallocate(int64_t new_capacity)
  {
    const torch::TensorOptions indices = options.dtype(torch::kInt64);
    Tensor c = torch::empty({new_capacity}, indices), n = torch::empty({new_capacity}, indices);
    Tensor s = torch::empty({new_capacity, 3}, options), l = torch::empty({new_capacity}, options);
    if (count > 0) {
      c.narrow(0, 0, count).copy_(centers.narrow(0, 0, count));
      n.narrow(0, 0, count).copy_(neighbors.narrow(0, 0, count));
      s.narrow(0, 0, count).copy_(shifts.narrow(0, 0, count));
      l.narrow(0, 0, count).copy_(lengths.narrow(0, 0, count));
    }
    centers = c;
    neighbors = n;
    shifts = s;
    lengths = l;
    center_data = c.data_ptr<int64_t>();
    neighbor_data = n.data_ptr<int64_t>();
    shift_data = s.data_ptr<double>();
    length_data = l.data_ptr<double>();
    capacity = new_capacity;
  }

  torch::TensorOptions options;
  Tensor centers, neighbors, shifts, lengths;
  int64_t *center_data = nullptr, *neighbor_data = nullptr;
  double *shift_data = nullptr, *length_data = nullptr;
  int64_t count = 0, capacity = 0;
};

// A first guess at the number of edges: the atoms' mean density in the region they occupy (the
// whole cell along periodic directions, their extent, at least one cutoff, along open ones) times
// the cutoff sphere, with a quarter to spare; at most N + 64 per atom
int64_t initial_edge_capacity(int64_t N, double cutoff, const std::array<bool, 3> &pbc,
                              double volume, const Vec3 &low, const Vec3 &high)
{
  double region = std::abs(volume);
  for (int k = 0; k < 3; ++k)
    if (!pbc[k]) region *= std::max(high[k] - low[k], cutoff);
  const double sphere = 4.0 / 3.0 * M_PI * cutoff * cutoff * cutoff;
  const double per_atom = std::min(1.25 * N / region * sphere, static_cast<double>(N) + 64);
  return static_cast<int64_t>(std::ceil(N * per_atom));
}

std::tuple<Tensor, Tensor, Tensor> neighbor_list(const Tensor &pos_in, const Tensor &cell_in,
                                                 const Tensor &pbc_in, double cutoff)
{
  TORCH_CHECK(pos_in.dim() == 2 && pos_in.size(1) == 3 &&
                  pos_in.scalar_type() == torch::kFloat64 && pos_in.device().is_cpu(),
              "reann::neighbor_list: expected float64 CPU positions [N, 3], got ",
              pos_in.scalar_type(), " ", pos_in.sizes());
  TORCH_CHECK(cell_in.sizes() == torch::IntArrayRef({3, 3}) &&
                  cell_in.scalar_type() == torch::kFloat64 && cell_in.device().is_cpu(),
              "reann::neighbor_list: expected a float64 CPU cell [3, 3], got ",
              cell_in.scalar_type(), " ", cell_in.sizes());
  TORCH_CHECK(pbc_in.sizes() == torch::IntArrayRef({3}) &&
                  pbc_in.scalar_type() == torch::kBool && pbc_in.device().is_cpu(),
              "reann::neighbor_list: expected bool pbc [3], got ", pbc_in.scalar_type(), " ",
              pbc_in.sizes());
  TORCH_CHECK(std::isfinite(cutoff) && cutoff > 0,
              "reann::neighbor_list: the cutoff must be a positive number of Å, got ", cutoff);
  const Tensor pos_t = pos_in.contiguous(), cell_t = cell_in.contiguous();
  const double *pos = pos_t.data_ptr<double>(), *cell_data = cell_t.data_ptr<double>();
  const int64_t N = pos_t.size(0);
  std::array<bool, 3> pbc;
  std::array<Vec3, 3> cell;
  for (int k = 0; k < 3; ++k) {
    pbc[k] = pbc_in[k].item<bool>();
    for (int d = 0; d < 3; ++d) {
      cell[k][d] = cell_data[3 * k + d];
      TORCH_CHECK(!pbc[k] || std::isfinite(cell[k][d]),
                  "reann::neighbor_list: cell vector ", k, " of a periodic direction is not finite");
    }
  }
  for (int64_t i = 0; i < N; ++i)
    TORCH_CHECK(std::isfinite(pos[3 * i]) && std::isfinite(pos[3 * i + 1]) &&
                    std::isfinite(pos[3 * i + 2]),
                "reann::neighbor_list: atom ", i, " has a non-finite position (",
                pos[3 * i], ", ", pos[3 * i + 1], ", ", pos[3 * i + 2], ")");

  // === fractional coordinates s = x H^-1; periodic ones wrapped into [0, 1) ===
  const std::array<Vec3, 3> basis = binning_basis(cell, pbc);
  const Vec3 c01 = cross(basis[1], basis[2]), c12 = cross(basis[2], basis[0]),
             c20 = cross(basis[0], basis[1]);
  const double volume = dot(basis[0], c01);
  // columns of H^-1 are the reciprocal vectors; 1 / |column k| is the spacing of the planes s_k
  const std::array<Vec3, 3> reciprocal{scaled(c01, 1 / volume), scaled(c12, 1 / volume),
                                       scaled(c20, 1 / volume)};
  std::vector<double> frac(3 * N), wrapped(3 * N);
  std::vector<int64_t> wraps(3 * N, 0);
  Vec3 low{0, 0, 0}, high{0, 0, 0};
  for (int64_t i = 0; i < N; ++i) {
    const Vec3 x{pos[3 * i], pos[3 * i + 1], pos[3 * i + 2]};
    Vec3 w = x;
    for (int k = 0; k < 3; ++k) {
      double s = dot(x, reciprocal[k]);
      if (pbc[k]) {
        // image counts are int64: an atom 2^52 cells away has lost its position to round-off
        TORCH_CHECK(std::abs(s) < 4.5e15, "reann::neighbor_list: atom ", i, " lies ", s,
                    " cell vectors ", k, " away from the cell");
        const double whole = std::floor(s);
        wraps[3 * i + k] = static_cast<int64_t>(whole);
        s -= whole;
        for (int d = 0; d < 3; ++d) w[d] -= whole * basis[k][d];
      }
      frac[3 * i + k] = s;
      if (i == 0 || s < low[k]) low[k] = s;
      if (i == 0 || s > high[k]) high[k] = s;
    }
    for (int d = 0; d < 3; ++d) wrapped[3 * i + d] = w[d];
  }

  // === bins: at least half a cutoff wide, at most ~2 N + 27 of them ===
  std::array<int64_t, 3> bins, reach;
  std::array<double, 3> origin, width, spacing;
  for (int k = 0; k < 3; ++k) {
    spacing[k] = 1 / norm(reciprocal[k]);
    origin[k] = pbc[k] ? 0.0 : low[k];
    const double extent = pbc[k] ? spacing[k] : (high[k] - low[k]) * spacing[k];
    const double most = static_cast<double>(2 * N + 27);
    bins[k] = static_cast<int64_t>(std::max(1.0, std::min(most, std::floor(2 * extent / cutoff))));
  }
  while (bins[0] * bins[1] * bins[2] > 2 * N + 27) {
    int widest = 0;
    for (int k = 1; k < 3; ++k)
      if (bins[k] > bins[widest]) widest = k;
    bins[widest] = (bins[widest] + 1) / 2;
  }
  for (int k = 0; k < 3; ++k) {
    // an open axis's atoms may span less than a bin: its bins are still half a cutoff wide
    width[k] = pbc[k] ? 1.0 / bins[k] : std::max((high[k] - low[k]) / bins[k], cutoff / 2);
    const double images = std::ceil(cutoff / (width[k] * spacing[k]));
    TORCH_CHECK(images <= 100, "reann::neighbor_list: the cell is ", spacing[k],
                " Å thick along its vector ", k, ", so a ", cutoff,
                " Å cutoff would reach more than 100 of its images");
    reach[k] = static_cast<int64_t>(images);
  }
  const int64_t num_bins = bins[0] * bins[1] * bins[2];

  // === counting sort of the atoms by bin ===
  std::vector<int64_t> bin_of(N), bin_start(num_bins + 1, 0), members(N);
  std::vector<std::array<int64_t, 3>> bin_index(N);
  for (int64_t i = 0; i < N; ++i) {
    for (int k = 0; k < 3; ++k) {
      const double b = std::floor((frac[3 * i + k] - origin[k]) / width[k]);
      bin_index[i][k] = std::min<int64_t>(bins[k] - 1, std::max<int64_t>(0, static_cast<int64_t>(b)));
    }
    bin_of[i] = (bin_index[i][0] * bins[1] + bin_index[i][1]) * bins[2] + bin_index[i][2];
    ++bin_start[bin_of[i] + 1];
  }
  for (int64_t b = 0; b < num_bins; ++b) bin_start[b + 1] += bin_start[b];
  {
    std::vector<int64_t> fill(bin_start.begin(), bin_start.end() - 1);
    for (int64_t i = 0; i < N; ++i) members[fill[bin_of[i]]++] = i;
  }

  // === pairs: every atom against the atoms of the bins (and images) within reach ===
  // the atoms' coordinates in bin order: the bins bz - reach .. bz + reach of one (x, y) row are
  // one range of atoms (or two or more where a periodic image begins)
  std::vector<double> xs(N), ys(N), zs(N), distance2(N);
  std::vector<int64_t> within(N);
  for (int64_t m = 0; m < N; ++m) {
    xs[m] = wrapped[3 * members[m]];
    ys[m] = wrapped[3 * members[m] + 1];
    zs[m] = wrapped[3 * members[m] + 2];
  }
  // the edges, in buffers sized from the atoms' density and doubled when that falls short
  EdgeBuffers out(pos_t.options(),
                  initial_edge_capacity(N, cutoff, pbc, volume, low, high));
  // the Cartesian shift of one image of each periodic cell vector (non-periodic rows: 0)
  std::array<Vec3, 3> periodic_cell{};
  for (int k = 0; k < 3; ++k)
    if (pbc[k]) periodic_cell[k] = cell[k];
  const double cutoff2 = cutoff * cutoff;
  // the bin and periodic image of bin position b along axis k (false: outside an open axis)
  const auto place = [&](int k, int64_t b, int64_t &bin, int64_t &image) {
    if (pbc[k]) {
      image = b >= 0 ? b / bins[k] : -((-b + bins[k] - 1) / bins[k]);
      bin = b - image * bins[k];
      return true;
    }
    image = 0;
    bin = b;
    return b >= 0 && b < bins[k];
  };
  for (int64_t i = 0; i < N; ++i) {
    const double *xi = wrapped.data() + 3 * i;
    std::array<int64_t, 3> image, bin;
    for (int64_t bx = bin_index[i][0] - reach[0]; bx <= bin_index[i][0] + reach[0]; ++bx) {
      if (!place(0, bx, bin[0], image[0])) continue;
      for (int64_t by = bin_index[i][1] - reach[1]; by <= bin_index[i][1] + reach[1]; ++by) {
        if (!place(1, by, bin[1], image[1])) continue;
        const int64_t row = (bin[0] * bins[1] + bin[1]) * bins[2];
        const int64_t last = bin_index[i][2] + reach[2];
        for (int64_t bz = bin_index[i][2] - reach[2]; bz <= last;) {
          // the run of bins from position bz on within one image: bins bin[2] .. last_bin
          int64_t last_bin;
          if (pbc[2]) {
            place(2, bz, bin[2], image[2]);
            last_bin = std::min(bins[2] - 1, bin[2] + last - bz);
          } else {
            image[2] = 0;
            bin[2] = std::max<int64_t>(bz, 0);
            last_bin = std::min(last, bins[2] - 1);
            if (bin[2] > last_bin) break;
          }
          const int64_t begin = bin_start[row + bin[2]], end = bin_start[row + last_bin + 1];
          // the position after the run (open axes: bin = position)
          bz = (pbc[2] ? bz : bin[2]) + last_bin - bin[2] + 1;
          double t[3] = {0, 0, 0};
          for (int k = 0; k < 3; ++k)
            for (int d = 0; d < 3; ++d) t[d] += image[k] * basis[k][d];
          const double ox = t[0] - xi[0], oy = t[1] - xi[1], oz = t[2] - xi[2];
#pragma omp simd
          for (int64_t m = begin; m < end; ++m) {
            const double rx = xs[m] + ox, ry = ys[m] + oy, rz = zs[m] + oz;
            distance2[m] = rx * rx + ry * ry + rz * rz;
          }
          // the atoms within the cutoff, gathered without a branch per atom
          int64_t count = 0;
          for (int64_t m = begin; m < end; ++m) {
            within[count] = m;
            count += distance2[m] < cutoff2;
          }
          const bool home = image[0] == 0 && image[1] == 0 && image[2] == 0;
          for (int64_t w = 0; w < count; ++w) {
            const int64_t m = within[w], j = members[m];
            if (home && j == i) continue;
            // x_j + image H - x_i in terms of the unwrapped positions
            Vec3 shift{0, 0, 0};
            for (int k = 0; k < 3; ++k) {
              const int64_t whole = image[k] + wraps[3 * i + k] - wraps[3 * j + k];
              for (int d = 0; d < 3; ++d)
                shift[d] += static_cast<double>(whole) * periodic_cell[k][d];
            }
            out.add(i, j, shift, std::sqrt(distance2[m]));
          }
        }
      }
    }
  }

  return out.finished();
}

}    // namespace

TORCH_LIBRARY_FRAGMENT(reann, m)
{
  m.def("neighbor_list(Tensor pos, Tensor cell, Tensor pbc, float cutoff) -> "
        "(Tensor, Tensor, Tensor)",
        &neighbor_list);
}
