"""mIoU of the built-in model on CamVid val: fp32 reference, fast fp32, FP8 layer4 (static bounds), FP8 layer4 + ASPP bottleneck (CPU reference path of the FP8 kernels)."""
import copy, json, sys, time
import torch, torch.nn.functional as F
from model import DEFAULT_MODEL, load_model
from model.accel.fast import optimize_for_inference, use_fp8
from model.pipeline.inference import Segmenter
from model.training.evaluate import dataset_for, evaluate

class Padded(torch.nn.Module):
    def __init__(self, fast):
        super().__init__(); self.fast = fast; self.config = fast.config; self.meta = fast.meta
    def forward(self, x):
        return self.fast(F.pad(x, (0, 0, 0, 0, 0, self.fast.input_channels - x.shape[1])))

net = load_model(DEFAULT_MODEL, device="cpu").eval()
fast = optimize_for_inference(net)
variants = {
    "reference fp32": net,
    "fast fp32": Padded(fast),
    "fp8 layer4": Padded(use_fp8(copy.deepcopy(fast), min_channels=10**9, stage_channels=512)),
    "fp8 layer4 + ASPP bottleneck": Padded(use_fp8(copy.deepcopy(fast), min_channels=128, stage_channels=512)),
}
ds = dataset_for(sys.argv[1], "val", None, net.config.dataset.reduce_zero_label)
rows = []
for name, v in variants.items():
    t = time.time()
    m = evaluate(Segmenter(v, device="cpu", precision="fp32"), ds, batch=4)
    d = m.as_dict(net.config.dataset.classes)
    rows.append({"variant": name, **d}); print(name, round(time.time()-t), "s", {k: d[k] for k in d if k in ("mIoU", "aAcc", "mAcc")}, flush=True)
json.dump({"model": DEFAULT_MODEL, "split": "val", "images": len(ds.pairs), "command": "python -m bench.eval_fp8_layer4 ../shared/data/camvid", "rows": rows}, open("/tmp/eval_fp8.json", "w"), indent=1)
