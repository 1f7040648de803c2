"""bench/RESULTS.md is generated from the committed measurements, and says what they say."""

from __future__ import annotations

import copy
import json

from bench.kernel_variants import rate_text, row
from bench.results_table import (
    END_OF_GENERATED,
    RESULTS,
    RESULTS_MD,
    hand_written_notes,
    render,
    table,
)

PERF = json.loads((RESULTS / "perf_h100.json").read_text())
E2E = json.loads((RESULTS / "e2e_h100_r50.json").read_text())
FLOPS = json.loads((RESULTS / "flops.json").read_text())


def rows_of(text: str) -> dict[str, str]:
    return {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| R-")}


def test_results_table_reports_the_committed_measurements():
    rows = rows_of(table(PERF, E2E, FLOPS))
    assert set(rows) == {"R-18-D8", "R-50-D8", "R-101-D8", "R-101-D16-MG124"}
    best_r50 = max(m["img_per_s"] for m in PERF["measurements"] if m["arch"] == "R-50-D8" and "optimized" in m["backend"])
    assert f"{best_r50} (" in rows["R-50-D8"] and "3.94 (V100)" in rows["R-50-D8"]
    for m in PERF["measurements"] + E2E["measurements"]:  # the per-measurement schema
        assert {"config", "backend", "precision", "batch", "input", "mode", "img_per_s", "p50_ms", "p99_ms", "gpu", "torch", "date", "command"} <= set(m)


def test_no_flop_ceiling_without_a_peak_measured_in_the_same_run():
    assert "peak" not in PERF  # the committed H100 run predates the peak step
    text = table(PERF, E2E, FLOPS)
    assert "FLOP ceiling" not in text and not any(cell.strip().endswith("%") for cell in rows_of(text)["R-50-D8"].split("|")[-2:])
    measured = {**copy.deepcopy(PERF), "peak": {"dense_fp16_tflops": 700.0}}
    text = table(measured, E2E, FLOPS)
    assert "FLOP ceiling reached" in text
    # R-50-D8: 183.4 img/s x 2,818 GFLOP = 516.8 TFLOP/s, 74% of 700
    assert rows_of(text)["R-50-D8"].endswith("| 74% |")


def test_eager_fp32_is_labelled_tf32_unless_the_run_turned_tf32_off():
    assert "| 33.6 (TF32) |" in rows_of(table(PERF, E2E, FLOPS))["R-50-D8"]
    strict = copy.deepcopy(PERF)
    for m in strict["measurements"]:
        if m["precision"] == "fp32":
            m["tf32"] = False
    text = table(strict, E2E, FLOPS)
    assert "| 33.6 |" in rows_of(text)["R-50-D8"] and "(TF32)" not in text


def test_cpu_section_explains_end_to_end_above_model_alone():
    text = render(PERF, E2E)
    load = json.loads((RESULTS / "load_cpu_torch_fp32.json").read_text())
    above = [r for r in load["rows"] if r.get("vs_model_only", {}).get("fraction", 0) > 1]
    assert above, "the committed CPU load run is the case this section explains"
    assert "not an overhead figure" in text and f"{load['rows'][0]['server_inference_images_per_s']} img/s" in text


def test_committed_results_file_is_up_to_date():
    text = RESULTS_MD.read_text()
    assert text == render(PERF, E2E) + hand_written_notes(text)
    assert text.count(END_OF_GENERATED) == 1


def test_kernel_variants_rows_name_their_rate_by_its_unit():
    table_rows: list[dict] = []
    row(table_rows, "conv3x3", "s", "cudnn fp16", 2.0, 0, 0.0, flop=2 * 10**12)
    row(table_rows, "maxpool", "s", "triton", 2.0, 4 * 10**9, 0.0)
    assert table_rows[0]["tflop_per_s"] == 1000.0 and "gb_per_s" not in table_rows[0]
    assert table_rows[1]["gb_per_s"] == 2000.0 and "tflop_per_s" not in table_rows[1]
    assert [rate_text(r) for r in table_rows] == ["1000.0 TFLOP/s", "2000.0 GB/s"]
