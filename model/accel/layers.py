"""The fast network's layers, each built from the reference layer it replaces (BN folded in).

- `FusedConv`: conv + bias (+ residual) + ReLU in one cuDNN call on CUDA
  (`torch.cudnn_convolution_relu` / `cudnn_convolution_add_relu`); after BN folding PyTorch would
  otherwise add the bias, the residual and the ReLU as three more passes over each activation.
- `FusedDepthwise`: a separable conv's depthwise 3x3 (+ bias + ReLU) as one Triton pass
  (`model.accel.kernels.depthwise3x3_relu`); `FusedSeparable`: that, then the pointwise `FusedConv`.
- `StemMaxPool`: the stem's max pool without PyTorch's int64 indices (`model.accel.kernels.max_pool3x3s2`).
- `Fp8Conv`: a `FusedConv` with e4m3 weights and inputs (`model.accel.fp8`), taking and passing on
  e4m3 maps (`model.accel.backbone.Fp8Block`); `Fp8Conv3x3`: one taking fp16 maps, scaled per image
  (the ASPP's bottleneck). Both for `use_fp8`.
Channel padding: cuDNN's fp16 tensor-core convs take input channels in multiples of 8 and pad
any other count in a pass of their own (bench/RESULTS.md), so a layer may be built with
``in_channels`` rounded up (`round_up`): the extra channels get zero weights (and, depthwise, a
zero bias), and their producers write zeros there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from ..heads import ConvModule, DepthwiseSeparableConvModule
from .fp8 import conv_fp8, image_amax, quantize_padded, quantize_weight
from .kernels import depthwise3x3_relu, depthwise3x3_relu_and_mean, max_pool3x3s2

CHANNEL_MULTIPLE = 8


def round_up(channels: int) -> int:
    """``channels`` rounded up to a multiple of `CHANNEL_MULTIPLE`."""
    return -(-channels // CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE


def zero_pad(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``t`` with zeros appended along ``dim`` up to ``size``."""
    extra = size - t.shape[dim]
    if extra < 0:
        raise ValueError(f"cannot pad dimension {dim} of size {t.shape[dim]} down to {size}")
    return F.pad(t, [0, 0] * (t.dim() - 1 - dim) + [0, extra])


def expect_type(module: nn.Module, kind: type, role: str) -> None:
    if not isinstance(module, kind):
        raise TypeError(f"{role}: expected {kind.__name__}, got {type(module).__name__}")


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of the one conv that computes eval-mode ``bn(conv(x))``."""
    expect_type(conv, nn.Conv2d, "conv of a conv + BN pair")
    expect_type(bn, nn.BatchNorm2d, "BN of a conv + BN pair")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BN of {bn.num_features} channels after a conv of {conv.out_channels}")
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return weight, (bias - bn.running_mean) * scale + bn.bias


#: how many standard deviations from its mean a BN-normalised activation is taken to reach. FP8's
#: static scales (`Fp8Conv`) come from it: e4m3 keeps its 3 mantissa bits over a range of 2**15,
#: so a generous bound costs little precision, while a value past the bound saturates.
BOUND_SIGMAS = 16.0


def activation_bound(bn: nn.BatchNorm2d) -> torch.Tensor:
    """max |y| of eval-mode ``bn``'s output over its channels, within `BOUND_SIGMAS` of each channel's
    mean on the data it was trained on (BN makes that mean its bias and that deviation its |weight|):
    a float32 scalar on ``bn``'s device (no host sync; the meta device too)."""
    return (bn.bias.abs() + BOUND_SIGMAS * bn.weight.abs()).max().detach().float()


def geometry(conv: nn.Conv2d) -> dict:
    """The arguments of ``conv`` that `FusedConv` takes besides its weights."""
    return {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation, "groups": conv.groups}


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone(), requires_grad=False)


