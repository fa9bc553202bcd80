"""Data sources and transforms: real files, determinism from generators, unreadable images."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from PIL import Image

from jepa_core.errors import RunError
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict
from jepa_core.trainer import train
from jepa_image.configs import DigitsConfig, ImageFolderConfig
from jepa_image.data import build_digits, build_image_folder
from jepa_image.transforms import crop_box

from conftest import TINY


def _folder(tmp_path, per_class=4, corrupt=1):
    root = tmp_path / "images"
    for c, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (40 + i, 36), colour).save(root / f"class{c}" / f"{i}.png")
    for i in range(corrupt):
        (root / "class0" / f"broken{i}.jpg").write_bytes(b"not a jpeg at all")
    return root


def test_crop_box_is_a_function_of_the_generator():
    boxes = [crop_box(100, 80, (0.3, 1.0), torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert boxes[0] == boxes[1] != boxes[2]
    for top, left, h, w in boxes:
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 80
        assert 0.3 * 8000 * 0.8 <= h * w <= 8000


def test_digits_are_embedded_split_and_normalised():
    train_set = build_digits(DigitsConfig(), (32, 32), train=True)
    test_set = build_digits(DigitsConfig(), (32, 32), train=False)
    assert len(train_set) + len(test_set) == 1797 and train_set.num_classes == 10
    x, y = train_set.get(0, None)
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    a = train_set.get(0, torch.Generator().manual_seed(3))[0]
    b = train_set.get(0, torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_image_folder_reads_classes_and_transforms(tmp_path):
    root = _folder(tmp_path, corrupt=0)
    source = build_image_folder(ImageFolderConfig(root=str(root)), (32, 32))
    assert len(source) == 8 and source.num_classes == 2
    img, label = source.get(5, None)
    assert img.shape == (3, 32, 32) and label == 1
    assert img[2].mean() > img[0].mean()  # blue class, ImageNet-normalised


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(RunError, match="is not a directory.*data.root"):
        build_image_folder(ImageFolderConfig(root=str(tmp_path / "nope")), (32, 32))


def test_unreadable_image_raise_policy_names_the_file(tmp_path):
    root = _folder(tmp_path)
    source = build_image_folder(ImageFolderConfig(root=str(root), on_error="raise"), (32, 32))
    bad = next(i for i, (p, _) in enumerate(source.files) if p.name.startswith("broken"))
    with pytest.raises(RunError, match="cannot read image .*broken0.jpg.*on_error: skip"):
        source.get(bad, None)


def test_unreadable_images_are_skipped_counted_and_reported(tmp_path):
    root = _folder(tmp_path, per_class=4, corrupt=1)
    d = copy.deepcopy(TINY)
    d["data"] = {"name": "image_folder", "root": str(root)}
    d["out_dir"] = str(tmp_path / "runs")
    d["train"].update(global_batch_size=9, max_steps=2, epochs=2)  # every file, every epoch
    registry = make_plugin_manager()
    run = train(recipe_from_dict(d, registry, "t"), registry)
    assert run.skipped_samples == 2
    rows = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_samples"] for r in rows] == [1.0, 2.0]
