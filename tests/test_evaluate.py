"""`python -m model.training.evaluate` with the shipped CamVid model on a handful of real val frames."""

from __future__ import annotations

import json

from model.training.evaluate import main as evaluate_main

# Measured on CPU (fp32) with the shipped fp16 weights: first 5 val frames mIoU 75.60, aAcc 96.97;
# the whole val split gives 76.05 (model/weights/README.md).
FIRST5_MIOU = 75.60


def test_shipped_model_scores_as_measured_on_camvid_val(camvid_dir, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert evaluate_main(["--data", str(camvid_dir), "--split", "val", "--limit", "5", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["images"] == 5 and record["config"] == "deeplabv3plus_r18-d8_camvid-360x480"
    assert abs(record["mIoU"] - FIRST5_MIOU) < 1.0, record["mIoU"]
    assert record["aAcc"] > 95 and record["per_class"]["road"]["IoU"] > 95
    printed = capsys.readouterr().out
    assert "| road" in printed and "mIoU 75." in printed
