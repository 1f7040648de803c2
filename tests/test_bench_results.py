"""bench/RESULTS.md is generated from the committed measurements, and says what they say."""

from __future__ import annotations

import json
from pathlib import Path

from bench.results_table import RESULTS, table


def test_results_table_reports_the_committed_measurements():
    perf = json.loads((RESULTS / "perf_h100.json").read_text())
    e2e = json.loads((RESULTS / "e2e_h100_r50.json").read_text())
    text = table(perf, e2e, json.loads((RESULTS / "flops.json").read_text()))
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| R-")}
    assert set(rows) == {"R-18-D8", "R-50-D8", "R-101-D8", "R-101-D16-MG124"}
    best_r50 = max(m["img_per_s"] for m in perf["measurements"] if m["arch"] == "R-50-D8" and "optimized" in m["backend"])
    assert f"{best_r50} (" in rows["R-50-D8"] and "3.94 (V100)" in rows["R-50-D8"]
    for m in perf["measurements"] + e2e["measurements"]:  # the per-measurement schema
        assert {"config", "backend", "precision", "batch", "input", "mode", "img_per_s", "p50_ms", "p99_ms", "gpu", "torch", "date", "command"} <= set(m)


def test_committed_results_file_is_up_to_date():
    perf = json.loads((RESULTS / "perf_h100.json").read_text())
    e2e = json.loads((RESULTS / "e2e_h100_r50.json").read_text())
    expected = table(perf, e2e, json.loads((RESULTS / "flops.json").read_text()))
    assert (Path(__file__).parent.parent / "bench" / "RESULTS.md").read_text() == expected
