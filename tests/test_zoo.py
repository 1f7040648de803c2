"""Zoo downloads against a real HTTP server on 127.0.0.1: success, resume, hash mismatch."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from helpers import randomize
from model import build_model, configs, get_config, load_model
from model.download import DownloadError, download

CFG = get_config("deeplabv3plus_r18-d8_4xb4-80k_potsdam-512x512")
URL = CFG.zoo.checkpoint_url  # https://download.openmmlab.com/mmsegmentation/v0.5/...
REL = URL.removeprefix("https://download.openmmlab.com/")


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with `Range: bytes=N-` support; records the ranges it was asked for."""

    ranges: list[str] = []

    def log_message(self, *args):
        pass

    def send_head(self):
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not path.is_file():
            return super().send_head()
        type(self).ranges.append(rng)
        start = int(re.match(r"bytes=(\d+)-", rng).group(1))
        data = path.read_bytes()
        self.send_response(206)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        f = open(path, "rb")
        f.seek(start)
        return f


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    root = tmp_path / "www"
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("DEEPLAB_ZOO_MIRROR", f"http://127.0.0.1:{server.server_port}/")
    monkeypatch.setenv("DEEPLAB_CACHE_DIR", str(tmp_path / "cache"))
    RangeHandler.ranges = []
    yield root
    server.shutdown()


def publish(root: Path, name: str) -> tuple[Path, bytes]:
    """A real mmseg-layout checkpoint stored under `name` with its sha256 prefix fixed up."""
    net = build_model(CFG)
    net.load_state_dict(randomize(net.state_dict()))
    tmp = root / "tmp.pth"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": net.state_dict(), "meta": {}}, tmp)
    data = tmp.read_bytes()
    tmp.unlink()
    digest = hashlib.sha256(data).hexdigest()[:8]
    target = root / re.sub(r"-[0-9a-f]{8}\.pth$", f"-{digest}.pth", name)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target, data


def test_load_model_by_config_name_downloads_verifies_and_caches(mirror, tmp_path, monkeypatch):
    target, data = publish(mirror, REL)
    url = "https://download.openmmlab.com/" + str(target.relative_to(mirror))
    zoo = dataclasses.replace(CFG.zoo, checkpoint_url=url)
    monkeypatch.setitem(configs._all_configs(), CFG.name, dataclasses.replace(CFG, zoo=zoo))
    net = load_model(CFG.name)
    cached = tmp_path / "cache" / "checkpoints" / target.name
    assert cached.read_bytes() == data
    assert net.config.name == CFG.name
    target.unlink()  # a second load needs no server
    assert load_model(CFG.name).config.name == CFG.name


def test_download_resumes_a_partial_file(mirror, tmp_path):
    target, data = publish(mirror, REL)
    dest = tmp_path / "cache" / target.name
    dest.parent.mkdir(parents=True)
    Path(str(dest) + ".part").write_bytes(data[:1000])
    download("https://download.openmmlab.com/" + str(target.relative_to(mirror)), dest, progress=False)
    assert dest.read_bytes() == data
    assert RangeHandler.ranges == ["bytes=1000-"]
    assert not Path(str(dest) + ".part").exists()


def test_hash_mismatch_is_rejected_and_partial_removed(mirror, tmp_path):
    target, data = publish(mirror, REL)
    bad = target.with_name(re.sub(r"-[0-9a-f]{8}\.pth$", "-00000000.pth", target.name))
    target.rename(bad)
    dest = tmp_path / "cache" / bad.name
    with pytest.raises(DownloadError, match="sha256"):
        download("https://download.openmmlab.com/" + str(bad.relative_to(mirror)), dest, progress=False)
    assert not dest.exists() and not Path(str(dest) + ".part").exists()


def test_unreachable_server_is_a_download_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_ZOO_MIRROR", "http://127.0.0.1:9/")
    with pytest.raises(DownloadError, match="run again to resume"):
        download(URL, tmp_path / "x-12345678.pth", progress=False, timeout=2)
