"""Where each dataset keeps its images and labels on disk, in mmsegmentation's layouts.

A layout turns (root, split) into an ordered list of (image, label) file pairs, the way mmseg's
`BaseSegDataset.load_data_list` does: either every file with the image suffix under the image
folder (recursive, sorted by path), or the names listed in a split file. One table describes
every dataset of the seed zoo; `generic` is the plain `images/<split>` + `labels/<split>` tree
(CamVid's), so a user's own data needs no code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val")


class DatasetLayoutError(FileNotFoundError):
    """The folder does not hold the files the named layout expects."""


@dataclass(frozen=True)
class Source:
    """One mmseg `data_prefix` + suffixes (+ optional split file); `{split}` is substituted."""

    img_dir: str
    seg_dir: str
    img_suffix: str
    seg_suffix: str
    split_file: str | None = None


@dataclass(frozen=True)
class Layout:
    name: str
    reduce_zero_label: bool
    # Per split, one or more sources concatenated in order (VOC's train is train.txt + SBD aug.txt).
    splits: dict[str, tuple[Source, ...]]
    # A glob relative to the root whose match identifies this layout.
    marker: str


def _dirs(img: str, seg: str, img_suffix: str, seg_suffix: str, names: dict[str, str] | None = None):
    names = names or {s: s for s in SPLITS}
    return {s: (Source(img.format(split=n), seg.format(split=n), img_suffix, seg_suffix),) for s, n in names.items()}


def _listed(img: str, seg: str, split_dir: str, **extra: tuple[Source, ...]):
    splits = {s: (Source(img, seg, ".jpg", ".png", f"{split_dir}/{s}.txt"),) for s in SPLITS}
    for split, more in extra.items():
        splits[split] += more
    return splits


_ISPRS = ("img_dir/{split}", "ann_dir/{split}", ".png", ".png")
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            "cityscapes",
            False,
            _dirs("leftImg8bit/{split}", "gtFine/{split}", "_leftImg8bit.png", "_gtFine_labelTrainIds.png"),
            "leftImg8bit",
        ),
        Layout(
            "ade20k",
            True,
            _dirs("images/{split}", "annotations/{split}", ".jpg", ".png", {"train": "training", "val": "validation"}),
            "annotations/training",
        ),
        Layout(
            "voc12aug",
            False,
            _listed(
                "JPEGImages",
                "SegmentationClass",
                "ImageSets/Segmentation",
                train=(Source("JPEGImages", "SegmentationClassAug", ".jpg", ".png", "ImageSets/Segmentation/aug.txt"),),
            ),
            "SegmentationClassAug",
        ),
        Layout("pascal_context", False, _listed("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"), "SegmentationClassContext"),
        Layout("pascal_context_59", True, _listed("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"), "SegmentationClassContext"),
        # Before the ISPRS-style trees below, which share its folders but not its label suffix.
        Layout(
            "isaid",
            False,
            _dirs("img_dir/{split}", "ann_dir/{split}", ".png", "_instance_color_RGB.png"),
            "ann_dir/*/*_instance_color_RGB.png",
        ),
        Layout("loveda", True, _dirs(*_ISPRS), "img_dir"),
        Layout("potsdam", True, _dirs(*_ISPRS), "img_dir"),
        Layout("vaihingen", True, _dirs(*_ISPRS), "img_dir"),
        Layout(
            "mapillary_v1",
            False,
            _dirs("{split}/images", "{split}/v1.2/labels", ".jpg", ".png", {"train": "training", "val": "validation"}),
            "training/v1.2",
        ),
        # A test split too: CamVid's held-out 233 frames, where a user has them, score with --split test.
        Layout("generic", False, _dirs("images/{split}", "labels/{split}", "", ".png", {s: s for s in (*SPLITS, "test")}), "labels"),
    )
}
# mmseg's data roots sit one level above for ADE20K and VOC; accept either.
_NESTED_ROOTS = {"ade20k": "ADEChallengeData2016", "voc12aug": "VOCdevkit/VOC2012", "pascal_context": "VOCdevkit/VOC2010"}
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class SegDataset:
    """Ordered (image, label) pairs of one split, and whether labels need mmseg's zero reduction."""

    layout: str
    root: Path
    split: str
    pairs: tuple[tuple[Path, Path], ...]
    reduce_zero_label: bool

    def __len__(self) -> int:
        return len(self.pairs)


def _resolve_root(root: Path, layout: str) -> Path:
    nested = _NESTED_ROOTS.get(layout.removesuffix("_59"))
    if nested and (root / nested).is_dir():
        return root / nested
    return root


