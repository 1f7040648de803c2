"""Every dataset layout on a tiny synthetic tree, listed exactly as mmseg's own dataset class lists it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmseg_ref import import_mmseg
from model.training.data import LAYOUTS, DatasetLayoutError, detect_layout, open_dataset

# layout -> (files relative to the root we pass, split files {path: names}, mmseg class, per-split mmseg kwargs)
CITY = "leftImg8bit/{s}/aachen/aachen_00000{i}_000019"
TREES = {
    "cityscapes": (
        [f"{CITY}_leftImg8bit.png".format(s=s, i=i) for s in ("train", "val") for i in (1, 2)]
        + [f"gtFine/{s}/aachen/aachen_00000{i}_000019_gtFine_labelTrainIds.png" for s in ("train", "val") for i in (1, 2)]
        + ["gtFine/train/aachen/aachen_000001_000019_gtFine_color.png"],
        {},
        "CityscapesDataset",
        {s: dict(img_path=f"leftImg8bit/{s}", seg_map_path=f"gtFine/{s}") for s in ("train", "val")},
    ),
    "ade20k": (
        [f"ADEChallengeData2016/images/{d}/ADE_{d}_0000000{i}.jpg" for d in ("training", "validation") for i in (1, 2)]
        + [f"ADEChallengeData2016/annotations/{d}/ADE_{d}_0000000{i}.png" for d in ("training", "validation") for i in (1, 2)],
        {},
        "ADE20KDataset",
        {s: dict(img_path=f"ADEChallengeData2016/images/{d}", seg_map_path=f"ADEChallengeData2016/annotations/{d}")
         for s, d in (("train", "training"), ("val", "validation"))},  # fmt: skip
    ),
    "voc12aug": (
        [f"VOCdevkit/VOC2012/JPEGImages/{n}.jpg" for n in ("2007_000032", "2007_000039", "2008_000002", "2008_000003")]
        + [f"VOCdevkit/VOC2012/SegmentationClass/{n}.png" for n in ("2007_000032", "2007_000039")]
        + [f"VOCdevkit/VOC2012/SegmentationClassAug/{n}.png" for n in ("2008_000002", "2008_000003", "2007_000032")],
        {
            "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt": ["2007_000032"],
            "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt": ["2007_000039"],
            "VOCdevkit/VOC2012/ImageSets/Segmentation/aug.txt": ["2008_000002", "2008_000003"],
        },
        "PascalVOCDataset",
        None,  # built below: train is a concatenation
    ),
    "pascal_context": (
        [f"VOCdevkit/VOC2010/JPEGImages/2008_00000{i}.jpg" for i in (1, 2, 3)]
        + [f"VOCdevkit/VOC2010/SegmentationClassContext/2008_00000{i}.png" for i in (1, 2, 3)],
        {
            "VOCdevkit/VOC2010/ImageSets/SegmentationContext/train.txt": ["2008_000001", "2008_000003"],
            "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt": ["2008_000002"],
        },
        "PascalContextDataset",
        {s: dict(img_path="VOCdevkit/VOC2010/JPEGImages", seg_map_path="VOCdevkit/VOC2010/SegmentationClassContext",
                 ann_file=f"VOCdevkit/VOC2010/ImageSets/SegmentationContext/{s}.txt") for s in ("train", "val")},  # fmt: skip
    ),
    "isaid": (
        [f"img_dir/{s}/P000{i}_0_896_0_896.png" for s in ("train", "val") for i in (1, 2)]
        + [f"ann_dir/{s}/P000{i}_0_896_0_896_instance_color_RGB.png" for s in ("train", "val") for i in (1, 2)],
        {},
        "iSAIDDataset",
        {s: dict(img_path=f"img_dir/{s}", seg_map_path=f"ann_dir/{s}") for s in ("train", "val")},
    ),
    "mapillary_v1": (
        [f"{d}/images/m{i}.jpg" for d in ("training", "validation") for i in (1, 2)]
        + [f"{d}/v1.2/labels/m{i}.png" for d in ("training", "validation") for i in (1, 2)]
        + ["training/v2.0/labels/m1.png"],
        {},
        "MapillaryDataset_v1",
        {s: dict(img_path=f"{d}/images", seg_map_path=f"{d}/v1.2/labels") for s, d in (("train", "training"), ("val", "validation"))},
    ),
    "generic": (
        [f"images/{s}/f{i}.jpg" for s in ("train", "val") for i in (1, 2, 3)]
        + [f"labels/{s}/f{i}.png" for s in ("train", "val") for i in (1, 2, 3)],
        {},
        "BaseSegDataset",
        {s: dict(img_path=f"images/{s}", seg_map_path=f"labels/{s}") for s in ("train", "val")},
    ),
}
_ISPRS = (
    [f"img_dir/{s}/t{i}.png" for s in ("train", "val") for i in (1, 2)] + [f"ann_dir/{s}/t{i}.png" for s in ("train", "val") for i in (1, 2)],
    {},
)
ISPRS_SPLITS = {s: dict(img_path=f"img_dir/{s}", seg_map_path=f"ann_dir/{s}") for s in ("train", "val")}
TREES["loveda"] = (*_ISPRS, "LoveDADataset", ISPRS_SPLITS)
TREES["potsdam"] = (*_ISPRS, "PotsdamDataset", ISPRS_SPLITS)
TREES["vaihingen"] = (*_ISPRS, "ISPRSDataset", ISPRS_SPLITS)
TREES["pascal_context_59"] = (*TREES["pascal_context"][:2], "PascalContextDataset59", TREES["pascal_context"][3])


def make_tree(root: Path, layout: str) -> Path:
    files, split_files, _, _ = TREES[layout]
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 6), np.uint8)).save(path)
    for rel, names in split_files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("\n".join(names) + "\n")
    return root


def mmseg_pairs(root: Path, layout: str, split: str) -> tuple[list[tuple[str, str]], bool]:
    import_mmseg()
    import mmseg.datasets as D

    _, _, cls_name, splits = TREES[layout]
    cls = getattr(D, cls_name)
    if layout == "voc12aug":
        base = root / "VOCdevkit/VOC2012"
        parts = [("SegmentationClass", f"ImageSets/Segmentation/{split}.txt")]
        if split == "train":
            parts.append(("SegmentationClassAug", "ImageSets/Segmentation/aug.txt"))
        datasets = [cls(data_root=str(base), data_prefix=dict(img_path="JPEGImages", seg_map_path=seg), ann_file=ann,
                        pipeline=[], lazy_init=True) for seg, ann in parts]  # fmt: skip
    else:
        kwargs = dict(splits[split])
        ann_file = kwargs.pop("ann_file", "")
        extra = {"img_suffix": ".jpg", "seg_map_suffix": ".png"} if layout == "generic" else {}
        datasets = [cls(data_root=str(root), data_prefix=kwargs, ann_file=ann_file, pipeline=[], lazy_init=True, **extra)]
    rows = [row for ds in datasets for row in ds.load_data_list()]
    return [(r["img_path"], r["seg_map_path"]) for r in rows], datasets[0].reduce_zero_label


@pytest.mark.parametrize("layout", sorted(TREES))
@pytest.mark.parametrize("split", ["train", "val"])
def test_pairs_match_mmseg_dataset_classes(tmp_path, layout, split):
    root = make_tree(tmp_path, layout)
    ours = open_dataset(root, split, layout)
    pairs, reduce_zero_label = mmseg_pairs(root, layout, split)
    assert [(str(i), str(s)) for i, s in ours.pairs] == pairs
    assert ours.reduce_zero_label == reduce_zero_label == LAYOUTS[layout].reduce_zero_label
    assert len(ours) == len(pairs) > 0


@pytest.mark.parametrize("layout", ["cityscapes", "ade20k", "voc12aug", "pascal_context", "isaid", "mapillary_v1", "generic", "loveda"])
def test_layout_is_detected_from_the_tree(tmp_path, layout):
    assert detect_layout(make_tree(tmp_path, layout)) == layout


def test_missing_label_fails_before_training(tmp_path):
    root = make_tree(tmp_path, "generic")
    (root / "labels/train/f2.png").unlink()
    with pytest.raises(DatasetLayoutError, match="1 label files missing"):
        open_dataset(root, "train")


def test_unknown_tree_and_generic_override(tmp_path):
    with pytest.raises(DatasetLayoutError):
        detect_layout(tmp_path)
    root = make_tree(tmp_path, "generic")
    assert open_dataset(root, "val", reduce_zero_label=True).reduce_zero_label
    # Images of any common type pair with <stem>.png labels; other files are not samples.
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(root / "images/val/f4.png")
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(root / "labels/val/f4.png")
    (root / "images/val/notes.txt").write_text("not an image")
    assert [p[0].name for p in open_dataset(root, "val").pairs] == ["f1.jpg", "f2.jpg", "f3.jpg", "f4.png"]


def test_a_generic_tree_may_hold_a_test_split(tmp_path):
    """images/test + labels/test (CamVid's held-out split, where a user has it) read like val."""
    root = make_tree(tmp_path, "generic")
    for rel in ("images/test/t1.jpg", "images/test/t2.jpg", "labels/test/t1.png", "labels/test/t2.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 6), np.uint8)).save(root / rel)
    test = open_dataset(root, "test")
    assert [(i.relative_to(root).as_posix(), s.relative_to(root).as_posix()) for i, s in test.pairs] == [
        ("images/test/t1.jpg", "labels/test/t1.png"), ("images/test/t2.jpg", "labels/test/t2.png")]  # fmt: skip
    assert len(open_dataset(root, "val+test")) == 5


def test_splits_join_and_cross_validation_folds_partition_the_train_split(camvid_dir):
    train = open_dataset(camvid_dir, "train").pairs
    val = open_dataset(camvid_dir, "val").pairs
    assert open_dataset(camvid_dir, "train+val").pairs == train + val
    folds = [open_dataset(camvid_dir, f"train%5={i}").pairs for i in range(5)]
    assert [p for fold in folds for p in fold] == list(train)  # contiguous blocks, in order, covering it once
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    rest = open_dataset(camvid_dir, "train%5!=2").pairs
    assert set(rest) == set(train) - set(folds[2]) and len(rest) + len(folds[2]) == len(train)
    assert open_dataset(camvid_dir, "train%5!=2+val").pairs == rest + val
    for bad in ("train%5=5", "train%", "train-val", "train:", "train:Seq05VD", "train:!0"):
        with pytest.raises(KeyError):
            open_dataset(camvid_dir, bad)
    with pytest.raises(DatasetLayoutError, match="missing image folder .*images/test"):
        open_dataset(camvid_dir, "test")  # the sample has no test split; the error says where it would be


def test_sequence_folds_hold_out_whole_camvid_sequences(camvid_dir):
    """``train:P`` / ``train:!P`` split by file-name prefix: CamVid's frames are named after their
    video sequence, so a fold can hold out a whole sequence, as the test split's unseen one is."""
    train = open_dataset(camvid_dir, "train").pairs
    sequences = sorted({img.name.split("_")[0] for img, _ in train})
    assert len(sequences) >= 2
    held = {s: open_dataset(camvid_dir, f"train:{s}").pairs for s in sequences}
    assert sum(len(p) for p in held.values()) == len(train)
    for s, pairs in held.items():
        assert all(img.name.startswith(s + "_") for img, _ in pairs)
        rest = open_dataset(camvid_dir, f"train:!{s}").pairs
        assert set(rest) == set(train) - set(pairs) and not any(img.name.startswith(s) for img, _ in rest)
    assert open_dataset(camvid_dir, f"train:!{sequences[0]}+val").pairs[-1] == open_dataset(camvid_dir, "val").pairs[-1]
