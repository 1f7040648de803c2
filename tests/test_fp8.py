"""FP8 convs: the quantization's error bound and semantics, the conv of the quantized values
against an independent float64 sum over taps (the CPU path here, the Triton kernels on a Hopper
GPU or under Triton's interpreter), e4m3 results passed from conv to conv by static bounds, FP8
residual blocks and stages against the fp16 ones, and the FP8 network's labels."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import randomize

from torch import nn

from model import build_model, get_config
from model.accel import fp8
from model.accel.backbone import Fp8Block, Fp8Stage, FusedBlock, fused_stage
from model.accel.fast import Fp8Conv3x3, optimize_for_inference, use_fp8
from model.accel.kernels import spread_borders_reference
from model.accel.kernels.common import INTERPRETED
from model.accel.layers import BOUND_SIGMAS, activation_bound
from model.resnet import BasicBlock, Bottleneck

needs_hopper = pytest.mark.skipif(
    not (torch.cuda.is_available() and fp8.supported("cuda")),
    reason="needs Triton and a Hopper (sm90+) GPU: the kernel loads tiles with TMA (run on the GPU box)",
)
#: where the FP8 kernels' own tests run: a Hopper GPU, or the CPU under Triton's interpreter
#: (tests/test_kernels_interpreted.py)
KERNEL_DEVICE = "cpu" if INTERPRETED else "cuda"
needs_fp8_kernels = pytest.mark.skipif(
    not (INTERPRETED or (torch.cuda.is_available() and fp8.supported("cuda"))),
    reason="needs Triton and a Hopper (sm90+) GPU (run on the GPU box), or Triton's interpreter",
)


def channels_last(*shape, scale=1.0, device="cpu", dtype=torch.float16):
    return (torch.randn(*shape, device=device) * scale).to(dtype).contiguous(memory_format=torch.channels_last)


def scaled_e4m3(maps: list[torch.Tensor], amax: torch.Tensor, pad: int) -> torch.Tensor:
    """The channel concat, channels-last, times 448 / amax per image, zero-padded, rounded to e4m3."""
    x = torch.cat([t.float() for t in maps], dim=1).permute(0, 2, 3, 1)
    inverse = torch.where(amax > 0, 448 / amax, 1.0)[:, None, None, None]
    return F.pad(x * inverse, (0, 0, pad, pad, pad, pad)).to(torch.float8_e4m3fn)


def dequantized_conv(q, amax, weight_q, weight_scale, bias, dilation, residual, relu, kernel_size=3) -> torch.Tensor:
    """Float64: for each of the 9 taps (a 1 x 1 conv: the centre one), the dequantized input
    (padded by ``dilation``) shifted by the tap times the dequantized weights of that tap ((ty,
    tx, c) order), summed; + bias (+ residual), ReLU."""
    q, amax, weight_q, weight_scale, bias = (t.cpu() for t in (q, amax, weight_q, weight_scale, bias))
    x = q.double() * torch.where(amax > 0, amax.double() / 448, 1.0)[:, None, None, None]
    n, hp, wp, c = q.shape
    h, w = hp - 2 * dilation, wp - 2 * dilation
    k = kernel_size
    weight = (weight_q.double() * weight_scale.double()[:, None]).view(-1, k, k, c)
    y = bias.double().expand(n, h, w, -1).clone()
    for ty in range(3):
        for tx in range(3):
            if k == 1 and (ty, tx) != (1, 1):
                continue
            tap = x[:, ty * dilation : ty * dilation + h, tx * dilation : tx * dilation + w]
            y += torch.einsum("nhwc,oc->nhwo", tap, weight[:, ty % k, tx % k])
    y = y.permute(0, 3, 1, 2)
    if residual is not None and residual.shape[2:] == (h, w):
        y = y + residual.cpu().double()
    elif residual is not None:  # at most 3 x 3, spread over the output (checked in test_kernels)
        y = y + spread_borders_reference(residual.cpu().double(), (h, w))
    return y.relu() if relu else y


def test_quantize_padded_is_the_scaled_concat_with_zero_borders():
    maps = [channels_last(2, 128, 5, 7, scale=3.0), channels_last(2, 256, 5, 7)]
    amax = fp8.image_amax(maps)
    assert torch.equal(amax, torch.cat(maps, 1).float().abs().amax(dim=(1, 2, 3)))
    q = fp8.quantize_padded(maps, amax, pad=2)
    assert q.shape == (2, 9, 11, 384) and q.dtype == torch.float8_e4m3fn
    border = torch.ones(9, 11, dtype=torch.bool)
    border[2:-2, 2:-2] = False
    assert not q.float()[:, border].any()
    x = torch.cat(maps, 1).float().permute(0, 2, 3, 1)
    got = q.float()[:, 2:-2, 2:-2] * (amax / 448)[:, None, None, None]
    # e4m3 keeps 3 mantissa bits: half an ulp is 1/16 of the value; below 2^-6 (scaled) a fixed step
    bound = torch.maximum(x.abs() / 16, (amax / 448)[:, None, None, None] * 2.0**-10)
    assert ((got - x).abs() <= bound * 1.0001).all()
    assert (q.float().abs().amax(dim=(1, 2, 3)) == 448).all()  # each image's max maps to e4m3's max
    assert torch.equal(q.view(torch.uint8), scaled_e4m3(maps, amax, 2).view(torch.uint8))


def test_an_images_result_does_not_depend_on_its_batch_mates():
    a, b = channels_last(1, 128, 6, 6), channels_last(1, 128, 6, 6, scale=50.0)
    amax = fp8.image_amax([torch.cat([a, b])])
    alone = fp8.quantize_padded([a], fp8.image_amax([a]), 1)
    assert torch.equal(fp8.quantize_padded([torch.cat([a, b])], amax, 1)[:1].float(), alone.float())


@pytest.mark.parametrize(("size", "dilation", "residual"), [
    ((12, 10), 3, "full"), ((2, 9), 1, "borders"), ((7, 5), 2, None),
])  # fmt: skip
def test_cpu_conv_is_the_sum_over_taps_of_the_quantized_values(size, dilation, residual):
    x = channels_last(2, 256, *size, dtype=torch.float32).relu()
    w, bias = torch.randn(64, 256, 3, 3) * (2 / 2304) ** 0.5, torch.randn(64) * 0.1
    res_size = {"full": size, "borders": (min(size[0], 3), min(size[1], 3)), None: None}[residual]
    res = torch.randn(2, 64, *res_size) if res_size else None
    wq, ws = fp8.quantize_weight(w)
    amax = fp8.image_amax([x])
    q = fp8.quantize_padded([x], amax, dilation)
    got, _ = fp8.conv_fp8(q, amax, wq, ws, bias, 3, dilation, res, relu=True)
    ref = dequantized_conv(q, amax, wq, ws, bias, dilation, res, relu=True)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())  # fp32 sums of 2304 terms


def test_quantized_conv_is_close_to_the_exact_conv():
    x = channels_last(2, 256, 12, 10, dtype=torch.float32).relu()
    w, bias, res = torch.randn(64, 256, 3, 3) * (2 / 2304) ** 0.5, torch.randn(64) * 0.1, torch.randn(2, 64, 12, 10)
    wq, ws = fp8.quantize_weight(w)
    amax = fp8.image_amax([x])
    got, _ = fp8.conv_fp8(fp8.quantize_padded([x], amax, 3), amax, wq, ws, bias, 3, 3, res, relu=False)
    ref = F.conv2d(x, w, bias, padding=3, dilation=3) + res
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert ((got - ref).norm() / ref.norm()).item() < 0.03


@pytest.mark.parametrize(("name", "min_channels", "replaced"), [
    ("deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024", 512, 1),  # the bottleneck, 2048 -> 512
    ("deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024", 512, 0),  # 512 -> 128: left to cuDNN
    ("deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024", 128, 1),
])  # fmt: skip
def test_fp8_network_keeps_the_labels(name, min_channels, replaced):
    net = build_model(get_config(name), with_auxiliary=False).eval()
    net.load_state_dict(randomize(net.state_dict(), seed=4))
    fast = optimize_for_inference(net)
    quantized = use_fp8(copy.deepcopy(fast), min_channels)
    assert sum(isinstance(m, Fp8Conv3x3) for m in quantized.modules()) == replaced
    x = F.pad(torch.randn(2, 3, 97, 131), (0, 0, 0, 0, 0, 5))
    with torch.no_grad():
        ref, got = fast(x), quantized(x)
    assert ((got - ref).norm() / ref.norm()).item() < 0.05
    assert (got.argmax(1) == ref.argmax(1)).float().mean().item() > 0.99


def test_casting_the_module_keeps_the_e4m3_weights():
    conv = optimize_for_inference(build_model(get_config("deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024")))
    layer = Fp8Conv3x3(conv.decode_head.bottleneck)
    bits = layer.weight_bits.clone()
    layer.half()
    assert layer.weight_bits.dtype == torch.uint8 and torch.equal(layer.weight_bits, bits)


@needs_hopper
@pytest.mark.parametrize(("channels", "cout", "size", "dilation"), [
    ((512, 512, 512, 512), 512, (33, 70), 1),  # the bottleneck's four branches, odd sizes
    ((512, 512), 512, (2, 9), 1),  # fewer than 3 rows: the border residual's middle row is absent
    ((512,), 512, (16, 32), 4),
    ((256, 128), 64, (9, 200), 2),  # fewer output channels than a tile
])  # fmt: skip
@pytest.mark.parametrize("residual", ["none", "full", "borders"])
def test_triton_kernels_match_the_sum_over_taps(channels, cout, size, dilation, residual):
    torch.manual_seed(0)
    maps = [channels_last(3, c, *size, scale=s, device="cuda").relu() for c, s in zip(channels, (1, 4, 0.5, 2), strict=False)]
    amax = fp8.image_amax(maps)
    assert torch.equal(amax, torch.cat(maps, 1).float().abs().amax(dim=(1, 2, 3)))
    q = fp8.quantize_padded(maps, amax, dilation)
    assert torch.equal(q.view(torch.uint8), scaled_e4m3(maps, amax, dilation).view(torch.uint8))
    w = torch.randn(cout, sum(channels), 3, 3, device="cuda") * (2 / (9 * sum(channels))) ** 0.5
    wq, ws = fp8.quantize_weight(w)
    bias = (torch.randn(cout, device="cuda") * 0.1).half()
    res_size = {"none": None, "full": size, "borders": (min(size[0], 3), min(size[1], 3))}[residual]
    res = channels_last(3, cout, *res_size, device="cuda") if res_size else None
    got = fp8.conv_fp8(q, amax, wq, ws, bias, 3, dilation, res, relu=True)[0].cpu()
    ref = dequantized_conv(q, amax, wq, ws, bias, dilation, res, relu=True)
    assert got.is_contiguous(memory_format=torch.channels_last) and got.shape == ref.shape
    # the tensor cores' FP8 accumulator keeps fewer bits than fp32: up to ~7e-3 of the largest
    # output at K = 18432 (`bench.kernel_variants --parts fp8conv`); a wrong tap or scale is O(1)
    assert torch.allclose(got.float(), ref.float(), rtol=0, atol=1.5e-2 * ref.abs().max().item())
    mean_error = ((got.float() - ref.float()).abs().mean() / ref.float().abs().mean()).item()
    assert mean_error < 5e-3, mean_error


@needs_hopper
def test_fp8_network_on_the_gpu_matches_its_cpu_reference():
    net = build_model(get_config("deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024"), with_auxiliary=False).eval()
    net.load_state_dict(randomize(net.state_dict(), seed=4))
    fast = optimize_for_inference(net)
    cpu = use_fp8(copy.deepcopy(fast))
    gpu = use_fp8(fast.cuda().half().to(memory_format=torch.channels_last))
    x = F.pad(torch.randn(2, 3, 129, 260), (0, 0, 0, 0, 0, 5))
    with torch.no_grad():
        ref = cpu(x)
        got = gpu(x.cuda().half().contiguous(memory_format=torch.channels_last)).float().cpu()
    assert (got.argmax(1) == ref.argmax(1)).float().mean().item() > 0.99


def e4m3_steps(x: torch.Tensor) -> torch.Tensor:
    """The spacing of e4m3 values around each |x| (3 mantissa bits; a fixed step below 2^-6)."""
    return torch.exp2(torch.floor(torch.log2(x.abs().clamp_min(2.0**-6))) - 3)


def padding_is_zero(q: torch.Tensor, pad: int) -> bool:
    border = torch.ones(q.shape[1:3], dtype=torch.bool)
    border[pad : q.shape[1] - pad, pad : q.shape[2] - pad] = False
    return not q.float()[:, border].any()


def conv_case(kernel_size, cin, cout, size, pad, residual, device, seed=0):
    """A quantized input (static amax: one value) and weights for `conv_fp8`."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(2, cin, *size, generator=g).relu() * 3).half().contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, kernel_size, kernel_size, generator=g) * (2 / (cin * kernel_size**2)) ** 0.5
    wq, ws = fp8.quantize_weight(w)
    bias = (torch.randn(cout, generator=g) * 0.1).half()
    res = (torch.randn(2, cout, *size, generator=g)).half().contiguous(memory_format=torch.channels_last)
    amax = torch.tensor([x.float().abs().max().item() * 2])  # a static bound, looser than the data
    q = fp8.quantize_padded_reference([x], amax, pad)
    to = lambda t: t.to(device)  # noqa: E731
    return to(q), to(amax), to(wq), to(ws), to(bias), to(res) if residual else None


