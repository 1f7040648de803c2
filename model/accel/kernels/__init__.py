"""Triton kernels of the inference path; without Triton or a CUDA tensor each falls back to PyTorch
(under Triton's interpreter, ``TRITON_INTERPRET=1``, CPU tensors take the kernels too, slowly).

Each saves a pass over a large tensor that PyTorch would make (timings: bench/RESULTS.md):
- `upsample_argmax`: bilinear upsample + argmax in one pass. Serving needs only the label of each
  full-resolution pixel; `F.interpolate(...).argmax(1)` writes and re-reads C x H x W logits, the
  kernel reads 1/4-resolution logits and writes 1 byte per pixel.
- `depthwise3x3_relu`: the separable convs' depthwise 3x3 (+ bias + ReLU), any dilation (cuDNN
  runs dilated depthwise convs with a slow grouped-direct kernel).
- `resize_concat`: the decoder's bilinear resize written straight into its concat buffer.
- `concat_channels`: `torch.cat` along channels of channels-last maps at memory speed.
- `spread_borders`: a 3x3 map spread over the border/interior regions of a full-size map.
- `max_pool3x3s2`: the stem's 3x3 / stride 2 / padding 1 max pool without the int64 indices
  PyTorch's CUDA max pool writes even in inference (4x the bytes of the pooled output).
- `normalize_pixels`: uint8 RGB -> normalised network input, zero-padded to more channels, in
  one pass (PyTorch: four passes over float32, then cuDNN's own pass padding 3 channels to 8).
Each `*_reference` is the PyTorch path; `tests/test_kernels.py` checks both paths against
independent plain-PyTorch computations, the kernels on a GPU or, in CI, under Triton's interpreter
(`tests/test_kernels_interpreted.py`).
"""

from .borders import spread_borders, spread_borders_reference
from .common import triton
from .depthwise import (
    DEPTHWISE_TILING, DILATED_BLOCKS, MAX_ROWS, depthwise3x3_reference, depthwise3x3_relu, depthwise3x3_relu_and_mean,
    depthwise_tiling,
)  # fmt: skip
from .resize import RESIZE_TILING, concat_channels, resize_concat, upsample_argmax, upsample_argmax_reference
from .stem import max_pool3x3s2, max_pool3x3s2_reference, normalize_pixels, normalize_pixels_reference

if triton is not None:  # a Triton helper, for kernels elsewhere (model.accel.fp8)
    from .borders import border_class  # noqa: F401

__all__ = [
    "DEPTHWISE_TILING", "DILATED_BLOCKS", "MAX_ROWS", "RESIZE_TILING", "concat_channels",
    "depthwise3x3_reference", "depthwise3x3_relu", "depthwise3x3_relu_and_mean", "depthwise_tiling",
    "max_pool3x3s2", "max_pool3x3s2_reference", "normalize_pixels", "normalize_pixels_reference",
    "resize_concat", "spread_borders", "spread_borders_reference", "triton", "upsample_argmax",
    "upsample_argmax_reference",
]  # fmt: skip
