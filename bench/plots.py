"""PNG plots of the committed benchmark results, written beside them and shown in bench/RESULTS.md.

    python -m bench.plots [--throughput FILE ...] [--load FILE ...] [--out bench/results]

``throughput_vs_batch.png``: model-only images/s against batch size, one panel per result file of
``bench.perf`` (the service's path, ``torch-service-graph``, one line per backbone and precision)
or ``bench.model_bench``. ``latency_vs_load.png``: p50 and p99 latency of ``POST /segment``
against the images/s answered, one panel per ``bench.load`` result file, each point labelled with
the load offered (closed-loop clients or an open-loop rate, which are not one unit: hence answered
images/s on the x axis). Each panel's title names the hardware and what ran, its caption the
source file, so a plot is never read apart from its data. matplotlib's object API, not pyplot: no
global backend, no display needed.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure

RESULTS = Path(__file__).parent / "results"
THROUGHPUT = ("perf_h100.json", "model_bench_cpu_torch_fp32.json")
LOAD = ("e2e_h100_r50.json", "load_cpu_torch_fp32.json")
SERVED_BACKEND = "torch-service-graph"  # bench.perf's timing of what the service runs
PANEL_INCHES, DPI = (6.4, 4.8), 100
COMMAND = "python -m bench.plots"


def batch_series(doc: dict) -> tuple[str, dict[str, list[tuple[int, float]]]]:
    """(panel title, {line label: [(batch size, images/s)] by batch}) of a model-only result."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    if "measurements" in doc:  # bench.perf
        rows = [m for m in doc["measurements"] if m["backend"] == SERVED_BACKEND]
        (gpu,) = {m["gpu"] for m in rows}
        (size,) = {m["input"] for m in rows}
        for m in rows:
            series[f"{m['arch']} {m['precision']}"].append((m["batch"], m["img_per_s"]))
        title = f"{gpu}: model only, {size} (H x W), {SERVED_BACKEND}, torch {rows[0]['torch']}"
    else:  # bench.model_bench
        label = f"{doc['config']} {doc['precision']}"
        series[label] = [(r["batch_size"], r["images_per_s"]) for r in doc["rows"]]
        width, height = doc["input_wh"]
        title = f"{doc['hardware']}: model only, {height}x{width} (H x W), {doc['backend']} {doc['precision']}"
    return title, {label: sorted(points) for label, points in series.items()}


def offered(row: dict) -> str:
    """The load a bench.load row offered: an open-loop rate or closed-loop clients."""
    if row["rate_rps"]:
        return f"{row['rate_rps']:g} req/s open loop"
    return f"{row['concurrency']} client{'s' if row['concurrency'] != 1 else ''}"


def load_points(doc: dict) -> tuple[str, list[tuple[str, float, float, float]]]:
    """(panel title, [(offered load, answered images/s, p50 ms, p99 ms)]) of a bench.load result
    (one image per request, so requests/s are images/s)."""
    batching = doc["batching"]
    title = (
        f"{doc['hardware']}: POST /segment end to end, {doc['config']}, {doc['backend']} {doc['precision']}, "
        f"max batch {batching['max_batch_size']}, queue delay {batching['max_queue_delay_ms']:g} ms"
    )
    return title, [
        (offered(r), r["throughput_rps"], r["latency_ms"]["p50"], r["latency_ms"]["p99"]) for r in doc["rows"]
    ]


def caption(path: Path, doc: dict) -> str:
    date = (doc.get("date") or doc["measurements"][0]["date"])[:10]
    return f"source: bench/results/{path.name} ({date}); made by {COMMAND}"


def figure(panels: int) -> tuple[Figure, list]:
    fig = Figure(figsize=(PANEL_INCHES[0] * panels, PANEL_INCHES[1]), dpi=DPI)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    fig.subplots_adjust(left=0.09 / panels, right=1 - 0.03 / panels, top=0.84, bottom=0.2, wspace=0.25)
    return fig, list(axes)


def wrapped(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False))


def label_panel(ax, title: str, path: Path, doc: dict) -> None:
    """Title (hardware, what ran) above, caption (source file) below, legend in the headroom."""
    ax.set_title(wrapped(title, 70), fontsize=9)
    ax.text(0.5, -0.2, wrapped(caption(path, doc), 100), transform=ax.transAxes, ha="center", va="top", fontsize=7.5)
    ax.grid(True, alpha=0.3)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
    ax.legend(fontsize=7.5, loc="upper center", ncol=min(3, len(ax.get_legend_handles_labels()[1])))


def throughput_figure(paths: list[Path]) -> Figure:
    fig, axes = figure(len(paths))
    for ax, path in zip(axes, paths):
        doc = json.loads(path.read_text())
        title, series = batch_series(doc)
        for label, points in series.items():
            batches, rates = zip(*points)
            ax.plot(batches, rates, marker="o", linestyle="--" if label.endswith("fp8") else "-", label=label)
        batches = sorted({b for points in series.values() for b, _ in points})
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch size (images per forward pass)")
        ax.set_ylabel("throughput (images/s)")
        label_panel(ax, title, path, doc)
    return fig


def load_figure(paths: list[Path]) -> Figure:
    fig, axes = figure(len(paths))
    for ax, path in zip(axes, paths):
        doc = json.loads(path.read_text())
        title, points = load_points(doc)
        _, answered, p50, p99 = zip(*points)
        ax.vlines(answered, p50, p99, color="0.7", linewidth=1)
        ax.plot(answered, p50, "o", label="p50 latency")
        ax.plot(answered, p99, "s", label="p99 latency")
        for load, x, _, y in points:
            ax.annotate(load, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7.5)
        ax.set_xlim(0, max(answered) * 1.3)
        ax.set_xlabel("answered load (images/s; label: load offered)")
        ax.set_ylabel("latency per request (ms)")
        label_panel(ax, title, path, doc)
    return fig


def write(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", metadata={"Software": None})  # no matplotlib version: no churn
    return path


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--throughput", nargs="+", type=Path, default=[RESULTS / n for n in THROUGHPUT])
    ap.add_argument("--load", nargs="+", type=Path, default=[RESULTS / n for n in LOAD])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    written = [
        write(throughput_figure(args.throughput), args.out / "throughput_vs_batch.png"),
        write(load_figure(args.load), args.out / "latency_vs_load.png"),
    ]
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