@pytest.mark.parametrize(("kernel_size", "pad", "out_pad"), [(3, 2, 1), (1, 0, 0), (1, 3, 2)])
def test_cpu_conv_fp8_is_the_sum_over_taps_and_passes_e4m3_on(kernel_size, pad, out_pad):
    q, amax, wq, ws, bias, res = conv_case(kernel_size, 256, 128, (6, 9), pad, residual=True, device="cpu")
    out_amax = torch.tensor([8.0])  # tighter than the outputs: the largest saturate
    out, q_out = fp8.conv_fp8(q, amax, wq, ws, bias.float(), kernel_size, pad, res, True, out_amax, out_pad)
    ref = dequantized_conv(q, amax, wq, ws, bias, pad, res, relu=True, kernel_size=kernel_size)
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    assert q_out.shape == (2, 6 + 2 * out_pad, 9 + 2 * out_pad, 128) and q_out.dtype == torch.float8_e4m3fn
    inner = q_out.float()[:, out_pad : out_pad + 6, out_pad : out_pad + 9].permute(0, 3, 1, 2).double()
    assert padding_is_zero(q_out, out_pad)
    scaled = (ref * 448 / 8).clamp(max=448)
    assert (inner == 448).any() and ((inner - scaled).abs() <= e4m3_steps(scaled) / 2 * 1.0001).all()
    alone, none = fp8.conv_fp8(q, amax, wq, ws, bias.float(), kernel_size, pad, res, True, out_amax, out_pad, fp16_out=False)
    assert alone is None and torch.equal(none.view(torch.uint8), q_out.view(torch.uint8))


