// CPU kernel of the FGD box masks (docs/math.md §2). Boxes are bucketed by image (in their given order),
// then each task rasterises one map row: for every box of its image that crosses the row, it
// takes the max of the box value over the box's columns (max is order-free, so the result is
// exact and deterministic). Cost is proportional to the covered area, not pixels x boxes.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "parallel.h"
#include "kdops/math/box_masks.h"
#include "../ops/box_masks.h"

namespace kdops {
namespace {

template <typename acc>
struct Span {
  int64_t x0, y0, x1, y1;
  acc value;
};

template <typename scalar_t>
void box_masks_impl(const at::Tensor& boxes, const at::Tensor& image_index, int64_t batch, int64_t H, int64_t W,
                    at::Tensor& fg, at::Tensor& bg) {
  using acc = acc_t<scalar_t>;
  const int64_t K = boxes.size(0);
  const scalar_t* b = boxes.const_data_ptr<scalar_t>();
  const int64_t* idx = image_index.const_data_ptr<int64_t>();
  std::vector<std::vector<Span<acc>>> per_image(batch);
  for (int64_t k = 0; k < K; ++k) {
    const int64_t n = idx[k];
    Span<acc> s;
    int64_t span[4];
    if (n < 0 || n >= batch ||
        !boxes::box_span<acc>(static_cast<acc>(b[4 * k]), static_cast<acc>(b[4 * k + 1]),
                              static_cast<acc>(b[4 * k + 2]), static_cast<acc>(b[4 * k + 3]), H, W, span, &s.value))
      continue;
    s.x0 = span[0], s.y0 = span[1], s.x1 = span[2], s.y1 = span[3];
    per_image[n].push_back(s);
  }

  acc* f = fg.data_ptr<acc>();
  std::vector<int64_t> zeros_in_row(batch * H);
  cpu::parallel_chunks(batch * H, std::max<int64_t>(1, 4096 / W), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H, h = row % H;
      acc* out = f + row * W;
      std::fill(out, out + W, acc(0));
      for (const Span<acc>& s : per_image[n]) {
        if (h < s.y0 || h > s.y1) continue;
        for (int64_t w = s.x0; w <= s.x1; ++w) out[w] = std::max(out[w], s.value);
      }
      zeros_in_row[row] = std::count(out, out + W, acc(0));
    }
  });

  acc* g = bg.data_ptr<acc>();
  cpu::parallel_chunks(batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      int64_t zeros = 0;
      for (int64_t h = 0; h < H; ++h) zeros += zeros_in_row[n * H + h];
      const acc inv = zeros == 0 ? acc(0) : acc(1) / static_cast<acc>(zeros);
      const acc* fn = f + n * H * W;
      acc* gn = g + n * H * W;
#pragma omp simd
      for (int64_t j = 0; j < H * W; ++j) gn[j] = fn[j] == acc(0) ? inv : acc(0);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> box_masks_cpu(const at::Tensor& boxes_in, const at::Tensor& image_index_in,
                                                 int64_t batch, int64_t height, int64_t width) {
  check_box_masks_args(boxes_in, image_index_in, batch, height, width);
  const at::Tensor boxes = boxes_in.contiguous(), image_index = image_index_in.contiguous();
  const auto opts = boxes.options().dtype(acc_dtype(boxes.scalar_type()));
  at::Tensor fg = at::empty({batch, height, width}, opts), bg = at::empty({batch, height, width}, opts);
  if (batch == 0) return {fg, bg};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "kdops_box_masks_cpu", [&] {
    box_masks_impl<scalar_t>(boxes, image_index, batch, height, width, fg, bg);
  });
  return {fg, bg};
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CPU, m) { m.impl("box_masks", &box_masks_cpu); }

}  // namespace kdops
