"""Download a zoo row's published checkpoint into a local cache, resumably and verified.

mmseg's file names end in `-<first 8 hex digits of the file's sha256>.pth`; a download is only
moved into place once that digest matches. `DEEPLAB_ZOO_MIRROR` replaces the
`https://download.openmmlab.com/` prefix (air-gapped mirrors, and the tests' local server).
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .configs import ModelConfig

OPENMMLAB_PREFIX = "https://download.openmmlab.com/"
_HASH_SUFFIX = re.compile(r"-([0-9a-f]{8,64})\.pth$")
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    pass


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deeplab-serve"
    return Path(os.environ.get("DEEPLAB_CACHE_DIR", default))


def resolve_url(url: str) -> str:
    mirror = os.environ.get("DEEPLAB_ZOO_MIRROR")
    if mirror and url.startswith(OPENMMLAB_PREFIX):
        return mirror.rstrip("/") + "/" + url[len(OPENMMLAB_PREFIX) :]
    return url


def expected_digest(filename: str) -> str | None:
    m = _HASH_SUFFIX.search(filename)
    return m.group(1) if m else None


def sha256_prefix_matches(path: Path, digest: str) -> bool:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest().startswith(digest)


def download(url: str, dest: Path, progress: bool = True, timeout: float = 60.0) -> Path:
    """Fetch `url` to `dest`, resuming a `.part` file left by an interrupted download."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(resolve_url(url), headers={"Range": f"bytes={start}-"} if start else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            if start and resp.status != 206:  # server ignored the range: start over
                start = 0
            total = resp.headers.get("Content-Length")
            total = int(total) + start if total is not None else None
            with open(part, "ab" if start else "wb") as f, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, desc=dest.name, disable=not progress
            ) as bar:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as exc:
        raise DownloadError(f"download of {url} failed ({exc}); run again to resume") from None
    digest = expected_digest(dest.name)
    if digest and not sha256_prefix_matches(part, digest):
        part.unlink()
        raise DownloadError(f"{dest.name}: sha256 does not start with {digest}; the partial file was removed")
    part.rename(dest)
    return dest


def fetch_checkpoint(config: ModelConfig, progress: bool = True) -> Path:
    """The cached checkpoint of a zoo config, downloading it first if needed."""
    if config.zoo is None or not config.zoo.checkpoint_url:
        raise DownloadError(f"{config.name} has no published checkpoint")
    url = config.zoo.checkpoint_url
    return download(url, cache_dir() / "checkpoints" / url.rsplit("/", 1)[-1], progress)
