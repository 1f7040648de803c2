"""Model-only images/s: PyTorch (fp32, and fp16 on a GPU) against ONNX Runtime on the exported graph.

"Model-only" means a normalised N x 3 x H x W batch already in place, timed to the logits (the
same graph for both: `export.onnx_export` without argmax), so decoding, resizing and HTTP are excluded.
PyTorch runs as the service's torch backend does (channels_last, cudnn.benchmark on CUDA).
ONNX Runtime uses the best provider installed for the device (`export.engines.ort_session`); on a GPU box
without onnxruntime-gpu that is the CPU provider, shown for reference. Prints a table and writes
JSON to bench/results/.

    PYTHONPATH=. python bench/export_bench.py                      # CPU, default model, 360x480, batch 1 and 4
    PYTHONPATH=. python bench/export_bench.py --device cuda --batches 1 4 8
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from export.engines.dependencies import MissingDependency, require
from export.engines.ort_session import create_session
from export.onnx_export import export_onnx, sample_hw
from model import load_model
from model.cli import argument_parser


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _img_s(fn, batch: int, iters: int, warmup: int, repeats: int, device: torch.device) -> float:
    """Best of `repeats` timed rounds, as `timeit` advises: other load only ever slows a round."""
    for _ in range(warmup):
        fn()
    best = 0.0
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        _sync(device)
        best = max(best, iters * batch / (time.perf_counter() - start))
    return best


def main() -> None:
    ap = argument_parser("bench/export_bench.py", __doc__.split("\n\n")[0])
    ap.add_argument("--model", help="config name or checkpoint (default: the built-in default model)")
    ap.add_argument("--onnx", type=Path, help="reuse this exported logits graph instead of exporting one")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="batch sizes to time")
    ap.add_argument("--iters", type=int, default=5, help="forward passes per timed round")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds; the best is reported")
    ap.add_argument("--warmup", type=int, default=3, help="untimed forward passes first")
    ap.add_argument("--json", type=Path, help="default: bench/results/export_bench_<cpu|gpu>.json")
    args = ap.parse_args()
    try:
        require("the export benchmark", "onnx", "onnxscript", "onnxruntime")
    except MissingDependency as exc:
        sys.exit(f"error: {exc}")

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    net = load_model(args.model)
    h, w = sample_hw(net.config)
    onnx_path = args.onnx or Path(tempfile.mkdtemp()) / "bench.onnx"
    if not args.onnx:
        export_onnx(net, onnx_path)
    session = create_session(onnx_path, str(device))
    engines = {"torch fp32": torch.float32}
    if device.type == "cuda":
        engines["torch fp16"] = torch.float16

    rows = []
    for batch in args.batches:
        x = torch.randn(batch, 3, h, w)
        for engine, dtype in engines.items():
            model = net.to(device, dtype, memory_format=torch.channels_last).eval()
            xd = x.to(device, dtype).contiguous(memory_format=torch.channels_last)

            @torch.inference_mode()
            def forward(model=model, xd=xd):
                model(xd)

            rows.append({"engine": engine, "batch": batch, "img_s": _img_s(forward, batch, args.iters, args.warmup, args.repeats, device)})
        feed = {session.get_inputs()[0].name: x.numpy()}
        cpu = torch.device("cpu")  # session.run returns host arrays: nothing left to synchronise
        ort_s = _img_s(lambda feed=feed: session.run(None, feed), batch, args.iters, args.warmup, args.repeats, cpu)
        rows.append({"engine": f"onnxruntime ({session.get_providers()[0]})", "batch": batch, "img_s": ort_s})

    import onnxruntime

    result = {
        "config": net.config.name,
        "input_hw": [h, w],
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),  # other work on the box skews CPU numbers
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "iters": args.iters,
        "repeats": args.repeats,
        "rows": [{**r, "img_s": round(r["img_s"], 2), "ms_per_batch": round(1000 * r["batch"] / r["img_s"], 2)} for r in rows],
    }
    print(f"\n{result['device']} ({result['cpu_count']} CPUs), {net.config.name} at {h}x{w}, model only")
    print("| engine | batch | images/s | ms/batch |")
    print("|---|--:|--:|--:|")
    for r in result["rows"]:
        print(f"| {r['engine']} | {r['batch']} | {r['img_s']:.2f} | {r['ms_per_batch']:.1f} |")
    out = args.json or Path("bench/results") / f"export_bench_{'gpu' if device.type == 'cuda' else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
