"""`jepa masks`: the picture, the statistics, and the grid of a recipe."""

from __future__ import annotations

import types

import pytest
from PIL import Image
from rich.console import Console

from jepa_core.mask_preview import (grid_of, mask_statistics, masks_command, parse_timm_name,
                                    print_statistics, render_masks)
from jepa_image.configs import MultiBlockConfig, RandomPatchConfig
from jepa_image.multiblock import build_masker
from jepa_image.random_patches import build_masker as build_random


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


@pytest.mark.parametrize("name, expected", [
    ("vit_huge_patch14_gap_224", (224, 14)),
    ("vit_huge_patch14_gap_224.in1k_ijepa", (224, 14)),
    ("vit_huge_patch16_gap_448", (448, 16)),
    ("vit_base_patch16_clip_384", (384, 16)),
    ("vit_small_patch16_18x2_224", (224, 16)),
    ("vit_large_patch14_reg4_dinov2", (None, 14)),
    ("resnet50", (None, None)),
])
def test_parse_timm_name(name, expected):
    assert parse_timm_name(name) == expected


def _recipe(**encoder):
    config = types.SimpleNamespace(**encoder)
    return types.SimpleNamespace(encoder=types.SimpleNamespace(name="fake", config=config))


def test_grid_of_reads_the_encoder_config_then_builds_it():
    assert grid_of(_recipe(model="vit_huge_patch14_gap_224", img_size=None, patch_size=None),
                   None) == (16, 16)
    assert grid_of(_recipe(model="vit_tiny_patch16_224", img_size=32, patch_size=4),
                   None) == (8, 8)
    assert grid_of(_recipe(img_size=(64, 96), patch_size=16), None) == (4, 6)

    built = types.SimpleNamespace(patch_grid=(5, 7))
    spec = types.SimpleNamespace(build=lambda config: built)
    registry = types.SimpleNamespace(get=lambda kind, name: spec)
    assert grid_of(_recipe(model="my_custom_net"), registry) == (5, 7)


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
