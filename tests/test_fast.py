"""The inference rewrites compute the same function as the original network."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import randomize

from model import build_model, get_config
from model.accel.fast import FusedDepthwise, fold_batchnorm, optimize_for_inference


@pytest.mark.parametrize("name", [
    "deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024",
    "deeplabv3plus_r50b-d8_4xb2-80k_cityscapes-769x769",
    "deeplabv3plus_r101-d16-mg124_4xb2-40k_cityscapes-512x1024",
])  # fmt: skip
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [(97, 131), (20, 9), (4, 33)])  # the last two: C5 maps of 3x2 / 2x2 and 1x5 / 1x3
def test_optimized_network_equals_original(name, channels_last, size):
    net = build_model(get_config(name)).eval()
    net.load_state_dict(randomize(net.state_dict(), seed=4))
    fast = optimize_for_inference(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert sum(isinstance(m, FusedDepthwise) for m in fast.modules()) == 5  # 3 in the ASPP, 2 in the decoder
    assert fast.input_channels == 8 and fast.decode_head.concat_channels % 8 == 0
    x = torch.randn(2, 3, *size)
    padded = F.pad(x, (0, 0, 0, 0, 0, 5))  # the image's 3 channels, then zeros
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
        padded = padded.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref, got = net(x), fast(padded)
    assert ((got - ref).norm() / ref.norm()).item() < 1e-5


def test_padding_channels_do_not_change_the_output():
    """The first conv's extra input channels have zero weights: whatever finite values they
    hold, the logits are the same. (R-18's decoder concat, 128 + 12 channels, is padded to 144.)"""
    net = build_model(get_config("deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024"), with_auxiliary=False).eval()
    net.load_state_dict(randomize(net.state_dict(), seed=2))
    fast = optimize_for_inference(net)
    assert fast.decode_head.concat_channels == 144
    x = torch.randn(1, 8, 40, 56)
    noisy = x.clone()
    noisy[:, 3:] = torch.randn(1, 5, 40, 56) * 100
    with torch.no_grad():
        assert torch.equal(fast(F.pad(x[:, :3], (0, 0, 0, 0, 0, 5))), fast(torch.cat([x[:, :3], noisy[:, 3:]], 1)))


def test_fold_batchnorm_keeps_outputs():
    net = build_model(get_config("deeplabv3plus_r18b-d8_4xb2-80k_cityscapes-512x1024"), with_auxiliary=False).eval()
    net.load_state_dict(randomize(net.state_dict(), seed=9))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        fold_batchnorm(net)
        assert torch.allclose(net(x), ref, rtol=1e-4, atol=1e-4)
