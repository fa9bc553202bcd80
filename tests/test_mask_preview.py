"""`jepa masks`: the picture, the statistics, and the grid of a recipe."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from jepa_core.build import encoder_geometry
from jepa_core.mask_preview import mask_statistics, masks_command, print_statistics, render_masks
from jepa_core.recipe import load_recipe
from jepa_image.configs import MultiBlockConfig, RandomPatchConfig
from jepa_image.multiblock import build_masker
from jepa_image.random_patches import build_masker as build_random

REPO = Path(__file__).resolve().parents[1]


def test_render_masks_writes_a_png(tmp_path):
    masker = build_masker(MultiBlockConfig(), (14, 14))
    out = tmp_path / "sub" / "masks.png"
    stats = render_masks(masker, out, samples=3, batch_size=32, batches=2)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.width > 3 * 14 and image.height > 2 * 14
    assert stats["grid"] == [14, 14] and stats["batches"] == 2


def test_statistics_of_the_reference_style_are_sensible():
    stats = mask_statistics(build_masker(MultiBlockConfig(style="reference"), (14, 14)),
                            batch_size=128, seed=0, batches=4)
    assert 30 <= stats["target_size"]["min"] <= stats["target_size"]["max"] <= 40
    assert 0.8 <= stats["target_aspect"]["min"] <= stats["target_aspect"]["max"] <= 1.6
    assert stats["context_before"]["mean"] > stats["context_size"]["mean"]
    assert stats["overlap_fraction"] == 0.0 and stats["fallbacks"] == 0
    coverage = stats["target_coverage"]
    assert len(coverage) == 14 and all(len(row) == 14 for row in coverage)
    assert all(v == 0 for v in coverage[-1]) and all(row[-1] == 0 for row in coverage)
    assert all(0 <= v <= 1 for row in stats["context_coverage"] for v in row)


def test_statistics_report_overlap_when_allowed():
    masker = build_masker(MultiBlockConfig(allow_overlap=True), (14, 14))
    stats = mask_statistics(masker, batch_size=32, seed=0, batches=2)
    assert 0.1 < stats["overlap_fraction"] < 0.9


def test_statistics_of_a_masker_without_stats_or_blocks():
    stats = mask_statistics(build_random(RandomPatchConfig(), (8, 8)), batch_size=16, batches=2)
    assert stats["context_before"] is None and stats["fallbacks"] is None
    assert stats["target_aspect"] is None  # random patches are not rectangles
    assert stats["context_size"]["min"] == stats["context_size"]["max"] == 16
    console = Console(record=True, width=120)
    print_statistics(stats, console)
    text = console.export_text()
    assert "target block size" in text and "n/a" in text


def test_print_statistics_shows_the_context_before_and_after():
    stats = mask_statistics(build_masker(MultiBlockConfig(), (8, 8)), batch_size=16, batches=2)
    console = Console(record=True, width=120)
    print_statistics(stats, console)
    text = console.export_text()
    assert "context before equalisation" in text and "8x8" in text


@pytest.mark.parametrize("recipe, image_size, grid", [
    ("ijepa_vith14", (224, 224), (16, 16)),  # from the timm name: vit_huge_patch14_gap_224
    ("ijepa_vith16", (224, 224), (14, 14)),  # patch_size: 16 overrides the name's 14
    ("ijepa_vith16_448", (448, 448), (28, 28)),
    ("quickstart", (32, 32), (8, 8)),  # img_size 32, patch_size 4
])
def test_encoder_geometry_of_the_recipes(registry, recipe, image_size, grid):
    loaded = load_recipe(REPO / "recipes" / f"{recipe}.yaml", registry)
    assert encoder_geometry(loaded, registry) == (image_size, grid)


def test_encoder_geometry_asks_any_encoder_plugin():
    built = types.SimpleNamespace(image_size=(64, 96), patch_grid=(4, 6))
    spec = types.SimpleNamespace(build=lambda config: built)
    registry = types.SimpleNamespace(get=lambda kind, name: spec)
    recipe = types.SimpleNamespace(
        encoder=types.SimpleNamespace(name="my_custom_net", config=None))
    assert encoder_geometry(recipe, registry) == ((64, 96), (4, 6))


def test_masks_command_on_a_recipe(tiny_recipe, registry, tmp_path):
    console = Console(record=True, width=120)
    out = tmp_path / "masks.png"
    stats = masks_command(tiny_recipe, registry, out, samples=2, seed=None, batch_size=16,
                          console=console)
    assert out.exists() and stats["grid"] == [4, 4]  # 32 px / patch 8
    assert "wrote" in console.export_text()


def test_jepa_masks_command_line(tiny_dict, tmp_path):
    import yaml

    from jepa_core.cli import main

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_dict))
    out = tmp_path / "cli.png"
    assert main(["masks", str(recipe), "--out", str(out), "--batch-size", "16"]) == 0
    assert out.exists()