@needs_fp8_kernels
@pytest.mark.parametrize(("kernel_size", "pad", "out_pad", "size", "cout"), [
    (3, 4, 1, (7, 19), 256),  # a layer4 3x3 (dilation 4) handing e4m3 to a 3x3 of dilation 1
    (1, 0, 2, (5, 33), 128),  # a 1x1 writing a padded map for the next 3x3
    (1, 2, 0, (6, 7), 64),  # a 1x1 reading the centre of a padded map; fewer channels than a tile
    (1, 0, 0, (5, 41), 512),  # a 1x1 on an unpadded map: the persistent GEMM, several tiles per program
    (1, 0, 0, (3, 7), 64),  # the same, one partial tile
])  # fmt: skip
def test_triton_conv_fp8_matches_the_sum_over_taps(kernel_size, pad, out_pad, size, cout):
    q, amax, wq, ws, bias, res = conv_case(kernel_size, 256, cout, size, pad, residual=True, device=KERNEL_DEVICE)
    out_amax = torch.tensor([6.0], device=KERNEL_DEVICE)
    out, q_out = fp8.conv_fp8(q, amax, wq, ws, bias, kernel_size, pad, res, True, out_amax, out_pad)
    ref = dequantized_conv(q, amax, wq, ws, bias, pad, res, relu=True, kernel_size=kernel_size)
    assert out.is_contiguous(memory_format=torch.channels_last) and out.shape == ref.shape
    assert torch.allclose(out.cpu().double(), ref, rtol=0, atol=1.5e-2 * ref.abs().max().item())
    h, w = size
    inner = q_out.cpu().float()[:, out_pad : out_pad + h, out_pad : out_pad + w].permute(0, 3, 1, 2).double()
    assert padding_is_zero(q_out.cpu(), out_pad)
    scaled = (ref * 448 / 6).clamp(max=448)
    # one e4m3 step, plus what the fp16 output may differ by (the tensor cores' sum), scaled
    assert ((inner - scaled).abs() <= e4m3_steps(scaled) + 1.5e-2 * scaled.abs().max()).all()
    assert (inner == 448).any()


