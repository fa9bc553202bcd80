"""Low-shot probes: a logistic regression (scikit-learn's, on standardised features) fit on a
few labelled training images per setting, tested on the whole test split, over several fixed
seeded draws of the labelled images: mean and standard deviation.

scikit-learn does this job: the labelled subsets are small enough for memory, and its L-BFGS
solver is maintained and exact. The test split is streamed from the cache.
"""

from __future__ import annotations

import statistics

import torch

from jepa_core.errors import ConfigError
from jepa_core.interfaces import EvalContext
from jepa_core.seeding import generator
from jepa_eval.common import MORE_IMAGES
from jepa_eval.configs import LowShotConfig


def labelled_rows(labels: torch.Tensor, num_classes: int, seed: int, setting: str,
                  split: int, per_class: int | None = None,
                  fraction: float | None = None) -> torch.Tensor:
    """Sorted rows of a seeded draw: `per_class` images of each class, or `fraction` of each
    class's images (at least one); a class with fewer images gives all it has."""
    g = generator(seed, "lowshot", setting, split)
    rows = []
    for c in range(num_classes):
        of_class = (labels == c).nonzero().squeeze(1)
        if not len(of_class):
            continue
        want = per_class if per_class is not None else max(1, round(fraction * len(of_class)))
        rows.append(of_class[torch.randperm(len(of_class), generator=g)[:want]])
    return torch.cat(rows).sort().values


def check_classes(labels: torch.Tensor, per_class: tuple[int, ...]) -> None:
    """ConfigError unless the probe-training labels hold two classes or more (a classifier
    needs them) and each class present has the images of the largest per-class setting (so
    "5 per class" means five of each)."""
    counts = torch.bincount(labels)
    present = counts[counts > 0]
    if len(present) < 2:
        raise ConfigError(
            f"lowshot fits a classifier, which needs probe-training images of 2 classes or "
            f"more, and the split's {len(labels)} readable images are of "
            f"{len(present)} class: leave the lowshot protocol out, {MORE_IMAGES}.")
    most = max(per_class, default=0)
    fewest = int(present.min())
    if fewest < most:
        label = int((counts == fewest).nonzero()[0])
        raise ConfigError(
            f"lowshot per_class={most} draws {most} probe-training images of each class, and "
            f"class {label} has {fewest}: lower per_class (at most {fewest}) in "
            f"eval.protocols, {MORE_IMAGES}.")


class LowShot:
    """The `lowshot` protocol."""

    def __init__(self, config: LowShotConfig):
        self.config = config
        self.feature_kinds = (config.feature,)

    def settings(self) -> list[tuple[str, dict]]:
        """(name, draw arguments) of each setting, per-class ones first."""
        c = self.config
        return ([(f"{n} per class", {"per_class": n}) for n in c.per_class]
                + [(f"{100 * f:g}% of labels", {"fraction": f}) for f in c.fractions])

    def run(self, features: dict, context: EvalContext) -> list[dict]:
        """One result per setting: mean and std of the test accuracy over the splits."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        c = self.config
        if c.feature not in features:
            return []
        train, test = features[c.feature]
        check_classes(train.labels, c.per_class)
        results = []
        settings = self.settings()
        with context.progress("low-shot probes", len(settings) * c.splits, "fits") as ticker:
            for name, draw in settings:
                accs, sizes = [], []
                for split in range(c.splits):
                    rows = labelled_rows(train.labels, context.num_classes, context.seed, name,
                                         split, **draw)
                    x = train.take(rows).double().numpy()
                    y = train.labels[rows].numpy()
                    scaler = StandardScaler().fit(x)
                    model = LogisticRegression(C=c.C, max_iter=c.max_iter)
                    model.fit(scaler.transform(x), y)
                    correct = total = 0
                    for xt, yt in test.shards():
                        pred = model.predict(scaler.transform(xt.double().numpy()))
                        correct += int((torch.from_numpy(pred) == yt).sum())
                        total += len(yt)
                    accs.append(correct / max(total, 1))
                    sizes.append(len(rows))
                    ticker.advance()
                results.append({
                    "protocol": "lowshot", "feature_kind": c.feature, "setting": name,
                    "params": {"labels": name, **draw, "splits": c.splits, "C": c.C,
                               "labelled_images": sizes},
                    "accuracy": {"test": statistics.fmean(accs)},
                    "std": {"test": statistics.stdev(accs) if len(accs) > 1 else 0.0},
                    "per_split": accs})
        return results


def build_lowshot(config: LowShotConfig) -> LowShot:
    """Factory of the `lowshot` protocol."""
    return LowShot(config)
