"""Label maps read as mmseg's LoadAnnotations reads them (palette PNGs, reduce_zero_label)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmseg_ref import import_mmseg
from model.training.data import LabelFormatError, read_label


@pytest.fixture
def labels(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 6, (9, 11)).astype(np.uint8)
    values[0, :3] = 255
    grey = tmp_path / "grey.png"
    Image.fromarray(values).save(grey)
    palette = tmp_path / "palette.png"  # VOC-style: indices stored with a colour palette
    im = Image.fromarray(values, mode="P")
    im.putpalette(list(rng.integers(0, 256, 768, dtype=np.uint8)))
    im.save(palette)
    return values, grey, palette


@pytest.mark.parametrize("reduce_zero_label", [False, True])
def test_matches_mmseg_load_annotations(labels, reduce_zero_label):
    import_mmseg()
    from mmseg.datasets.transforms import LoadAnnotations

    values, grey, palette = labels
    for path in (grey, palette):
        ours = read_label(path, reduce_zero_label)
        ref = LoadAnnotations(reduce_zero_label=reduce_zero_label)({"seg_map_path": str(path), "reduce_zero_label": reduce_zero_label, "seg_fields": []})
        np.testing.assert_array_equal(ours, ref["gt_seg_map"])
    reduced = read_label(grey, True)
    assert (reduced[values == 0] == 255).all() and (reduced[values == 255] == 255).all()
    assert (reduced[(values > 0) & (values < 255)] == values[(values > 0) & (values < 255)] - 1).all()


def test_colour_label_maps_are_refused(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(LabelFormatError, match="single-channel"):
        read_label(tmp_path / "rgb.png")
