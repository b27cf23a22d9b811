"""The on-the-fly training set (BokehDiff, Sec. 3.3): a ``torch.utils.data.Dataset`` of synthesised pairs.

:class:`OnTheFlyDataset` samples a scene per item (:mod:`data.synthesis.scene`), crops a window and renders it
(:mod:`data.synthesis.render`) in the DataLoader worker, or leaves the rendering to :func:`synthesize_batch` on
the accelerator (``synthesize_on_device=True``). Bad files are skipped and counted, never fatal.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from data.io import IMAGE_EXTENSIONS, InputWarning
from kernels.colour import DEFAULT_GAMMA

from .assets import (
    SKIP_REASONS, BadSampleError, TrainingDataError, list_images, load_background, load_foreground,
)
from .published import published_condition_K, published_scene_aperture_count
from .render import composite_window, render_window, shift_planes
from .scene import Scene, SceneConfig, margin_for, sample_scene

#: How the all-in-focus input is composited: in linear light (ours) or on sRGB values (the release).
AIF_COMPOSITES = ("linear", "srgb")
#: The CoC the model is conditioned on: the rendered one, or the release's (see :class:`OnTheFlyDataset`).
COC_CONDITIONS = ("rendered", "published")
#: Aperture sample count of the ground truth: the renderer's automatic one, or the release's grid count.
APERTURE_SAMPLE_RULES = ("auto", "published")
#: DataLoader workers whose skips are counted separately (more share the last row).
SKIP_REPORT_WORKERS = 64


def largest_crop_size(data_root: str | Path) -> int:
    """The largest square crop (px) that at least one background of ``<data_root>/bg/`` can supply: the
    longest short side among them (read from the file headers; unreadable files count as 0). ``0`` when there
    is no usable background. Samples need a background at least as large as the crop (``bg_smaller_than_crop``)."""
    from PIL import Image, UnidentifiedImageError

    sides = [0]
    folder = Path(data_root) / "bg"
    for path in list_images(folder) if folder.is_dir() else []:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except (OSError, UnidentifiedImageError):  # reported as "unreadable" when a sample draws it
            continue
    return max(sides)


_REASON_WORDS = {"no_alpha": "without an alpha channel (RGB or JPEG)", "empty_alpha": "fully transparent",
                 "unreadable": "unreadable", "bg_smaller_than_crop": "smaller than {size}x{size} px"}


def _describe(reasons: dict[str, list[str]], size: int) -> str:
    """``{reason: [file names]}`` -> "2 files without an alpha channel (RGB or JPEG), e.g. 'fg1.jpg'"."""
    parts = []
    for reason, names in reasons.items():
        words = _REASON_WORDS.get(reason, reason).format(size=size)
        parts.append(f"{len(names)} file{'s' if len(names) != 1 else ''} {words}, e.g. '{names[0]}'")
    return "; ".join(parts)


class OnTheFlyDataset(Dataset):
    """Paired all-in-focus / bokeh samples synthesised on the fly from ``<data_root>/fg/*`` (RGBA cut-outs)
    and ``<data_root>/bg/*`` (any photos), BokehDiff's training data (paper Sec. 3.3).

    Each item (``synthesize_on_device=False``, the default; all float32 on the CPU):

    ============== ============ ===================================================================
    key            shape        meaning
    ============== ============ ===================================================================
    aif            (3, S, S)    all-in-focus input, sRGB in [0, 1]
    bokeh          (3, S, S)    ground-truth bokeh (the target), sRGB in [0, 1]
    disparity      (1, S, S)    disparity in [0, 1], 1 = nearest
    coc_px         (1, S, S)    signed CoC radius in px, ``K * (disparity - disp_focus)``
    K              ()           px of CoC radius per unit disparity, exactly the K used to render
    disp_focus     ()           focal disparity in [0, 1]
    original_size  (2,) long    (H, W) of the rendered scene (SDXL micro-conditioning)
    crop_top_left  (2,) long    (top, left) of the crop in that scene (SDXL micro-conditioning)
    flip           (2,) bool    (horizontal, vertical) flips applied to every map
    brightness     ()           factor applied to ``aif`` and ``bokeh`` (sRGB), in (0, 1]
    ============== ============ ===================================================================

    ``S = size``. The scene is ``round(size * scene_scale)`` px square (768 for 512 crops, as the paper);
    blur scales with the scene's long side (:mod:`data.synthesis.scene`).

    With ``synthesize_on_device=True`` the item holds everything but ``bokeh`` plus the padded layers
    (``layers`` (L, 3, S+2P, S+2P) sRGB, ``alphas`` (L, 1, S+2P, S+2P), ``planes`` (L, 3) float64, ``pad`` (),
    ``render_pad`` () the padding CPU mode renders this item with (<= P), ``render_seed`` ()), with
    ``L = max foregrounds + 1`` (unused layers have zero alpha) and one fixed ``P`` for every item so batches
    stack; the training loop calls :func:`synthesize_batch` on the accelerator, which renders each item as
    CPU mode would (same window, seed and sample count), whatever else is in the batch. No CUDA call ever
    happens inside a DataLoader worker.

    Options for the released training's synthesis (``configs/train_published.yaml``; defaults keep ours):

    * ``brightness_range`` / ``brightness_cap``: the factor is ``min(U(lo, hi), cap)``; a factor above 1 needs
      ``brightness_clip=True`` and clips ``aif`` and ``bokeh`` to [0, 1] (the release: ``p = 0.75``,
      ``min(U(0.7, 1.7), 1.1)``).
    * ``aif_composite="srgb"``: the all-in-focus input composited on sRGB values (the release); the target
      is always rendered in linear light, so at soft alpha edges input and ``K = 0`` target then differ.
    * ``coc_condition="published"``: ``coc_px`` (what the model is conditioned on) uses
      ``K * U(2/3, 1) * max(disp_focus, 1 - disp_focus)`` instead of the rendered ``K``: the release renders with
      ``K = 12 t / max(f, 1 - f)`` but conditions on ``12 t * U(2/3, 1)``. ``K`` stays the rendered value.
    * ``aperture_samples="published"``: the target rendered with :func:`~data.synthesis.published.published_aperture_count` samples.

    Randomness: item ``index`` is drawn from ``SeedSequence((seed, epoch, rank, worker, index))`` with
    ``rank`` from the constructor (the process index in distributed training), ``worker`` from
    ``get_worker_info()`` (0 in the main process) and ``epoch`` from :meth:`set_epoch`. The same settings give
    the same samples.

    Bad data never stops training: an unreadable file, a foreground without an alpha channel or with an empty
    alpha, a foreground larger than the background, a background smaller than the crop are skipped (another
    pair is drawn) and reported with one :class:`~data.io.InputWarning` per file (or pair) and process; the
    message names the process (``main process`` or ``DataLoader worker <id>``). :attr:`skipped` counts this
    process's skips; :meth:`skip_report` sums the main process's and every DataLoader worker's (the counts
    live in shared memory, so the main process sees the workers' skips). If no usable pair exists, a
    ``RuntimeError`` names the folder. ``flag`` is the option the messages name for ``data_root``.
    """

    def __init__(
        self,
        data_root: str | Path,
        size: int = 512,
        *,
        scene_scale: float = 1.5,
        gamma: float = DEFAULT_GAMMA,
        seed: int = 0,
        rank: int = 0,
        length: int | None = None,
        config: SceneConfig | None = None,
        flip_p: float = 0.5,
        brightness_p: float = 0.75,
        brightness_range: tuple[float, float] = (0.6, 1.0),
        brightness_cap: float | None = None,
        brightness_clip: bool = False,
        aif_composite: str = "linear",
        coc_condition: str = "rendered",
        aperture_samples: str = "auto",
        n_samples: int | None = None,
        max_samples: int | None = None,
        impl: str = "torch",
        synthesize_on_device: bool = False,
        max_attempts: int = 64,
        flag: str = "--train_data_dir",
    ):
        self.data_root = Path(data_root)
        self.flag = flag  # the option that named data_root, for the messages (dataset.py: --data_root)
        fg_dir, bg_dir = self.data_root / "fg", self.data_root / "bg"
        for folder in (fg_dir, bg_dir):
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"OnTheFlyDataset: folder '{folder}' not found; {flag} must contain fg/ (RGBA "
                    "foreground cut-outs, PNG with alpha) and bg/ (background photos). Build a sample with "
                    "`python -m scripts.make_sample_data --out DIR` and pass DIR/otf."
                )
        self.fg_paths, self.bg_paths = list_images(fg_dir), list_images(bg_dir)
        for paths, folder, what in ((self.fg_paths, fg_dir, "RGBA foreground cut-outs (PNG with alpha)"),
                                    (self.bg_paths, bg_dir, "background photos")):
            if not paths:
                raise TrainingDataError(
                    f"OnTheFlyDataset: no image in '{folder}' (extensions {', '.join(IMAGE_EXTENSIONS)}); put "
                    f"{what} there."
                )
        lo, hi = brightness_range
        top = hi if brightness_cap is None else min(hi, brightness_cap)
        if not 0 < lo <= hi or (brightness_cap is not None and brightness_cap <= 0):
            raise ValueError(f"brightness_range must satisfy 0 < lo <= hi and brightness_cap > 0, got "
                             f"{brightness_range} and cap {brightness_cap}")
        if top > 1.0 and not brightness_clip:
            raise ValueError(f"brightness factors up to {top} > 1 would push sRGB values above 1; pass "
                             "brightness_clip=True to clip them (the released recipe), or keep "
                             "min(brightness_range[1], brightness_cap) <= 1")
        for name, value, allowed in (("aif_composite", aif_composite, AIF_COMPOSITES),
                                     ("coc_condition", coc_condition, COC_CONDITIONS),
                                     ("aperture_samples", aperture_samples, APERTURE_SAMPLE_RULES)):
            if value not in allowed:
                raise ValueError(f"OnTheFlyDataset: {name} must be one of {list(allowed)}, got {value!r}")
        if aperture_samples == "published" and n_samples is not None:
            raise ValueError("OnTheFlyDataset: pass either n_samples or aperture_samples='published', not both")
        if seed < 0 or rank < 0:
            raise ValueError(f"seed and rank must be non-negative integers, got seed={seed}, rank={rank}")
        if size < 8:
            raise ValueError(f"size must be at least 8 px, got {size}")
        self.size = int(size)
        self.scene_size = max(self.size, int(round(size * scene_scale)))
        self.gamma, self.seed, self.rank, self.epoch = float(gamma), int(seed), int(rank), 0
        self.config = config or SceneConfig()
        self.flip_p, self.brightness_p, self.brightness_range = flip_p, brightness_p, brightness_range
        self.brightness_cap, self.brightness_clip = brightness_cap, bool(brightness_clip)
        self.aif_composite, self.coc_condition, self.aperture_samples = aif_composite, coc_condition, aperture_samples
        self.n_samples, self.max_samples, self.impl = n_samples, max_samples, impl
        self.synthesize_on_device = synthesize_on_device
        self.fixed_margin = margin_for(self.config.max_coc_px(self.scene_size)) if synthesize_on_device else None
        self.max_attempts = max_attempts
        self.length = int(length) if length is not None else len(self.fg_paths) * len(self.bg_paths)
        self.skipped: dict[str, int] = {}  # reason -> count (this process)
        self._bad: dict[str, str] = {}  # file or pair key -> reason (warned once per process)
        # Row 0: main process; row 1 + w: DataLoader worker w. Shared memory: workers (forked or spawned, via
        # torch.multiprocessing) write their own row, the main process reads them all (skip_report).
        self._skip_counts = torch.zeros(SKIP_REPORT_WORKERS + 1, len(SKIP_REASONS), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Make the next epoch draw new scenes (call before iterating; workers are re-created per epoch
        unless ``persistent_workers``)."""
        self.epoch = int(epoch)

    # -- randomness ------------------------------------------------------------------------------------
    def _rng(self, index: int) -> np.random.Generator:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, self.rank, worker, index]))

    # -- bad data ------------------------------------------------------------------------------------------
    def _skip(self, error: BadSampleError) -> None:
        self.skipped[error.reason] = self.skipped.get(error.reason, 0) + 1
        info = get_worker_info()
        # Workers beyond the table share its last row (their counts may then race; no real job has that many).
        row = 0 if info is None else 1 + min(info.id, SKIP_REPORT_WORKERS - 1)
        self._skip_counts[row, SKIP_REASONS.index(error.reason)] += 1
        if error.key not in self._bad:
            self._bad[error.key] = error.reason
            where = "main process" if info is None else f"DataLoader worker {info.id}"
            warnings.warn(f"OnTheFlyDataset ({where}): skipping: {error}", InputWarning, stacklevel=3)

    def skip_report(self, *, by_worker: bool = False) -> dict:
        """Bad-data skips since construction, over the main process and all DataLoader workers (also after
        the workers have exited). Returns ``{reason: count}`` (reasons in :data:`SKIP_REASONS` with a
        non-zero count), or with ``by_worker`` ``{"main process" | "DataLoader worker <id>": {reason: count}}``."""
        counts = self._skip_counts.clone()

        def as_dict(row: torch.Tensor) -> dict[str, int]:
            return {reason: int(n) for reason, n in zip(SKIP_REASONS, row.tolist()) if n}

        if not by_worker:
            return as_dict(counts.sum(dim=0))
        names = ["main process"] + [f"DataLoader worker {w}" for w in range(SKIP_REPORT_WORKERS)]
        return {name: as_dict(row) for name, row in zip(names, counts) if int(row.sum())}

    def check_usable(self) -> None:
        """Raise :class:`TrainingDataError` unless one foreground and one background can make a sample.

        Files are read in order and each scan stops at its first usable file, so a good data set costs two
        reads; a bad one is described in one message (how many files fail and why, one example, the fix)
        before a training run writes anything. Pair-specific problems (a foreground larger than a background)
        are left to sampling, which skips them with a warning."""
        problems = []
        found_bg = False
        bg_reasons: dict[str, list[str]] = {}
        for path in self.bg_paths:
            try:
                background = load_background(path)
            except BadSampleError as error:
                bg_reasons.setdefault(error.reason, []).append(Path(path).name)
                continue
            if min(background.shape[1:]) < self.size:
                bg_reasons.setdefault("bg_smaller_than_crop", []).append(Path(path).name)
                continue
            found_bg = True
            break
        if not found_bg:
            problems.append(f"no usable background in bg/ ({_describe(bg_reasons, self.size)}); backgrounds must be "
                            f"readable photos at least {self.size}x{self.size} px (the --resolution crop)")
        fg_reasons: dict[str, list[str]] = {}
        for path in self.fg_paths:
            try:
                load_foreground(path)
            except BadSampleError as error:
                fg_reasons.setdefault(error.reason, []).append(Path(path).name)
                continue
            break
        else:
            problems.append(f"no usable foreground in fg/ ({_describe(fg_reasons, self.size)}); foregrounds must be "
                            f"cut-outs saved as PNG with an alpha channel that has visible pixels")
        if problems:
            raise TrainingDataError(f"{self.flag} '{self.data_root}': " + "; ".join(problems) + ".")

    def _usable_left(self) -> bool:
        fg_ok = any(str(p) not in self._bad for p in self.fg_paths)
        bg_ok = any(str(p) not in self._bad for p in self.bg_paths)
        return fg_ok and bg_ok

    def _load_pair(self, fg_index: int, bg_index: int, extra_fg: list[int]):
        bg_path = self.bg_paths[bg_index]
        if str(bg_path) in self._bad:
            raise BadSampleError("known bad", reason=self._bad[str(bg_path)], key=str(bg_path))
        background = load_background(bg_path)
        if min(background.shape[1:]) < self.size:
            raise BadSampleError(
                f"background '{bg_path}' is {background.shape[2]}x{background.shape[1]}, smaller than the "
                f"{self.size}x{self.size} crop",
                reason="bg_smaller_than_crop",
                key=str(bg_path),
            )
        foregrounds = []
        for index in [fg_index] + extra_fg:
            fg_path = self.fg_paths[index]
            if str(fg_path) in self._bad:
                raise BadSampleError("known bad", reason=self._bad[str(fg_path)], key=str(fg_path))
            fg = load_foreground(fg_path)
            # "Larger" = exceeds the background in both dimensions: such a cut-out usually comes from a much
            # higher-resolution source and would be shrunk so far that its fine alpha is lost.
            if fg.rgb.shape[1] > background.shape[1] and fg.rgb.shape[2] > background.shape[2]:
                raise BadSampleError(
                    f"foreground '{fg_path}' ({fg.rgb.shape[2]}x{fg.rgb.shape[1]} after cropping to alpha) is "
                    f"larger than background '{bg_path}' ({background.shape[2]}x{background.shape[1]})",
                    reason="fg_larger_than_bg",
                    key=f"{fg_path} | {bg_path}",
                )
            foregrounds.append(fg)
        return foregrounds, background, str(bg_path)

    # -- items -----------------------------------------------------------------------------------------
    def sample_scene(self, index: int) -> tuple[Scene, np.random.Generator]:
        """The scene for ``index`` and the generator (positioned after the scene draws) for augmentation.

        Tries the index's own pair first, then random pairs, skipping bad data (class docstring)."""
        rng = self._rng(index)
        scene_rng, aug_rng = (np.random.default_rng(s) for s in rng.bit_generator.seed_seq.spawn(2))
        n_fg_lo, n_fg_hi = self.config.n_foregrounds
        fg_index, bg_index = index % len(self.fg_paths), (index // len(self.fg_paths)) % len(self.bg_paths)
        for _ in range(self.max_attempts):
            n_fg = int(scene_rng.integers(n_fg_lo, n_fg_hi + 1))
            extra = [int(i) for i in scene_rng.integers(0, len(self.fg_paths), size=n_fg - 1)]
            try:
                foregrounds, background, bg_source = self._load_pair(fg_index, bg_index, extra)
            except BadSampleError as error:
                self._skip(error)
                if not self._usable_left():
                    break
                fg_index = int(scene_rng.integers(0, len(self.fg_paths)))
                bg_index = int(scene_rng.integers(0, len(self.bg_paths)))
                continue
            scene = sample_scene(
                foregrounds, background, scene_rng, self.scene_size, self.scene_size, self.config,
                margin=self.fixed_margin, background_source=bg_source,
            )
            return scene, aug_rng
        raise RuntimeError(
            f"OnTheFlyDataset: no usable foreground/background pair in '{self.data_root}' "
            f"(skipped so far: {self.skipped}; see the warnings for each file). Foregrounds in fg/ need a "
            f"non-empty alpha and must fit inside the backgrounds; backgrounds in bg/ must be at least "
            f"{self.size}x{self.size} px."
        )

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        scene, rng = self.sample_scene(index)
        size, pad = self.size, scene.margin
        top = int(rng.integers(0, scene.height - size + 1))
        left = int(rng.integers(0, scene.width - size + 1))
        # Every draw happens whatever the probabilities, so switching an augmentation off leaves the other
        # draws (crop, renderer seed) unchanged: the same scene and crop with and without augmentation.
        flip = torch.from_numpy(rng.random(2) < self.flip_p)
        use_brightness, factor = rng.random() < self.brightness_p, float(rng.uniform(*self.brightness_range))
        if self.brightness_cap is not None:
            factor = min(factor, self.brightness_cap)
        brightness = factor if use_brightness else 1.0
        render_seed = int(rng.integers(0, 2**31 - 1))
        # Drawn last (and always), so the draws above are the same whatever the conditioning rule.
        condition_ratio = float(rng.uniform(2.0 / 3.0, 1.0))

        images, alphas, planes = scene.window(top - pad, left - pad, size + 2 * pad, size + 2 * pad)
        if self.synthesize_on_device:
            # Fixed layer count so items stack: empty (alpha 0) foreground layers behind the real ones.
            n_max = self.config.n_foregrounds[1] + 1
            missing = n_max - images.shape[0]
            if missing:
                images = np.concatenate([images[:-1], np.zeros((missing, *images.shape[1:]), np.float32), images[-1:]])
                alphas = np.concatenate([alphas[:-1], np.zeros((missing, *alphas.shape[1:]), np.float32), alphas[-1:]])
                planes = np.concatenate([planes[:-1], np.repeat(planes[-1:], missing, axis=0), planes[-1:]])
        images_t, alphas_t = torch.from_numpy(images)[None], torch.from_numpy(alphas)[None]
        planes_t = torch.from_numpy(planes)[None]
        inner = (..., slice(pad, pad + size), slice(pad, pad + size))
        composite_gamma = 1.0 if self.aif_composite == "srgb" else self.gamma
        aif, disparity, _ = composite_window(images_t, alphas_t, planes_t, gamma=composite_gamma)
        aif, disparity = aif[inner], disparity[inner]
        sample = {
            "aif": aif[0].float(),
            "disparity": disparity[0].float(),
            "K": torch.tensor(scene.K, dtype=torch.float32),
            "disp_focus": torch.tensor(scene.disp_focus, dtype=torch.float32),
            "original_size": torch.tensor([scene.height, scene.width], dtype=torch.long),
            "crop_top_left": torch.tensor([top, left], dtype=torch.long),
            "flip": flip,
            "brightness": torch.tensor(brightness, dtype=torch.float32),
        }
        K_condition = sample["K"]
        if self.coc_condition == "published":
            K_condition = published_condition_K(K_condition, condition_ratio, scene.disp_focus)
        sample["coc_px"] = K_condition * (sample["disparity"] - sample["disp_focus"])
        n_samples = self.n_samples
        if self.aperture_samples == "published":
            n_samples = published_scene_aperture_count(scene)
        if self.synthesize_on_device:
            sample.update(layers=images_t[0], alphas=alphas_t[0], planes=planes_t[0], pad=torch.tensor(pad),
                          render_pad=torch.tensor(scene.own_margin), render_seed=torch.tensor(render_seed))
            if self.aperture_samples == "published":
                sample["render_samples"] = torch.tensor(n_samples)
            return sample  # augmentation is applied after rendering, by synthesize_batch
        bokeh = render_window(
            images_t, alphas_t, planes_t, sample["K"].view(1), sample["disp_focus"].view(1),
            pad=pad, gamma=self.gamma, n_samples=n_samples, max_samples=self.max_samples, seed=render_seed,
            impl=self.impl,
        )
        sample["bokeh"] = bokeh[0].float()
        return apply_augmentation(sample, flip, sample["brightness"])


def synthesize_batch(
    batch: dict,
    device: torch.device | str | None = None,
    *,
    gamma: float = DEFAULT_GAMMA,
    n_samples: int | None = None,
    max_samples: int | None = None,
    impl: str = "auto",
) -> dict:
    """Render the targets of a collated ``synthesize_on_device=True`` batch on ``device`` (the accelerator),
    in the main process, then apply each item's flips and brightness.

    Each item is rendered on its own, exactly as CPU mode renders it: its window cropped to its
    ``render_pad``, its ``render_seed``, and the renderer's sample count for its own largest CoC. So an item's
    target never depends on the other items of its batch, and equals the CPU-mode target up to float
    rounding (same ``impl``).

    Args:
        batch: a default-collated batch of :class:`OnTheFlyDataset` items (``layers`` (B, L, 3, S+2P, S+2P),
            ``alphas``, ``planes`` (B, L, 3), ``pad`` (B,), ``render_pad`` (B,), ``render_seed`` (B,), ...).
        device: where to render (e.g. ``accelerator.device``); default: where ``batch["layers"]`` is.
        gamma, n_samples, max_samples: must match the dataset's ``gamma``, ``n_samples``, ``max_samples``.

    Returns:
        A new dict with the dataset's CPU-mode keys (``aif``, ``bokeh``, ``disparity``, ``coc_px``, ``K``,
        ``disp_focus``, ``original_size``, ``crop_top_left``, ``flip``, ``brightness``) on ``device``; the
        layer tensors are dropped.
    """
    device = batch["layers"].device if device is None else torch.device(device)
    pads = batch["pad"].unique()
    if pads.numel() != 1:
        raise ValueError(f"synthesize_batch: items have different padding {pads.tolist()}; use one dataset per batch")
    pad = int(pads[0])
    render_pads = batch.get("render_pad", batch["pad"])
    layer_keys = ("layers", "alphas", "planes", "pad", "render_pad", "render_seed", "render_samples")
    out = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items() if k not in layer_keys}
    height, width = batch["layers"].shape[-2:]
    bokeh = []
    for i in range(batch["layers"].shape[0]):
        item_pad = int(render_pads[i])
        if not 0 <= item_pad <= pad:
            raise ValueError(f"synthesize_batch: item {i} has render_pad {item_pad}, outside [0, pad = {pad}]")
        o = pad - item_pad  # crop the fixed-size window to the item's own (CPU-mode) window
        crop = (slice(i, i + 1), Ellipsis, slice(o, height - o), slice(o, width - o))
        bokeh.append(render_window(
            batch["layers"][crop].to(device), batch["alphas"][crop].to(device),
            shift_planes(batch["planes"][i : i + 1], o).to(device), out["K"][i : i + 1], out["disp_focus"][i : i + 1],
            pad=item_pad, gamma=gamma, max_samples=max_samples, seed=int(batch["render_seed"][i]), impl=impl,
            n_samples=int(batch["render_samples"][i]) if "render_samples" in batch else n_samples,
        ))
    out["bokeh"] = torch.cat(bokeh).float()
    return apply_augmentation(out, out["flip"], out["brightness"])


def apply_augmentation(sample: dict, flip: torch.Tensor, brightness: torch.Tensor) -> dict:
    """Apply flips and brightness identically to every map of a (batched or single) sample, in place.

    flip: ``(..., 2)`` bool (horizontal, vertical); brightness: ``(...)`` factor > 0 on sRGB values.
    Scaling sRGB by ``s`` scales linear light by ``s ** gamma``, and rendering is linear in light, so the
    scaled target is exactly the bokeh of the scaled scene; ``s <= 1`` keeps that true (no clipping). A
    factor above 1 (the released training brightens up to 1.1x) saturates: ``aif`` and ``bokeh`` are clipped
    to [0, 1], as the release does, and the pair is then only approximately consistent at clipped pixels.
    Flips commute with rendering for the symmetric (disc) aperture used in training.
    """
    batched = sample["aif"].dim() == 4
    maps = ("aif", "bokeh", "disparity", "coc_px")
    flip = flip.reshape(-1, 2)
    brightness = brightness.reshape(-1)
    for key in maps:
        if key not in sample:
            continue
        values = sample[key] if batched else sample[key].unsqueeze(0)
        out = []
        for i in range(values.shape[0]):
            v = values[i]
            if bool(flip[i, 0]):
                v = v.flip(-1)
            if bool(flip[i, 1]):
                v = v.flip(-2)
            if key in ("aif", "bokeh"):
                v = v * brightness[i].to(v.dtype)
                if bool(brightness[i] > 1):
                    v = v.clamp(0.0, 1.0)
            out.append(v)
        stacked = torch.stack(out)
        sample[key] = stacked if batched else stacked[0]
    return sample
