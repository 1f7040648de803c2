"""A/B on one GPU: R-50-D8 at 1024x2048, batch 8, CUDA graph: fp16 / fp8 bottleneck only / fp8 bottleneck + layer4."""
import copy, functools, json, os, statistics, sys
import torch
from bench.perf import realistic_weights, seeded_randn, network_input, time_forward
from bench.backbones import CONFIGS
from model import build_model, get_config
from model.accel.fast import optimize_for_inference, use_fp8, whole_image_labels
from model.accel.cuda_graphs import ShapeGraphs
from model.accel import fp8
label = sys.argv[1] if len(sys.argv) > 1 else "R-50-D8"
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 8
net = build_model(get_config(CONFIGS[label]), with_auxiliary=False).cuda()
realistic_weights(net)
rows = []
with torch.inference_mode():
    fast = optimize_for_inference(net).half().to(memory_format=torch.channels_last)
    variants = {"fp16": fast, "fp8-bottleneck": use_fp8(copy.deepcopy(fast), stage_channels=10**9), "fp8-layer4": use_fp8(copy.deepcopy(fast))}
    x1 = network_input(seeded_randn(1, 3, 1024, 2048, seed=2), fast)
    with torch.no_grad():
        ref = net(seeded_randn(1, 3, 1024, 2048, seed=2)).argmax(1)
    lab = {k: whole_image_labels(v, x1) for k, v in variants.items()}
    for k in variants:
        print(k, "agree fp32", (lab[k] == ref).float().mean().item(), "agree fp16", (lab[k] == lab["fp16"]).float().mean().item(), flush=True)
    xb = network_input(seeded_randn(batch, 3, 1024, 2048, seed=4), fast)
    graphs = {}
    for k, v in variants.items():
        g = ShapeGraphs(functools.partial(whole_image_labels, v), xb.device)
        g.capture(tuple(xb.shape), xb.dtype)
        graphs[k] = g.graph(tuple(xb.shape)).replay
    for rep in range(3):
        for k, replay in graphs.items():
            t = time_forward(lambda _: replay(), xb, 30)
            p50 = statistics.median(t)
            rows.append({"rep": rep, "variant": k, "batch": batch, "p50_ms": round(p50, 3), "img_per_s": round(batch * 1000 / p50, 1)})
            print(rows[-1], flush=True)
    # layer4 alone
    x3 = torch.randn(batch, 1024, 128, 256, device="cuda").relu().half().contiguous(memory_format=torch.channels_last)
    for k in ("fp16", "fp8-layer4"):
        st = variants[k].backbone.stages[3]
        t = time_forward(st, x3, 30)
        rows.append({"part": "layer4", "variant": k, "p50_ms": round(statistics.median(t), 3)}); print(rows[-1], flush=True)
    del graphs
    # profile of the new variant
    from torch.profiler import ProfilerActivity, profile
    fn = functools.partial(whole_image_labels, variants["fp8-layer4"])
    fn(xb); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn(xb); torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=20, max_name_column_width=80))
out = os.environ.get("OUT", "/tmp")
json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, open(f"{out}/ab_fp8_{label}.json", "w"), indent=1)