def test_activation_bound_is_the_bn_mean_plus_sigmas():
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, -40.0]))
    assert activation_bound(bn).item() == max(BOUND_SIGMAS * 1, 1 + BOUND_SIGMAS * 2, 40 + BOUND_SIGMAS * 0.5)


def _trained_like(block: nn.Module) -> nn.Module:
    """Random weights whose BN statistics are those of its activations on random input (as after
    training), so activation_bound holds the activations as it does for a trained network."""
    torch.manual_seed(0)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    block.train()
    with torch.no_grad():
        block(torch.randn(4, block.conv1.in_channels, 16, 16).relu())
    return block.eval()


@pytest.mark.parametrize("make", [
    lambda: Bottleneck(256, 128, 1, 2, nn.Sequential(nn.Conv2d(256, 512, 1, bias=False), nn.BatchNorm2d(512))),
    lambda: Bottleneck(512, 128, 1, 4, None),
    lambda: BasicBlock(128, 256, 1, 2, nn.Sequential(nn.Conv2d(128, 256, 1, bias=False), nn.BatchNorm2d(256))),
    lambda: BasicBlock(256, 256, 1, 4, None),
])  # fmt: skip
def test_fp8_block_is_close_to_the_fused_block(make):
    block = _trained_like(make())
    x = torch.randn(2, block.conv1.in_channels, 11, 14).relu()
    fused = FusedBlock(block, in_bound=x.abs().max() * 4)
    quantized = Fp8Block(fused)
    bounds = [fused.in_bound, *(conv.out_bound for conv in fused.convs[:-1]), fused.out_bound]
    assert torch.equal(quantized.bounds, torch.stack(bounds))
    q = fp8.quantize_padded([x.contiguous(memory_format=torch.channels_last)], quantized.bounds[:1], quantized.in_pad)
    with torch.no_grad():
        ref = fused(x)
        got, q_out = quantized(x, q, out_pad=3)
    # e4m3 rounds each input and weight by up to 1/16: 5-7% of a random-sign sum, whatever the bounds
    assert ((got - ref).norm() / ref.norm()).item() < 0.1
    assert q_out.shape == (2, 11 + 6, 14 + 6, ref.shape[1])
    back = q_out.float()[:, 3:-3, 3:-3].permute(0, 3, 1, 2) * quantized.bounds[-1] / 448
    assert ((back - got).norm() / got.norm()).item() < 0.05  # one more rounding to e4m3


