"""Score rendered images against ground truth and write CSV, JSON, a markdown table and a worst-case sheet.

Each metric is reported over the whole image, inside the depth-discontinuity band and outside it
(:mod:`metrics.bands`), per image and as the mean over images (NaN entries, e.g. an empty band, are left out
of the mean). Column names: ``<metric>``, ``<metric>_band``, ``<metric>_outside``.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data.inference_io import format_value, output_name, parse_output_name, safe_name
from data.io import (IMAGE_EXTENSIONS, contact_sheet, read_disparity, read_image, replaced_inputs, save_image,
                     write_text_atomic)
from metrics.bands import BAND_THRESHOLD, BAND_WIDTH_PX, discontinuity_band
from metrics.image import PSNR_MAX_DB, LearnedMetric, masked_mean, mse_map, psnr_from_mse, ssim_map

REGIONS = ("", "_band", "_outside")


REPORT_FILES = ("metrics.csv", "metrics.json", "metrics.md", "worst_cases.png")
WORST_K = 6  # images in worst_cases.png by default


@dataclass
class Pair:
    """One prediction and its ground truth; ``disparity`` (optional) defines the discontinuity band.
    ``pred`` is None when no prediction was found; ``missing`` then says where it was looked for."""

    name: str
    pred: Path | None
    gt: Path
    disparity: Path | None = None
    missing: str = ""


@dataclass
class Evaluation:
    """Scores per image (``rows``), pairs that failed (``failures``: name -> reason), ground truths without a
    prediction (``missing``: name -> where it was looked for), and learned metrics that were unavailable."""

    rows: list[dict] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    band_masks: dict[str, np.ndarray] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Ground truths in the evaluation, and how many were scored, had no prediction, or failed."""
        scored, missing, failed = len(self.rows), len(self.missing), len(self.failures)
        return {"ground_truths": scored + missing + failed, "scored": scored, "missing": missing, "failed": failed}

    @property
    def complete(self) -> bool:
        """Every ground truth was scored (no missing prediction, no failure)."""
        return not self.failures and not self.missing

    def means(self) -> dict[str, float]:
        """Mean over images of every numeric column, ignoring NaN; NaN if no image has a value."""
        keys = [k for k in (self.rows[0] if self.rows else {}) if k != "name"]
        means = {}
        for key in keys:
            values = [row[key] for row in self.rows if not math.isnan(row[key])]
            means[key] = float(np.mean(values)) if values else math.nan
        return means


def _images_in(folder: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(folder).with_suffix("")): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    }


