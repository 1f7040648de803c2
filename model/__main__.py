"""`python -m model list`: every config with its architecture and the seed table's figures."""

from __future__ import annotations

from .cli import argument_parser
from .configs import list_configs


def _fmt(value, suffix: str = "") -> str:
    return "-" if value is None else f"{value}{suffix}"


def print_table() -> None:
    header = f"{'config':<62} {'backbone':<16} {'dataset':<22} {'crop':>9} {'mode':<5} {'mIoU':>6} {'ms+flip':>7} {'fps':>7}  gpu"
    print(header)
    print("-" * len(header))
    for cfg in list_configs():
        z = cfg.zoo
        crop = f"{cfg.crop_size[0]}x{cfg.crop_size[1]}"
        print(
            f"{cfg.name:<62} {cfg.arch:<16} {(z.dataset_label if z else cfg.dataset.label):<22} {crop:>9} "
            f"{cfg.inference:<5} {_fmt(z and z.miou):>6} {_fmt(z and z.miou_ms_flip):>7} {_fmt(z and z.fps):>7}  "
            f"{_fmt(z and z.fps_gpu)}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser("python -m model", __doc__)
    parser.add_argument("command", nargs="?", default="list", choices=["list"], help="list: print every configuration")
    parser.parse_args(argv)
    print_table()


if __name__ == "__main__":
    main()
