"""`jepa check`: the resolved recipe and the plan of the run it describes.

The plan is what the run will cost before any GPU is touched: parameters per component (the
models are built on the meta device, so ViT-G costs no memory), tokens per image (the masker
draws the masks of a few steps exactly as the training data loader would), FLOPs and memory
per GPU (the analytic model of `jepa_core.commands.costs`), the batch split over the GPUs, the
steps of
the run, and its duration at a stated fraction of the GPUs' bf16 peak.

    jepa check recipes/ijepa_vith16.yaml --gpus 32
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs
import torch

from jepa_core.commands import costs, measure
from jepa_core.errors import ConfigError, PluginFailed, RunError
from jepa_core.interfaces import Masker
from jepa_core.recipe import Recipe, recipe_to_yaml
from jepa_core.runtime.build import (
    MethodParts,
    build,
    encoder_geometry,
    steps_per_epoch,
    total_steps,
)
from jepa_core.runtime.data import BatchLayout, batch_layout
from jepa_core.runtime.tokens import (
    LAYOUTS,
    ContextLayouts,
    TokenCounts,
    context_layouts,
    draw_set_token_counts,
    draw_token_counts,
)

if TYPE_CHECKING:  # pragma: no cover
    from jepa_core.plugins import Registry

# Training images of the data sets the paper recipes name, used when their folder is absent.
IMAGENET_1K = ("ImageNet-1K", 1_281_167)
IMAGENET_22K = ("ImageNet-22K", 14_197_122)
# Dense bf16 peak FLOP/s (without sparsity) of SXM parts, and the fractions of it we plan at:
# 40% is a good run of a large ViT; the official I-JEPA code reached about 20% on A100s.
PLAN_GPUS = (("A100", 312e12, 0.40), ("H100", 989e12, 0.40), ("A100", 312e12, 0.20))
COMPONENT_SECTIONS = ("data", "encoder", "method", "predictor", "masker", "target_updater",
                      "loss")
GIB = 2**30


@attrs.frozen
class Plan:
    """What `jepa check` prints for a recipe: world size and batch layout, parameters, tokens,
    schedule, and (where the cost model describes the models) FLOPs, memory and time."""
    world_size: int
    world_source: str  # where the world size came from
    layout: BatchLayout
    params: list[tuple[str, int, int]]  # (component, trainable, frozen)
    grid: tuple[int, ...]  # the encoder's patch grid, any rank: (gh, gw), (t, gh, gw)
    tokens: tuple[float, float, int] | None  # (Nc, Nt, M); None: the recipe has no masker
    data_size: int  # training images, counted or assumed (see data_note)
    data_note: str
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    flops: costs.StepFlops | None  # per image; None: no tokens, or models the model can't cost
    memory: dict[str, float] | None  # bytes per GPU
    notes: list[str]
    token_counts: TokenCounts | None = None  # where `tokens` comes from, with its definition
    device: str = "gpu"  # what the plan is for: "gpu" (the cost model) or "cpu" (measured)
    measured: measure.Measured | None = None  # the CPU plan's timed steps
    context_layouts: ContextLayouts | None = None  # context tokens per step: truncate/pad/pack
    # {set name: token counts} for a masker of several mask sets ({name: MaskBatch}); None: one
    set_tokens: dict[str, TokenCounts] | None = None


# -- gathering ---------------------------------------------------------------------------
def count_parameters(module: torch.nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in module.parameters()) - trainable


def transformer_shape(module: torch.nn.Module) -> costs.TransformerShape | None:
    """Depth, width and MLP ratio of a model made of timm-layout blocks (`attn.qkv`,
    `mlp.fc1`); None for any other architecture (the cost model does not describe it)."""
    blocks: list[Any] = [m for m in module.modules()
              if isinstance(getattr(getattr(m, "attn", None), "qkv", None), torch.nn.Linear)
              and isinstance(getattr(getattr(m, "mlp", None), "fc1", None), torch.nn.Linear)]
    if not blocks:
        return None
    width = blocks[0].attn.qkv.in_features
    return costs.TransformerShape(len(blocks), width, blocks[0].mlp.fc1.out_features / width)


def patch_dim(encoder: Any) -> int:  # an Encoder module: .modules() and .patch_grid
    """Pixel values per patch, C * p * p (C * t * p * p for a video tubelet), from the first
    2-D or 3-D convolution (3 channels of p x p otherwise, p from the frame's grid)."""
    for m in encoder.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
            return m.in_channels * math.prod(m.kernel_size)
    return 3 * (encoder.image_size[0] // encoder.patch_grid[-2]) ** 2


def method_on_meta(recipe: Recipe, registry: Registry, total: int, spe: int) -> tuple[Any, str]:
    """The recipe's method with its modules built without memory (meta device); on the CPU
    for a plugin that cannot build on meta."""
    parts = MethodParts(recipe, registry, total, spe)
    try:
        with torch.device("meta"):
            return build("method", recipe, registry, "method", parts=parts), "meta"
    except PluginFailed as exc:  # a factory raised: maybe only because of the meta device
        if not isinstance(exc.__cause__, (NotImplementedError, RuntimeError)):
            raise
    return build("method", recipe, registry, "method", parts=parts), "cpu"


def parameter_rows(method: Any) -> list[tuple[str, int, int]]:
    """(module, trainable, frozen) for each module of the method; a module the optimizer
    never sees (a target encoder) counts as frozen."""
    rows = []
    for name, module in method.modules.items():
        trainable, frozen = count_parameters(module)
        if name not in method.trainable:
            trainable, frozen = 0, trainable + frozen
        rows.append((name.replace("_", " "), trainable, frozen))
    return rows


def ijepa_shaped(method: Any) -> bool:
    """Whether the I-JEPA cost model describes the method: a target encoder forward on all
    patches, the encoder on the context, a predictor (ijepa, cjepa)."""
    return {"encoder", "predictor", "target_encoder"} <= set(method.modules)


def plan_device(recipe: Recipe, gpus: int | None) -> tuple[str, str]:
    """("gpu" | "cpu", why): the CPU when train.device is cpu, or is auto and no GPU is
    visible, unless --gpus asks for a GPU plan."""
    if gpus is not None:
        return "gpu", "from --gpus"
    if recipe.train.device == "cpu":
        return "cpu", "train.device is cpu"
    if recipe.train.device == "auto" and not torch.cuda.is_available():
        return "cpu", "train.device is auto and no GPU is visible; use --gpus N for a GPU plan"
    return "gpu", "visible GPUs; use --gpus N"


def world_size(gpus: int | None) -> tuple[int, str]:
    """(world size, where it came from) for a GPU plan: `--gpus`, else the visible CUDA
    devices, else 1; ConfigError for --gpus below 1."""
    if gpus is not None:
        if gpus < 1:
            raise ConfigError(f"--gpus must be at least 1 (got {gpus}).")
        return gpus, "from --gpus"
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible:
        return visible, "visible GPUs; use --gpus N"
    return 1, "no GPU visible; use --gpus N"


def measure_tokens(masker: Masker, recipe: Recipe) -> TokenCounts:
    """The token counts of the recipe's masks (`jepa_core.runtime.tokens`: the same figures
    `jepa masks` prints), drawn for the global batch as the training loader draws them."""
    return draw_token_counts(masker, recipe.seed, recipe.train.global_batch_size)


def data_size(recipe: Recipe, registry: Registry, image_size: tuple[int, int],
              read: bool = True, clips: bool = False) -> tuple[int, str]:
    """Training images (clips, for a video encoder): the real length of the data source
    (built as `jepa run` builds it, so missing data fails here as it would there), or with
    read=False (`--no-data`) the size of the data set the recipe is for, stated as an
    assumption: ImageNet's for images; for clips, what train.steps_per_epoch draws per epoch
    (no video data set size is assumed)."""
    if read:
        try:
            source = build("data_source", recipe, registry, "data", image_size=image_size,
                           train=True)
        except RunError as exc:
            raise RunError(f"{exc} (`jepa check --no-data` plans the run without reading the "
                           f"data.)") from exc
        return len(source), "counted"
    cfg = recipe.data.config
    limit = getattr(cfg, "max_images", None)
    if limit:
        return limit, "data.max_images (--no-data: the data was not read)"
    if clips:
        return video_data_size(recipe)
    where = f"{recipe.name} {getattr(cfg, 'root', '')}".lower()  # the paper recipes' names
    name, size = IMAGENET_22K if "22k" in where else IMAGENET_1K
    return size, (f"assumed: {name}'s {size:,} (--no-data: the data was not read; set "
                  f"data.max_images or train.steps_per_epoch to plan for another size)")


def video_data_size(recipe: Recipe) -> tuple[int, str]:
    """(clips, note) of a video recipe planned without reading its data: one epoch of
    train.steps_per_epoch global batches; without it, ImageNet-1K's count as a stand-in."""
    spe, batch = recipe.train.steps_per_epoch, recipe.train.global_batch_size
    if spe is not None:
        return spe * batch, (f"assumed: {spe * batch:,} clips, what {spe:,} steps of "
                             f"{batch:,} draw (--no-data: the videos were not read; the "
                             f"schedule does not depend on their number)")
    name, size = IMAGENET_1K
    return size, (f"assumed: {size:,} clips, a stand-in ({name}'s count of images; "
                  f"--no-data: the videos were not read; set data.max_images or "
                  f"train.steps_per_epoch to plan for their real number)")


def cost_model(recipe: Recipe, encoder: Any, predictor: torch.nn.Module,
               sets: list[tuple[float, float, int]], layout: BatchLayout, world: int
               ) -> tuple[costs.StepFlops | None, dict[str, float] | None]:
    """FLOPs per image and bytes per GPU of one step whose masks are `sets`, (Nc, Nt, M) of
    each mask set (one for I-JEPA); (None, None) for models the cost model does not describe."""
    enc_shape, pred_shape = transformer_shape(encoder), transformer_shape(predictor)
    if enc_shape is None or pred_shape is None:
        return None, None
    n = math.prod(encoder.patch_grid)
    flops = costs.sets_step_flops([costs.ijepa_step_flops(
        enc_shape, pred_shape, num_patches=n, patch_dim=patch_dim(encoder), context_tokens=nc,
        target_tokens=nt, num_targets=m) for nc, nt, m in sets])
    (enc_t, enc_f), (pred_t, pred_f) = count_parameters(encoder), count_parameters(predictor)
    fsdp = recipe.dist.strategy == "fsdp"
    precision = "fp32" if recipe.train.precision == "fp32" else "bf16"
    memory = costs.state_bytes(enc_t + pred_t, enc_f + pred_f, enc_t + enc_f,
                               ddp_buckets=world > 1 and not fsdp, shards=world if fsdp else 1,
                               bf16=precision == "bf16")
    memory.update(costs.sets_activation_bytes(enc_shape, pred_shape, batch=layout.micro_batch,
                                              num_patches=n, sets=sets, precision=precision))
    return flops, memory


def make_plan(recipe: Recipe, registry: Registry, gpus: int | None = None, *,
              read_data: bool = True) -> Plan:
    """Build the recipe's models on the meta device and gather its Plan: counts, token sizes,
    schedule, cost-model FLOPs and memory, and on a CPU-only machine measured steps."""
    notes: list[str] = []
    device, device_reason = plan_device(recipe, gpus)
    world, world_source = world_size(gpus) if device == "gpu" else (1, device_reason)
    layout = batch_layout(recipe.train.global_batch_size, world, 0,
                          recipe.dist.per_device_batch_cap)
    image_size, grid = encoder_geometry(recipe, registry)
    n_data, data_note = data_size(recipe, registry, image_size, read_data, len(grid) == 3)
    spe = steps_per_epoch(recipe, n_data)
    total = total_steps(recipe, spe)
    if recipe.train.steps_per_epoch is not None:
        data_note = "train.steps_per_epoch is set: " + data_note
    method, where = method_on_meta(recipe, registry, total, spe)
    if where == "cpu":
        notes.append("the models could not be built on the meta device; counted on the CPU")
    tokens = counts = layouts = set_tokens = None  # a masker that cannot build refuses
    if recipe.masker is not None:
        masker = build("masker", recipe, registry, "masker", grid=grid)
        counts = measure_tokens(masker, recipe)
        tokens = (counts.context, counts.target, counts.num_targets)
        layouts = context_layouts(masker, recipe.seed, recipe.train.global_batch_size,
                                  layout.micro_batch)
        set_tokens = draw_set_token_counts(masker, recipe.seed, recipe.train.global_batch_size)
        if len(set_tokens) > 1:
            first = next(iter(set_tokens))
            notes.append(f"the masker draws {len(set_tokens)} mask sets "
                         f"({', '.join(set_tokens)}): the FLOPs and memory add up every set's "
                         f"context encoder and predictor passes (one target encoder pass); "
                         f"the context layouts are for the first set, {first!r}")
        else:
            set_tokens = None
    flops = memory = None
    if tokens is not None and ijepa_shaped(method):
        sets = ([(c.context, c.target, c.num_targets) for c in set_tokens.values()]
                if set_tokens is not None else [tokens])
        flops, memory = cost_model(recipe, method.modules["encoder"],
                                   method.modules["predictor"], sets, layout, world)
        if flops is None:
            notes.append("no FLOPs or memory: the cost model knows transformer blocks with "
                         "attn.qkv and mlp.fc1 (timm's layout); these models have none")
    elif not ijepa_shaped(method):
        notes.append(f"no FLOPs or memory: the cost model describes I-JEPA-shaped methods "
                     f"(encoder, predictor, target_encoder); method {recipe.method_name!r} "
                     f"has {', '.join(method.modules)}")
    measured = None
    if device == "cpu":
        measured = _measure_on_cpu(recipe, registry, method, flops, layout, read_data, notes)
    return Plan(world, world_source, layout, parameter_rows(method), grid, tokens, n_data,
                data_note, spe, total, int(round(recipe.optim.warmup_epochs * spe)), flops,
                memory, notes, counts, device, measured, layouts, set_tokens)


def _measure_on_cpu(recipe: Recipe, registry: Registry, method: Any, flops: Any,
                    layout: BatchLayout, read_data: bool,
                    notes: list[str]) -> measure.Measured | None:
    """The CPU plan's timed steps, or None with a note saying why they were not taken."""
    if not read_data:
        notes.append("not timed on this CPU: --no-data reads no data, so there is no real "
                     "batch to time")
        return None
    parameters = sum(t + f for _, t, f in parameter_rows(method))
    step_flops = None if flops is None else flops.total * layout.per_rank
    reason = measure.too_large(step_flops, parameters)
    if reason:
        notes.append(f"not timed on this CPU: {reason}; plan it for GPUs with --gpus N")
        return None
    return measure.time_cpu_steps(recipe, registry)


# -- printing ----------------------------------------------------------------------------
def _si(value: float, unit: str = "", top: float = 1e15) -> str:
    """630.7M, 22.3M, 1.23P: one decimal, three significant digits below 10; no prefix above
    `top` (parameters stay in millions)."""
    prefix = ""
    for scale, letter in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale and scale <= top:
            value /= scale
            prefix = letter
            break
    if value == 0:
        return "0"
    return (f"{value:#.3g}" if abs(value) < 10 else f"{value:,.1f}") + prefix + unit


def _gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.1f}" if nbytes >= GIB else f"{nbytes / GIB:.3f}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:,.1f} h"


