// Schema of the FGD box masks (docs/math.md §2). Kernels: cpu/box_masks.cpp, cuda/box_masks.cu.
// boxes (K, 4) (x1, y1, x2, y2) in feature-map pixels; image_index (K,) int64 says which of the
// `batch` images each box belongs to. Boxes that are not finite, have x2 < x1 or y2 < y1, or name
// an image outside [0, batch) are skipped (the Python wrapper can reject them first). No gradient.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(kdops, m) {
  m.def("box_masks(Tensor boxes, Tensor image_index, int batch, int height, int width) -> (Tensor fg, Tensor bg)");
}
