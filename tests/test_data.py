"""Data sources and transforms: real files, determinism from generators, unreadable images."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import TINY
from PIL import Image

from jepa_core.errors import RunError
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict
from jepa_core.runtime.trainer import train
from jepa_image.configs import DigitsConfig, ImageFolderConfig
from jepa_image.data import build_digits, build_image_folder
from jepa_image.transforms import crop_box


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
    source = build_image_folder(ImageFolderConfig(root=str(root), val_fraction=0), (32, 32))
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
    d["data"] = {"name": "image_folder", "root": str(root), "val_fraction": 0}
    d["out_dir"] = str(tmp_path / "runs")
    d["train"].update(global_batch_size=9, max_steps=2, epochs=2)  # every file, every epoch
    registry = make_plugin_manager()
    run = train(recipe_from_dict(d, registry, "t"), registry)
    assert run.skipped_samples == 2
    rows = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_samples"] for r in rows] == [1.0, 2.0]


def _noise_folder(root, classes=3, per_class=10, size=(20, 20)):
    """root/class<c>/<i>.png: random-noise images (no class structure at all)."""
    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (*size, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i:02d}.png")
    return root


def _names(source):
    return {str(p) for p, _ in source.files}


def test_image_folder_holds_out_a_seeded_stratified_slice(tmp_path):
    root = _noise_folder(tmp_path / "images", classes=3, per_class=10)
    cfg = ImageFolderConfig(root=str(root))  # val_fraction 0.1 by default
    train_set = build_image_folder(cfg, (32, 32), train=True)
    test_set = build_image_folder(cfg, (32, 32), train=False)
    assert not _names(train_set) & _names(test_set)  # training never sees the held-out images
    assert len(_names(train_set) | _names(test_set)) == 30
    assert sorted(label for _, label in test_set.files) == [0, 1, 2]  # one per class
    assert test_set.num_classes == train_set.num_classes == 3
    assert test_set.split == f"held-out 10% of root {root} (split_seed 0): 3 images"
    assert train_set.split == f"root {root} minus the held-out 10% (split_seed 0): 27 images"
    # the same split on every build (training, `jepa eval`), another for another seed
    assert _names(build_image_folder(cfg, (32, 32), train=False)) == _names(test_set)
    other = build_image_folder(ImageFolderConfig(root=str(root), split_seed=1), (32, 32), False)
    assert _names(other) != _names(test_set)
    wide = build_image_folder(ImageFolderConfig(root=str(root), val_fraction=0.3), (32, 32),
                              train=False)
    assert sorted(label for _, label in wide.files) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_image_folder_split_follows_the_files_not_the_folder(tmp_path):
    """Moving the data folder keeps the split; a class of one image stays in training."""
    root = _noise_folder(tmp_path / "a", classes=2, per_class=10)
    _noise_folder(root / "lonely", classes=1, per_class=1)  # class "lonely": 1 nested image

    def held(folder):
        source = build_image_folder(ImageFolderConfig(root=str(folder)), (32, 32), False)
        return sorted((str(p.relative_to(folder)), y) for p, y in source.files)

    before = held(root)
    assert len(before) == 2 and {y for _, y in before} == {0, 1}  # classes 0, 1; not lonely
    assert held(root.rename(tmp_path / "b")) == before
    train_set = build_image_folder(ImageFolderConfig(root=str(tmp_path / "b")), (32, 32))
    assert [y for _, y in train_set.files].count(2) == 1


def test_val_root_is_used_whole_and_training_keeps_all_of_root(tmp_path):
    root = _noise_folder(tmp_path / "train", classes=2, per_class=5)
    val = _noise_folder(tmp_path / "val", classes=2, per_class=2)
    cfg = ImageFolderConfig(root=str(root), val_root=str(val))
    assert len(build_image_folder(cfg, (32, 32), train=True)) == 10
    test_set = build_image_folder(cfg, (32, 32), train=False)
    assert test_set.split == f"val_root {val}: 4 images"
    none_held = ImageFolderConfig(root=str(root), val_fraction=0)
    assert len(build_image_folder(none_held, (32, 32), train=True)) == 10
    with pytest.raises(RunError, match="no images are held out.*val_fraction is 0.*val_root="):
        build_image_folder(none_held, (32, 32), train=False)


def test_digits_and_synthetic_say_which_split_they_are():
    test_set = build_digits(DigitsConfig(), (32, 32), train=False)
    assert test_set.split == "digits test split (20% of 1797, split_seed 0): 359 images"
    from jepa_image.configs import SyntheticConfig
    from jepa_image.data import build_synthetic

    cfg = SyntheticConfig(num_images=8)
    train_set = build_synthetic(cfg, (16, 16), train=True)
    eval_set = build_synthetic(cfg, (16, 16), train=False)
    assert "evaluation (unseen)" in eval_set.split
    for i in range(8):  # same classes, other images
        assert train_set.get(i, None)[1] == eval_set.get(i, None)[1]
        assert not torch.equal(train_set.get(i, None)[0], eval_set.get(i, None)[0])


def test_a_flat_folder_is_unlabelled_and_still_split(tmp_path):
    """Images directly in root (no class folders): labels -1, no classes, a held-out slice."""
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(10):
        Image.new("RGB", (30, 30), (25 * i, 0, 0)).save(root / f"{i}.png")
    (root / "notes.txt").write_text("not an image")
    (root / "empty_subfolder").mkdir()
    train_src = build_image_folder(ImageFolderConfig(root=str(root)), (16, 16), train=True)
    test_src = build_image_folder(ImageFolderConfig(root=str(root)), (16, 16), train=False)
    assert train_src.num_classes == 0 and len(train_src) + len(test_src) == 10
    assert len(test_src) == 1  # 10% of one unlabelled group
    image, label = train_src.get(0, None)
    assert label == -1 and tuple(image.shape) == (3, 16, 16)
    assert "unlabelled (no class folders)" in train_src.split


def test_class_folders_win_over_loose_images_and_an_empty_folder_says_both_layouts(tmp_path):
    root = _folder(tmp_path, corrupt=0)
    Image.new("RGB", (30, 30)).save(root / "loose.png")
    source = build_image_folder(ImageFolderConfig(root=str(root), val_fraction=0), (16, 16))
    assert source.num_classes == 2 and len(source) == 8
    empty = tmp_path / "empty"
    (empty / "class0").mkdir(parents=True)
    with pytest.raises(RunError, match=r"holds no images: expected class folders .* or images "
                                       r"directly in it"):
        build_image_folder(ImageFolderConfig(root=str(empty)), (16, 16))


# -- runs of unreadable files (an interrupted download leaves empty ones) -------------------
def _with_empty_files(root, empty=24, good=16):
    """root/<i>.png: `good` readable images; root/empty_<i>.jpg: `empty` zero-byte files,
    next to each other in the sorted file list (a run of them)."""
    root.mkdir(parents=True)
    for i in range(good):
        Image.new("RGB", (36, 36), (10 * i, 80, 0)).save(root / f"{i:02d}.png")
    for i in range(empty):
        (root / f"empty_{i:02d}.jpg").write_bytes(b"")
    return root


def _cli_recipe(tmp_path, root, **train) -> str:
    import yaml

    d = copy.deepcopy(TINY)
    d["data"] = {"name": "image_folder", "root": str(root), "val_fraction": 0}
    d["out_dir"] = str(tmp_path / "runs")
    d["train"].update(device="cpu", **train)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(d))
    return str(path)


def _flat(text: str) -> str:
    return " ".join(" ".join(line.strip(" │╭╮╰╯─") for line in text.splitlines()).split())


def test_a_run_of_empty_images_is_skipped_and_counted(tmp_path, capsys):
    """24 empty .jpg in a row among 16 images: every step reads every file (a global batch of
    40), and each empty one is replaced and counted. (The old replacement, the next file,
    gave up after 16 unreadable files in a row.)"""
    from jepa_core.commands.cli import main

    root = _with_empty_files(tmp_path / "images")
    recipe = _cli_recipe(tmp_path, root, global_batch_size=40, max_steps=2, epochs=2)
    assert main(["run", recipe]) == 0, capsys.readouterr().err
    run_dir = tmp_path / "runs" / "tiny"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["skipped_samples"] for r in rows]
    assert skipped[0] >= 24 and skipped[1] >= skipped[0] + 24, skipped  # every empty file
    assert (run_dir / "checkpoints" / "step_000000002.pt").exists()
    assert "unreadable sample(s) were skipped" in capsys.readouterr().out


def test_replacements_are_a_function_of_seed_step_and_row(tmp_path):
    """What stands in for an unreadable sample depends on (seed, step, row) only: a fresh
    loader (a resumed run, another worker) reads the same image, another row another one."""
    from jepa_core.runtime.data import Key, TrainSamples

    root = _with_empty_files(tmp_path / "images", empty=24, good=16)
    source = build_image_folder(ImageFolderConfig(root=str(root), val_fraction=0), (32, 32))
    empty = [i for i, (p, _) in enumerate(source.files) if p.name.startswith("empty")]
    keys = [Key(step=3, epoch=0, row=row, index=empty[0]) for row in range(8)]
    first = [TrainSamples(source, seed=5)[k] for k in keys]
    again = [TrainSamples(source, seed=5)[k] for k in keys]
    for (views, _, skipped), (views2, _, skipped2) in zip(first, again, strict=True):
        assert skipped == skipped2 >= 1 and torch.equal(views[0], views2[0])
    assert len({tuple(v[0].flatten()[:50].tolist()) for v, _, _ in first}) > 1


def test_an_all_unreadable_folder_stops_with_one_paragraph_naming_it(tmp_path, capsys):
    """A folder of empty files only: the run stops at its first batch with the folder named
    and how to find the empty files, exit 1, no traceback; also when the error happens in a
    DataLoader worker."""
    from jepa_core.commands.cli import main

    root = _with_empty_files(tmp_path / "images", empty=24, good=0)
    recipe = _cli_recipe(tmp_path, root, global_batch_size=8, max_steps=2, num_workers=2)
    assert main(["run", recipe]) == 1
    err = _flat(capsys.readouterr().err)
    assert f"the training data (root {root}: 24 images, unlabelled (no class folders)) is " \
           f"nearly all unreadable: 24 of 24 samples probed cannot be read (e.g. cannot " \
           f"read image {root}/empty_" in err, err
    assert "find FOLDER -empty" in err and "Traceback" not in err and "worker" not in err


def test_a_source_with_one_readable_file_in_twenty_is_refused(tmp_path):
    """Fewer than 1 in 8 of the probed samples readable: nearly nothing is, and drawing
    replacements would read twenty files a sample."""
    from jepa_core.runtime.data import Key, TrainSamples

    root = _with_empty_files(tmp_path / "images", empty=95, good=5)
    source = build_image_folder(ImageFolderConfig(root=str(root), val_fraction=0), (32, 32))
    empty = next(i for i, (p, _) in enumerate(source.files) if p.name.startswith("empty"))
    with pytest.raises(RunError, match=r"nearly all unreadable: (59|6\d) of 64 samples"):
        TrainSamples(source, seed=0)[Key(step=0, epoch=0, row=0, index=empty)]
