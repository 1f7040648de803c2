"""`python -m model.pipeline.predict` end to end on CamVid frames."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from helpers import REPO
from model import load_model
from model.pipeline import Segmenter
from model.pipeline.decode import load_image


def test_predict_writes_palette_pngs_that_read_back_as_labels(camvid_dir, tmp_path):
    images = sorted((camvid_dir / "images" / "val").glob("*.jpg"))[:2]
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "model.pipeline.predict", *map(str, images), "--out", str(out), "--overlay"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    net = load_model()
    expected = Segmenter(net).predict([load_image(p) for p in images])
    for path, labels in zip(images, expected):
        png = Image.open(out / f"{path.stem}.png")
        assert png.mode == "P"
        assert np.array_equal(np.array(png), labels)
        assert png.getpalette()[:3] == list(net.config.dataset.palette[0])
        overlay = Image.open(out / f"{path.stem}_overlay.jpg")
        assert overlay.size == (480, 360) and overlay.mode == "RGB"


def test_predict_reports_missing_images(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "model.pipeline.predict", str(tmp_path / "nope.jpg"), "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2 and "not found" in run.stderr
