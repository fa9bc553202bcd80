"""`jepa masks`: the picture, the statistics, and the grid of a recipe."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from PIL import Image
from rich.console import Console

from jepa_core.commands.mask_preview import (
    mask_statistics,
    masks_command,
    print_statistics,
    render_masks,
)
from jepa_core.recipe import load_recipe
from jepa_core.runtime.build import encoder_geometry
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


class CustomNet:
    """An encoder that is no timm model and no torch module: only the interface."""

    embed_dim, num_heads, image_size, patch_grid = 8, 1, (64, 96), (4, 6)

    def __call__(self, images, keep=None, keep_valid=None):
        return images


def test_encoder_geometry_asks_any_encoder_plugin():
    spec = types.SimpleNamespace(build=lambda config: CustomNet(), plugin="mine",
                                 kind="encoder", name="my_custom_net")
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

    from jepa_core.commands.cli import main

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_dict))
    out = tmp_path / "cli.png"
    assert main(["masks", str(recipe), "--out", str(out), "--batch-size", "16"]) == 0
    assert out.exists()


# -- the optional MaskerWithStats interface ------------------------------------------------
STRIPES = '''
import attrs
from jepa_core.hookspecs import hookimpl


@attrs.frozen
class StripeConfig:
    """One grid row as the target, every other patch as the context (a stats test masker)."""

    stats: str = "good"  # "good", "no_fallbacks" or "none" (no sample_with_stats)


@hookimpl
def register_maskers(register):
    register("stripes", StripeConfig, "stripes_impl:build")
'''

STRIPES_IMPL = '''
import types

import attrs
import torch

from jepa_core.interfaces import MaskBatch


@attrs.frozen(eq=False)
class StripeStats:
    context_sizes: torch.Tensor  # [B]: every patch, before the target row is cut out
    fallbacks: int               # a quarter of each batch, so the count is easy to check
    rows: torch.Tensor           # [1]: the masker's own figure


class Stripes:
    def __init__(self, config, grid):
        self.config, self.grid = config, tuple(grid)

    def __call__(self, batch_size, generator):
        return self.sample_with_stats(batch_size, generator)[0]

    def sample_with_stats(self, batch_size, generator):
        gh, gw = self.grid
        row = torch.randint(gh, (1,), generator=generator)
        patches = torch.arange(gh * gw)
        context = patches[patches // gw != row].expand(batch_size, -1)
        targets = (row * gw + torch.arange(gw)).expand(batch_size, 1, gw)
        sizes = torch.full((batch_size,), gh * gw)
        if self.config.stats == "no_fallbacks":
            return MaskBatch(context, targets), types.SimpleNamespace(context_sizes=sizes)
        return MaskBatch(context, targets), StripeStats(sizes, batch_size // 4, row)


class PlainStripes:
    def __init__(self, config, grid):
        self.stripes = Stripes(config, grid)
        self.grid = self.stripes.grid

    def __call__(self, batch_size, generator):
        return self.stripes(batch_size, generator)


def build(config, grid):
    return (PlainStripes if config.stats == "none" else Stripes)(config, grid)
'''


@pytest.fixture
def stripes(tmp_path, monkeypatch):
    """A third-party masker plugin `stripes` (module on sys.path, not installed)."""
    (tmp_path / "stripes.py").write_text(STRIPES)
    (tmp_path / "stripes_impl.py").write_text(STRIPES_IMPL)
    monkeypatch.syspath_prepend(str(tmp_path))
    from jepa_core.plugins import make_plugin_manager

    return make_plugin_manager(["stripes"]).get("masker", "stripes")


def _stripes_recipe(tiny_dict, tmp_path, stats: str) -> Path:
    import yaml

    tiny_dict["masker"] = {"name": "stripes", "stats": stats}
    path = tmp_path / f"stripes_{stats}.yaml"
    path.write_text(yaml.safe_dump(tiny_dict))
    return path


def _jepa_masks(recipe: Path, tmp_path: Path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("JEPA_PLUGINS", "COLUMNS")}
    env.update(PYTHONPATH=str(tmp_path), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "jepa_core", "-p", "stripes", "masks",
                           str(recipe), "--out", str(tmp_path / "m.png"), "--batch-size", "16"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_multiblock_implements_the_optional_stats_interface():
    from jepa_core.interfaces import Masker, MaskerWithStats, MaskStats

    masker = build_masker(MultiBlockConfig(), (8, 8))
    assert isinstance(masker, MaskerWithStats) and isinstance(masker, Masker)
    masks, stats = masker.sample_with_stats(4, torch.Generator().manual_seed(0))
    assert isinstance(stats, MaskStats)
    assert not isinstance(build_random(RandomPatchConfig(), (8, 8)), MaskerWithStats)


def test_a_third_party_maskers_statistics_are_shown(stripes):
    from jepa_core.interfaces import MaskerWithStats

    masker = stripes.build(stripes.config_class(), grid=(4, 4))
    assert isinstance(masker, MaskerWithStats)
    stats = mask_statistics(masker, batch_size=16, batches=3)
    assert stats["context_before"] == {"min": 16.0, "mean": 16.0, "max": 16.0}
    assert stats["context_size"]["mean"] == 12.0 and stats["fallbacks"] == 3 * 4
    console = Console(record=True, width=120)
    print_statistics(stats, console)
    text = console.export_text()
    assert "16.0 / 16.0 / 16.0" in text and "samples that fell back (overlap kept)" in text


def test_a_third_party_masker_without_statistics_still_works(stripes):
    masker = stripes.build(stripes.config_class(stats="none"), grid=(4, 4))
    stats = mask_statistics(masker, batch_size=16, batches=3)
    assert stats["context_before"] is None and stats["fallbacks"] is None
    assert stats["context_size"]["mean"] == 12.0


def test_jepa_masks_shows_a_plugins_statistics(stripes, tiny_dict, tmp_path):
    done = _jepa_masks(_stripes_recipe(tiny_dict, tmp_path, "good"), tmp_path)
    assert done.returncode == 0, done.stderr
    line = next(ln for ln in done.stdout.splitlines() if "context before equalisation" in ln)
    assert "16.0 / 16.0 / 16.0" in line
    fell_back = next(ln for ln in done.stdout.splitlines() if "samples that fell back" in ln)
    assert fell_back.split()[-2] == str(8 * 4)  # 8 batches of 16, a quarter of each


def test_jepa_masks_names_a_masker_whose_statistics_are_malformed(stripes, tiny_dict, tmp_path):
    done = _jepa_masks(_stripes_recipe(tiny_dict, tmp_path, "no_fallbacks"), tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr, done.stderr
    message = " ".join((done.stdout + done.stderr).split())
    assert "masker stripes_impl.Stripes: sample_with_stats(16, generator) returned statistics " \
        "(SimpleNamespace) without fallbacks; it must return (MaskBatch, stats)" in message
    assert "(jepa_core.interfaces.MaskerWithStats)" in message


# -- what the picture and the text explain -------------------------------------------------
def test_the_picture_has_a_legend_and_a_colour_bar(tmp_path):
    from PIL import Image as PILImage

    from jepa_core.commands import mask_preview as mp

    masker = build_masker(MultiBlockConfig(min_keep=2), (4, 4))
    out = tmp_path / "m.png"
    mp.render_masks(masker, out, samples=2, batch_size=16, batches=2)
    image = PILImage.open(out).convert("RGB")
    lay = mp.picture_layout((4, 4), 2)
    assert image.size == lay["size"]
    x0, y0, x1, y1 = lay["legend"]
    legend = {image.getpixel((x, y)) for x in range(x0, x1) for y in range(y0, y1)}
    assert {mp.CONTEXT, mp.TARGETS[0], mp.BACKGROUND} <= legend  # the grey cells explained
    x0, y0, x1, y1 = lay["colour_bar"]
    row = [image.getpixel((x, (y0 + y1) // 2)) for x in range(x0, x1)]
    assert row[0] == mp._heat_colour(0.0) and row[-1] == mp._heat_colour(1.0)
    assert len(set(row)) > 20  # a gradient, not two blocks


def test_patches_never_in_a_target_are_explained(tmp_path):
    from jepa_core.commands.mask_preview import never_in_target_note

    reference = build_masker(MultiBlockConfig(style="reference", min_keep=2), (8, 8))
    stats = mask_statistics(reference, batch_size=64, seed=0, batches=4)
    note = never_in_target_note(stats, "reference")
    assert note.startswith("patches never in a target: the 15 of the grid's last row and "
                           "column, in all 256 samples drawn")
    assert "official I-JEPA sampler" in note and "masker.style=corrected" in note
    corrected = build_masker(MultiBlockConfig(min_keep=2), (8, 8))
    assert never_in_target_note(mask_statistics(corrected, 64, 0, 4), "corrected") is None
    scattered = {**stats, "target_coverage": [[0.0 if (r, c) == (2, 3) else 0.5
                                                for c in range(8)] for r in range(8)]}
    assert "1 of 64" in never_in_target_note(scattered) and "--batch-size" in (
        never_in_target_note(scattered))


def test_jepa_masks_explains_the_picture_and_the_reference_quirk(tiny_dict, tmp_path,
                                                                  monkeypatch):
    import yaml

    import jepa_core.commands.cli as cli

    tiny_dict["encoder"]["patch_size"] = 4  # an 8x8 grid
    tiny_dict["masker"].update(style="reference")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_dict))
    console = Console(record=True, width=300)
    monkeypatch.setattr(cli, "_console", lambda stderr=False: console)
    assert cli.main(["masks", str(recipe), "--out", str(tmp_path / "m.png")]) == 0
    text = console.export_text()
    assert "the 15 of the grid's last row and column" in text
    assert "grey = neither" in text and "colour bar" in text


def test_the_context_heat_map_is_the_maskers_own_share_of_each_patch(registry):
    """The "in context" numbers of `jepa masks` equal the share of samples whose valid
    context holds each patch, counted here sample by sample from the same draws. With
    `context_equalize: pad` the padding entries point at real patches (0, 3, 6, ...): they
    used to overwrite those patches' entries, and the quickstart's top-left patch read 0.02
    for a true share of 0.9."""
    from jepa_core.runtime.data import draw_masks

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "quickstart.yaml", registry)
    grid = encoder_geometry(recipe, registry)[1]
    masker = build_masker(recipe.masker.config, grid)
    batch, batches = 32, 3
    stats = mask_statistics(masker, batch_size=batch, seed=0, batches=batches)
    n = grid[0] * grid[1]
    counts = [0] * n
    padded = False
    for step in range(batches):
        drawn = draw_masks(masker, batch, 0, step)
        drawn = drawn if not isinstance(drawn, tuple) else drawn[0]
        assert drawn.context_valid is not None  # the quickstart pads its contexts
        padded = padded or not bool(drawn.context_valid.all())
        for b in range(batch):
            for p in set(drawn.context[b][drawn.context_valid[b]].tolist()):
                counts[p] += 1
    assert padded  # the case the bug needs
    expected = [c / (batch * batches) for c in counts]
    got = [v for row in stats["context_coverage"] for v in row]
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[0] > 0.5


def test_the_picture_shows_each_target_colour_and_says_how_much_blocks_overlap(registry,
                                                                            tmp_path):
    """The legend has a swatch of every target block's colour (was: one orange swatch while
    the samples used four colours), the overlap of a sample's blocks (hidden: the last
    block's colour covers the others) is measured and said beside the heat maps, which used
    to leave half the row empty."""
    from jepa_core.commands.mask_preview import (
        TARGETS,
        overlap_note,
        picture_layout,
        render_masks,
    )
    from jepa_core.runtime.data import draw_masks

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "quickstart.yaml", registry)
    grid = encoder_geometry(recipe, registry)[1]
    masker = build_masker(recipe.masker.config, grid)
    out = tmp_path / "m.png"
    stats = render_masks(masker, out, batch_size=16, batches=2)
    shared = total = 0  # counted block by block, sample by sample
    for step in range(2):
        masks = draw_masks(masker, 16, 0, step)
        for b in range(16):
            blocks = [set(masks.targets[b, m][masks.targets_valid[b, m]].tolist())
                      if masks.targets_valid is not None else set(masks.targets[b, m].tolist())
                      for m in range(masks.targets.shape[1])]
            for block in blocks:
                total += len(block)
                shared += sum(1 for p in block if sum(p in other for other in blocks) >= 2)
    assert stats["target_overlap"] == pytest.approx(shared / total)
    assert 0 < stats["target_overlap"] < 1
    assert f"{100 * stats['target_overlap']:.1f}% of target patches" in " ".join(
        overlap_note(stats["target_overlap"]))
    assert "No two blocks" in " ".join(overlap_note(0.0))
    image = Image.open(out).convert("RGB")
    lay = picture_layout(grid, 4)
    x0, y0, x1, y1 = lay["legend"]
    legend = {c for _, c in image.crop((x0, y0, x1, y1 + 1)).getcolors(1 << 24)}
    assert all(tuple(c) in legend for c in TARGETS[:recipe.masker.config.num_targets])
    panel_w, panel_h = lay["panel"]
    beside = image.crop((lay["pad"] + 2 * (panel_w + lay["pad"]), lay["heat_top"],
                         lay["size"][0], lay["heat_top"] + panel_h))
    assert len(beside.getcolors(1 << 24)) > 1  # the note, not an empty half-row


def test_the_video_pictures_heading_is_not_cut_at_the_edge(registry, tmp_path):
    from jepa_core.commands.mask_preview import render_mask_sets
    from jepa_core.runtime.build import build

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "quickstart_video.yaml",
                         registry)
    grid = encoder_geometry(recipe, registry)[1]
    masker = build("masker", recipe, registry, "masker", grid=grid)
    out = tmp_path / "v.png"
    render_mask_sets(masker, out, batch_size=8, batches=1)
    image = Image.open(out).convert("L")
    heading = image.crop((0, 0, image.size[0], 14))
    right = image.crop((image.size[0] - 10, 0, image.size[0], 14))
    assert heading.getextrema()[0] < 128  # text is there
    assert right.getextrema()[0] == 255  # and it ends before the right edge (was: cut)
