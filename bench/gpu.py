"""One I-JEPA training step of ViT-H/16 on one GPU: images/s, MFU and peak memory.

    python bench/gpu.py                          # ViT-H/16 @224, batch 64, compile off, then on
    python bench/gpu.py --batch 128 --iters 20 --compile on
    python bench/gpu.py --recipe recipes/ijepa_vith16_448.yaml --batch 16
    python bench/gpu.py --recipe recipes/ijepa_vith14.yaml --layout pad,pack  # pad vs pack
    python bench/gpu.py --cpu-smoke              # tiny model, 2 steps on the CPU: the script works

What is timed is the trainer's own path: `jepa_core.runtime.trainer.setup` builds the run from the
recipe (data replaced by synthetic images, one process, `global_batch_size` =
`per_device_batch_cap` = --batch, so one micro-batch per step) and `train_step` runs each step:
schedules, target forward, context encoder, predictor, loss, backward, AdamW, EMA update and the
step's metrics (which synchronise with the GPU, as in training). bf16 autocast and fused SDPA
are the recipe's (precision auto, attention auto); compile is the trainer's `train.compile`.

Masks are drawn for each step as the training loader draws them, so the context length varies
from step to step as in training (compiled models recompile once for a dynamic length during
the warm-up). Images are random tensors already on the GPU: data loading is not timed.

MFU = (images/s x FLOPs per image of each step, from jepa_core.commands.costs) / the GPU's
dense bf16 peak, looked up by name (A100 312, H100 SXM / H200 989, H100 PCIe 756,
H100 NVL 835 TFLOP/s) and printed; --peak-tflops overrides it. Everything is printed as one
table at the end.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
sys.path.insert(0, str(ROOT))

from jepa_core.commands import costs  # noqa: E402
from jepa_core.commands.plan import patch_dim, transformer_shape  # noqa: E402
from jepa_core.plugins import make_plugin_manager  # noqa: E402
from jepa_core.recipe import read_yaml, recipe_from_dict  # noqa: E402
from jepa_core.runtime.data import Batch, MaskingCollate  # noqa: E402
from jepa_core.runtime.distributed import DistEnv  # noqa: E402
from jepa_core.runtime.trainer import RunContext, setup, train_step  # noqa: E402

# Dense bf16 peak FLOP/s by device name; the first match wins (so "H100 PCIe" before "H100").
PEAK_BF16 = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12),
             ("H100", 989e12), ("A100", 312e12))
# --cpu-smoke: a 2-block ViT on an 8x8 grid, whose masks still satisfy the multi-block checks.
SMOKE = ["encoder.img_size=64", "encoder.patch_size=8", "encoder.embed_dim=64",
         "encoder.depth=2", "encoder.num_heads=2", "predictor.embed_dim=32", "predictor.depth=1",
         "predictor.num_heads=2", "masker.min_keep=4", "train.device=cpu"]
GIB = 2**30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "ijepa_vith16.yaml"))
    p.add_argument("--batch", type=int, default=None, help="images per step (default 64; 4 "
                   "with --cpu-smoke)")
    p.add_argument("--iters", type=int, default=None, help="timed steps (default 10; 2 with "
                   "--cpu-smoke)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; 1 "
                   "with --cpu-smoke)")
    p.add_argument("--compile", choices=("on", "off", "both"), default=None,
                   help="torch.compile the models (default both; off with --cpu-smoke)")
    p.add_argument("--layout", default="recipe",
                   help="context layouts to time, comma separated: recipe (the recipe's own), "
                        "subset (truncate), pad, pack; e.g. pad,pack")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense bf16 peak, when its name is not known")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU")
    args = p.parse_args(argv)
    smoke = args.cpu_smoke
    args.batch = args.batch or (4 if smoke else 64)
    args.iters = args.iters or (2 if smoke else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if smoke else 3)
    args.compile = args.compile or ("off" if smoke else "both")
    args.layouts = [x.strip() for x in args.layout.split(",") if x.strip()]
    bad = [x for x in args.layouts if x not in ("recipe", "subset", "pad", "pack")]
    if bad or not args.layouts:
        p.error(f"--layout: {', '.join(bad) or 'nothing'} is not one of recipe, subset, pad, "
                f"pack")
    return args


def device_peak(args: argparse.Namespace) -> tuple[str, float | None]:
    """(device name, dense bf16 peak FLOP/s or None when unknown)."""
    if args.cpu_smoke or not torch.cuda.is_available():
        return "cpu", args.peak_tflops * 1e12 if args.peak_tflops else None
    name = torch.cuda.get_device_name()
    if args.peak_tflops:
        return name, args.peak_tflops * 1e12
    return name, next((peak for key, peak in PEAK_BF16 if key in name), None)


def bench_recipe(args: argparse.Namespace, registry, compiled: bool, out_dir: str,
                 layout: str = "recipe"):
    """The recipe with synthetic data and one micro-batch of --batch images per step, its
    contexts truncated / padded / packed as `layout` says (recipe: as the recipe has it)."""
    data = read_yaml(args.recipe)
    steps = args.warmup + args.iters
    data["data"] = {"name": "synthetic", "num_images": args.batch * steps}
    overrides = [f"train.global_batch_size={args.batch}",
                 f"dist.per_device_batch_cap={args.batch}",
                 f"train.compile={'true' if compiled else 'false'}", "train.num_workers=0",
                 "eval.after_train=false", f"out_dir={out_dir}"]
    if args.cpu_smoke:
        overrides += SMOKE
    if layout != "recipe":
        overrides.append(f"masker.context_equalize={layout}")
    return recipe_from_dict(data, registry, args.recipe, overrides)


def make_batches(run: RunContext, steps: int) -> list[Batch]:
    """One batch per step: masks drawn as the training collator draws them, random images on
    the run's device (pixel values do not change the cost)."""
    b = run.layout.micro_batch
    h, w = run.method.modules["encoder"].image_size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(b, 3, h, w, generator=g).to(run.device)
    labels = torch.zeros(b, dtype=torch.int64)
    collate = MaskingCollate(run.parts.masker, run.recipe.seed, b)
    batches = []
    for step in range(steps):
        batch = Batch({"image": images}, labels, collate.step_masks(step), step, 0)
        batches.append(batch.to(run.device))
    return batches


