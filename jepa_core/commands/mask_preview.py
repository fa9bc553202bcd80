"""`jepa masks`: a picture and the statistics of a recipe's masker.

    stats = render_masks(masker, "masks.png", samples=4, seed=0)   # PNG + statistics
    print_statistics(stats, rich.console.Console())

The picture shows a legend, a few samples of one batch (context in blue, each target block in
its own colour, grey for patches in neither, a blue dot on a target patch that the context
also holds) and two heat maps with their colour bar: the share of samples in which each patch
is in the context and in a target, over `batches` batches. Masks are drawn exactly as in
training: batch i uses `mask_generator(seed, step + i)`.

A masker of several mask sets ({name: MaskBatch}) or on a grid that is not 2-D (a video's
(t, gh, gw)) gets `render_mask_sets`: one labelled section per set, each sample a strip of one
tile per time step, and the coverage maps as strips likewise.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image, ImageDraw, ImageFont

from jepa_core.errors import PluginError
from jepa_core.interfaces import MaskBatch, MaskerWithStats, MaskStats
from jepa_core.maskcheck import context_membership, target_membership, target_sizes
from jepa_core.runtime.build import encoder_geometry
from jepa_core.runtime.data import draw_masks
from jepa_core.runtime.tokens import TOKEN_BATCHES, draw_set_token_counts, draw_token_counts

if TYPE_CHECKING:  # pragma: no cover
    from jepa_core.plugins import Registry

BACKGROUND = (235, 235, 235)
PICTURE_KEY = ("top row, a few samples: blue = context, one colour per target block, grey = "
               "neither (dropped from the context and not predicted), a blue dot = context "
               "inside a target; bottom row, over all samples: the share in which each patch "
               "is in the context / in a target, from 0 (dark) to 1 (yellow) on the colour bar")
CONTEXT = (66, 110, 180)
TARGETS = [(240, 140, 30), (60, 170, 90), (215, 60, 60), (150, 90, 200), (200, 170, 40),
           (40, 170, 190), (220, 110, 170), (120, 120, 120)]
HEAT = [(20, 20, 60), (60, 60, 160), (40, 160, 160), (170, 210, 60), (250, 240, 90)]


# -- statistics ----------------------------------------------------------------------------
def _summary(values: torch.Tensor) -> dict[str, float]:
    values = values.double()
    return {"min": float(values.min()), "mean": float(values.mean()), "max": float(values.max())}


def _draw(masker: Any, batch_size: int, seed: int, step: int,
          mask_set: str | None = None) -> tuple[MaskBatch, MaskStats | None]:
    """The masks of batch `step` (of set `mask_set`, or the first, for a masker of several
    mask sets), and their statistics when the masker reports them."""
    if not isinstance(masker, MaskerWithStats):
        drawn = draw_masks(masker, batch_size, seed, step)
        if isinstance(drawn, dict):
            drawn = drawn[mask_set] if mask_set is not None else next(iter(drawn.values()))
        return drawn, None
    drawn = draw_masks(masker, batch_size, seed, step, with_stats=True)
    problem = _stats_problem(drawn, batch_size)
    if problem:
        kind = type(masker)
        raise PluginError(
            f"masker {kind.__module__}.{kind.__qualname__}: sample_with_stats({batch_size}, "
            f"generator) returned {problem}; it must return (MaskBatch, stats) where stats has "
            f"context_sizes, a [{batch_size}] int64 tensor, and fallbacks, an int "
            "(jepa_core.interfaces.MaskerWithStats). Fix the masker's plugin, or remove "
            "sample_with_stats to draw without statistics.")
    return drawn


def _stats_problem(drawn: Any, batch_size: int) -> str | None:
    """What is wrong with a `sample_with_stats` result, or None."""
    if not (isinstance(drawn, tuple) and len(drawn) == 2):
        return f"a {type(drawn).__name__}, not a pair"
    masks, info = drawn
    if not isinstance(masks, MaskBatch):
        return f"a {type(masks).__name__} where the MaskBatch goes"
    if not isinstance(info, MaskStats):
        missing = [a for a in ("context_sizes", "fallbacks") if not hasattr(info, a)]
        return f"statistics ({type(info).__name__}) without {' and '.join(missing)}"
    shape = tuple(getattr(info.context_sizes, "shape", ()))
    if shape != (batch_size,):
        return f"context_sizes of shape {shape}"
    return None


def _valid(masks: MaskBatch) -> torch.Tensor:
    if masks.context_valid is None:
        return torch.ones_like(masks.context, dtype=torch.bool)
    return masks.context_valid


def _aspects(masks: MaskBatch, gw: int, gh: int | None = None) -> torch.Tensor | None:
    """[B * M] h / w of each target block (its valid indices; on a grid of rank 3 or more, of
    its extent in a frame, the last two axes, given the frame height `gh`), or None when some
    block is not a rectangle (a box)."""
    rows, cols = masks.targets // gw, masks.targets % gw
    if gh is not None:
        rows = rows % gh
    valid = masks.targets_valid
    if valid is None:
        h = rows.amax(-1) - rows.amin(-1) + 1
        w = cols.amax(-1) - cols.amin(-1) + 1
    else:
        big = torch.iinfo(torch.int64).max
        h = torch.where(valid, rows, -1).amax(-1) - torch.where(valid, rows, big).amin(-1) + 1
        w = torch.where(valid, cols, -1).amax(-1) - torch.where(valid, cols, big).amin(-1) + 1
    if bool((h * w != target_sizes(masks)).any()):
        return None
    return (h.double() / w.double()).flatten()


def mask_statistics(masker: Any, batch_size: int = 128, seed: int = 0,
                    batches: int = TOKEN_BATCHES,
                    step: int = 0, mask_set: str | None = None) -> dict[str, Any]:
    """Statistics of `batches` batches (steps step .. step + batches - 1) of one mask set
    (`mask_set`, or the first, for a masker of several). Sizes in patches; coverage: nested
    lists of the grid's shape ([gh][gw], [t][gh][gw]), the fraction of samples in which each
    patch is in the context / a target; overlap_fraction: share of valid context patches that
    lie in a target of the same image; context_before / fallbacks: only for a
    `MaskerWithStats` (else None)."""
    grid = tuple(int(g) for g in masker.grid)
    gw = grid[-1]
    frame_h = grid[-2] if len(grid) > 2 else None
    n = math.prod(grid)
    after, before, sizes, aspects, overlap = [], [], [], [], []
    in_context = torch.zeros(n, dtype=torch.float64)
    in_target = torch.zeros(n, dtype=torch.float64)
    fallbacks, has_stats, rectangles = 0, True, True
    shared = torch.zeros(2, dtype=torch.long)  # (target entries in a patch of 2+ blocks, all)
    for i in range(batches):
        masks, info = _draw(masker, batch_size, seed, step + i, mask_set)
        valid = _valid(masks)
        after.append(valid.sum(1))
        has_stats = has_stats and info is not None
        if has_stats and info is not None:
            before.append(info.context_sizes)
            fallbacks += int(info.fallbacks)
        sizes.append(target_sizes(masks).flatten())  # valid indices of each block
        block_aspects = _aspects(masks, gw, frame_h)
        rectangles = rectangles and block_aspects is not None
        if rectangles and block_aspects is not None:
            aspects.append(block_aspects)
        member = target_membership(masks, n)  # [B, N]: in some target (valid positions)
        shared += _overlapped_entries(masks, n)
        overlap.append((member.gather(1, masks.context) & valid).sum() / valid.sum())
        in_context += context_membership(masks, n).sum(0)  # padding entries left out
        in_target += member.sum(0)
    total = batch_size * batches
    return {
        "masker": repr(masker), "grid": list(grid), "batch_size": batch_size, "batches": batches,
        "num_targets": int(masks.targets.shape[1]),
        "target_size": _summary(torch.cat(sizes)),
        "target_aspect": _summary(torch.cat(aspects)) if rectangles else None,
        "context_before": _summary(torch.cat(before)) if has_stats else None,
        "context_size": _summary(torch.cat(after)),
        "overlap_fraction": float(torch.stack(overlap).mean()),
        "target_overlap": float(shared[0]) / max(1, int(shared[1])),
        "fallbacks": fallbacks if has_stats else None,
        "context_coverage": (in_context / total).view(grid).tolist(),
        "target_coverage": (in_target / total).view(grid).tolist(),
    }


def _overlapped_entries(masks: MaskBatch, n: int) -> torch.Tensor:
    """[2]: (valid target entries whose patch lies in two or more blocks of its sample, all
    valid target entries) of one batch."""
    idx = masks.targets.flatten(1)
    valid = (masks.targets_valid.flatten(1) if masks.targets_valid is not None
             else torch.ones_like(idx, dtype=torch.bool))
    counts = torch.zeros(idx.shape[0], n + 1, dtype=torch.long)
    counts.scatter_add_(1, torch.where(valid, idx, n), valid.long())
    many = counts[:, :n] >= 2
    return torch.stack([(counts[:, :n] * many).sum(), valid.sum()])


def overlap_note(share: float) -> list[str]:
    """The picture's lines on target blocks that overlap (each sample's block colours)."""
    head = ["Each target block of a sample has", "its own colour."]
    if share == 0:
        return [*head, "No two blocks of a sample overlap."]
    return [*head, "Where blocks of a sample overlap,", "a patch shows the last block's",
            f"colour: {100 * share:.1f}% of target patches", "lie in two or more blocks."]


# -- the picture ---------------------------------------------------------------------------
def _heat_colour(value: float) -> tuple[int, int, int]:
    x = min(max(value, 0.0), 1.0) * (len(HEAT) - 1)
    i = min(int(x), len(HEAT) - 2)
    a, b, t = HEAT[i], HEAT[i + 1], x - i
    return tuple(round(a[k] + (b[k] - a[k]) * t) for k in range(3))  # type: ignore[return-value]


def _draw_sample(draw: ImageDraw.ImageDraw, masks: MaskBatch, b: int, grid, origin, cell) -> None:
    gh, gw = grid
    colours, in_context = _sample_colours(masks, b, gh * gw)
    for p, colour in enumerate(colours):
        x, y = origin[0] + (p % gw) * cell, origin[1] + (p // gw) * cell
        draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=colour)
        if colour != CONTEXT and p in in_context and cell >= 6:  # context overlaps a target
            d = max(1, cell // 4)
            draw.rectangle([x + d, y + d, x + cell - 2 - d, y + cell - 2 - d], fill=CONTEXT)


def _draw_heat(draw: ImageDraw.ImageDraw, values: list[list[float]], origin, cell) -> None:
    for r, row in enumerate(values):
        for c, value in enumerate(row):
            x, y = origin[0] + c * cell, origin[1] + r * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=_heat_colour(value))


LEGEND = (("context", CONTEXT), ("target blocks, one colour each", None),
          ("neither: not seen by the encoder, not predicted", BACKGROUND))
BAR_H = 10
BAR_LABEL = "share of the {n} samples with the patch in the context / in a target"


def picture_layout(grid: tuple[int, int], samples: int) -> dict[str, Any]:
    """Where `render_masks` draws what: cell size, image size and the boxes (x0, y0, x1, y1)
    of the legend, the samples' row, the heat maps' row and the colour bar under them."""
    gh, gw = grid
    cell = max(3, min(24, 224 // max(gh, gw)))
    pad, title = 12, 16
    panel_w, panel_h = gw * cell, gh * cell
    bar_w = 2 * panel_w + pad
    # the default font is about 6 px a character: the legend and the bar's label fit
    width = max(pad + max(samples, 2) * (panel_w + pad), 440,
                pad + bar_w + 6 + 6 * len(BAR_LABEL.format(n=10**6)) + pad)
    legend = (pad, title + 2, width - pad, title + 14)
    samples_top = legend[3] + pad + title
    heat_top = samples_top + panel_h + pad + title
    bar_top = heat_top + panel_h + 6
    bar = (pad, bar_top, pad + bar_w, bar_top + BAR_H)
    height = bar[3] + 4 + title
    return {"cell": cell, "pad": pad, "title": title, "panel": (panel_w, panel_h),
            "size": (width, height), "legend": legend, "samples_top": samples_top,
            "heat_top": heat_top, "colour_bar": bar}


def canvas(size: tuple[int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A white picture and its pen, writing in Pillow's scalable default font (its bitmap
    font ran words together: "notseen")."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.font = ImageFont.load_default(size=11)
    return image, draw


def _draw_legend(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int],
                 targets: int = 1) -> None:
    """The legend; the target swatch shows the colour of each of `targets` blocks."""
    x, y = box[0], box[1]
    for name, colour in LEGEND:
        if colour is None:  # one narrow swatch per target block's colour
            used = TARGETS[:max(1, min(targets, len(TARGETS)))]
            for i, c in enumerate(used):
                draw.rectangle([x + 5 * i, y, x + 5 * i + 5, y + 10], fill=c)
            draw.rectangle([x, y, x + 5 * len(used), y + 10], outline=(120, 120, 120))
            x += 5 * len(used) - 10
        else:
            draw.rectangle([x, y, x + 10, y + 10], fill=colour, outline=(120, 120, 120))
        draw.text((x + 14, y - 1), name, fill="black")
        x += 14 + int(draw.textlength(name)) + 16
    # a target cell with the blue dot: context inside a target
    draw.rectangle([x, y, x + 10, y + 10], fill=TARGETS[0], outline=(120, 120, 120))
    draw.rectangle([x + 3, y + 3, x + 7, y + 7], fill=CONTEXT)
    draw.text((x + 14, y - 1), "context inside a target", fill="black")


def _draw_colour_bar(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int],
                     samples: int) -> None:
    x0, y0, x1, y1 = box
    for x in range(x0, x1):
        draw.line([x, y0, x, y1 - 1], fill=_heat_colour((x - x0) / max(1, x1 - 1 - x0)))
    draw.text((x0, y1 + 2), "0", fill="black")
    draw.text((x1 - 8, y1 + 2), "1", fill="black")
    draw.text((x1 + 6, y0 - 1), BAR_LABEL.format(n=samples), fill="black")


def render_masks(masker: Any, out_path: str | Path, *, samples: int = 4, seed: int = 0,
                 step: int = 0, batch_size: int = 128,
                 batches: int = TOKEN_BATCHES) -> dict[str, Any]:
    """Write a PNG of `samples` samples of step `step` and the coverage heat maps over
    `batches` batches of `batch_size` (with a legend and the heat maps' colour bar); returns
    `mask_statistics` of those batches."""
    gh, gw = masker.grid
    stats = mask_statistics(masker, batch_size, seed, batches, step)
    masks, _ = _draw(masker, max(batch_size, samples), seed, step)
    lay = picture_layout((gh, gw), samples)
    cell, pad, title = lay["cell"], lay["pad"], lay["title"]
    panel_w, panel_h = lay["panel"]
    image, draw = canvas(lay["size"])
    draw.text((pad, 2), f"{type(masker).__name__} on {gh}x{gw}, seed {seed}, step {step}",
              fill="black")
    _draw_legend(draw, lay["legend"], int(masks.targets.shape[1]))
    top = lay["samples_top"]
    for b in range(samples):
        x = pad + b * (panel_w + pad)
        draw.text((x, top - title + 2), f"sample {b}", fill="black")
        _draw_sample(draw, masks, b, (gh, gw), (x, top), cell)
    top = lay["heat_top"]
    for i, (name, key) in enumerate((("in context", "context_coverage"),
                                     ("in a target", "target_coverage"))):
        x = pad + i * (panel_w + pad)
        values = stats[key]
        peak = max(max(row) for row in values)
        draw.text((x, top - title + 2), f"{name} (max {peak:.2f})", fill="black")
        _draw_heat(draw, values, (x, top), cell)
    _draw_colour_bar(draw, lay["colour_bar"], batch_size * batches)
    x = pad + 2 * (panel_w + pad)  # beside the two heat maps, where no sample stands
    for i, line in enumerate(overlap_note(stats["target_overlap"])):
        draw.text((x, top + 14 * i), line, fill="black")
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    image.save(out_path, format="PNG")
    return stats


def frames(grid: tuple[int, ...]) -> tuple[int, int, int]:
    """(tiles, gh, gw): a grid seen as tiles of one frame each, one per time step of (t, gh,
    gw) (per leading index on higher ranks); a 2-D grid is one tile, a 1-D one a row."""
    if len(grid) == 1:
        return 1, 1, int(grid[0])
    return math.prod(grid[:-2]), int(grid[-2]), int(grid[-1])


def _strip(draw: ImageDraw.ImageDraw, colours: list, grid: tuple[int, ...], origin,
           cell: int, gap: int, dots: set[int] | None = None) -> None:
    """Cells of `colours` (one per patch, raster order) as a strip of frame tiles."""
    tiles, gh, gw = frames(grid)
    for p, colour in enumerate(colours):
        tile, rest = divmod(p, gh * gw)
        x = origin[0] + tile * (gw * cell + gap) + (rest % gw) * cell
        y = origin[1] + (rest // gw) * cell
        draw.rectangle([x, y, x + max(1, cell - 2), y + max(1, cell - 2)], fill=colour)
        if dots is not None and p in dots and colour != CONTEXT and cell >= 6:
            d = max(1, cell // 4)
            draw.rectangle([x + d, y + d, x + cell - 2 - d, y + cell - 2 - d], fill=CONTEXT)


def _sample_colours(masks: MaskBatch, b: int, n: int) -> tuple[list, set[int]]:
    colours = [BACKGROUND] * n
    in_context = set(masks.context[b][_valid(masks)[b]].tolist())
    for p in in_context:
        colours[p] = CONTEXT
    for m in range(masks.targets.shape[1]):
        block = masks.targets[b, m]
        if masks.targets_valid is not None:
            block = block[masks.targets_valid[b, m]]
        for p in block.tolist():
            colours[p] = TARGETS[m % len(TARGETS)]
    return colours, in_context


def render_mask_sets(masker: Any, out_path: str | Path, *, samples: int = 2, seed: int = 0,
                     step: int = 0, batch_size: int = 128,
                     batches: int = TOKEN_BATCHES) -> dict[str, dict[str, Any]]:
    """Write a PNG with one labelled section per mask set (a single MaskBatch is one set):
    `samples` samples of step `step`, each a strip of one tile per time step, then the
    coverage strips over `batches` batches; returns {set name: `mask_statistics`}."""
    grid = tuple(int(g) for g in masker.grid)
    drawn = draw_masks(masker, max(batch_size, samples), seed, step)
    sets = drawn if isinstance(drawn, dict) else {"masks": drawn}
    tiles, gh, gw = frames(grid)
    cell = max(2, min(16, 112 // max(gh, gw)))
    pad, title, gap = 12, 16, 4
    label_w = 84
    tile_w = gw * cell + gap
    rows = samples + 2  # the samples, then the two coverage strips
    section_h = title + rows * (gh * cell + title)
    heading = (f"{type(masker).__name__} on {'x'.join(map(str, grid))}, seed {seed}, "
               f"step {step}: blue = context, orange = target, grey = neither; "
               f"one tile per time step")
    image, draw = canvas((1, 1))
    width = max(pad + label_w + tiles * tile_w + pad, 520,
                pad + int(draw.textlength(heading)) + pad)  # the heading whole, not cut
    image, draw = canvas((width, 2 * title + len(sets) * (section_h + pad)))
    draw.text((pad, 2), heading, fill="black")
    out: dict[str, dict[str, Any]] = {}
    top = 2 * title
    for name, masks in sets.items():
        stats = mask_statistics(masker, batch_size, seed, batches, step,
                                name if isinstance(drawn, dict) else None)
        stats["mask_set"] = name if isinstance(drawn, dict) else None
        out[name] = stats
        draw.text((pad, top), f"mask set {name!r}: context {stats['context_size']['mean']:.0f}"
                              f", target {stats['target_size']['mean']:.0f} of "
                              f"{math.prod(grid)} patches (mean)", fill="black")
        y = top + title
        x0 = pad + label_w
        for t in range(tiles):
            draw.text((x0 + t * tile_w, y), f"t={t}" if len(grid) > 2 else "", fill="black")
        y += title
        for b in range(samples):
            colours, in_context = _sample_colours(masks, b, math.prod(grid))
            draw.text((pad, y), f"sample {b}", fill="black")
            _strip(draw, colours, grid, (x0, y), cell, gap, in_context)
            y += gh * cell + title
        for label, key in (("in context", "context_coverage"), ("in a target", "target_coverage")):
            values = torch.tensor(stats[key]).flatten().tolist()
            draw.text((pad, y), label, fill="black")
            _strip(draw, [_heat_colour(v) for v in values], grid, (x0, y), cell, gap)
            y += gh * cell + title
        top += section_h + pad
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    image.save(out_path, format="PNG")
    return out


def never_in_target_note(stats: dict[str, Any], style: str | None = None) -> str | None:
    """Why patches were never in a target, from where they are; None when every patch was.
    `style`: the masker's config style, if it has one ("reference" has a known reason)."""
    if len(stats["grid"]) != 2:
        flat = torch.tensor(stats["target_coverage"]).flatten()
        never_n = int((flat == 0).sum())
        if not never_n:
            return None
        return (f"patches never in a target: {never_n} of {flat.numel()} in the "
                f"{stats['batch_size'] * stats['batches']} samples drawn (dark cells of the "
                f"'in a target' strips).")
    coverage = stats["target_coverage"]
    gh, gw = len(coverage), len(coverage[0])
    never = {(r, c) for r in range(gh) for c in range(gw) if coverage[r][c] == 0}
    if not never:
        return None
    drawn = stats["batch_size"] * stats["batches"]
    edge = {(gh - 1, c) for c in range(gw)} | {(r, gw - 1) for r in range(gh)}
    if never == edge:
        why = (" This is the reference style's quirk: like the official I-JEPA sampler it "
               "draws a block's top-left corner from [0, grid - size), one position short "
               "of [0, grid - size], so no block can touch the last row or column "
               "(masker.style=corrected reaches every patch)." if style == "reference" else
               " The masker never places a target block there.")
        return (f"patches never in a target: the {len(never)} of the grid's last row and "
                f"column, in all {drawn} samples drawn.{why}")
    return (f"patches never in a target: {len(never)} of {gh * gw} in the {drawn} samples "
            f"drawn (dark cells of the 'in a target' map). Either the masker never places "
            f"targets there, or small blocks missed them by chance: a larger --batch-size "
            f"tells the two apart.")


# -- console output ------------------------------------------------------------------------
def _fmt(summary: dict[str, float] | None, digits: int = 1) -> str:
    if summary is None:
        return "n/a"
    return (f"{summary['min']:.{digits}f} / {summary['mean']:.{digits}f} / "
            f"{summary['max']:.{digits}f}")


def print_statistics(stats: dict[str, Any], console: Any) -> None:
    """A rich table of `mask_statistics` (min / mean / max where three numbers)."""
    from rich.table import Table

    label = f"mask set {stats['mask_set']!r}: " if stats.get("mask_set") else ""
    table = Table(title=f"{label}masks on a {'x'.join(map(str, stats['grid']))} grid, "
                        f"{stats['batches']} batches of {stats['batch_size']}")
    table.add_column("statistic")
    table.add_column("min / mean / max", justify="right")
    table.add_row("target blocks per image", str(stats["num_targets"]))
    table.add_row("target block size (patches)", _fmt(stats["target_size"]))
    table.add_row("target aspect h/w", _fmt(stats["target_aspect"], 2))
    table.add_row("context before equalisation", _fmt(stats["context_before"]))
    table.add_row("context (valid patches)", _fmt(stats["context_size"]))
    table.add_row("context share inside targets", f"{stats['overlap_fraction']:.3f}")
    never = int((torch.tensor(stats["target_coverage"]) == 0).sum())
    table.add_row("patches never in a target (see below)" if never else
                  "patches never in a target", str(never))
    if stats["fallbacks"] is not None:
        table.add_row("samples that fell back (overlap kept)", str(stats["fallbacks"]))
    console.print(table)


def masks_command(recipe: Any, registry: Registry, out: str | Path, samples: int = 4,
                  seed: int | None = None, batch_size: int | None = None,
                  console: Any = None) -> dict[str, Any]:
    """`jepa masks RECIPE --out masks.png`: build the recipe's masker on its encoder's grid,
    write the picture, print the statistics. seed None: the recipe's seed; batch_size None:
    its global batch (the masks of a batch depend on its size, as in training)."""
    grid = encoder_geometry(recipe, registry)[1]
    spec = registry.get("masker", recipe.masker.name)
    masker = spec.build(recipe.masker.config, grid=grid)
    seed = recipe.seed if seed is None else seed
    batch_size = recipe.train.global_batch_size if batch_size is None else batch_size
    if len(grid) != 2 or isinstance(draw_masks(masker, batch_size, seed, 0), dict):
        return _sets_command(recipe, masker, out, samples, seed, batch_size, console)
    stats = render_masks(masker, out, samples=samples, seed=seed, batch_size=batch_size)
    counts = draw_token_counts(masker, seed, batch_size, stats["batches"])
    stats["context_tokens"] = counts.context
    if console is not None:
        print_statistics(stats, console)
        note = never_in_target_note(stats, getattr(getattr(masker, "config", None), "style",
                                                   None))
        if note:
            console.print(note, markup=False)
        console.print(f"picture: {PICTURE_KEY}", markup=False)
        console.print(f"context tokens per sample: {counts.context:.1f} "
                      f"({counts.definition()}; `jepa check` reports the same figure)",
                      markup=False)
        console.print(f"wrote {out} (masker {recipe.masker.name!r} on a {grid[0]}x{grid[1]} grid)")
    return stats


def _sets_command(recipe: Any, masker: Any, out: str | Path, samples: int, seed: int,
                  batch_size: int, console: Any) -> dict[str, Any]:
    """`jepa masks` for several mask sets or a grid that is not 2-D: `render_mask_sets`, then
    a table and the token counts of each set. Returns {"sets": {name: statistics}}."""
    sets = render_mask_sets(masker, out, samples=min(samples, 4), seed=seed,
                            batch_size=batch_size)
    counts = draw_set_token_counts(masker, seed, batch_size)
    for name, stats in sets.items():
        stats["context_tokens"] = next(iter(counts.values())).context if len(counts) == 1 \
            else counts[name].context
    if console is not None:
        for name, stats in sets.items():
            print_statistics(stats, console)
            note = never_in_target_note(stats)
            if note:
                console.print(note, markup=False)
            console.print(f"mask set {name!r}: context tokens per sample "
                          f"{stats['context_tokens']:.1f} (as `jepa check` counts them)",
                          markup=False)
        grid = "x".join(map(str, masker.grid))
        console.print(f"wrote {out} (masker {recipe.masker.name!r} on a {grid} grid, "
                      f"{len(sets)} mask set{'s' if len(sets) > 1 else ''}: "
                      f"{', '.join(sets)})", markup=False)
    return {"sets": sets}
