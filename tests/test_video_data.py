"""Video data sources: moving digits (embedded) and a folder of real video files (PyAV)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jepa_core.errors import BadSample, ConfigError, RunError
from jepa_core.runtime.data import Key, TrainSamples
from jepa_video import configs
from jepa_video.data import DIRECTIONS, MovingDigits, build_video_folder

av = pytest.importorskip("av")


def _digits(train: bool = True, **fields) -> MovingDigits:
    fields.setdefault("num_frames", 8)
    fields.setdefault("num_train", 64)
    fields.setdefault("num_test", 32)
    return MovingDigits(configs.MovingDigitsConfig(**fields), (32, 32), train)


@pytest.fixture(scope="module")
def digits():
    return _digits()


def _shift(first: torch.Tensor, last: torch.Tensor) -> tuple[int, int]:
    """(dy, dx) of the circular shift that best maps frame `first` [H, W] onto `last`, each in
    [-H/2, H/2) x [-W/2, W/2) (circular cross-correlation by FFT)."""
    corr = torch.fft.ifft2(torch.fft.fft2(last) * torch.fft.fft2(first).conj()).real
    h, w = corr.shape
    y, x = divmod(int(corr.argmax()), w)
    return (y + h // 2) % h - h // 2, (x + w // 2) % w - w // 2


def test_moving_digits_are_normalised_clips_labelled_by_their_direction(digits, registry):
    spec = registry.get("data_source", "moving_digits")
    built = spec.build(configs.MovingDigitsConfig(num_frames=8, num_train=64), image_size=(32, 32),
                       train=True)
    clip, label = built.get(5, None)
    assert clip.shape == (3, 8, 32, 32) and clip.dtype == torch.float32
    assert label == 5 % DIRECTIONS and built.num_classes == DIRECTIONS
    assert torch.equal(clip, digits.get(5, None)[0])  # a fixed draw of the index
    everything = torch.stack([digits.get(i, None)[0] for i in range(32)])
    assert abs(float(everything.mean())) < 0.2 and 0.7 < float(everything.std()) < 1.3
    assert sorted({digits.get(i, None)[1] for i in range(16)}) == list(range(DIRECTIONS))


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 12), st.integers(6, 14),
       st.floats(0.5, 1.2))
def test_each_frame_is_the_first_shifted_along_the_label(index, frames, side, speed):
    source = _digits(num_frames=frames, digit_size=side, speed=(speed, speed),
                     num_train=10_001)
    clip = source.render(index)  # [T, H, W] in [0, 1]
    sums = clip.flatten(1).sum(1)
    assert torch.allclose(sums, sums[0].expand_as(sums), rtol=1e-5)  # the digit stays whole
    dy, dx = _shift(clip[0], clip[-1])
    assert torch.equal(clip[-1], clip[0].roll((dy, dx), dims=(0, 1)))
    if speed * (frames - 1) >= 3:  # rounding to whole pixels bends shorter paths too much
        angle = math.atan2(-dy, dx)
        want = 2 * math.pi * (index % DIRECTIONS) / DIRECTIONS
        gap = abs((angle - want + math.pi) % (2 * math.pi) - math.pi)
        assert gap < math.radians(20), (angle, want)


def test_one_frame_does_not_tell_the_direction(digits):
    """The 8 clips of a scene (indices 8j..8j+7) start with the same frame and then move
    apart, each in its own direction: only the motion tells them apart."""
    for scene in range(3):
        clips = [digits.get(DIRECTIONS * scene + k, None) for k in range(DIRECTIONS)]
        assert [label for _, label in clips] == list(range(DIRECTIONS))
        firsts = {tuple(clip[:, 0].flatten().tolist()) for clip, _ in clips}
        lasts = {tuple(clip[:, -1].flatten().tolist()) for clip, _ in clips}
        assert len(firsts) == 1 and len(lasts) == DIRECTIONS


def test_training_crops_come_from_the_generator_and_are_shared_by_all_frames(digits):
    def crop(seed):
        return digits.get(7, torch.Generator().manual_seed(seed))[0]

    assert torch.equal(crop(1), crop(1)) and not torch.equal(crop(1), crop(2))
    before = torch.get_rng_state()
    crop(3)
    assert torch.equal(before, torch.get_rng_state())  # no global draw
    whole = digits.get(7, None)[0]
    assert crop(1).shape == whole.shape


def test_train_and_test_clips_move_different_digits():
    train, test = _digits(True), _digits(False)
    assert train.mean == test.mean and train.std == test.std  # one normalisation
    seen = {tuple(d.flatten().tolist()) for d in train.digits}
    assert not any(tuple(d.flatten().tolist()) in seen for d in test.digits[:50])
    assert "test" in test.split and len(test) == 32


def test_a_digit_larger_than_the_canvas_is_a_config_error():
    with pytest.raises(ConfigError, match="digit_size"):
        MovingDigits(configs.MovingDigitsConfig(digit_size=40), (32, 32))


# -- video folder -------------------------------------------------------------------------
def _write(path, frames: int, height: int = 24, width: int = 32) -> None:
    """A real mpeg4 video whose frame i is a flat grey of level 20 * i (red tinted on the
    left half, so crops show)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.full((height, width, 3), 20 * i, np.uint8)
            image[:, : width // 2, 0] = 250
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for cls in ("left", "right"):
        (root / cls).mkdir()
        for v in range(3):
            _write(root / cls / f"v{v}.mp4", 12)
    (root / "left" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))
    _write(root / "right" / "short.mp4", 3)
    (root / "right" / "notes.txt").write_text("not a video")
    return root


