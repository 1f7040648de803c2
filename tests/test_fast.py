"""The inference rewrites compute the same function as the original network."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize

from model import build_model, get_config
from model.fast import FusedDepthwise, fold_batchnorm, optimize_for_inference


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
    x = torch.randn(2, 3, *size)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref, got = net(x), fast(x)
    assert ((got - ref).norm() / ref.norm()).item() < 1e-5


def test_fold_batchnorm_keeps_outputs():
    net = build_model(get_config("deeplabv3plus_r18b-d8_4xb2-80k_cityscapes-512x1024"), with_auxiliary=False).eval()
    net.load_state_dict(randomize(net.state_dict(), seed=9))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        fold_batchnorm(net)
        assert torch.allclose(net(x), ref, rtol=1e-4, atol=1e-4)
