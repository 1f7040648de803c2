"""`model.training.train` on a tiny synthetic tree, on CPU: the loss falls, resume is bit-identical, torchrun works."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model import DEFAULT_MODEL, build_model, get_config, load_model
from model.checkpoint import DEFAULT_WEIGHTS
from model.training.crossval import main as crossval_main
from model.training.evaluate import main as evaluate_main
from model.training.schedule import Deadline
from model.training.state import load_state, portable_state, save_state
from model.training.train import load_initial_weights
from model.training.train import main as train_main

REPO = Path(__file__).resolve().parent.parent
TINY = ["--crop", "48", "64", "--scale", "64", "48", "--batch", "2", "--device", "cpu", "--log-interval", "5"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Rectangles of 3 classes whose colours give them away, plus noise: learnable in a few steps."""
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            label = np.zeros((48, 64), np.uint8)
            for c in (1, 2):
                y, x = rng.integers(0, 30), rng.integers(0, 40)
                label[y : y + 18, x : x + 24] = c
            label[:2] = 255
            img = np.clip(colours[label.clip(max=2)] + rng.normal(0, 25, (48, 64, 3)), 0, 255).astype(np.uint8)
            for sub, arr in (("images", img), ("labels", label)):
                (root / sub / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(root / sub / split / f"{i}.png")
    return root


def train_log(work_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (work_dir / "log.jsonl").read_text().splitlines()]


def test_loss_falls_and_best_model_is_exported(tree, tmp_path):
    args = [DEFAULT_MODEL, "--data", str(tree), "--work-dir", str(tmp_path), "--iters", "40", "--lr", "0.02",
            "--val-interval", "40", *TINY]  # fmt: skip
    assert train_main(args) == 0
    losses = [r["loss"] for r in train_log(tmp_path) if r["kind"] == "train"]
    assert len(losses) == 8 and np.mean(losses[-4:]) < 0.6 * losses[0], losses  # ~2.5 -> ~0.9
    val = [r for r in train_log(tmp_path) if r["kind"] == "val"]
    assert len(val) == 1 and val[0]["mIoU"] > 0
    raw = torch.load(tmp_path / "best_model.pth", weights_only=True)
    assert all(v.dtype == torch.float16 for v in raw["state_dict"].values() if v.is_floating_point())
    assert not any(k.startswith("auxiliary_head.") for k in raw["state_dict"])
    net = load_model(tmp_path / "best_model.pth")
    assert net.config.name == DEFAULT_MODEL and net.meta["iterations"] == 40
    assert net.meta["val"]["mIoU"] == val[0]["mIoU"] and net.meta["recipe"]["lr"] == 0.02


def test_resume_continues_bit_identically(tree, tmp_path):
    common = [DEFAULT_MODEL, "--data", str(tree), "--val-data", "none", "--iters", "6", "--ckpt-interval", "3", *TINY]
    train_main([*common, "--work-dir", str(tmp_path / "a")])
    assert sorted(p.name for p in (tmp_path / "a").glob("iter_*.pth")) == ["iter_3.pth", "iter_6.pth"]
    # Without validation the schedule's last weights are still exported: the final model of a train+val run.
    final = load_model(tmp_path / "a" / "final_model.pth")
    assert final.meta["iterations"] == 6 and final.meta["val"] is None and not (tmp_path / "a" / "best_model.pth").exists()
    last = load_state(tmp_path / "a" / "iter_6.pth")["model"]["decode_head.conv_seg.weight"]
    assert torch.equal(final.state_dict()["decode_head.conv_seg.weight"], last.half().float())
    train_main([*common, "--work-dir", str(tmp_path / "b"), "--resume", str(tmp_path / "a" / "iter_3.pth")])
    full, resumed = load_state(tmp_path / "a" / "iter_6.pth"), load_state(tmp_path / "b" / "iter_6.pth")
    assert resumed["iteration"] == 6
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for key, value in full["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], resumed["optimizer"]["state"][key]["momentum_buffer"])
    # The saved iteration-3 state differs from the end state: training did happen in between.
    assert not torch.equal(load_state(tmp_path / "a" / "iter_3.pth")["model"]["decode_head.conv_seg.weight"],
                           full["model"]["decode_head.conv_seg.weight"])  # fmt: skip
    # The weights' provenance names the call that started the run, then the calls that resumed it.
    assert str(tmp_path / "a") in final.meta["command"] and "resumed_with" not in final.meta
    chained = load_model(tmp_path / "b" / "final_model.pth").meta
    assert chained["command"] == final.meta["command"]
    assert len(chained["resumed_with"]) == 1 and str(tmp_path / "b") in chained["resumed_with"][0]
    # A run state written before the command history (its own call's argv only) still resumes.
    legacy = load_state(tmp_path / "a" / "iter_3.pth")
    legacy["argv"] = legacy.pop("commands")[0]
    save_state(tmp_path / "legacy.pth", **{k: v for k, v in legacy.items() if k != "format"})
    train_main([*common, "--work-dir", str(tmp_path / "c"), "--resume", str(tmp_path / "legacy.pth")])
    assert load_model(tmp_path / "c" / "final_model.pth").meta["command"] == final.meta["command"]


def test_a_portable_state_is_a_quarter_of_the_size_and_a_run_resumed_from_it_keeps_learning(tree, tmp_path):
    common = [DEFAULT_MODEL, "--data", str(tree), "--val-data", "none", "--iters", "40", "--ckpt-interval", "20",
              "--lr", "0.02", *TINY]  # fmt: skip
    train_main([*common, "--work-dir", str(tmp_path / "a"), "--portable-state"])
    full, portable = load_state(tmp_path / "a" / "iter_40.pth"), load_state(tmp_path / "a" / "portable_state.pth")
    assert portable["iteration"] == 40 and portable["optimizer"] is None
    for key, value in full["model"].items():
        assert torch.equal(portable["model"][key], value.half() if value.is_floating_point() else value), key
    sizes = [(tmp_path / "a" / name).stat().st_size for name in ("portable_state.pth", "iter_40.pth")]
    assert sizes[0] < 0.3 * sizes[1], sizes
    # Resumed at iteration 20 from a portable state, the run goes on from the learnt weights (its losses
    # stay where the uninterrupted run's are, ~0.9, not back at a fresh start's ~2.5), in fp32 again.
    save_state(tmp_path / "p20.pth", **portable_state(load_state(tmp_path / "a" / "iter_20.pth")))
    train_main([*common, "--work-dir", str(tmp_path / "b"), "--resume", str(tmp_path / "p20.pth")])
    resumed = load_state(tmp_path / "b" / "iter_40.pth")
    assert resumed["iteration"] == 40 and resumed["model"]["decode_head.conv_seg.weight"].dtype == torch.float32
    assert resumed["optimizer"]["state"], "SGD momentum rebuilt after the resume"
    first = next(r["loss"] for r in train_log(tmp_path / "a") if r["kind"] == "train")
    after = [r["loss"] for r in train_log(tmp_path / "b") if r["kind"] == "train"]
    assert len(after) == 4 and np.mean(after) < 0.6 * first, (after, first)


def test_the_final_run_script_survives_losing_the_machine_between_calls(tree, tmp_path):
    """scripts/train_camvid_final.sh twice, the first call's machine lost in between (its work dir
    gone): the second goes on from the portable state the first left in OUT_DIR and finishes. CONFIG
    picks the network (here ResNet-18 "b", not the built-in's v1c)."""
    work, state_in, out = tmp_path / "work", tmp_path / "carried", tmp_path / "out"
    config = "deeplabv3plus_r18b-d8_camvid-360x480"
    env = {**os.environ, "DATA": str(tree), "WORK_DIR": str(work), "STATE_IN": str(state_in), "OUT_DIR": str(out), "CONFIG": config,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}  # fmt: skip
    script = [str(REPO / "scripts" / "train_camvid_final.sh")]
    tiny = ["--val-data", "none", "--iters", "4", *TINY[:-1], "1"]  # log (and check the time) every iteration

    def call(minutes: str) -> None:
        proc = subprocess.run(["bash", *script, minutes, *tiny], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    call("0.00001")  # out of time at the first check: saves after iteration 1
    assert load_state(work / "portable_state.pth")["iteration"] == 1 and not list(out.glob("final_model*"))
    shutil.rmtree(work)
    state_in.mkdir()
    for part in out.glob("portable_state.pth.part*"):
        shutil.move(part, state_in / part.name)
    call("10")
    log = train_log(work)
    assert log[0]["kind"] == "start" and log[0]["iter"] == 1 and log[-1]["kind"] == "end" and log[-1]["iter"] == 4
    assert log[0]["config"] == config
    (tmp_path / "final.pth").write_bytes(b"".join(p.read_bytes() for p in sorted(out.glob("final_model.pth.part*"))))
    final = load_model(tmp_path / "final.pth")
    assert final.meta["iterations"] == 4 and final.config.name == config


def test_test_scale_is_the_validation_size_and_travels_with_the_exported_model(tree, tmp_path, capsys):
    args = [DEFAULT_MODEL, "--data", str(tree), "--work-dir", str(tmp_path), "--iters", "2", "--val-interval", "2",
            "--test-scale", "96x72", *TINY]  # fmt: skip
    assert train_main(args) == 0
    for name in ("best_model.pth", "final_model.pth"):
        net = load_model(tmp_path / name)
        assert net.meta["test_scale"] == [96, 72] and net.config.test_scale == (96, 72), name
    assert get_config(DEFAULT_MODEL).test_scale != (96, 72)
    with pytest.raises(SystemExit):
        train_main([*args[: -len(TINY) - 2], "--test-scale", "96", *TINY])
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_time_limit_counts_from_the_start_and_looks_one_window_ahead():
    """A 1-minute limit from t=100: a 5 s window that would end at 158 is fine, one ending at 161 is
    not (the run must save before the limit, not at the first check past it); no limit, never."""
    limit = Deadline(1.0, started=100.0)
    assert not limit.near(5.0, now=153.0) and limit.near(5.0, now=156.0) and limit.near(0.0, now=160.5)
    assert not Deadline(None, started=0.0).near(1e9, now=1e9)


def test_two_process_gloo_torchrun_stops_together_on_time_limit(tree, tmp_path):
    """Two CPU processes; `--max-minutes 0` makes both stop, and rank 0 save, at the first log step."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "model.training.train",
           DEFAULT_MODEL, "--data", str(tree), "--val-data", "none", "--iters", "20", "--max-minutes", "0",
           "--work-dir", str(tmp_path), *TINY]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = train_log(tmp_path)[0]
    assert start["kind"] == "start" and start["world"] == 2
    assert [p.name for p in tmp_path.glob("iter_*.pth")] == ["iter_5.pth"]
    assert load_state(tmp_path / "iter_5.pth")["iteration"] == 5


def test_options_beyond_mmseg_defaults_run_and_ema_is_what_gets_exported(tree, tmp_path):
    args = [DEFAULT_MODEL, "--data", str(tree), "--work-dir", str(tmp_path), "--iters", "3", "--val-interval", "3",
            "--ema", "0.5", "--class-weight", "median-freq", "--ohem-min-kept", "100", "--workers", "1", *TINY]  # fmt: skip
    assert train_main(args) == 0
    state = load_state(tmp_path / "iter_3.pth")
    exported = torch.load(tmp_path / "best_model.pth", weights_only=True)["state_dict"]
    key = "decode_head.conv_seg.weight"
    assert torch.equal(exported[key], state["ema"]["module." + key].half())
    assert not torch.equal(exported[key], state["model"][key].half())


def test_load_from_keeps_what_fits_another_dataset(tmp_path):
    """Fine-tuning the shipped CamVid model on a 6-class dataset: all but the classifiers carry over."""
    src = load_model()
    net = build_model(get_config("deeplabv3plus_r18-d8_4xb4-80k_potsdam-512x512"))
    skipped = load_initial_weights(net, str(DEFAULT_WEIGHTS))
    assert "decode_head.conv_seg.weight" in skipped and all(k.startswith(("decode_head.conv_seg", "auxiliary_head")) for k in skipped)
    assert torch.equal(net.state_dict()["backbone.layer4.1.conv2.weight"], src.state_dict()["backbone.layer4.1.conv2.weight"])


def test_cross_validation_trains_each_fold_on_the_rest_and_scores_its_last_iteration(tree, tmp_path):
    common = [DEFAULT_MODEL, "--data", str(tree), "--folds", "2", "--work-dir", str(tmp_path)]
    first = crossval_main([*common, "--only", "0", "--iters", "4", "--val-interval", "2", "--seed", "1", *TINY])
    assert list(first["folds"]) == ["0"] and first["mIoU"]["std"] is None
    summary = crossval_main([*common, "--only", "1", "--iters", "4", "--val-interval", "2", "--seed", "1", *TINY])
    assert list(summary["folds"]) == ["0", "1"] == [k for k in json.loads((tmp_path / "crossval.json").read_text())["folds"]]
    for fold in (0, 1):
        log = train_log(tmp_path / f"fold{fold}")
        assert next(r for r in log if r["kind"] == "start")["images"] == 2  # the other half of the 4 train images
        vals = [r for r in log if r["kind"] == "val"]
        assert [r["iter"] for r in vals] == [2, 4] and summary["folds"][str(fold)]["mIoU"] == vals[-1]["mIoU"]  # the last, not the best
    scores = [summary["folds"][f]["mIoU"] for f in ("0", "1")]
    assert summary["mIoU"]["mean"] == round(sum(scores) / 2, 2)
    assert set(summary["per_class_IoU"]) == set(get_config(DEFAULT_MODEL).dataset.classes)


def test_cross_validation_by_name_prefix_holds_out_each_group(tree, tmp_path):
    """``--groups``: leave one file-name prefix out (CamVid's sequences); the tree's train images are 0..3.png."""
    common = [DEFAULT_MODEL, "--data", str(tree), "--groups", "0", "1", "--work-dir", str(tmp_path)]
    summary = crossval_main([*common, "--only", "1", "--iters", "2", "--val-interval", "2", *TINY])
    assert list(summary["folds"]) == ["1"] and summary["folds_total"] == 2
    start = next(r for r in train_log(tmp_path / "fold1") if r["kind"] == "start")
    assert start["images"] == 3 and "train:!1" in start["argv"] and "train:1" in start["argv"]
    with pytest.raises(SystemExit):
        crossval_main([*common, "--only", "2"])


def test_cross_validation_scores_the_held_out_group_at_each_test_scale(tree, tmp_path):
    """``--test-scales``: each finished fold's final weights on its held-out images at each size, as
    ``evaluate`` scores them."""
    common = [DEFAULT_MODEL, "--data", str(tree), "--groups", "0", "1", "--work-dir", str(tmp_path)]
    summary = crossval_main([*common, "--only", "0", "--iters", "40", "--lr", "0.02", "--val-interval", "40", *TINY, "--test-scales", "64x48", "32x24"])
    by_scale = summary["mIoU_by_test_scale"]
    assert list(by_scale) == ["64x48", "32x24"] and json.loads((tmp_path / "crossval.json").read_text())["mIoU_by_test_scale"] == by_scale
    for scale in ("64x48", "32x24"):
        out = tmp_path / f"{scale}.json"
        evaluate_main([str(tmp_path / "fold0" / "final_model.pth"), "--data", str(tree), "--split", "train:0", "--test-scale", scale, "--json", str(out)])
        assert by_scale[scale]["folds"] == {"0": json.loads(out.read_text())["mIoU"]} and by_scale[scale]["mean"] == by_scale[scale]["folds"]["0"]
    assert by_scale["64x48"]["mean"] != by_scale["32x24"]["mean"]  # each size really applied (30.1 vs 24.37 measured)
    with pytest.raises(SystemExit) as refused:
        crossval_main([*common, "--test-scales", "64 by 48"])
    assert refused.value.code == 2


def test_a_recipe_is_what_the_run_parsed():
    """A script's option overridden by its caller counts once, with the caller's value (as argparse
    read it for the run); paths, time limits, resumes and the portable state are no recipe."""
    from bench.recipes import recipe

    argv = [DEFAULT_MODEL, "--data", "D", "--train-split", "train+val", "--iters", "32000", "--max-minutes", "9",
            "--portable-state", "--resume", "--channels-last", "--train-split", "train:!0001TP", "--iters", "7000",
            "--crop", "48", "64"]  # fmt: skip
    assert recipe(argv) == "--train-split 'train:!0001TP' --iters 7000 --crop 48 64 --channels-last"
    assert recipe([DEFAULT_MODEL, "--data", "D", "--lr", "0.01"]) == ""  # the default learning rate


def test_recipes_table_scores_each_run_at_its_last_validation(tree, tmp_path, capsys):
    from bench.recipes import main as recipes_main

    for name, extra in (("plain", []), ("weighted", ["--class-weight", "median-freq"])):
        train_main([DEFAULT_MODEL, "--data", str(tree), "--work-dir", str(tmp_path / name), "--iters", "4",
                    "--val-interval", "2", *TINY, *extra])  # fmt: skip
    rows = recipes_main([str(tmp_path / "plain"), str(tmp_path / "weighted"), "--baseline", "50", "--out", str(tmp_path / "r.json")])
    for row, name in zip(rows, ("plain", "weighted")):
        last = [r for r in train_log(tmp_path / name) if r["kind"] == "val"][-1]
        assert row["iter"] == 4 and row["mIoU"] == last["mIoU"]  # the last validation, not the best of 2 and 4
        assert "--work-dir" not in row["recipe"] and "--data" not in row["recipe"]
    assert rows[1]["recipe"].endswith("--class-weight median-freq") and not rows[0]["recipe"].endswith("median-freq")
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == rows
    assert f"{rows[0]['mIoU'] - 50:+.2f}" in capsys.readouterr().out
