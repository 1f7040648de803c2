"""bench.plots: the PNGs in bench/results/ are drawn from the committed JSON, hold exactly its
numbers, and bench/RESULTS.md shows them with the command that made them."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from bench.plots import (
    COMMAND,
    DPI,
    LOAD,
    PANEL_INCHES,
    RESULTS,
    SERVED_BACKEND,
    THROUGHPUT,
    load_figure,
    main,
    throughput_figure,
)
from bench.results_table import RESULTS_MD

SIZE = (int(PANEL_INCHES[0] * DPI) * 2, int(PANEL_INCHES[1] * DPI))  # two panels each, side by side


def test_running_it_on_the_committed_results_writes_the_committed_pngs_shapes(tmp_path):
    written = main(["--out", str(tmp_path)])
    assert sorted(p.name for p in written) == ["latency_vs_load.png", "throughput_vs_batch.png"]
    for path in written:
        with Image.open(path) as new, Image.open(RESULTS / path.name) as committed:
            assert new.format == committed.format == "PNG"
            assert new.size == committed.size == SIZE
            pixels = np.asarray(new.convert("RGB"))
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, f"{path.name} is nearly blank"


def panel_texts(ax) -> str:
    return ax.get_title() + " " + " ".join(t.get_text() for t in ax.texts)


def test_throughput_lines_are_the_measured_rates_by_batch():
    fig = throughput_figure([RESULTS / name for name in THROUGHPUT])
    perf, cpu = (json.loads((RESULTS / name).read_text()) for name in THROUGHPUT)
    served = [m for m in perf["measurements"] if m["backend"] == SERVED_BACKEND]
    plotted = {line.get_label(): sorted(map(tuple, line.get_xydata())) for line in fig.axes[0].lines}
    assert plotted == {
        label: sorted((m["batch"], m["img_per_s"]) for m in served if f"{m['arch']} {m['precision']}" == label)
        for label in {f"{m['arch']} {m['precision']}" for m in served}
    }
    ((label, points),) = [(line.get_label(), line.get_xydata().tolist()) for line in fig.axes[1].lines]
    assert cpu["config"] in label and points == [[r["batch_size"], r["images_per_s"]] for r in cpu["rows"]]
    for ax, name, hardware in [
        (fig.axes[0], THROUGHPUT[0], served[0]["gpu"]),
        (fig.axes[1], THROUGHPUT[1], cpu["hardware"]),
    ]:
        assert hardware in ax.get_title() and f"bench/results/{name}" in panel_texts(ax)
        assert "batch size" in ax.get_xlabel() and "images/s" in ax.get_ylabel()


def test_latency_points_are_each_rows_percentiles_labelled_with_the_load_offered():
    fig = load_figure([RESULTS / name for name in LOAD])
    for ax, name in zip(fig.axes, LOAD):
        doc = json.loads((RESULTS / name).read_text())
        rows = doc["rows"]
        p50, p99 = (line.get_xydata().tolist() for line in ax.lines)
        assert p50 == [[r["throughput_rps"], r["latency_ms"]["p50"]] for r in rows]
        assert p99 == [[r["throughput_rps"], r["latency_ms"]["p99"]] for r in rows]
        labels = {a.get_text(): a.xy for a in ax.texts if hasattr(a, "xy")}
        for r in rows:
            load = f"{r['rate_rps']:g} req/s open loop" if r["rate_rps"] else f"{r['concurrency']} client"
            (text,) = [t for t in labels if t.startswith(load)]
            assert labels[text] == (r["throughput_rps"], r["latency_ms"]["p99"])
        assert doc["hardware"] in ax.get_title() and f"bench/results/{name}" in panel_texts(ax)
        assert "ms" in ax.get_ylabel() and "images/s" in ax.get_xlabel()


def test_results_md_shows_every_plot_with_its_command():
    text = RESULTS_MD.read_text()
    assert f"`{COMMAND}`" in text
    for png in sorted(RESULTS.glob("*.png")):
        assert f"](results/{png.name})" in text, f"{png.name} is not shown in bench/RESULTS.md"