def step_flops(run: RunContext, batch: Batch) -> float:
    """FLOPs of this step per image (jepa_core.commands.costs), from its own mask lengths."""
    enc, pred = run.method.modules["encoder"], run.method.modules["predictor"]
    grid = enc.patch_grid
    return costs.ijepa_step_flops(
        transformer_shape(enc), transformer_shape(pred), num_patches=grid[0] * grid[1],
        patch_dim=patch_dim(enc), context_tokens=batch.mask.context.shape[1],
        target_tokens=batch.mask.targets.shape[2],
        num_targets=batch.mask.targets.shape[1]).total


def estimated_memory(run: RunContext, batch: Batch) -> float:
    """Bytes the cost model expects on one device for this run (no DDP: one process)."""
    enc, pred = run.method.modules["encoder"], run.method.modules["predictor"]
    e_t = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    e_all = sum(p.numel() for p in enc.parameters())
    p_t = sum(p.numel() for p in pred.parameters() if p.requires_grad)
    p_all = sum(p.numel() for p in pred.parameters())
    bf16 = run.device.type == "cuda" and run.recipe.train.precision != "fp32"
    state = costs.state_bytes(e_t + p_t, e_all + p_all - e_t - p_t, e_all, bf16=bf16)
    acts = costs.activation_bytes(
        transformer_shape(enc), transformer_shape(pred), batch=batch.images.shape[0],
        num_patches=enc.num_patches, context_tokens=batch.mask.context.shape[1],
        target_tokens=batch.mask.targets.shape[2], num_targets=batch.mask.targets.shape[1],
        precision="bf16" if bf16 else "fp32")
    return sum(state.values()) + sum(acts.values())