def test_fp8_stage_chains_blocks_through_e4m3():
    blocks = nn.Sequential(*(_trained_like(Bottleneck(512, 128, 1, 2, None)) for _ in range(3)))
    x = torch.randn(2, 512, 9, 12).relu()
    stage = fused_stage(blocks, in_bound=x.abs().max() * 4)
    assert all(later.in_bound is earlier.out_bound for earlier, later in zip(stage, stage[1:]))
    with torch.no_grad():
        ref, got = stage(x), Fp8Stage(stage)(x.contiguous(memory_format=torch.channels_last))
    assert ((got - ref).norm() / ref.norm()).item() < 0.2  # nine random convs' roundings add up


def test_use_fp8_takes_layer4_of_r50_and_leaves_r18s():
    def stages(name, **kwargs):
        fast = optimize_for_inference(build_model(get_config(name), with_auxiliary=False).eval())
        return [type(s).__name__ for s in use_fp8(fast, **kwargs).backbone.stages]

    assert stages("deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024") == ["Sequential"] * 3 + ["Fp8Stage"]
    assert stages("deeplabv3plus_r101-d16-mg124_4xb2-40k_cityscapes-512x1024") == ["Sequential"] * 3 + ["Fp8Stage"]
    assert stages("deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024") == ["Sequential"] * 4
    assert stages("deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024", stage_channels=512)[3] == "Fp8Stage"