def _folder(root, train=True, **fields):
    fields.setdefault("num_frames", 4)
    fields.setdefault("frame_step", 2)
    fields.setdefault("val_fraction", 0.0)
    config = configs.VideoFolderConfig(root=str(root), **fields)
    return build_video_folder(config, (16, 16), train)


def _index(source, name):
    return next(i for i, (p, _) in enumerate(source.files) if p.name == name)


def _levels(clip):
    """Mean level (0..255) of the right half of each frame of a normalised clip."""
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None, None]
    raw = (clip * std + mean) * 255
    return raw[1:, :, :, clip.shape[-1] // 2 + 2:].mean(dim=(0, 2, 3))


def test_video_folder_centre_clip_at_frame_step(videos, registry):
    source = _folder(videos)
    assert source.num_classes == 2 and len(source.files) == 8  # .txt left out
    clip, label = source.get(_index(source, "v1.mp4"), None)
    assert clip.shape == (3, 4, 16, 16) and label == 0
    # 12 frames, span 7: the centre clip starts at frame 2 and takes 2, 4, 6, 8
    assert torch.allclose(_levels(clip), torch.tensor([40.0, 80.0, 120.0, 160.0]), atol=8)
    assert torch.equal(clip, source.get(_index(source, "v1.mp4"), None)[0])


def test_video_folder_training_clips_draw_start_and_crop_from_the_generator(videos):
    source = _folder(videos)
    i = _index(source, "v2.mp4")

    def clip(seed):
        return source.get(i, torch.Generator().manual_seed(seed))[0]

    assert torch.equal(clip(4), clip(4))
    starts = set()
    for seed in range(12):
        levels = _levels(clip(seed))
        steps = levels[1:] - levels[:-1]
        assert torch.allclose(steps, torch.full_like(steps, 40.0), atol=10)  # one clip, step 2
        starts.add(int(round(float(levels[0]) / 20)))
    assert len(starts) >= 3 and starts <= set(range(6))  # start 0..5 of 12 frames, span 7


def test_unreadable_and_short_videos_are_skipped_and_counted(videos):
    source = _folder(videos)
    for name in ("broken.mp4", "short.mp4"):
        with pytest.raises(BadSample, match="broken|fewer"):
            source.get(_index(source, name), None)
    samples = TrainSamples(source, seed=0)
    broken = _index(source, "broken.mp4")
    views, label, skipped = samples[Key(step=0, epoch=0, row=0, index=broken)]
    assert skipped == 1 and views[0].shape == (3, 4, 16, 16)
    strict = _folder(videos, on_error="raise")
    with pytest.raises(RunError, match="on_error"):
        strict.get(_index(strict, "short.mp4"), None)


def test_video_folder_holds_out_videos_for_evaluation(videos):
    train, test = _folder(videos, val_fraction=0.3), _folder(videos, False, val_fraction=0.3)
    names = {p for p, _ in train.files}
    assert names.isdisjoint({p for p, _ in test.files}) and len(test.files) == 2
    assert "held-out" in test.split


def test_video_folder_errors_name_the_key_and_the_fix(tmp_path, monkeypatch, videos):
    with pytest.raises(RunError, match="data.root"):
        _folder(tmp_path / "nowhere")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(RunError, match="no videos"):
        _folder(tmp_path / "empty")
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    with pytest.raises(ConfigError, match="pip install av"):
        _folder(videos)


# -- runs of unreadable videos: empty files, clips shorter than the span ---------------------
def _broken_videos(root, empty: int, one_frame: int, good: int):
    """root/c/: `empty` zero-byte .mp4, then `one_frame` videos of 1 frame, then `good`
    videos of 12 frames (in that order in the sorted file list: a run of unreadable ones)."""
    (root / "c").mkdir(parents=True)
    for i in range(empty):
        (root / "c" / f"a{i:02d}.mp4").write_bytes(b"")
    for i in range(one_frame):
        _write(root / "c" / f"b{i:02d}.mp4", 1)
    for i in range(good):
        _write(root / "c" / f"v{i:02d}.mp4", 12)
    return root


def test_a_run_of_empty_and_one_frame_videos_is_skipped_and_counted(tmp_path):
    source = _folder(_broken_videos(tmp_path / "videos", empty=9, one_frame=9, good=4))
    samples = TrainSamples(source, seed=0)
    views, _, skipped = samples[Key(step=0, epoch=0, row=0, index=0)]  # a00.mp4, 18 in a row
    assert skipped >= 1 and views[0].shape == (3, 4, 16, 16)


def test_jepa_check_of_clips_all_shorter_than_the_span_says_so(tmp_path, capsys):
    """Every video shorter than a clip: `jepa check` times real steps, so it reads them.
    Was: BadSample's traceback after 16 in a row; now one paragraph, exit 1."""
    import yaml

    from jepa_core.commands.cli import main
    from jepa_core.recipe import read_yaml

    root = _broken_videos(tmp_path / "videos", empty=0, one_frame=8, good=0)
    d = read_yaml(Path(__file__).resolve().parents[1] / "recipes" / "quickstart_video.yaml")
    d["data"] = {"name": "video_folder", "root": str(root), "num_frames": 8, "frame_step": 1,
                 "val_fraction": 0}
    d["train"].update(global_batch_size=8, device="cpu")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(d))
    assert main(["check", str(recipe)]) == 1
    err = " ".join(" ".join(line.strip(" │╭╮╰╯─") for line in
                            capsys.readouterr().err.splitlines()).split())
    assert f"the training data (root {root}: 8 videos) is nearly all unreadable: 8 of 8 " \
           f"samples probed cannot be read (e.g. " in err, err
    assert "has 1 frames, fewer than a clip spans (8: data.num_frames 8 x data.frame_step " \
           "1)" in err and "Traceback" not in err
