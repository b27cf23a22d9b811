"""OnTheFlyDataset and the scene model: shapes and ranges, determinism, K labels, augmentation, bad data."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data.io import InputWarning, srgb_to_linear
from data.synthesis import (
    OnTheFlyDataset,
    SceneConfig,
    composite_window,
    fractal_alpha,
    synthesize_batch,
)

OTF = Path(__file__).resolve().parents[2] / "test_data" / "otf"
SIZE = 64


def _dataset(**kwargs) -> OnTheFlyDataset:
    kwargs.setdefault("length", 4)
    return OnTheFlyDataset(OTF, size=SIZE, **kwargs)


def _quiet(dataset, index):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        return dataset[index]


def test_sample_shapes_dtypes_ranges():
    dataset = _dataset()
    for index in range(3):
        s = _quiet(dataset, index)
        for key, shape in (("aif", (3, SIZE, SIZE)), ("bokeh", (3, SIZE, SIZE)),
                           ("disparity", (1, SIZE, SIZE)), ("coc_px", (1, SIZE, SIZE))):
            assert s[key].shape == shape and s[key].dtype == torch.float32, key
        for key in ("aif", "bokeh", "disparity"):
            assert 0.0 <= float(s[key].min()) and float(s[key].max()) <= 1.0, key
        assert s["K"].shape == () and float(s["K"]) > 0
        assert 0.0 <= float(s["disp_focus"]) <= 1.0
        assert s["original_size"].dtype == torch.long and s["original_size"].tolist() == [96, 96]
        top, left = s["crop_top_left"].tolist()
        assert 0 <= top <= 96 - SIZE and 0 <= left <= 96 - SIZE
        torch.testing.assert_close(s["coc_px"], s["K"] * (s["disparity"] - s["disp_focus"]))
        # Blur range: the largest reachable CoC, K * max(f, 1 - f), is 12 * 2**[-2, 3] px at 768 px, scaled.
        reach = float(s["K"]) * max(float(s["disp_focus"]), 1 - float(s["disp_focus"]))
        assert 12 * 2**-2 * 96 / 768 - 1e-4 <= reach <= 12 * 2**3 * 96 / 768 + 1e-4


def test_same_seed_same_samples_and_seed_rank_matter():
    a, b = _dataset(seed=3), _dataset(seed=3)
    for index in (0, 2):
        sa, sb = _quiet(a, index), _quiet(b, index)
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
    other_seed, other_rank = _quiet(_dataset(seed=4), 0), _quiet(_dataset(seed=3, rank=1), 0)
    reference = _quiet(a, 0)
    assert not torch.equal(reference["aif"], other_seed["aif"])
    assert not torch.equal(reference["aif"], other_rank["aif"])


def test_k_label_rerenders_the_target():
    """The K label is the K used to render: re-rendering the scene's layers with the *label* through the
    renderer itself reproduces the target (the public code under-reported K by a random factor)."""
    from kernels.layers import render_layers

    dataset = _dataset(flip_p=0.0, brightness_p=0.0)
    for index in range(2):
        sample = _quiet(dataset, index)
        scene, rng = dataset.sample_scene(index)
        top, left = int(rng.integers(0, scene.height - SIZE + 1)), int(rng.integers(0, scene.width - SIZE + 1))
        assert [top, left] == sample["crop_top_left"].tolist()
        rng.random(2), rng.random(), rng.uniform()
        seed = int(rng.integers(0, 2**31 - 1))
        pad = scene.margin
        images, alphas, planes = scene.window(top - pad, left - pad, SIZE + 2 * pad, SIZE + 2 * pad)
        total, weight = render_layers(
            srgb_to_linear(torch.from_numpy(images)[None]), torch.from_numpy(alphas)[None],
            torch.from_numpy(planes).float()[None], sample["K"].view(1), sample["disp_focus"].view(1), seed=seed,
            impl="torch",
        )
        bokeh = (total / weight.clamp_min(1e-6))[0, :, pad:-pad, pad:-pad].clamp(0, 1) ** (1 / 2.2)
        torch.testing.assert_close(bokeh, sample["bokeh"], atol=1e-5, rtol=0)
        # A wrong label (the public code's K * U(2/3, 1)) would not reproduce it.
        total, weight = render_layers(
            srgb_to_linear(torch.from_numpy(images)[None]), torch.from_numpy(alphas)[None],
            torch.from_numpy(planes).float()[None], 0.7 * sample["K"].view(1), sample["disp_focus"].view(1),
            seed=seed, impl="torch",
        )
        wrong = (total / weight.clamp_min(1e-6))[0, :, pad:-pad, pad:-pad].clamp(0, 1) ** (1 / 2.2)
        assert (wrong - sample["bokeh"]).abs().max() > 1e-3


def test_k_zero_target_equals_input():
    """The all-in-focus composite is what the renderer returns at K = 0 (same compositing, linear light)."""
    from kernels.layers import render_layers

    dataset = _dataset()
    scene, _ = dataset.sample_scene(1)
    images, alphas, planes = (torch.from_numpy(a)[None] for a in scene.window(0, 0, 40, 40))
    aif, disparity, _ = composite_window(images, alphas, planes)
    total, weight = render_layers(srgb_to_linear(images), alphas, planes.float(), torch.zeros(1), torch.zeros(1), impl="torch")
    torch.testing.assert_close(aif, (total / weight).clamp(0, 1) ** (1 / 2.2), atol=1e-5, rtol=0)
    assert float(disparity.min()) >= 0 and float(disparity.max()) <= 1


def test_augmentation_is_applied_identically_to_every_map():
    plain = _dataset(flip_p=0.0, brightness_p=0.0, seed=7)
    augmented = _dataset(flip_p=1.0, brightness_p=1.0, seed=7)
    for index in range(2):
        p, a = _quiet(plain, index), _quiet(augmented, index)
        assert a["flip"].tolist() == [True, True] and float(a["brightness"]) < 1.0
        s = float(a["brightness"])
        for key in ("aif", "bokeh", "disparity", "coc_px"):
            expected = p[key].flip(-1).flip(-2) * (s if key in ("aif", "bokeh") else 1.0)
            torch.testing.assert_close(a[key], expected, atol=1e-6, rtol=0, msg=key)
        assert torch.equal(a["K"], p["K"]) and torch.equal(a["crop_top_left"], p["crop_top_left"])


def test_synthesize_on_device_mode_matches_cpu_mode():
    """Layers in the items, rendering in the main process: the same keys and maps as CPU rendering, and each
    item's target is its CPU-mode target (own window, seed and sample count), alone or in any batch."""
    from torch.utils.data import default_collate

    cpu = _dataset(seed=5)
    device_mode = _dataset(seed=5, synthesize_on_device=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        reference = [cpu[i] for i in range(3)]
        items = [device_mode[i] for i in range(3)]
        loaded = synthesize_batch(next(iter(DataLoader(device_mode, batch_size=2))), "cpu")
    assert "layers" not in loaded and loaded["bokeh"].shape == (2, 3, SIZE, SIZE)
    # The items need different blur (so different padding, sample counts and seeds): a batch-level render
    # would give them the wrong ones.
    assert len({int(item["render_pad"]) for item in items}) > 1
    for order in ([1], [2, 1, 0]):  # one item alone, and in another batch at another position
        out = synthesize_batch(default_collate([items[i] for i in order]), "cpu")
        for row, i in enumerate(order):
            assert set(reference[i]) == set(out)
            for key in ("aif", "bokeh", "disparity", "coc_px", "K", "disp_focus", "crop_top_left", "flip",
                        "brightness"):
                torch.testing.assert_close(out[key][row], reference[i][key], atol=1e-5, rtol=0,
                                           msg=f"{key}, item {i} in {order}")
    for row in range(2):  # DataLoader-collated batch [0, 1]
        torch.testing.assert_close(loaded["bokeh"][row], reference[row]["bokeh"], atol=1e-5, rtol=0)


def test_dataloader_workers_are_seeded():
    dataset = _dataset(length=4)
    loader_kwargs = dict(batch_size=2, num_workers=2, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        first = [b["aif"] for b in DataLoader(dataset, **loader_kwargs)]
        second = [b["aif"] for b in DataLoader(dataset, **loader_kwargs)]
        main_process = torch.stack([dataset[i]["aif"] for i in range(2, 4)])
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    # Batch 1 ran in worker 1: the worker id is part of the seed, so it differs from the main process's draw.
    assert not torch.equal(first[1], main_process)


def test_fractal_alpha_has_fine_partial_structure():
    alpha = fractal_alpha(96, 80, np.random.default_rng(0))
    assert alpha.shape == (1, 96, 80) and alpha.min() >= 0 and alpha.max() <= 1
    partial = ((alpha > 0.02) & (alpha < 0.98)).mean()
    assert partial > 0.03  # strands and anti-aliased edges, not a hard binary matte


# ---------------------------------------------------------------------------------------------------------
# Bad data
# ---------------------------------------------------------------------------------------------------------
def _write_rgba(path: Path, rgba: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor((rgba * 255).astype(np.uint8), cv2.COLOR_RGBA2BGRA))


def _bad_data_root(tmp_path: Path, *, with_good: bool = True) -> Path:
    rng = np.random.default_rng(0)
    good_fg = np.zeros((40, 40, 4)); good_fg[..., :3] = rng.random((40, 40, 3)); good_fg[8:32, 8:32, 3] = 1
    empty_fg = good_fg.copy(); empty_fg[..., 3] = 0
    huge_fg = np.ones((160, 160, 4)) * 0.5
    if with_good:
        _write_rgba(tmp_path / "fg" / "good.png", good_fg)
    _write_rgba(tmp_path / "fg" / "empty.png", empty_fg)
    _write_rgba(tmp_path / "fg" / "huge.png", huge_fg)
    (tmp_path / "fg" / "broken.png").write_bytes(b"not a png at all")
    cv2.imwrite(str(tmp_path / "fg" / "photo.jpg"), (good_fg[..., 2::-1] * 255).astype(np.uint8))  # no alpha
    _write_rgba(tmp_path / "bg" / "ok.png", np.concatenate([rng.random((100, 120, 3)), np.ones((100, 120, 1))], -1))
    _write_rgba(tmp_path / "bg" / "tiny.png", np.concatenate([rng.random((20, 20, 3)), np.ones((20, 20, 1))], -1))
    return tmp_path


def test_bad_data_is_skipped_counted_and_warned_once(tmp_path):
    root = _bad_data_root(tmp_path)
    dataset = OnTheFlyDataset(root, size=48, length=24, config=SceneConfig(n_foregrounds=(1, 1)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = [dataset[i] for i in range(len(dataset))]
    assert all(s["bokeh"].shape == (3, 48, 48) for s in samples)
    assert set(dataset.skipped) == {"empty_alpha", "no_alpha", "unreadable", "fg_larger_than_bg", "bg_smaller_than_crop"}
    messages = [str(w.message) for w in caught if issubclass(w.category, InputWarning) and "skipping" in str(w.message)]
    # One warning per bad file (or bad pair), however often it is drawn.
    assert len(messages) == len(set(messages)) == len(dataset._bad)
    assert any("empty.png" in m and "empty alpha" in m for m in messages)
    assert any("broken.png" in m and "unreadable" in m for m in messages)
    assert any("photo.jpg" in m and "no alpha channel" in m for m in messages)
    assert any("huge.png" in m and "larger than background" in m for m in messages)
    assert any("tiny.png" in m and "smaller than the 48x48 crop" in m for m in messages)
    assert sum(dataset.skipped.values()) >= len(messages)


def test_no_usable_pair_names_the_folder(tmp_path):
    root = _bad_data_root(tmp_path, with_good=False)
    (root / "bg" / "ok.png").unlink()
    dataset = OnTheFlyDataset(root, size=48, length=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        with pytest.raises(RuntimeError, match=f"no usable foreground/background pair in '{root}'"):
            dataset[0]


def test_missing_folders_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="fg/"):
        OnTheFlyDataset(tmp_path, size=48)
    (tmp_path / "fg").mkdir()
    (tmp_path / "bg").mkdir()
    with pytest.raises(RuntimeError, match="no image in"):
        OnTheFlyDataset(tmp_path, size=48)


def test_foreground_planes_never_cross_where_layers_overlap():
    """Layers are composited near to far, so wherever two foregrounds overlap the earlier one must be nearer
    (its plane disparity >= the later one's), tilted or not, for any seed."""
    from data.synthesis import Foreground, sample_scene

    background = np.random.default_rng(0).random((3, 64, 64)).astype(np.float32)
    cutouts = [Foreground(np.full((3, 20, 20), v, np.float32), np.ones((1, 20, 20), np.float32)) for v in (0.2, 0.5, 0.8)]
    config = SceneConfig(fg_tilt_p=1.0, position_jitter=0.1)
    overlaps = 0
    for seed in range(300):
        scene = sample_scene(cutouts, background, np.random.default_rng(seed), 40, 40, config)
        layers = scene.layers[:-1]
        for i, near in enumerate(layers):
            for far in layers[i + 1 :]:
                y0, x0 = max(near.top, far.top), max(near.left, far.left)
                y1 = min(near.top + near.alpha.shape[1], far.top + far.alpha.shape[1])
                x1 = min(near.left + near.alpha.shape[2], far.left + far.alpha.shape[2])
                if y1 <= y0 or x1 <= x0:
                    continue
                y, x = np.mgrid[y0:y1, x0:x1].astype(np.float64)
                both = (near.alpha[0, y0 - near.top : y1 - near.top, x0 - near.left : x1 - near.left] > 0) & (
                    far.alpha[0, y0 - far.top : y1 - far.top, x0 - far.left : x1 - far.left] > 0)
                d_near = near.plane[0] + near.plane[1] * x + near.plane[2] * y
                d_far = far.plane[0] + far.plane[1] * x + far.plane[2] * y
                overlaps += int(both.any())
                assert (d_near - d_far)[both].min(initial=0.0) >= -1e-9, f"seed {seed}: layers {i} and later cross"
    assert overlaps > 200  # the check did look at overlapping layers


def test_foreground_without_alpha_channel_is_bad_data(tmp_path):
    """An RGB file (JPEG, or PNG without alpha) would be pasted as an opaque rectangle: it is bad data. A
    stored alpha channel is used as it is, and the derived alpha of scikit-image's logo keeps working."""
    from data.synthesis import ALPHA_EPS, BadSampleError, load_foreground, logo_cutout

    rgb = np.random.default_rng(1).random((12, 10, 3))
    cv2.imwrite(str(tmp_path / "a.jpg"), (rgb * 255).astype(np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), (rgb * 255).astype(np.uint8))
    for name in ("a.jpg", "b.png"):
        with pytest.raises(BadSampleError, match="no alpha channel") as caught:
            load_foreground(tmp_path / name)
        assert caught.value.reason == "no_alpha" and caught.value.key == str(tmp_path / name)
    opaque = np.concatenate([rgb, np.ones((12, 10, 1))], -1)
    _write_rgba(tmp_path / "opaque.png", opaque)
    assert load_foreground(tmp_path / "opaque.png").alpha.shape == (1, 12, 10)
    fg = load_foreground(OTF / "fg" / "logo.png")  # written from logo_cutout's derived alpha
    assert 0.0 < float(fg.alpha.mean()) < 1.0
    logo = logo_cutout()
    assert float(logo.alpha.min()) < ALPHA_EPS and float(logo.alpha.max()) > 0.99


def test_worker_skips_are_reported_to_the_main_process(tmp_path, monkeypatch):
    """DataLoader workers skip bad data in their own processes; skip_report() in the main process sees it,
    per worker, and each warning names the process that skipped."""
    import data.synthesis.dataset as synthesis

    root = _bad_data_root(tmp_path)
    dataset = OnTheFlyDataset(root, size=48, length=12, config=SceneConfig(n_foregrounds=(1, 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        batches = list(DataLoader(dataset, batch_size=3, num_workers=2))
    assert len(batches) == 4 and dataset.skipped == {}  # nothing was skipped in this process
    report = dataset.skip_report(by_worker=True)
    assert set(report) == {"DataLoader worker 0", "DataLoader worker 1"}, report
    totals = dataset.skip_report()
    assert totals == {reason: sum(r.get(reason, 0) for r in report.values()) for reason in totals}
    assert {"unreadable", "no_alpha", "empty_alpha"} <= set(totals)

    # In this process: counted under "main process", and the warning says so; as a worker, it names the worker.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset[0]  # tries fg 0 (broken.png) with bg 0 first
        in_main = dict(dataset.skipped)
        monkeypatch.setattr(synthesis, "get_worker_info", lambda: type("Info", (), {"id": 5})())
        dataset._bad.clear()  # a fresh worker process has warned about nothing yet
        dataset[0]
    messages = [str(c.message) for c in caught if "skipping" in str(c.message)]
    assert any(m.startswith("OnTheFlyDataset (main process): skipping") and "broken.png" in m for m in messages)
    assert any(m.startswith("OnTheFlyDataset (DataLoader worker 5): skipping") and "broken.png" in m for m in messages)
    report = dataset.skip_report(by_worker=True)
    assert report["main process"] == in_main and in_main.get("unreadable", 0) >= 1
    assert report["DataLoader worker 5"].get("unreadable", 0) >= 1
