"""The fast network is built from the reference layer by layer, leaves none of them behind, and
computes the same function (fp32 on CPU, up to float summation order)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from helpers import randomize
from torch import nn

from model import build_model, get_config
from model.accel.backbone import FastResNet, FusedBlock
from model.accel.fast import FastDeepLabV3Plus, optimize_for_inference
from model.accel.head import FastASPPHead
from model.accel.layers import Fp8Conv3x3, FusedConv, FusedDepthwise, FusedSeparable, StemMaxPool
from model.configs import DEFAULT_MODEL, list_configs
from model.heads import ConvModule, DepthwiseSeparableASPPHead, DepthwiseSeparableConvModule, FCNHead, ImagePool
from model.network import DeepLabV3Plus
from model.resnet import BasicBlock, Bottleneck, ResNet

REFERENCE_TYPES = (
    nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Dropout2d, ConvModule,
    DepthwiseSeparableConvModule, ImagePool, BasicBlock, Bottleneck, ResNet, DepthwiseSeparableASPPHead, FCNHead,
    DeepLabV3Plus,
)  # fmt: skip
FAST_TYPES = {
    FastDeepLabV3Plus, FastResNet, FastASPPHead, FusedBlock, FusedConv, FusedDepthwise, FusedSeparable, StemMaxPool,
    nn.Sequential, nn.ModuleList,
}  # fmt: skip


@functools.cache
def reference(name: str, seed: int = 4) -> DeepLabV3Plus:
    """Built once per module (building and randomizing R-101 costs seconds); tests leave it unchanged."""
    net = build_model(get_config(name), with_auxiliary=False).eval()
    net.load_state_dict(randomize(net.state_dict(), seed=seed))
    return net


@pytest.mark.parametrize("config", list_configs(), ids=lambda c: c.name)
def test_no_reference_layer_survives_in_any_config(config):
    """Every conv of every zoo config (and the CamVid default) is rebuilt as a fused layer: no
    reference layer type is left, every module is an optimized type, and the convs match one to
    one. Built on the meta device: the layer structure, not the weights, is under test."""
    with torch.device("meta"):
        net = build_model(config)  # with the auxiliary head, which the fast network drops
    fast = optimize_for_inference(net)
    leftovers = [name for name, m in fast.named_modules() if isinstance(m, REFERENCE_TYPES)]
    assert not leftovers
    assert {type(m) for m in fast.modules()} <= FAST_TYPES
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    aux_convs = sum(isinstance(m, nn.Conv2d) for m in net.auxiliary_head.modules())
    depthwise = sum(m.groups > 1 for m in convs)
    assert sum(isinstance(m, FusedDepthwise) for m in fast.modules()) == depthwise == 5  # ASPP: 3, decoder: 2
    assert sum(isinstance(m, FusedConv) for m in fast.modules()) == len(convs) - aux_convs - depthwise
    assert sum(isinstance(m, StemMaxPool) for m in fast.modules()) == 1
    assert fast.input_channels == 8 and fast.decode_head.concat_channels % 8 == 0


@pytest.mark.parametrize(("name", "sizes"), [
    ("deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024", [(97, 131), (20, 9), (4, 33)]),  # v1c stem, BasicBlock
    ("deeplabv3plus_r50b-d8_4xb2-80k_cityscapes-769x769", [(49, 67), (20, 9)]),  # "b" stem, Bottleneck
    ("deeplabv3plus_r101-d16-mg124_4xb2-40k_cityscapes-512x1024", [(49, 67), (4, 33)]),  # os16, multi-grid
    ("deeplabv3plus_r18b-d8_4xb2-80k_cityscapes-512x1024", [(64, 80)]),
    (DEFAULT_MODEL, [(72, 96)]),  # 12 classes: the decoder's concat, 128 + 12, padded to 144
])  # fmt: skip
@pytest.mark.parametrize("channels_last", [False, True])
def test_optimized_network_equals_original(name, sizes, channels_last):
    """Sizes (20, 9) and (4, 33) give C5 maps of 3x2 / 2x2 and 1x5 / 1x3: the image pool's
    3 x 3 map is cut there."""
    net = reference(name)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fast = optimize_for_inference(net)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # the reference is left as it was
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    for size in sizes:
        x = torch.randn(2, 3, *size)
        padded = F.pad(x, (0, 0, 0, 0, 0, 5))  # the image's 3 channels, then zeros
        if channels_last:
            padded = padded.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            ref, got = net(x), fast(padded)
        assert got.shape == ref.shape
        assert ((got - ref).norm() / ref.norm()).item() < 1e-5


def test_padding_channels_do_not_change_the_output():
    """The first conv's extra input channels have zero weights: whatever finite values they
    hold, the logits are the same. (R-18's decoder concat, 128 + 12 channels, is padded to 144.)"""
    fast = optimize_for_inference(reference("deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024", seed=2))
    assert fast.decode_head.concat_channels == 144
    x = torch.randn(1, 3, 40, 56)
    noise = torch.randn(1, 5, 40, 56) * 100
    with torch.no_grad():
        assert torch.equal(fast(F.pad(x, (0, 0, 0, 0, 0, 5))), fast(torch.cat([x, noise], 1)))


def test_the_fast_network_keeps_config_and_meta():
    net = build_model(get_config(DEFAULT_MODEL), with_auxiliary=False)
    net.meta = {"classes": ["a", "b"], "trained": {"iters": 3}}
    fast = optimize_for_inference(net)
    assert fast.config is net.config and fast.meta == net.meta and fast.meta is not net.meta
    assert not fast.training


def _random_bn(bn: nn.BatchNorm2d, g: torch.Generator) -> None:
    with torch.no_grad():
        bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)


