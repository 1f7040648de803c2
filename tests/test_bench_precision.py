"""`bench.precision_accuracy` on two real CamVid val frames through the served path, on CPU."""

from __future__ import annotations

import json

from bench.precision_accuracy import main as precision_accuracy


def test_each_precision_is_scored_and_compared_with_the_first(camvid_dir, tmp_path, capsys):
    out = tmp_path / "precision.json"
    rows = precision_accuracy(["--data", str(camvid_dir), "--device", "cpu", "--limit", "2", "--precisions", "fp32", "bf16", "--out", str(out)])
    fp32, bf16 = rows
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16") and fp32["images"] == bf16["images"] == 2
    assert fp32["agreement"] == 1.0 and 0.99 < bf16["agreement"] <= 1.0  # bf16 keeps almost every label
    assert abs(fp32["mIoU"] - bf16["mIoU"]) < 2 and fp32["mIoU"] > 50  # the trained model, really scored
    assert fp32["test_scale"] == [480, 360]  # served at the built-in model's own size
    assert json.loads(out.read_text())["rows"] == rows
    assert "| bf16 |" in capsys.readouterr().out


def test_test_scale_serves_at_another_size(camvid_dir):
    """``--test-scale 840x630``: the rows say the size they were served at, and the labels differ."""
    common = ["--data", str(camvid_dir), "--device", "cpu", "--limit", "1", "--precisions", "fp32"]
    (enlarged,) = precision_accuracy([*common, "--test-scale", "840x630"])
    (native,) = precision_accuracy(common)
    assert enlarged["test_scale"] == [840, 630] and native["test_scale"] == [480, 360]
    assert enlarged["per_class_IoU"] != native["per_class_IoU"]
