// Argument checks shared by the CPU and CUDA kernels of box_masks.
#pragma once
#include "kdops/common.h"

namespace kdops {

inline void check_box_masks_args(const at::Tensor& boxes, const at::Tensor& image_index, int64_t batch,
                                 int64_t height, int64_t width) {
  const char* op = "kdops.box_masks";
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op, ": boxes must have shape (K, 4), got ", boxes.sizes());
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()), op,
              ": boxes must be float16, bfloat16, float32 or float64, got ", boxes.scalar_type());
  TORCH_CHECK(image_index.dim() == 1 && image_index.size(0) == boxes.size(0), op,
              ": image_index must have shape (K,) = (", boxes.size(0), ",), got ", image_index.sizes());
  TORCH_CHECK(image_index.scalar_type() == at::kLong, op, ": image_index must be int64, got ",
              image_index.scalar_type());
  TORCH_CHECK(image_index.device() == boxes.device(), op, ": image_index must be on the boxes' device ",
              boxes.device(), ", got ", image_index.device());
  TORCH_CHECK(batch >= 0, op, ": batch must be >= 0, got ", batch);
  TORCH_CHECK(height >= 1 && width >= 1, op, ": height and width must be >= 1, got ", height, " and ", width);
}

}  // namespace kdops