def find_pairs(pred_dir: Path, gt_dir: Path, disparity_dir: Path | None = None, *,
               pred_glob: str | None = None) -> tuple[list[Pair], list[str]]:
    """Match predictions to ground truth by relative path without extension, or by ``inference_hf.py``'s naming.

    A ground truth ``<name>`` takes the prediction ``<name>.<ext>``; without one, the render that
    ``inference_hf.py`` wrote for it, ``<name>_K<K>_f<focus>.png`` (:func:`data.inference_io.parse_output_name`;
    ``<name>`` as the GT's, or cleaned by :func:`data.inference_io.safe_name`), when it is the only one. Several
    renders of one ground truth (several K or focus values) are refused with a ``ValueError`` that lists them:
    ``pred_glob`` (an ``fnmatch`` pattern on the prediction's path relative to ``pred_dir``, e.g.
    ``"*_K20_f0.50.png"``) keeps one per ground truth. Disparity for ``<name>`` is looked up in ``disparity_dir``
    as ``<name>.npy``, ``<name>_pred.npy`` (the EBB layout) or ``<name>.png``. Returns the pairs, one per
    ground truth (``pred`` None where the prediction is missing: :func:`evaluate_pairs` reports it), and a list
    of problems (predictions without ground truth, missing disparity), which the caller reports.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for flag, folder in (("--pred_dir", pred_dir), ("--gt_dir", gt_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{flag} '{folder}' is not a folder")
    preds, gts = _images_in(pred_dir), _images_in(gt_dir)
    if pred_glob is not None:
        preds = {n: p for n, p in preds.items() if fnmatch.fnmatchcase(p.relative_to(pred_dir).as_posix(), pred_glob)}
    matched = {name: preds[name] for name in gts if name in preds}
    renders = _renders_by_ground_truth({n: p for n, p in preds.items() if n not in matched}, gts.keys() - matched.keys())
    several = {name: found for name, found in renders.items() if len(found) > 1}
    if several:
        name, found = sorted(several.items())[0]
        listed = ", ".join(sorted(p.relative_to(pred_dir).as_posix() for p in found))
        example = sorted(found)[0].relative_to(pred_dir).as_posix()
        parsed = parse_output_name(Path(example).stem)
        pattern = f"*_K{format_value(parsed[1])}_f{parsed[2]:.2f}.png" if parsed else example
        raise ValueError(
            f"{len(several)} ground truth(s) in --gt_dir '{gt_dir}' have several renders in --pred_dir '{pred_dir}' "
            f"(e.g. '{gts[name]}': {listed}); a ground truth is scored against one prediction. Pick one per "
            f"ground truth with --pred_glob, e.g. --pred_glob '{pattern}'")
    matched.update({name: found[0] for name, found in renders.items()})
    used = set(matched.values())
    problems = [f"no ground truth for prediction '{path}'" for path in preds.values() if path not in used]
    pairs = [Pair(name, None, gts[name], missing=f"no prediction for ground truth '{gts[name]}' in --pred_dir "
                  f"'{pred_dir}' (looked for {name}.<{'|'.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)}> and "
                  f"{name}_K<K>_f<focus>.png)")
             for name in sorted(set(gts) - set(matched))]
    for name in sorted(matched):
        disparity = None
        if disparity_dir is not None:
            candidates = [Path(disparity_dir) / f"{name}{suffix}" for suffix in (".npy", "_pred.npy", ".png")]
            disparity = next((c for c in candidates if c.is_file()), None)
            if disparity is None:
                problems.append(f"no disparity for '{name}' in '{disparity_dir}' (band metrics will be NaN)")
        pairs.append(Pair(name, matched[name], gts[name], disparity))
    pairs.sort(key=lambda pair: pair.name)
    if not any(pair.pred is not None for pair in pairs):
        raise ValueError(
            f"no prediction in --pred_dir '{pred_dir}'{f' matching --pred_glob {pred_glob!r}' if pred_glob else ''} "
            f"matches a ground-truth image in --gt_dir '{gt_dir}' (files are matched by relative path without "
            "extension, or as inference_hf.py names a render of the ground truth's <name>: <name>_K<K>_f<focus>.png)"
        )
    return pairs, problems


def _renders_by_ground_truth(preds: dict[str, Path], gt_names) -> dict[str, list[Path]]:
    """The predictions named as ``inference_hf.py`` names a render (``<name>_K<K>_f<focus>``, in the same
    sub-folder) of each ground truth in ``gt_names``; ground truths without one are left out."""
    by_key: dict[str, str] = {}
    for gt in gt_names:
        folder, _, stem = gt.rpartition("/")
        for candidate in dict.fromkeys((stem, safe_name(stem))):  # inference_hf.py cleans names (safe_name)
            by_key.setdefault(f"{folder}/{candidate}" if folder else candidate, gt)
    found: dict[str, list[Path]] = {}
    for name, path in preds.items():
        folder, _, stem = name.rpartition("/")
        parsed = parse_output_name(stem)
        if parsed is None:
            continue
        gt = by_key.get(f"{folder}/{parsed[0]}" if folder else parsed[0])
        if gt is not None:
            found.setdefault(gt, []).append(path)
    return found


def dataset_records(root: Path) -> list[dict]:
    """Ground truths of an EBB-layout dataset with ``meta.json`` (``scripts.make_sample_data`` /
    ``scripts.make_benchmark``): one record per GT with its ``name`` (the GT's stem), ``scene``, ``input``,
    ``disparity`` (``depth/<scene>_pred.npy``), ``gt`` paths and the ``K`` / ``disp_focus`` it was rendered with."""
    root = Path(root)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"--dataset '{root}' has no meta.json (the EBB layout with ground-truth metadata that "
            "scripts/make_benchmark.py writes); for plain folders use --gt_dir and --disparity_dir"
        )
    meta = json.loads(meta_path.read_text())
    records = []
    for scene, entries in sorted((k, v) for k, v in meta.items() if not k.startswith("_")):
        for entry in entries:
            records.append({
                "name": Path(entry["gt"]).stem, "scene": scene, "input": root / "input" / f"{scene}.png",
                "disparity": root / "depth" / f"{scene}_pred.npy", "gt": root / entry["gt"],
                "K": float(entry["K"]), "disp_focus": float(entry["disp_focus"]),
            })
    return records


def find_dataset_pairs(root: Path, pred_dir: Path) -> tuple[list[Pair], list[str]]:
    """Pair a dataset's ground truths (:func:`dataset_records`) with predictions in ``pred_dir`` named either
    like the GT (``<gt stem>.png``, as ``scripts.run_benchmark`` writes) or as ``inference_hf.py`` names its
    renders for that scene, K and focus (``<scene>_K<K>_f<focus>.png``). Each pair gets its scene's disparity;
    a ground truth without a prediction gets a pair with ``pred`` None (reported by :func:`evaluate_pairs`)."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"--pred_dir '{pred_dir}' is not a folder")
    pairs, problems, looked_for = [], [], []
    records = dataset_records(root)
    for record in records:
        candidates = [pred_dir / f"{record['name']}{ext}" for ext in (".png", ".jpg")]
        candidates.append(pred_dir / output_name(safe_name(record["scene"]), record["K"], record["disp_focus"]))
        looked_for.append(", ".join(c.name for c in candidates))
        pred = next((c for c in candidates if c.is_file()), None)
        missing = "" if pred else (f"no prediction for ground truth '{record['gt']}' in --pred_dir '{pred_dir}' "
                                   f"(looked for {looked_for[-1]})")
        pairs.append(Pair(record["name"], pred, record["gt"], record["disparity"], missing=missing))
    if not any(pair.pred is not None for pair in pairs):
        # Say what a match looks like and how to render one: each ground truth has its own K and focus
        # (meta.json), which inference_hf.py uses only when given them.
        example = ""
        if records:
            first = records[0]
            example = (f"; for '{first['gt'].name}' it looked for {looked_for[0]}, which "
                       f"`python inference_hf.py [--renderer NAME] --test_data_dir {root} --data_id {first['scene']} "
                       f"--K {first['K']:g} --focus_disparity {first['disp_focus']:g} --output_dir {pred_dir}` writes")
        raise ValueError(f"no prediction in --pred_dir '{pred_dir}' matches a ground truth of --dataset '{root}': "
                         "predictions are named like the ground truth, or <scene>_K<K>_f<focus>.png as "
                         f"inference_hf.py names a render at the ground truth's K and focus (meta.json){example}")
    return pairs, problems


def score(
    pred: torch.Tensor, gt: torch.Tensor, band: torch.Tensor | None, learned: list[LearnedMetric] = ()
) -> dict[str, torch.Tensor]:
    """Every metric over all / band / outside for a batch ``(B, 3, H, W)`` in [0, 1]; values ``(B,)``.

    ``band`` is a boolean ``(B, 1, H, W)`` mask or None (band and outside values are then NaN).
    """
    masks = {"": None, "_band": band, "_outside": None if band is None else ~band}
    # One map per metric for all three regions; the whole-image region (mask None) is then exactly
    # metrics.image.psnr_per_image / ssim_per_image, the values training validation reports.
    maps = {"mse": mse_map(pred, gt), "ssim": ssim_map(pred, gt)}
    out = {}
    for region, mask in masks.items():
        undefined = band is None and region != ""
        nan = torch.full((pred.shape[0],), math.nan)
        out[f"psnr{region}"] = nan if undefined else psnr_from_mse(masked_mean(maps["mse"], mask)).cpu()
        out[f"ssim{region}"] = nan if undefined else masked_mean(maps["ssim"], mask).cpu()
    for metric in learned:
        value = metric.fn(pred, gt)
        if metric.spatial:
            value = F.interpolate(value, size=pred.shape[-2:], mode="bilinear", align_corners=False)
            for region, mask in masks.items():
                undefined = band is None and region != ""
                out[f"{metric.name}{region}"] = (
                    torch.full((pred.shape[0],), math.nan) if undefined else masked_mean(value, mask).cpu()
                )
        else:  # a global score: defined on the whole image only
            out[metric.name] = value.reshape(-1).cpu()
            out[f"{metric.name}_band"] = out[f"{metric.name}_outside"] = torch.full((pred.shape[0],), math.nan)
    return out


def evaluate_pairs(
    pairs: list[Pair],
    *,
    learned: list[LearnedMetric] = (),
    unavailable: dict[str, str] | None = None,
    band_width_px: int = BAND_WIDTH_PX,
    band_threshold: float = BAND_THRESHOLD,
    device: torch.device | str | None = None,
    progress=None,
) -> Evaluation:
    """Score every pair; a pair that cannot be read or whose sizes differ is recorded in ``failures`` and
    skipped, never aborting the run; a pair without a prediction is recorded in ``missing``. Images are moved
    to ``device`` (None: they stay where they are read)."""
    result = Evaluation(unavailable=dict(unavailable or {}))
    result.missing = {pair.name: pair.missing or "no prediction" for pair in pairs if pair.pred is None}
    scorable = [pair for pair in pairs if pair.pred is not None]
    iterator = progress(scorable) if progress is not None else scorable
    for pair in iterator:
        try:
            gt = read_image(pair.gt)
            pred = read_image(pair.pred)
            if pred.shape != gt.shape:
                raise ValueError(
                    f"prediction '{pair.pred}' is {pred.shape[2]}x{pred.shape[1]} but ground truth '{pair.gt}' "
                    f"is {gt.shape[2]}x{gt.shape[1]}"
                )
            band = None
            if pair.disparity is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # resizing a disparity map to the GT size is expected here
                    disparity = read_disparity(pair.disparity, size=gt.shape[1:])
                band = discontinuity_band(
                    torch.from_numpy(disparity)[None], width_px=band_width_px, threshold=band_threshold
                ).to(device)
                result.band_masks[pair.name] = band[0, 0].cpu().numpy()
            values = score(
                torch.from_numpy(pred)[None].to(device), torch.from_numpy(gt)[None].to(device), band, learned
            )
        except (OSError, ValueError, RuntimeError) as error:  # unreadable, mismatched, too small for SSIM, OOM
            result.failures[pair.name] = f"{type(error).__name__}: {error}"
            continue
        result.rows.append({"name": pair.name, **{k: float(v[0]) for k, v in values.items()}})
    return result


def write_reports(
    evaluation: Evaluation, pairs: list[Pair], output_dir: Path, *, worst_k: int = WORST_K, title: str = "Evaluation"
) -> dict[str, Path]:
    """Write ``metrics.csv`` (per image), ``metrics.json`` (per image, means, counts, unavailable metrics,
    missing predictions, failures; strict JSON: undefined values are ``null``), ``metrics.md`` (table of
    means) and ``worst_cases.png`` (the ``worst_k`` lowest-PSNR images: prediction, ground truth, 4x absolute
    error, band). Returns the paths by kind.

    Raises:
        FileExistsError: a report would replace one of the evaluated files (``output_dir`` holds an input
            named like a report); nothing is written then.
    """
    output_dir = Path(output_dir)
    inputs = [p for pair in pairs for p in (pair.pred, pair.gt, pair.disparity) if p is not None]
    clashes = [path.name for path in replaced_inputs([output_dir / name for name in REPORT_FILES], inputs)]
    if clashes:
        raise FileExistsError(f"--output_dir '{output_dir}' holds evaluated images named like the reports "
                              f"({', '.join(clashes)}), which writing the reports would replace; choose another "
                              f"--output_dir")
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    means = evaluation.means()

    buffer = io.StringIO()
    if evaluation.rows:
        writer = csv.DictWriter(buffer, fieldnames=list(evaluation.rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(evaluation.rows)
    else:
        buffer.write("name\n")
    paths["csv"] = write_text_atomic(output_dir / "metrics.csv", buffer.getvalue())

    paths["json"] = write_text_atomic(
        output_dir / "metrics.json",
        json.dumps(
            finite_or_none({
                "per_image": evaluation.rows,
                "mean": means,
                "counts": evaluation.counts(),
                "unavailable": evaluation.unavailable,
                "missing": evaluation.missing,
                "failures": evaluation.failures,
            }),
            indent=2,
            allow_nan=False,  # strict JSON: PSNR is capped (metrics.image.PSNR_MAX_DB), undefined values are null
        )
    )

    paths["markdown"] = write_text_atomic(output_dir / "metrics.md", markdown_table(evaluation, title=title))

    if evaluation.rows and worst_k > 0:
        by_name = {p.name: p for p in pairs}
        worst = sorted(evaluation.rows, key=lambda row: row["psnr"])[:worst_k]
        tiles, labels = [], []
        for row in worst:
            pred, gt = read_image(by_name[row["name"]].pred), read_image(by_name[row["name"]].gt)
            band = evaluation.band_masks.get(row["name"])
            band_tile = np.zeros_like(gt) if band is None else np.repeat(band[None].astype(np.float32), 3, 0)
            tiles += [pred, gt, np.clip(np.abs(pred - gt) * 4, 0, 1), band_tile]
            labels += [f"{row['name']} {row['psnr']:.2f} dB", "ground truth", "|error| x4", "band"]
        paths["worst"] = save_image(output_dir / "worst_cases.png", contact_sheet(tiles, labels, columns=4, width=256))
    return paths


def finite_or_none(value):
    """NaN / +-inf (an undefined metric, e.g. no band without a disparity) -> None, i.e. ``null`` in strict
    JSON, recursively through dicts, lists and tuples; everything else unchanged."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def _fmt(value: float, name: str) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.2f}" if name.startswith("psnr") else f"{value:.4f}"


def markdown_table(evaluation: Evaluation, *, title: str = "Evaluation") -> str:
    """A markdown table of mean metrics: one row per metric, columns all / band / outside."""
    means = evaluation.means()
    metrics = [k for k in means if not k.endswith(("_band", "_outside"))]
    lines = [
        f"### {title}",
        "",
        f"{_count_line(evaluation)} Higher is better for PSNR (dB, capped at {PSNR_MAX_DB:g}) and SSIM; "
        "lower for LPIPS and DISTS.",
        "",
        "| metric | all | discontinuity band | outside band |",
        "|---|---|---|---|",
    ]
    for metric in metrics:
        cells = [_fmt(means.get(f"{metric}{region}", math.nan), metric) for region in REGIONS]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    for name, reason in evaluation.unavailable.items():
        lines.append(f"| {name} | unavailable | unavailable | unavailable |")
    if evaluation.unavailable:
        lines += ["", "Unavailable (pretrained weights could not be obtained; never computed with random weights):"]
        lines += [f"- `{name}`: {reason}" for name, reason in evaluation.unavailable.items()]
    if evaluation.missing:
        lines += ["", f"Missing predictions ({len(evaluation.missing)}):"]
        lines += [f"- `{name}`: {reason}" for name, reason in evaluation.missing.items()]
    if evaluation.failures:
        lines += ["", f"Failed ({len(evaluation.failures)}):"]
        lines += [f"- `{name}`: {reason}" for name, reason in evaluation.failures.items()]
    return "\n".join(lines) + "\n"


def _count_line(evaluation: Evaluation) -> str:
    counts = evaluation.counts()
    line = f"{counts['scored']} of {counts['ground_truths']} images scored"
    extra = [f"{counts[k]} {what}" for k, what in (("missing", "missing"), ("failed", "failed")) if counts[k]]
    return line + (f" ({', '.join(extra)}, listed below)." if extra else ".")