def _table(title: str, *columns: str, note: str = "") -> Any:
    """A rich table; `note` is printed under it in full width (a caption would wrap)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", title_style="bold")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    table.note = note  # type: ignore[attr-defined]  # our own attribute, printed under it
    return table


def parameter_table(plan: Plan) -> Any:
    """The table of trainable and frozen parameters per module, with their sum."""
    table = _table("Parameters", "component", "trainable", "frozen", "total",
                   note="frozen: fixed sin-cos positions, and modules the optimizer never "
                        "sees (a target encoder is an EMA copy)")
    for name, trainable, frozen in plan.params:
        table.add_row(name, _si(trainable, top=1e6), _si(frozen, top=1e6),
                      _si(trainable + frozen, top=1e6))
    t, f = sum(p[1] for p in plan.params), sum(p[2] for p in plan.params)
    table.add_row("all", _si(t, top=1e6), _si(f, top=1e6), _si(t + f, top=1e6), style="bold")
    return table


def token_table(plan: Plan, recipe: Recipe) -> Any:
    """The table of patches, context and target tokens per image (with their share of N)."""
    n = math.prod(plan.grid)
    note = ("Nc: " + plan.token_counts.definition() + "; Nt likewise, per target block"
            if plan.token_counts is not None else "the recipe has no masker")
    table = _table("Tokens per image", "what", "tokens", "of N", note=note)
    table.add_row(f"patches N ({'x'.join(map(str, plan.grid))} grid)", str(n), "100%")
    if plan.set_tokens is not None:  # several mask sets: the rows of each
        for name, c in plan.set_tokens.items():
            table.add_row(f"set {name}: context Nc", f"{c.context:.1f}", f"{c.context / n:.0%}")
            table.add_row(f"set {name}: target blocks M x Nt", f"{c.num_targets} x "
                          f"{c.target:.1f}", f"{c.num_targets} x {c.target / n:.0%}")
            table.add_row(f"set {name}: predictor sequence Nc + Nt",
                          f"{c.context + c.target:.1f}", "")
    elif plan.tokens is not None:
        nc, nt, m = plan.tokens
        table.add_row("context Nc", f"{nc:.1f}", f"{nc / n:.0%}")
        table.add_row("target blocks M x Nt", f"{m} x {nt:.1f}", f"{m} x {nt / n:.0%}")
        table.add_row("predictor sequence Nc + Nt", f"{nc + nt:.1f}", "")
    return table


def layout_chooser(recipe: Recipe) -> str:
    """Which setting picks the layout: the masker's context_equalize where its config has one
    (multiblock's subset / pad / pack), else the masker itself."""
    masker = recipe.masker
    name = masker.name if masker is not None else "none"
    chosen = getattr(masker.config, "context_equalize", None) if masker is not None else None
    if chosen is None:
        return f"Chosen by the masker ({name})."
    return (f"Chosen by the masker ({name}: context_equalize {chosen}, of subset / pad / "
            f"pack).")


def context_layout_table(plan: Plan, recipe: Recipe) -> Any:
    """Context tokens the context encoder processes per step, for the recipe's layout and,
    when the masker reports its context sizes, for each of truncate / pad / pack."""
    c = plan.context_layouts
    assert c is not None  # print_check adds this table only when there are layouts
    table = _table(f"Context tokens per step (global batch {c.batch_size})", "layout",
                   "processed", "per image", "vs pad", note=(
                       f"tokens the context encoder computes per step, in micro-batches of "
                       f"{c.micro_batch} rows (each trimmed of padding no row needs), mean over "
                       f"the masks of steps 0-{c.batches - 1}. truncate: every row cut to its "
                       f"micro-batch's shortest (context thrown away); pad: padded to the "
                       f"longest; pack: the valid tokens only, no padding (the loss of pad). "
                       f"Valid context: {c.valid / c.batch_size:.1f} per image. "
                       f"{layout_chooser(recipe)}"))
    base = c.by_layout["pad"] if c.by_layout else None

    def row(name: str, tokens: float, style: str = "") -> None:
        share = f"{tokens / base:.0%}" if base else ""
        table.add_row(name, f"{tokens:,.0f}", f"{tokens / c.batch_size:.1f}", share,
                      style=style)

    for name in LAYOUTS:
        if c.by_layout:
            row(name + (" (this recipe)" if name == c.layout else ""), c.by_layout[name])
    row(f"as trained ({c.layout})", c.processed, "bold")
    return table


def flops_table(plan: Plan, recipe: Recipe) -> Any:
    """The table of FLOPs per image by part of the step, and for the global batch."""
    f = plan.flops
    assert f is not None, "a FLOPs table needs the plan's FLOPs"
    table = _table("FLOPs per step", "part", "per image", "share", note=(
        "matmul FLOPs, multiply-add = 2, backward = 2x forward (jepa_core/commands/costs.py)"))
    each = f", each of {len(plan.set_tokens)} mask sets" if plan.set_tokens else ""
    rows = [("target encoder forward, N tokens", f.target),
            (f"context encoder forward + backward, Nc tokens{each}", f.context),
            (f"predictor forward + backward, M x (Nc + Nt) tokens{each}", f.predictor)]
    for name, value in rows:
        table.add_row(name, _si(value, "FLOP"), f"{value / f.total:.0%}")
    table.add_row("step", _si(f.total, "FLOP"), "100%", style="bold")
    batch = recipe.train.global_batch_size
    table.add_row(f"step, global batch {batch}", _si(f.total * batch, "FLOP"), "")
    return table


def memory_table(plan: Plan, recipe: Recipe) -> Any:
    """The table of bytes per GPU (weights, optimizer state, activations) and which GPU
    size the total fits."""
    mode = "fp32" if recipe.train.precision == "fp32" else "bf16 autocast, SDPA"
    table = _table(f"Memory per GPU, micro-batch {plan.layout.micro_batch}", "what", "GiB",
                   note=(f"{recipe.dist.strategy}, {mode}: fp32 weights and AdamW state; the "
                         f"activations kept for backward when it starts "
                         f"(jepa_core/commands/costs.py). "
                         f"Add ~10% for the CUDA context, temporaries and allocator slack."))
    assert plan.memory is not None, "a memory table needs the plan's memory figures"
    for name, value in plan.memory.items():
        table.add_row(name, _gib(value))
    total = sum(plan.memory.values())
    table.add_row("total", _gib(total), style="bold")
    fits = [f"{size} GB" for size in (40, 80, 141) if 1.1 * total < size * 1e9 * 0.97]
    table.note += (f" With that it fits a GPU of {fits[0]}." if fits else
                   " That exceeds a 141 GB GPU: lower dist.per_device_batch_cap.")
    return table


def schedule_table(plan: Plan, recipe: Recipe) -> Any:
    """The table of the batch layout (per device, accumulation, global) and the schedule
    (steps per epoch, epochs, total and warmup steps)."""
    lay, tr = plan.layout, recipe.train
    table = _table("Batch and schedule", "what", "value",
                   note=f"training {'clips' if len(plan.grid) == 3 else 'images'}: "
                        f"{plan.data_note}")
    unit = "GPU" if plan.device == "gpu" else "process"
    table.add_row(f"{unit}s (world size)" if unit == "GPU" else "CPU processes (world size)",
                  f"{plan.world_size} ({plan.world_source})")
    table.add_row(f"per-{unit} batch x accumulation",
                  f"{lay.micro_batch} x {lay.accum_steps} = {lay.per_rank}")
    table.add_row("global batch", f"{lay.per_rank} x {plan.world_size} = {lay.global_batch}")
    table.add_row(f"training {'clips' if len(plan.grid) == 3 else 'images'}",
                  f"{plan.data_size:,}")
    table.add_row("steps per epoch", f"{plan.steps_per_epoch:,}")
    table.add_row("epochs", f"{tr.epochs:g}")
    table.add_row("total steps", f"{plan.total_steps:,}")
    table.add_row("warmup steps", f"{plan.warmup_steps:,}")
    if tr.max_steps is not None and tr.max_steps < plan.total_steps:
        table.add_row("stops after (train.max_steps)", f"{tr.max_steps:,}")
    return table


def time_table(plan: Plan, recipe: Recipe) -> Any:
    """The table of the run's compute time on each GPU of PLAN_GPUS at its assumed
    utilisation, wall clock and GPU hours."""
    steps = min(plan.total_steps, recipe.train.max_steps or plan.total_steps)
    images = steps * recipe.train.global_batch_size
    g = plan.world_size
    table = _table(f"Time for {steps:,} steps on {g} GPU{'s' if g > 1 else ''}", "GPU",
                   "bf16 peak", "at", "img/s per GPU", "wall clock", "GPU time", note=(
                       "compute only, at the stated fraction of the dense bf16 peak; the "
                       "official I-JEPA code ran at ~20% on A100s (93 img/s)"))
    assert plan.flops is not None, "a time table needs the plan's FLOPs"
    for name, peak, util in PLAN_GPUS:
        seconds = costs.run_seconds(images, plan.flops.total, g, peak, util)
        rate = peak * util / plan.flops.total
        table.add_row(name, f"{peak / 1e12:.0f} TFLOP/s", f"{util:.0%}", f"{rate:,.0f}",
                      _duration(seconds), _duration(seconds * g))
    return table


def measured_table(plan: Plan, recipe: Recipe) -> Any:
    """The table of the steps timed on this machine: seconds per step, images per second,
    peak memory, and the time the run would take."""
    m = plan.measured
    assert m is not None, "a measured table needs the plan's measured steps"
    steps = min(plan.total_steps, recipe.train.max_steps or plan.total_steps)
    table = _table(f"Measured on this machine (CPU, {m.threads} threads)", "what", "value",
                   note=(f"measured on this machine: {m.steps} real training steps (after "
                         f"{measure.WARMUP_STEPS} warm-up) of the recipe's models on real "
                         f"batches of its data: forward, backward, AdamW, target update; "
                         f"data loading and the evaluation not included. Memory: the peak "
                         f"resident set size of this process (Python, torch, the data and "
                         f"models included)."))
    table.add_row("seconds per step (median)", f"{m.seconds_per_step:.3f} s")
    table.add_row("images per second", f"{m.images_per_step / m.seconds_per_step:,.0f}")
    table.add_row("peak memory (RSS)", f"{_gib(m.peak_rss_bytes)} GiB")
    table.add_row(f"time for {steps:,} steps", _duration(m.seconds_per_step * steps),
                  style="bold")
    return table


def print_plan(plan: Plan, recipe: Recipe, console: Any) -> None:
    """Print the plan's tables that apply (FLOPs, memory and time only where the cost model
    describes the models), then its notes."""
    tables = [parameter_table(plan), token_table(plan, recipe)]
    if plan.context_layouts is not None:
        tables.append(context_layout_table(plan, recipe))
    tables.append(schedule_table(plan, recipe))
    if plan.flops is not None:
        tables.append(flops_table(plan, recipe))
        if plan.device == "gpu":
            tables += [memory_table(plan, recipe), time_table(plan, recipe)]
    if plan.measured is not None:
        tables.append(measured_table(plan, recipe))
    for table in tables:
        console.print(table)
        if table.note:
            console.print(f"[dim]{table.note}[/dim]")
    for note in plan.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


def import_factories(recipe: Recipe, registry: Registry) -> None:
    """Import the factory of every component the recipe names (PluginError if one cannot be),
    as building the run would."""
    for section in COMPONENT_SECTIONS:
        comp = getattr(recipe, section)
        if comp is not None:  # absent: a section the method does without
            registry.get(comp.kind, comp.name).resolve_factory()
    for comp in recipe.eval.protocols or ():  # the evaluation after training, and `jepa eval`
        registry.get(comp.kind, comp.name).resolve_factory()


def check(recipe: Recipe, registry: Registry, gpus: int | None = None, *,
          read_data: bool = True) -> Plan:
    """What `jepa check` verifies before it calls a recipe valid: the plugins loaded, every
    factory imports, the data source builds (unless read_data is False), the method builds
    (its models on the meta device, with the loss and target updater it uses), the masker
    draws. Refuses with the error `jepa run` would give."""
    registry.raise_if_broken()
    import_factories(recipe, registry)
    return make_plan(recipe, registry, gpus, read_data=read_data)


def print_check(recipe: Recipe, registry: Registry, console: Any, gpus: int | None = None, *,
                read_data: bool = True) -> None:
    """`jepa check`: validate the recipe (raising before anything is printed if it fails),
    then print the resolved recipe and its plan."""
    from rich.syntax import Syntax

    plan = check(recipe, registry, gpus, read_data=read_data)  # nothing printed before it passes
    console.print(f"[green]recipe {recipe.name!r} is valid[/green]")
    console.print(Syntax(recipe_to_yaml(recipe), "yaml", theme="ansi_dark",
                         background_color="default"))
    for kind in COMPONENT_SECTIONS:
        comp = getattr(recipe, kind)
        if comp is None:  # a section the method does without
            continue
        spec = registry.get(comp.kind, comp.name)
        console.print(f"{kind}: {comp.name} from plugin {spec.plugin} "
                      f"({spec.distribution or 'no distribution'} {spec.version or ''})".rstrip())
    console.print()
    print_plan(plan, recipe, console)
