"""mmseg's decode + auxiliary cross-entropy, with its OHEM sampler and class weights as options.

mmseg's `CrossEntropyLoss(avg_non_ignore=False)` averages over *all* pixels, ignored ones included
(they contribute zero), so loss values and gradients match mmseg's logs. With class weights mmseg
divides by the summed weights of the labelled pixels (PyTorch's weighted mean; mmseg 1.2.2 itself
crashes on ignored pixels there, so this is the value it computes when it runs). OHEM follows
`OHEMPixelSampler`: with a
threshold, pixels whose true-class probability is below max(thresh, the min_kept-th lowest) get
weight 1; without, the `min_kept` x batch highest-loss pixels do. It applies to the decode head
only, as mmseg's sampler does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossConfig:
    aux_weight: float = 0.4
    ignore_index: int = 255
    ohem_min_kept: int | None = None
    ohem_thresh: float | None = None
    class_weight: tuple[float, ...] | None = None


def _pixel_ce(logits: torch.Tensor, label: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    weight = None if cfg.class_weight is None else logits.new_tensor(cfg.class_weight)
    return F.cross_entropy(logits.float(), label, weight=weight, ignore_index=cfg.ignore_index, reduction="none")


@torch.no_grad()
def ohem_weight(logits: torch.Tensor, label: torch.Tensor, pixel_loss: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    valid = label != cfg.ignore_index
    weight = torch.zeros_like(pixel_loss)
    kept = cfg.ohem_min_kept * label.shape[0]
    chosen = torch.zeros(int(valid.sum()), device=label.device, dtype=weight.dtype)
    if cfg.ohem_thresh is not None:
        prob = logits.float().softmax(1).gather(1, label.clamp(max=logits.shape[1] - 1).unsqueeze(1)).squeeze(1)[valid]
        sorted_prob = prob.sort().values
        floor = sorted_prob[min(kept, sorted_prob.numel() - 1)] if sorted_prob.numel() else prob.new_tensor(0.0)
        chosen[prob < torch.clamp(floor, min=cfg.ohem_thresh)] = 1.0
    else:
        chosen[pixel_loss[valid].sort(descending=True).indices[:kept]] = 1.0
    weight[valid] = chosen
    return weight


def _reduce(pixel_loss: torch.Tensor, label: torch.Tensor, num_classes: int, cfg: LossConfig) -> torch.Tensor:
    if cfg.class_weight is None:
        return pixel_loss.mean()
    weight = pixel_loss.new_tensor(cfg.class_weight)[label.clamp(max=num_classes - 1)]
    return pixel_loss.sum() / weight[label != cfg.ignore_index].sum().clamp(min=1e-12)


def seg_loss(logits: torch.Tensor, aux_logits: torch.Tensor, label: torch.Tensor, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """{'loss', 'loss_decode', 'loss_aux'}; logits N x C x H x W at the label's size, label N x H x W."""
    label, num_classes = label.long(), logits.shape[1]
    decode = _pixel_ce(logits, label, cfg)
    if cfg.ohem_min_kept:
        decode = decode * ohem_weight(logits, label, decode, cfg)
    loss_decode = _reduce(decode, label, num_classes, cfg)
    loss_aux = _reduce(_pixel_ce(aux_logits, label, cfg), label, num_classes, cfg) * cfg.aux_weight
    return {"loss": loss_decode + loss_aux, "loss_decode": loss_decode.detach(), "loss_aux": loss_aux.detach()}


def median_frequency_weights(label_counts: torch.Tensor) -> tuple[float, ...]:
    """SegNet's class balancing: median(freq) / freq(c), freq over the images that contain c."""
    pixels, images_pixels = label_counts[0].double(), label_counts[1].double()
    freq = pixels / images_pixels.clamp(min=1)
    med = freq[freq > 0].median()
    return tuple(float(w) for w in torch.where(freq > 0, med / freq.clamp(min=1e-12), torch.ones_like(freq)))
