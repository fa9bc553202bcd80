"""The recipe check that the data source's samples fit the encoder: frames and image size.

A convention of config fields, read where recipes are checked (`recipe_from_dict`), so that
`jepa check` (with or without --no-data) and `jepa run` refuse the recipe before anything is
built, instead of the encoder's shape error at the first batch:

- `num_frames`: a data source config with this field makes clips of that many frames; an
  encoder config with it takes clips of that many. When both have it, they must agree. (A
  missing field says nothing: an encoder of clips may fix its frame count in code, as the
  test suite's `tubelets` does, so images into a video encoder are not judged here.)
- `img_size`: the side in pixels. A data source gets the encoder's image size from the core;
  a source config may state it too (None: follow the encoder), and it must then agree with
  an encoder config's `img_size` that is set (None there: the model's own default, which only
  the built encoder knows).
"""

from __future__ import annotations

from typing import Any

ABSENT = object()  # a config without the field


def _field(config: Any, name: str) -> Any:
    return getattr(config, name, ABSENT)


def geometry_problems(recipe: Any) -> list[tuple[str, str]]:
    """(path, message) for each way the data's samples would not fit the encoder."""
    data, encoder = recipe.data, recipe.encoder
    if data is None or encoder is None:
        return []
    problems = []
    frames, takes = _field(data.config, "num_frames"), _field(encoder.config, "num_frames")
    if frames is not ABSENT and takes is not ABSENT and frames != takes:
        problems.append(("$.data.num_frames", (
            f"is {frames} but encoder.num_frames is {takes}: data source {data.name!r} would "
            f"make clips of {frames} frames for encoder {encoder.name!r}, which takes "
            f"{takes}; set both to the same number (e.g. data.num_frames={takes})")))
    side, wants = _field(data.config, "img_size"), _field(encoder.config, "img_size")
    if side not in (ABSENT, None) and wants not in (ABSENT, None) and side != wants:
        problems.append(("$.data.img_size", (
            f"is {side} but encoder.img_size is {wants}: data source {data.name!r} would "
            f"make {side} px samples for encoder {encoder.name!r}, which takes {wants} px; "
            f"set both to the same size, or leave data.img_size out (it then follows "
            f"encoder.img_size)")))
    return problems
