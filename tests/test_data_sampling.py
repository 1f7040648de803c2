"""Batches are a pure function of (seed, iteration, rank, world): resumable and world-size independent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model import DEFAULT_MODEL, get_config
from model.training.data import TrainBatches, TrainPipeline, open_dataset
from model.training.data.sampling import index_at, positions


def test_each_epoch_is_a_permutation_and_epochs_differ():
    n = 7
    epochs = [[index_at(e * n + i, n, seed=3) for i in range(n)] for e in range(3)]
    assert all(sorted(ep) == list(range(n)) for ep in epochs)
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]
    assert epochs[0] != [index_at(i, n, seed=4) for i in range(n)]


def test_ranks_split_the_global_batch():
    global_batch = list(positions(5, batch=4, rank=0, world=1))
    assert list(positions(5, 2, 0, 2)) + list(positions(5, 2, 1, 2)) == global_batch


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for i in range(5):
        for sub, arr in (("images", rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)),
                         ("labels", rng.integers(0, 3, (30, 40), dtype=np.uint8))):  # fmt: skip
            (root / sub / "train").mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / sub / "train" / f"{i}.png")
    return open_dataset(root, "train")


def test_two_ranks_see_exactly_the_single_process_batch(tiny_tree):
    pipe = TrainPipeline.from_config(get_config(DEFAULT_MODEL), scale=(40, 30), crop_size=(24, 32))
    single = TrainBatches(tiny_tree, pipe, batch=4, seed=1)
    ranks = [TrainBatches(tiny_tree, pipe, batch=2, seed=1, rank=r, world=2) for r in range(2)]
    for k in (0, 3):
        img, label = single.batch(k)
        parts = [r.batch(k) for r in ranks]
        assert torch.equal(img, torch.cat([p[0] for p in parts])) and torch.equal(label, torch.cat([p[1] for p in parts]))
    assert not torch.equal(single.batch(0)[0], single.batch(1)[0])


def test_disk_workers_produce_the_in_memory_batches(tiny_tree):
    pipe = TrainPipeline.from_config(get_config(DEFAULT_MODEL), scale=(40, 30), crop_size=(24, 32))
    memory = TrainBatches(tiny_tree, pipe, batch=2, seed=2)
    disk = TrainBatches(tiny_tree, pipe, batch=2, seed=2, workers=1)
    for (img, label), k in zip(disk.batches(2, 4), (2, 3)):
        ref_img, ref_label = memory.batch(k)
        assert torch.equal(label, ref_label) and torch.allclose(img, ref_img)