def _list_source(root: Path, src: Source) -> list[tuple[Path, Path]]:
    img_dir, seg_dir = root / src.img_dir, root / src.seg_dir
    if not img_dir.is_dir():
        raise DatasetLayoutError(f"missing image folder {img_dir}")
    if src.split_file is not None:
        names = [ln.strip() for ln in (root / src.split_file).read_text().splitlines() if ln.strip()]
        return [(img_dir / f"{n}{src.img_suffix}", seg_dir / f"{n}{src.seg_suffix}") for n in names]
    pairs = []
    for img in sorted(p for p in img_dir.rglob("*") if p.is_file()):
        rel = img.relative_to(img_dir).as_posix()
        if src.img_suffix:
            if not rel.endswith(src.img_suffix):
                continue
            stem = rel[: -len(src.img_suffix)]
        elif img.suffix.lower() in _IMAGE_EXTS:  # generic layout: any image type, label is <stem>.png
            stem = rel[: -len(img.suffix)]
        else:
            continue
        pairs.append((img, seg_dir / f"{stem}{src.seg_suffix}"))
    return pairs


def detect_layout(root: str | Path) -> str:
    """Guess the layout from marker paths, first match in table order.

    LoveDA, Potsdam and Vaihingen trees are indistinguishable and read identically: they come back
    as `loveda`; Pascal Context comes back as the 60-class layout. Pass `layout` for the others.
    """
    root = Path(root)
    for name, layout in LAYOUTS.items():
        if next(_resolve_root(root, name).glob(layout.marker), None) is not None:
            return name
    raise DatasetLayoutError(f"no known dataset layout under {root}")


_SPLIT_PART = re.compile(r"^(\w+)(?:%(\d+)(!=|=)(\d+)|:(!?)([\w.-]+))?$")


@dataclass(frozen=True)
class SplitPart:
    """One ``+``-joined part of a split: a named split, or a subset of it (a fold, a name prefix)."""

    name: str
    folds: int | None = None  # NAME%K=I: fold I of K contiguous blocks (NAME%K!=I: the rest)
    fold: int | None = None
    prefix: str | None = None  # NAME:P: the files whose names start with P (NAME:!P: the others)
    held_out: bool = True  # the fold / prefix itself, not the rest

    def select(self, pairs: list) -> list:
        if self.folds is not None:
            bounds = [round(len(pairs) * k / self.folds) for k in range(self.folds + 1)]
            inside = pairs[bounds[self.fold] : bounds[self.fold + 1]]
            return inside if self.held_out else pairs[: bounds[self.fold]] + pairs[bounds[self.fold + 1] :]
        if self.prefix is not None:
            inside = [pair[0].name.startswith(self.prefix) for pair in pairs]
            if sum(inside) in (0, len(pairs)):
                raise KeyError(f"split {self.name!r}: prefix {self.prefix!r} matches {sum(inside)} of its {len(pairs)} files; "
                               "a fold needs files on both sides")  # fmt: skip
            return [pair for pair, hit in zip(pairs, inside) if hit == self.held_out]
        return pairs


def _split_part(part: str) -> SplitPart:
    """``train``; ``train%5=2`` fold 2 of 5 (held out), ``train%5!=2`` the rest; ``train:0006R0``
    the files whose names start with 0006R0 (a CamVid sequence), ``train:!0006R0`` the others."""
    found = _SPLIT_PART.match(part.strip())
    if found is None:
        raise KeyError(f"bad split {part!r}: NAME, NAME%K=I (fold I of K), NAME%K!=I (all but it), "
                       "NAME:PREFIX (names starting with it) or NAME:!PREFIX (the others), joined by +")  # fmt: skip
    name, folds, op, fold, negate, prefix = found.groups()
    if prefix is not None:
        return SplitPart(name, prefix=prefix, held_out=not negate)
    if folds is None:
        return SplitPart(name)
    if not 0 <= int(fold) < int(folds):
        raise KeyError(f"bad split {part!r}: fold {fold} of {folds} does not exist (0..{int(folds) - 1})")
    return SplitPart(name, int(folds), int(fold), held_out=op == "=")


def open_dataset(
    root: str | Path, split: str, layout: str | None = None, reduce_zero_label: bool | None = None
) -> SegDataset:
    """The split's pairs; every label file must exist, so a broken tree fails before training starts.
    ``split`` may join splits (``train+val``) and pick cross-validation folds of one: by position
    (``train%5=0`` the first of five contiguous blocks, ``train%5!=0`` the rest) or by name prefix
    (``train:0006R0`` one CamVid sequence, ``train:!0006R0`` the other sequences).

    `reduce_zero_label` overrides the layout's own flag (a generic tree holding ADE-style labels).
    """
    root = Path(root)
    layout = layout or detect_layout(root)
    if layout not in LAYOUTS:
        raise KeyError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    spec = LAYOUTS[layout]
    base = _resolve_root(root, layout)
    pairs = []
    for part in map(_split_part, split.split("+")):
        if part.name not in spec.splits:
            raise KeyError(f"layout {layout!r} has no split {part.name!r}")
        pairs += part.select([pair for src in spec.splits[part.name] for pair in _list_source(base, src)])
    if not pairs:
        raise DatasetLayoutError(f"no images for split {split!r} of layout {layout!r} under {base}")
    missing = [str(seg) for _, seg in pairs if not seg.is_file()]
    if missing:
        raise DatasetLayoutError(f"{len(missing)} label files missing, e.g. {missing[0]}")
    reduce = spec.reduce_zero_label if reduce_zero_label is None else reduce_zero_label
    return SegDataset(layout, base, split, tuple(pairs), reduce)