def _compiled_graphs() -> int:
    """Graphs torch.compile has produced so far in this process (to count recompiles)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(args: argparse.Namespace, registry, compiled: bool, peak: float | None,
              layout: str = "recipe") -> dict:
    """Build the run, warm up, time --iters steps; returns one row of the summary."""
    with tempfile.TemporaryDirectory() as out_dir:
        recipe = bench_recipe(args, registry, compiled, out_dir, layout)
        t0 = time.perf_counter()
        run = setup(recipe, registry, DistEnv())
        build_s = time.perf_counter() - t0
        batches = make_batches(run, args.warmup + args.iters)
        cuda = run.device.type == "cuda"
        t0 = time.perf_counter()
        for batch in batches[:args.warmup]:
            train_step(run, [batch])
        sync(run.device)
        warmup_s = time.perf_counter() - t0
        if cuda:
            torch.cuda.reset_peak_memory_stats(run.device)
        graphs = _compiled_graphs()
        times, flops, metrics = [], [], {}
        for batch in batches[args.warmup:]:
            t0 = time.perf_counter()
            metrics = train_step(run, [batch])  # reads the loss: synchronises, as in training
            sync(run.device)
            times.append(time.perf_counter() - t0)
            flops.append(step_flops(run, batch) * batch.images.shape[0])
        recompiles = _compiled_graphs() - graphs
        peak_mem = torch.cuda.max_memory_allocated(run.device) if cuda else None
        step_s, mean_flops = statistics.median(times), sum(flops) / len(flops)
        estimate = estimated_memory(run, batches[-1])
        row = {
            "compile": "on" if compiled else "off", "layout": layout, "batch": args.batch,
            "build_s": build_s, "warmup_s": warmup_s,
            "step_ms": 1e3 * step_s, "img_s": args.batch / step_s,
            "tflops": mean_flops / step_s / 1e12, "gflop_img": mean_flops / args.batch / 1e9,
            "mfu": mean_flops / step_s / peak if peak else None, "recompiles": recompiles,
            "peak_gib": peak_mem / GIB if peak_mem is not None else None,
            "estimate_gib": estimate / GIB, "loss": metrics.get("loss", float("nan")),
        }
        del run, batches
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()
    return row


def _num(x: float | None, fmt: str = "") -> str:
    """Three significant digits, or `fmt` when given; n/a for None."""
    if x is None:
        return "n/a"
    return format(x, fmt) if fmt else (f"{x:,.1f}" if abs(x) >= 100 else f"{x:#.3g}")


def summary(rows: list[dict], args: argparse.Namespace, device: str, peak: float | None) -> None:
    from rich.console import Console
    from rich.table import Table

    peak_text = f"{peak / 1e12:.0f} TFLOP/s dense bf16" if peak else "unknown (--peak-tflops)"
    table = Table(title=f"I-JEPA train_step, {Path(args.recipe).name}"
                        f"{' (cpu smoke: tiny model)' if args.cpu_smoke else ''}",
                  title_justify="left")
    cols = ["compile", "layout", "batch", "build s", "warm-up s", "step ms", "img/s", "GFLOP/img",
            "TFLOP/s", "MFU", "peak GiB", "model GiB", "recompiles", "loss"]
    for c in cols:
        table.add_column(c, justify="left" if c == "compile" else "right", no_wrap=True)
    for r in rows:
        table.add_row(
            r["compile"], r["layout"], str(r["batch"]), _num(r["build_s"]), _num(r["warmup_s"]),
            _num(r["step_ms"]), _num(r["img_s"]), _num(r["gflop_img"]), _num(r["tflops"]),
            _num(r["mfu"], ".1%"), _num(r["peak_gib"]), _num(r["estimate_gib"]),
            str(r["recompiles"]), _num(r["loss"], ".4f"))
    console = Console(highlight=False, width=max(150, Console().width))
    console.print(table)
    console.print(f"device: {device}; assumed peak: {peak_text}; {args.warmup} warm-up + "
                  f"{args.iters} timed steps (step ms: median; img/s, TFLOP/s, MFU: at the "
                  f"median step time with the mean FLOPs of the timed steps); recompiles: "
                  f"graphs compiled during the timed steps (raise --warmup if not 0); FLOPs from "
                  f"jepa_core.commands.costs (multiply-add = 2); peak GiB: "
                  f"torch.cuda.max_memory_allocated over the timed steps; model GiB: the "
                  f"cost model's estimate for the same batch")
    by = {(r["compile"], r["layout"]): r for r in rows}
    for (comp, layout), r in by.items():
        if comp == "on" and ("off", layout) in by:
            console.print(f"compile on / off ({layout}): "
                          f"{r['img_s'] / by[('off', layout)]['img_s']:.2f}x images/s")
        if layout == "pack" and (comp, "pad") in by:
            console.print(f"pack / pad (compile {comp}): "
                          f"{r['img_s'] / by[(comp, 'pad')]['img_s']:.2f}x images/s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or pass --cpu-smoke", file=sys.stderr)
        return 2
    if not args.cpu_smoke:
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers (norms, loss) only
    registry = make_plugin_manager()
    device, peak = device_peak(args)
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.compile]
    rows = []
    for compiled in modes:
        for layout in args.layouts:
            print(f"benchmarking compile={'on' if compiled else 'off'} layout={layout} ...",
                  flush=True)
            rows.append(bench_one(args, registry, compiled, peak, layout))
    summary(rows, args, device, peak)
    return 0


if __name__ == "__main__":
    sys.exit(main())
