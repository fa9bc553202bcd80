"""Image folders as found in the wild: unreadable directories, 16-bit and float images,
decompression bombs, huge images. Every file here is a real file made in the test."""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jepa_core.errors import BadSample, RunError
from jepa_core.runtime.build import steps_per_epoch
from jepa_image.configs import ImageFolderConfig
from jepa_image.data import build_image_folder

NOBODY = 65534

def _png(path: Path, width: int, height: int, rows: int | None = None) -> Path:
    """An 8-bit grayscale PNG of zeros, compressed row by row (a huge image in a small file,
    without holding it in memory); with `rows`, only the header claims the size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer, row = zlib.compressobj(9), b"\0" * (width + 1)
    left, blocks = height if rows is None else rows, []
    while left:  # 256 rows a call: one call per row would take seconds
        blocks.append(packer.compress(row * min(left, 256)))
        left -= min(left, 256)
    data = b"".join(blocks) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
                     + chunk(b"IEND", b""))
    return path


def _two_classes(root: Path, per_class: int = 3) -> Path:
    for c, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (24, 24), colour).save(root / f"class{c}" / f"{i}.png")
    return root


def _source(root: Path, **kw):
    return build_image_folder(ImageFolderConfig(root=str(root), val_fraction=0, **kw), (32, 32))


def _in_child(task, unprivileged: bool = False) -> dict:
    """task() in a forked child (the modules are loaded already: no interpreter start), its
    returned dict, or {"error": type name, "message": text}. unprivileged: as root, the child
    becomes the user nobody first, so file permissions apply to it."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            if unprivileged and os.geteuid() == 0:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            try:
                result = task()
            except Exception as exc:  # what the test asserts on
                result = {"error": type(exc).__name__, "message": str(exc)}
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(text)


@pytest.fixture
def open_dir():
    """A folder the user nobody can enter (pytest's tmp_path is private to its user)."""
    path = Path(tempfile.mkdtemp(prefix="jepa-perm-"))
    path.chmod(0o755)
    yield path
    for top, dirs, _ in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(top, d), 0o755)
    shutil.rmtree(path)


def _build(root: Path) -> dict:
    source = build_image_folder(ImageFolderConfig(root=str(root)), (32, 32))
    return {"images": len(source), "classes": source.num_classes}


def test_unreadable_class_directory_is_refused_by_name(open_dir):
    root = _two_classes(open_dir / "images")
    (root / "class1").chmod(0o000)
    out = _in_child(lambda: _build(root), unprivileged=True)
    assert out.get("error") == "RunError", out
    assert out["message"].startswith(f"cannot read the directory {root / 'class1'} ")
    assert "Permission denied" in out["message"] and "chmod -R a+rX" in out["message"]


def test_unreadable_root_is_a_clear_error(open_dir):
    root = _two_classes(open_dir / "images")
    root.chmod(0o311)  # enterable, not listable
    out = _in_child(lambda: _build(root), unprivileged=True)
    assert out.get("error") == "RunError", out
    assert out["message"].startswith(
        f"cannot read the directory {root} (Permission denied), which data.root names.")


@pytest.mark.parametrize("make, mode", [
    (lambda v: Image.fromarray(np.full((24, 24), v * 257, np.uint16)), "I;16"),  # 16-bit PNG
    (lambda v: Image.fromarray(np.full((24, 24), v * 257, np.int32)), "I"),  # 32-bit int TIFF
    (lambda v: Image.fromarray(np.full((24, 24), v / 255, np.float32)), "F"),  # float TIFF
])
def test_wide_grayscale_is_scaled_not_clipped(tmp_path, make, mode):
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    ext = ".png" if mode == "I;16" else ".tif"
    make(100).save(root / "a" / f"wide{ext}")
    Image.new("L", (24, 24), 100).save(root / "a" / "narrow.png")
    with Image.open(root / "a" / f"wide{ext}") as img:
        assert img.mode == mode
    source = _source(root)
    names = [p.name for p, _ in source.files]
    wide = source.get(names.index(f"wide{ext}"), None)[0]
    narrow = source.get(names.index("narrow.png"), None)[0]
    assert torch.allclose(wide, narrow, atol=1e-3)


def test_decompression_bomb_header_is_a_skipped_sample(tmp_path):
    root = _two_classes(tmp_path / "images")
    bomb = _png(root / "class0" / "bomb.png", 100_000, 100_000, rows=0)
    assert bomb.stat().st_size < 100
    source = _source(root)
    index = [p for p, _ in source.files].index(bomb)
    with pytest.raises(BadSample, match="bomb.png"):
        source.get(index, torch.Generator().manual_seed(0))
    strict = _source(root, on_error="raise")
    with pytest.raises(RunError, match="bomb.png.*data.on_error: skip"):
        strict.get(index, None)