def _randomized(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            _random_bn(m, g)
    return module.eval()


@pytest.mark.parametrize("layer", [
    lambda: ConvModule(6, 10, 3, dilation=2),
    lambda: ConvModule(6, 10, 1),
])  # fmt: skip
def test_fused_conv_equals_conv_bn_relu(layer):
    module = _randomized(layer())
    x = torch.randn(2, 6, 13, 17)
    with torch.no_grad():
        assert torch.allclose(FusedConv.from_conv_module(module)(x), module(x), rtol=1e-5, atol=1e-5)
        wide = FusedConv.from_conv_module(module, in_channels=8)
        assert torch.allclose(wide(F.pad(x, (0, 0, 0, 0, 0, 2))), module(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dilation", [1, 3])
def test_fused_separable_equals_the_separable_conv(dilation):
    module = _randomized(DepthwiseSeparableConvModule(7, 5, dilation))
    x = torch.randn(2, 7, 11, 9)
    with torch.no_grad():
        assert torch.allclose(FusedSeparable(module)(x), module(x), rtol=1e-5, atol=1e-5)
        wide = FusedSeparable(module, in_channels=8)
        assert wide.depthwise.weight.shape[0] == 8 and wide.pointwise.weight.shape[1] == 8
        assert torch.allclose(wide(F.pad(x, (0, 0, 0, 0, 0, 1))), module(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block", [
    lambda: BasicBlock(8, 8, 1, 1, None),
    lambda: BasicBlock(8, 16, 2, 2, nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))),
    lambda: Bottleneck(16, 4, 1, 2, None),
    lambda: Bottleneck(8, 4, 2, 1, nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))),
])  # fmt: skip
def test_fused_block_equals_the_residual_block(block):
    module = _randomized(block())
    fused = FusedBlock(module)
    assert len(fused.convs) == (3 if isinstance(module, Bottleneck) else 2)
    assert fused.downsample is None or fused.downsample.bias is None  # its bias joined the last conv's
    x = torch.randn(2, 8 if module.conv1.in_channels == 8 else 16, 15, 14)
    with torch.no_grad():
        assert torch.allclose(fused(x), module(x), rtol=1e-5, atol=1e-5)


def test_bad_layers_are_refused_with_a_clear_error():
    with pytest.raises(TypeError, match="BasicBlock or Bottleneck"):
        FusedBlock(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="depthwise 3x3"):
        FusedDepthwise(ConvModule(4, 4, 1, groups=4))
    with pytest.raises(ValueError, match="grouped"):
        FusedConv.from_conv_module(ConvModule(4, 4, 3, groups=4))
    with pytest.raises(TypeError, match="expected BatchNorm2d"):
        FusedConv.from_conv_bn(nn.Conv2d(3, 4, 1), nn.Identity(), relu=True)
    with pytest.raises(ValueError, match="max pool"):
        StemMaxPool(nn.MaxPool2d(2))
    with pytest.raises(ValueError, match="3x3 stride-1"):
        Fp8Conv3x3(FusedConv.from_conv_module(ConvModule(128, 8, 1)))
    with pytest.raises(TypeError, match="expected DepthwiseSeparableASPPHead"):
        FastASPPHead(ConvModule(3, 3, 1))
