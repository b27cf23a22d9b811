"""Render a benchmark's cases with every method, resumably, and score them the way ``evaluate.py`` does.

``run_cases(cases, methods, out_dir, ...)`` renders each :class:`~inference.benchmark_cases.Case` with each
:class:`Method` to ``<out_dir>/<method>/<case name>.png`` and scores it with :func:`metrics.report.score`
(overall, inside and outside the depth-discontinuity band of :mod:`metrics.bands`). A render is reused when
its file exists and ``<out_dir>/<method>/manifest.json`` records the same settings for it (method spec, K,
focus, source files); anything else is rendered again. Our renders are 16-bit PNGs (quantisation far below
every reported difference); a peer writes whatever PNG it writes.

An external peer is a command template (``shlex``-split, run without a shell) whose words may hold
``{image}`` (8-bit sRGB PNG of the input), ``{disparity}`` (``.npy`` float32 ``(H, W)`` in [0, 1], 1 = near),
``{K}`` (px of CoC radius per unit of that disparity), ``{focus}`` (the focal disparity) and ``{out}`` (the PNG
to write, the input's size). A command that fails or writes nothing fails that case, with its exit status and
the end of its stderr; the other cases are scored.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from data.io import atomic_write, read_image, save_image, write_text_atomic
from metrics import benchmark_report as report
from metrics.bands import BAND_THRESHOLD, BAND_WIDTH_PX, discontinuity_band
from metrics.image import LearnedMetric
from metrics.report import score
from models.lora import WeightLoadingError

from .benchmark_cases import Case

PEER_PLACEHOLDERS = ("{image}", "{disparity}", "{K}", "{focus}", "{out}")
PEER_TIMEOUT_S = 3600.0


class CaseError(RuntimeError):
    """One case could not be rendered by one method (the message says why); the run goes on."""


@dataclass
class Method:
    """A method to benchmark. ``build()`` returns ``(render, device)`` for our renderers (called once, only
    when a render is needed; raising ``OSError`` marks the method unavailable); ``command`` is a peer's
    template (module docstring). ``spec`` describes the configuration and is part of every manifest record."""

    name: str
    spec: str
    build: Callable[[], tuple[Callable, torch.device]] | None = None
    command: str | None = None
    _built: tuple | None = field(default=None, repr=False)

    def renderer(self):
        if self._built is None:
            self._built = self.build()
        return self._built


@dataclass
class RunResult:
    """Scores per (method, case) (``rows``: benchmark, method, scene, name, level, K, disp_focus, metrics),
    failures (``{"method", "name", "reason"}``; ``method`` None for a case no method could use), methods
    that were unavailable (name -> reason) and render seconds per method (renders reused count 0)."""

    rows: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    rendered: dict[str, int] = field(default_factory=dict)
    reused: dict[str, int] = field(default_factory=dict)


MANIFEST = "manifest.json"


def _read_records(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):  # a damaged manifest only costs re-rendering
        return {}


class RenderManifest:
    """``<folder>/manifest.json``: ``{case name: settings}`` of the renders in ``folder``. ``name`` another file
    (a rank's ``manifest.rank<i>.json`` in a sharded run): it is written, and ``manifest.json`` read as well."""

    def __init__(self, folder: Path, name: str = MANIFEST):
        self.path = Path(folder) / name
        self.records = _read_records(Path(folder) / MANIFEST) | _read_records(self.path)

    def fresh(self, name: str, settings: dict, output: Path) -> bool:
        return output.is_file() and self.records.get(name) == settings

    def record(self, name: str, settings: dict) -> None:
        self.records[name] = settings
        write_text_atomic(self.path, json.dumps(self.records, indent=1, sort_keys=True))


def peer_argv(command: str, **values: str) -> list[str]:
    """The peer's argument list: ``shlex.split(command)`` with each ``{placeholder}`` replaced in each word
    (no shell, so paths with spaces stay one argument; other braces are left alone)."""
    import shlex

    words = shlex.split(command)
    out = []
    for word in words:
        for key, value in values.items():
            word = word.replace("{" + key + "}", str(value))
        out.append(word)
    return out


def run_peer(method: Method, case_name: str, inputs: dict[str, Path], K: float, disp_focus: float, out: Path,
             timeout_s: float = PEER_TIMEOUT_S) -> None:
    """Run a peer's command for one case; raises :class:`CaseError` naming the command, its exit status and the
    end of its stderr when it fails, times out or writes no ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # a stale file must not pass for this run's output
    argv = peer_argv(method.command, image=inputs["image"], disparity=inputs["disparity"], K=f"{K:.9g}",
                     focus=f"{disp_focus:.9g}", out=out)
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise CaseError(f"peer '{method.name}' could not run `{' '.join(argv)}`: {error}") from error
    if result.returncode != 0:
        tail = (result.stderr or result.stdout or "").strip()[-600:]
        raise CaseError(f"peer '{method.name}' exited with status {result.returncode} on '{case_name}' "
                        f"(`{' '.join(argv)}`): {tail or 'no output'}")
    if not out.is_file():
        raise CaseError(f"peer '{method.name}' exited 0 on '{case_name}' but wrote no '{out}' (its {{out}})")


def _peer_inputs(data: dict, case: Case, folder: Path, written: set) -> dict[str, Path]:
    """The case's input as files a peer reads: 8-bit sRGB PNG, float32 ``.npy``. Written once per scene and
    run (``written`` holds the scenes done), so files left by an earlier run on other data are never used."""
    image, disparity = folder / f"{case.scene}.png", folder / f"{case.scene}_disparity.npy"
    if case.scene not in written:
        save_image(image, data["image"])
        with atomic_write(disparity) as tmp, open(tmp, "wb") as handle:
            np.save(handle, data["disparity"][0].numpy().astype(np.float32))
        written.add(case.scene)
    return {"image": image, "disparity": disparity}


def _render_ours(method: Method, case: Case, data: dict, out: Path) -> float:
    """Render one case with one of our methods to a 16-bit PNG; returns the render seconds. A renderer under
    the published protocol gets the case's published input when it has one (BLB; :class:`Case`)."""
    render, device = method.renderer()
    if getattr(render, "protocol", None) == "published" and case.load_published is not None:
        data = case.load_published()
    image = data["image"][None].to(device)
    disparity = data["disparity"][None].to(device)
    start = time.perf_counter()
    with torch.no_grad():
        prediction = render(image, disparity, data["K"], data["disp_focus"])
    seconds = time.perf_counter() - start
    save_image(out, prediction[0].float().cpu().clamp(0, 1), bits=16)
    return seconds


def run_cases(
    cases: list[Case],
    methods: list[Method],
    out_dir: str | Path,
    *,
    learned: list[LearnedMetric] = (),
    band_width_px: int = BAND_WIDTH_PX,
    band_threshold: float = BAND_THRESHOLD,
    device: torch.device | str | None = None,
    peer_timeout_s: float = PEER_TIMEOUT_S,
    log: Callable[[str], None] = print,
    score_renders: bool = True,
    manifest_name: str = MANIFEST,
) -> RunResult:
    """Render (or reuse) and score every case with every method (module docstring). Never raises for one
    case or one method: failures and unavailable methods are collected in the result. ``score_renders=False``
    only renders (a rank's share in :func:`run_sharded`; no rows); ``manifest_name`` is the file renders are
    recorded in (:class:`RenderManifest`)."""
    out_dir = Path(out_dir)
    result = RunResult()
    manifests = {m.name: RenderManifest(out_dir / m.name, manifest_name) for m in methods}
    peer_scenes: set = set()
    for m in methods:
        result.seconds[m.name], result.rendered[m.name], result.reused[m.name] = 0.0, 0, 0
    for number, case in enumerate(cases, start=1):
        try:
            data = case.load()
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            result.failures.append({"method": None, "name": case.name, "level": case.level,
                                    "reason": f"{type(error).__name__}: {error}"})
            log(f"error: {case.benchmark}: {case.name}: {error}")
            continue
        if score_renders:
            gt = data["gt"][None].to(device)
            band = discontinuity_band(data["disparity"][None], width_px=band_width_px,
                                      threshold=band_threshold).to(device)
        for method in methods:
            if method.name in result.unavailable:
                continue
            output = out_dir / method.name / f"{case.name}.png"
            settings = {"spec": method.spec, "K": round(data["K"], 9), "disp_focus": round(data["disp_focus"], 9),
                        "size": list(data["image"].shape[1:]), "source": case.source}
            fresh = manifests[method.name].fresh(case.name, settings, output)
            if not fresh and method.command is None and method._built is None:
                try:
                    method.renderer()
                except (OSError, WeightLoadingError, ValueError, RuntimeError) as error:  # report it, run the others
                    result.unavailable[method.name] = str(error).split(". ")[0][:200]
                    log(f"warning: {method.name} unavailable: {error}")
                    continue
            try:
                if fresh:
                    result.reused[method.name] += 1
                else:
                    if method.command is not None:
                        inputs = _peer_inputs(data, case, out_dir / "inputs", peer_scenes)
                        start = time.perf_counter()
                        run_peer(method, case.name, inputs, data["K"], data["disp_focus"], output, peer_timeout_s)
                        result.seconds[method.name] += time.perf_counter() - start
                    else:
                        result.seconds[method.name] += _render_ours(method, case, data, output)
                    manifests[method.name].record(case.name, settings)
                    result.rendered[method.name] += 1
                if not score_renders:
                    continue
                prediction = read_image(output)
                if prediction.shape != tuple(data["gt"].shape):
                    raise CaseError(f"'{output}' is {prediction.shape[2]}x{prediction.shape[1]}, the ground truth "
                                    f"{data['gt'].shape[2]}x{data['gt'].shape[1]}; render at the input's size")
                values = score(torch.from_numpy(prediction)[None].to(device), gt, band, learned)
            except (CaseError, OSError, ValueError, RuntimeError) as error:  # this case only; the run goes on
                result.failures.append({"method": method.name, "name": case.name, "level": case.level,
                                        "reason": str(error)})
                log(f"error: {method.name}: {case.name}: {error}")
                continue
            row = {"benchmark": case.benchmark, "method": method.name, "scene": case.scene, "name": case.name,
                   "level": case.level, "K": data["K"], "disp_focus": data["disp_focus"],
                   "focus_source": data.get("focus_source", ""), "prediction": str(output)}
            row.update({key: float(value[0]) for key, value in values.items()})
            result.rows.append(row)
        if number % 10 == 0 or number == len(cases):
            log(f"{cases[0].benchmark}: {number}/{len(cases)} ground truths")
    return result



def merge_rank_manifests(out_dir: str | Path, method_names: list[str]) -> None:
    """Fold every ``<out_dir>/<method>/manifest.rank<i>.json`` into that folder's ``manifest.json`` (atomically)
    and remove them."""
    for name in method_names:
        folder = Path(out_dir) / name
        parts = sorted(folder.glob("manifest.rank*.json"))
        if not parts:
            continue
        records = _read_records(folder / MANIFEST)
        for part in parts:
            records |= _read_records(part)
        write_text_atomic(folder / MANIFEST, json.dumps(records, indent=1, sort_keys=True))
        for part in parts:
            part.unlink()


def run_sharded(cases: list[Case], methods: list[Method], out_dir: str | Path, ranks, **kwargs) -> RunResult | None:
    """:func:`run_cases` over the processes of ``ranks`` (:class:`data.ranks.Ranks`): each renders its block of
    ``cases`` (recording them in its own manifest file), then the main process merges the manifests and scores
    everything, reusing every render (a case a rank failed is tried again there and reported). Returns the
    result on the main process and ``None`` on the others. One process: :func:`run_cases` itself."""
    if ranks.count == 1:
        return run_cases(cases, methods, out_dir, **kwargs)
    mine = [case for _, case in ranks.share(cases)]
    share = run_cases(mine, methods, out_dir, **kwargs, score_renders=False,
                      manifest_name=f"manifest.rank{ranks.index}.json")
    kwargs.get("log", print)(f"process {ranks.index + 1} of {ranks.count}: {len(mine)} ground truths, "
                             f"{sum(share.rendered.values())} renders")
    shares = ranks.gather((share.rendered, share.seconds))  # a collective: also the barrier before merging
    if not ranks.is_main:
        return None
    merge_rank_manifests(out_dir, [m.name for m in methods])
    result = run_cases(cases, methods, out_dir, **kwargs)
    for rendered, seconds in shares:  # the ranks' renders count as rendered (the scoring pass reused them)
        for name, n in rendered.items():
            result.rendered[name] += n
            result.reused[name] -= n
            result.seconds[name] += seconds[name]
    return result


def write_benchmark_reports(benchmark: str, cases: list[Case], result: RunResult, methods: list[str],
                            folder: str | Path, *, scene_failures: dict[str, str] | None = None,
                            notes: list[str] = ()) -> dict[str, Path]:
    """Write ``<folder>/tables.md`` (one table per level), ``per_image.csv``, ``per_scene.csv``, ``chart.png``
    (metric per level, one line per method), ``worst_cases.png`` and ``results.json``; returns them by kind."""
    folder = Path(folder)
    failures = [{"method": None, "name": scene, "reason": reason} for scene, reason in (scene_failures or {}).items()]
    failures += result.failures
    paths = {"tables": write_text_atomic(folder / "tables.md", report.level_tables(
        benchmark, result.rows, methods, failures=failures, unavailable=result.unavailable, notes=notes))}
    paths["per_image"] = report.write_csv(result.rows, folder / "per_image.csv")
    paths["per_scene"] = report.write_csv(report.scene_rows(result.rows), folder / "per_scene.csv")
    if result.rows:
        paths["chart"] = report.plot_levels(benchmark, result.rows, methods, folder / "chart.png")
        by_name = {case.name: case for case in cases}
        worst = report.worst_cases(result.rows, lambda name: by_name[name].load()["gt"].numpy(),
                                   folder / "worst_cases.png")
        if worst is not None:
            paths["worst_cases"] = worst
    summary = {"benchmark": benchmark, "ground_truths": len(cases), "scored": len(result.rows),
               "failures": failures, "unavailable": result.unavailable, "render_seconds": result.seconds,
               "rendered": result.rendered, "reused": result.reused}
    paths["json"] = write_text_atomic(folder / "results.json", json.dumps(summary, indent=2))
    return paths