def test_huge_image_is_refused_before_decoding(tmp_path):
    """A 144-megapixel PNG of 140 KB: refused from its header, no memory spent on it."""
    root = _two_classes(tmp_path / "images")
    huge = _png(root / "class1" / "huge.png", 12_000, 12_000)
    assert huge.stat().st_size < 200_000
    source = _source(root)
    index = [p for p, _ in source.files].index(huge)

    def read() -> dict:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; a fresh child's
        source.get(index, None)  # high-water mark starts at its current size
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        return {"decoded": True, "grown_mb": grown // 1024}

    out = _in_child(read)
    assert out.get("error") == "BadSample", out  # decoding takes about 3 GB
    assert out["message"] == (f"image {huge} is 12000x12000 = 144 megapixels, more than "
                              f"data.max_image_pixels (64,000,000); not decoded")


def test_large_jpeg_is_decoded_small_and_the_cap_is_configurable(tmp_path):
    root = _two_classes(tmp_path / "images")
    Image.new("RGB", (4000, 3000), (0, 200, 0)).save(root / "class0" / "photo.jpg")
    _png(root / "class0" / "wide.png", 4000, 3000)
    source = _source(root, max_image_pixels=1_000_000)
    names = [p.name for p, _ in source.files]
    image = source.get(names.index("photo.jpg"), torch.Generator().manual_seed(0))[0]
    assert image.shape == (3, 32, 32) and image[1].mean() > image[0].mean()  # green, read
    with pytest.raises(BadSample, match="wide.png is 4000x3000 = 12 megapixels"):
        source.get(names.index("wide.png"), None)
    assert _source(root, max_image_pixels=None).get(names.index("wide.png"), None)[0].shape \
        == (3, 32, 32)


def test_global_batch_larger_than_the_data_set_warns(tiny_recipe, capsys):
    assert tiny_recipe.train.global_batch_size == 8
    steps_per_epoch(tiny_recipe, 100)
    assert capsys.readouterr().err == ""
    assert steps_per_epoch(tiny_recipe, 5) == 1
    err = capsys.readouterr().err
    assert "warning: train.global_batch_size=8 is larger than the data set (5 training " \
           "images)" in err


# -- special files named like images: only regular files are samples ------------------------
def _special_files(folder: Path, monkeypatch, ext: str = ".png") -> None:
    """In `folder`: a FIFO, a socket, a device (a link to /dev/null), a directory, a link to
    the FIFO and a dangling link, all named like images; and a link to a regular file."""
    import socket

    os.mkfifo(folder / f"pipe{ext}")
    monkeypatch.chdir(folder)  # a socket's path must be short: bind it relative
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(f"sock{ext}")
    sock.close()
    (folder / f"null{ext}").symlink_to("/dev/null")
    (folder / f"dir{ext}").mkdir()
    (folder / f"link{ext}").symlink_to(folder / f"pipe{ext}")
    (folder / f"gone{ext}").symlink_to(folder / f"nowhere{ext}")
    (folder / f"alias{ext}").symlink_to(folder / f"0{ext}")


@pytest.mark.parametrize("keep, ext", [(None, ".png"), ("video", ".mp4")])
def test_only_regular_files_are_samples(tmp_path, monkeypatch, keep, ext):
    """The file list of a class folder holds regular files and links to them, nothing else
    (the flat layout already kept regular files only); videos are listed the same way."""
    from jepa_image.data import scan_folder

    root = tmp_path / "images"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            (root / cls / f"{i}{ext}").write_bytes(b"real file")
    _special_files(root / "a", monkeypatch, ext)
    kw = {}
    if keep == "video":
        from jepa_video.data import _is_video
        kw["keep"] = _is_video
    classes, files = scan_folder(root, **kw)
    assert classes == ["a", "b"]
    assert sorted(str(p.relative_to(root)) for p, _ in files) == [
        f"a/0{ext}", f"a/1{ext}", f"a/alias{ext}", f"b/0{ext}", f"b/1{ext}"]


def test_a_fifo_named_like_an_image_does_not_block_training(tmp_path, monkeypatch):
    """A FIFO pipe.png in a class folder: opening it waited for a writer for ever, deaf to
    SIGTERM. The run (a real process, with a timeout so the suite never hangs) trains on the
    images and never opens it."""
    import subprocess
    import sys

    import yaml
    from conftest import TINY

    root = _two_classes(tmp_path / "images", per_class=4)
    _special_files(root / "class0", monkeypatch)
    d = {**TINY, "data": {"name": "image_folder", "root": str(root), "val_fraction": 0},
         "out_dir": str(tmp_path / "runs"),
         "train": {**TINY["train"], "global_batch_size": 9, "max_steps": 1, "device": "cpu"}}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(d))
    done = subprocess.run([sys.executable, "-m", "jepa_core", "run", str(recipe)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    rows = (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["skipped_samples"] == 0  # 9 files: the 8 images and alias.png