class FusedConv(nn.Module):
    """A conv with its bias, optional residual and optional ReLU applied in one call."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool,
        stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups: int = 1, out_bound: torch.Tensor | None = None,
    ):  # fmt: skip
        """``out_bound``: `activation_bound` of its BN, before any residual (what FP8 scales by)."""
        super().__init__()
        self.weight = _frozen(weight)
        self.register_parameter("bias", None if bias is None else _frozen(bias))
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.relu = relu
        self.out_bound = out_bound

    @classmethod
    def from_conv_bn(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool, in_channels: int | None = None) -> FusedConv:
        """``relu(bn(conv(x)))`` (or without ReLU), taking ``in_channels`` inputs (zero weights past conv's)."""
        weight, bias = fold_conv_bn(conv, bn)
        if in_channels is not None:
            weight = zero_pad(weight, 1, in_channels)
        return cls(weight, bias, relu, **geometry(conv), out_bound=activation_bound(bn))

    @classmethod
    def from_conv_module(cls, module: ConvModule, in_channels: int | None = None) -> FusedConv:
        expect_type(module, ConvModule, "conv + BN + ReLU")
        if module.conv.groups != 1:
            raise ValueError("a grouped ConvModule is a FusedDepthwise's, not a FusedConv's")
        return cls.from_conv_bn(module.conv, module.bn, relu=True, in_channels=in_channels)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> FusedConv:
        """A plain conv (no BN, no ReLU), e.g. the classifier: the same call as nn.Conv2d's."""
        expect_type(conv, nn.Conv2d, "plain conv")
        return cls(conv.weight, conv.bias, relu=False, **geometry(conv))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        args = (self.stride, self.padding, self.dilation, self.groups)
        if x.is_cuda and self.relu and x.dtype != torch.bfloat16:
            if residual is None:
                return torch.cudnn_convolution_relu(x, self.weight, self.bias, *args)
            return torch.cudnn_convolution_add_relu(x, self.weight, residual, 1.0, self.bias, *args)
        y = F.conv2d(x, self.weight, self.bias, *args)
        if residual is not None:
            y = y + residual
        return F.relu(y) if self.relu else y


class FusedDepthwise(nn.Module):
    """A BN-folded depthwise 3x3 conv + ReLU (the first half of a separable conv)."""

    def __init__(self, module: ConvModule, channels: int | None = None):
        """``channels``: more channels than the module's, with zero weights and bias."""
        super().__init__()
        expect_type(module, ConvModule, "depthwise conv + BN + ReLU")
        conv = module.conv
        if not (conv.groups == conv.in_channels == conv.out_channels and conv.kernel_size == (3, 3)
                and conv.stride == (1, 1) and conv.padding == conv.dilation):  # fmt: skip
            raise ValueError(f"not a depthwise 3x3 conv with padding = dilation: {conv}")
        weight, bias = fold_conv_bn(conv, module.bn)
        channels = channels or conv.in_channels
        self.weight = _frozen(zero_pad(weight, 0, channels))
        self.bias = _frozen(zero_pad(bias, 0, channels))
        self.dilation = conv.dilation[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise3x3_relu(x, self.weight, self.bias, self.dilation)

    def with_mean(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output, and x's mean per image and channel (N x C float32) from the same pass."""
        return depthwise3x3_relu_and_mean(x, self.weight, self.bias, self.dilation)


class FusedSeparable(nn.Module):
    """A `DepthwiseSeparableConvModule` as `FusedDepthwise` then a pointwise `FusedConv`."""

    def __init__(self, module: DepthwiseSeparableConvModule, in_channels: int | None = None):
        super().__init__()
        expect_type(module, DepthwiseSeparableConvModule, "separable conv")
        self.depthwise = FusedDepthwise(module.depthwise_conv, in_channels)
        self.pointwise = FusedConv.from_conv_module(module.pointwise_conv, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class StemMaxPool(nn.Module):
    """The backbone's `nn.MaxPool2d(3, 2, 1)`, as one Triton pass on CUDA."""

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        expect_type(pool, nn.MaxPool2d, "stem pool")
        layout = {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 1}
        if pool.ceil_mode or any(_pair(getattr(pool, k)) != _pair(v) for k, v in layout.items()):
            raise ValueError(f"the stem kernel is a 3x3 / stride 2 / padding 1 max pool, not {pool}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool3x3s2(x)


class Fp8Conv(nn.Module):
    """A BN-folded stride-1 conv + bias (+ residual) (+ ReLU), 3 x 3 with padding = dilation or 1 x 1,
    with e4m3 weights and inputs (`model.accel.fp8.conv_fp8`): takes its input as e4m3 and can pass
    its result on as e4m3, so a chain of them (`Fp8Block`) has no quantize pass between convs."""

    def __init__(self, conv: FusedConv):
        super().__init__()
        expect_type(conv, FusedConv, "FP8 conv's source")
        kernel = conv.weight.shape[2:]
        plain = conv.stride == (1, 1) and conv.groups == 1 and conv.dilation[0] == conv.dilation[1]
        square = kernel == (3, 3) and conv.padding == conv.dilation
        if not plain or not (square or (kernel == (1, 1) and conv.padding == (0, 0))):
            raise ValueError("the FP8 kernel computes stride-1 3x3 convs with padding = dilation and 1x1 convs")
        weight_q, weight_scale = quantize_weight(conv.weight.detach())
        # bytes, so that casting the module (.half()) leaves the e4m3 weights alone
        self.register_buffer("weight_bits", weight_q.view(torch.uint8))
        self.register_buffer("weight_scale", weight_scale)
        self.bias = _frozen(conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.weight.shape[0]))
        self.kernel_size, self.relu = kernel[0], conv.relu
        #: the padding its e4m3 input needs: a 3 x 3's dilation; a 1 x 1 reads the centre of any
        self.pad = conv.dilation[0] if self.kernel_size == 3 else None

    def run(
        self, q: torch.Tensor, amax: torch.Tensor, pad: int, residual: torch.Tensor | None = None,
        out_amax: torch.Tensor | None = None, out_pad: int = 0, fp16_out: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
        """`conv_fp8` of the e4m3 map ``q`` (padded by ``pad``, scaled by ``amax``)."""
        weight_q = self.weight_bits.view(torch.float8_e4m3fn)
        return conv_fp8(
            q, amax, weight_q, self.weight_scale.float(), self.bias, self.kernel_size, pad, residual, self.relu,
            out_amax, out_pad, fp16_out,
        )  # fmt: skip


class Fp8Conv3x3(Fp8Conv):
    """A 3 x 3 `Fp8Conv` taking fp16 maps, scaled per image (the ASPP's bottleneck: its input is four
    branches' outputs, quantized by one pass that is also their concat). Its input may be a list of
    maps: their channel concat, never written in fp16; its residual may be a map of at most 3 x 3,
    spread over the output (`conv_fp8`)."""

    def __init__(self, conv: FusedConv):
        if conv.weight.shape[2:] != (3, 3):
            raise ValueError("Fp8Conv3x3 takes 3x3 stride-1 convs with padding = dilation")
        super().__init__(conv)

    def forward(self, x: torch.Tensor | list[torch.Tensor], residual: torch.Tensor | None = None) -> torch.Tensor:
        maps = x if isinstance(x, list) else [x]
        amax = image_amax(maps)
        out, _ = self.run(quantize_padded(maps, amax, self.pad), amax, self.pad, residual)
        return out
