"""One ``inference_hf.py`` run over many inputs: which inputs, where the outputs go, the manifest, the loop.

Batch policy (CONTRIBUTING): an input that fails (missing or corrupt file, a render error) is reported and
skipped; the others are still rendered and written. What an input is and how outputs are named lives in
:mod:`data.inference_io`; this module wires it to a renderer ``render(image, disparity, K, disp_focus)``
(:mod:`inference.renderers`).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from data.disk import DiskFullError
from data.inference_io import (
    MANIFEST_NAME, InputItem, OutputFiles, StageTimer, choose_focus, demo_inputs, folder_inputs, input_notes,
    input_roots, item_contact_sheet, limit_size, output_name, pair_inputs, previous_outputs, sheet_name, unique_focus,
)
from data.interrupt import Interrupted, protected
from data.io import InputWarning, save_image, write_text_atomic
from data.published import published_resize_output

from .renderers import BatchedRender, RenderFn, batch_size_of, render_settings
from .shard import Job, file_key, input_identity, recorded_outputs


def select_inputs(args: argparse.Namespace) -> list:
    """The run's inputs (:class:`data.inference_io.PendingInput`, loaded lazily) from ``--demo``, ``--image`` /
    ``--disparity`` or ``--test_data_dir``. May redirect ``args.output_dir`` (the published ``--data_id``
    meaning: a plain name that selects no input names the run). Sets ``args.disparity_rule``: the rules the
    inputs' disparity is read with, one line each; they decide the renders' bytes, so they go to
    ``run_config.json`` and a rerun with another rule is a change of settings."""
    inputs = _find_inputs(args)
    args.disparity_rule = input_notes(inputs)[0]
    return inputs


def print_input_notes(inputs) -> None:
    """Print, once per run, how the inputs' disparity is read and what else reading them decides (an EXR taken
    as linear light): one ``note:`` line each, however many inputs share it."""
    rules, notes = input_notes(inputs)
    for line in [f"disparity: {rule}" for rule in rules] + notes:
        print(f"note: {line}")


def _find_inputs(args: argparse.Namespace) -> list:
    if args.demo:
        return demo_inputs()
    if args.image is not None:
        return pair_inputs(args.image, args.disparity, mask=args.mask, is_depth=args.depth,
                           normalise=args.disparity_normalise)
    protocol = getattr(args, "protocol_resolved", None) or ("published" if args.protocol == "published" else "corrected")
    # Renders an earlier run wrote among the inputs are outputs, not inputs (run_config.json lists them).
    inputs = folder_inputs(args.test_data_dir, args.data_id, exclude=earlier_outputs(args.output_dir),
                           protocol=protocol, disparity_normalise=args.disparity_normalise)
    if not inputs and args.data_id is not None and not glob.has_magic(args.data_id):
        # The published script's --data_id named the run (outputs in OUTPUT_DIR/DATA_ID); keep that meaning when
        # the plain name selects nothing, so the published README command runs unchanged.
        print(f"note: no input is named '{args.data_id}': reading --data_id as the run name (published meaning); "
              f"rendering every input into {Path(args.output_dir) / args.data_id}")
        args.output_dir = str(Path(args.output_dir) / args.data_id)
        inputs = folder_inputs(args.test_data_dir, None, exclude=earlier_outputs(args.output_dir),
                               protocol=protocol, disparity_normalise=args.disparity_normalise)
    return inputs


def earlier_outputs(output_dir) -> list[Path]:
    """What earlier runs wrote into ``output_dir``: a finished run's (``run_config.json``), then a killed run's
    (its rank manifests, :mod:`inference.shard`)."""
    return list(dict.fromkeys(previous_outputs(output_dir) + recorded_outputs(output_dir)))


def make_output_dir(output_dir: str | Path) -> Path:
    """Create ``--output_dir`` (and its parents) and check that this process can write into it, before anything
    is loaded or written: one file is created and removed there.

    Raises:
        PermissionError (or OSError, e.g. a read-only file system): the folder cannot be created or written;
            the message names ``--output_dir``, the folder, the reason and the fix.
    """
    import tempfile

    folder = Path(output_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        if isinstance(error, (FileExistsError, NotADirectoryError)):  # a file in the way: mkdir's message says so
            raise
        reason = error.strerror or type(error).__name__
        failed = Path(error.filename) if error.filename else folder
        where = "" if folder in (failed, failed.parent) else f" ('{failed}')"  # a parent that could not be made
        kind = PermissionError if isinstance(error, PermissionError) else OSError
        raise kind(f"--output_dir '{folder}' cannot be written: {reason}{where}. Choose a folder you can write, or "
                   f"change its permissions") from error
    return folder


def output_files(args: argparse.Namespace, inputs) -> OutputFiles:
    """Where this run's outputs go: never onto one of its input files (nor any other file of the input
    folders), never two outputs onto one path."""
    roots = input_roots(args.test_data_dir) if args.test_data_dir else []
    return OutputFiles(args.output_dir, protected=[path for pending in inputs for path in pending.sources],
                       protected_dirs=roots, own=earlier_outputs(args.output_dir))


def write_manifest(files: OutputFiles, config: dict, *, all_ranks: bool = False) -> None:
    """``run_config.json``: the resolved arguments and every output written so far, with those of earlier runs
    into this folder that still exist (a rerun into an input folder reads them as outputs, not as inputs).
    ``all_ranks``: also every other rank's outputs recorded in the manifests so far (a run that stops early)."""
    paths = files.own_paths + files.claimed + (recorded_outputs(files.folder) if all_ranks else [])
    outputs = list(dict.fromkeys(path.name for path in paths if path.name != MANIFEST_NAME and path.exists()))
    write_text_atomic(files.folder / MANIFEST_NAME, json.dumps({**config, "outputs": outputs}, indent=2) + "\n")


def render_item(item: InputItem, focus, args, render: RenderFn | BatchedRender, device, timer, progress,
                files: OutputFiles, job: Job | None = None, index: int = 0, input_id: str = "",
                reuse: bool = False) -> dict:
    """All (K, focus) renders of one item; returns {(K, focus): (3, H, W) numpy} and writes each PNG as soon as
    it is rendered.

    The settings (``--K`` major, then focus) go to the renderer together (:func:`inference.renderers.render_settings`:
    bokehdiff encodes the input once and takes ``--batch_size`` consecutive settings per UNet call). With
    ``job``, each file is recorded in this rank's manifest; with ``reuse``, a render an earlier run already
    wrote for this input (:meth:`inference.shard.Job.done`) is kept and left out of the returned dict. Renders
    are resized to ``item.output_size`` when it is set (published folder / pngdepth inputs). A batch
    with any missing render is rendered whole, so a render's bytes never depend on what an earlier run finished."""
    image = torch.from_numpy(item.image)[None].to(device)
    disparity = torch.from_numpy(item.disparity)[None].to(device)
    settings = [(K, disp_focus) for K in args.K for disp_focus, _ in focus]
    entries = []  # (requested name, claimed path, file key, earlier file or None), in settings order
    for K, disp_focus in settings:
        requested = output_name(item.name, K, disp_focus)
        key = file_key(input_id, K, disp_focus)
        entries.append((requested, files.claim(requested), key,
                        job.done(key, requested) if job is not None and reuse else None))
    step = batch_size_of(render)
    todo = [i for start in range(0, len(settings), step)
            if any(entry[3] is None for entry in entries[start:start + step])
            for i in range(start, min(start + step, len(settings)))]
    chunks = render_settings(render, image, disparity, [settings[i] for i in todo]) if todo else iter(())
    rendered, renders, wanted = {}, {}, set(todo)
    for i, (requested, path, key, earlier) in enumerate(entries):
        if i not in rendered and i in wanted:
            with timer.stage("render"), torch.inference_mode():
                start, stop, out = next(chunks)
                out = out.float().cpu().numpy()
                if item.output_size is not None:  # published folder / pngdepth: the disparity's stored size
                    out = [published_resize_output(one, item.output_size) for one in out]
            rendered.update(zip(todo[start:stop], out))
        with protected():  # a file on disk is always in the manifest (a rerun never takes it for an input)
            if earlier is None:
                with timer.stage("save"):
                    save_image(path, rendered[i])
                renders[settings[i]] = rendered.pop(i)
            else:
                rendered.pop(i, None)  # rendered again with its batch; the earlier file is kept
            if job is not None:
                job.record_output(index, item.name, key, requested, earlier or path, reused=earlier is not None)
        progress.update(1)
    return renders


def write_sheet(item: InputItem, renders: dict, args, focus, files: OutputFiles, sheet: str, sheet_done: Path | None,
                job: Job | None, index: int, sheet_key: str, report: BatchReport, progress) -> None:
    """Write (or keep, ``sheet_done``) the item's contact sheet and record it. A sheet is a preview: if drawing
    or writing it fails, the renders (already written and recorded) stand, and the failure is one warning
    line; a full disk or a signal still stops the run."""
    path = files.claim(sheet)
    try:
        with protected():
            if sheet_done is None:
                with report.timer.stage("save"):
                    save_image(path, item_contact_sheet(item, renders, args.K, focus))
            if job is not None:
                job.record_output(index, item.name, sheet_key, sheet, sheet_done or path,
                                  reused=sheet_done is not None, sheet=True)
    except DiskFullError:
        raise
    except Exception as error:  # noqa: BLE001 - a preview never fails the renders it shows
        report.sheet_failures.append((item.name, f"{type(error).__name__}: {error}"))
        progress.write(f"warning: contact sheet '{sheet}' not written ({type(error).__name__}: {error}); "
                       f"the renders of {item.name} are written", file=sys.stderr)


def above_progress_bars(show):
    """``warnings.showwarning`` hook (the stdlib's documented extension point) that clears the progress bar
    before ``show`` prints and redraws it after: printed directly, a warning lands at the end of the bar's line."""

    def show_above(*args, **kwargs):
        with tqdm.external_write_mode(file=sys.stderr):
            show(*args, **kwargs)

    return show_above


@dataclass
class BatchReport:
    """What :func:`render_inputs` did: inputs seen, renders written, renders kept from an earlier run,
    megapixels rendered, ``(name, error)`` failures (and contact sheets that could not be drawn), and the
    per-stage timer."""

    timer: StageTimer = field(default_factory=StageTimer)
    n_inputs: int = 0
    n_renders: int = 0
    n_reused: int = 0
    megapixels: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    sheet_failures: list[tuple[str, str]] = field(default_factory=list)  # contact sheets not written (warned)


def render_inputs(inputs, args: argparse.Namespace, render: RenderFn | BatchedRender, device: torch.device, files: OutputFiles,
                  config: dict, job: Job | None = None, *, main: bool = True,
                  n_inputs: int | None = None) -> BatchReport:
    """Render every input at every ``--K`` and focus, write the renders, contact sheets and (``main``)
    ``run_config.json`` (rewritten after each input); a failing input is reported on stderr and skipped.

    ``inputs``: :class:`data.inference_io.PendingInput` s, or ``(global index, input)`` pairs (this rank's
    share, :meth:`inference.shard.Ranks.share`). With ``job``, every file and failure is recorded in this
    rank's manifest, and files an earlier run already made for the same input and settings are kept
    (renders are reused only when the contact sheet is too: the sheet is drawn from unrounded renders).
    ``n_inputs``: the job's inputs, all ranks: the main rank's progress bar then counts every rank's renders
    (read from the manifests at most once a second)."""
    report = BatchReport()
    n_focus = 3 if args.focus_protocol == "published" else len(args.focus_disparity or args.focus_percentile or [None])
    total = (n_inputs if n_inputs is not None else len(inputs)) * len(args.K) * n_focus \
        if isinstance(inputs, list) else None
    whole_job = main and job is not None and n_inputs is not None and n_inputs != len(inputs)
    synced = time.monotonic()
    single_input = not args.test_data_dir
    with warnings.catch_warnings(), tqdm(total=total, unit="render", desc=args.renderer, disable=not main) as progress:
        warnings.simplefilter("always", InputWarning)  # every repaired input is announced, not just the first
        warnings.showwarning = above_progress_bars(warnings.showwarning)  # restored by catch_warnings
        for position, entry in enumerate(inputs):
            index, pending = entry if isinstance(entry, tuple) else (position, entry)
            report.n_inputs += 1
            try:
                input_id = input_identity(pending.sources, pending.name) if job is not None else ""
                with report.timer.stage("load"):
                    item = pending.load()
                    focus = unique_focus(choose_focus(item, focus_disparity=args.focus_disparity,
                                                      focus_xy=args.focus_xy, focus_percentile=args.focus_percentile,
                                                      focus_protocol=args.focus_protocol),
                                         item.name)
                    item = limit_size(item, args.max_side)
                sheet = None if args.no_contact_sheet else sheet_name(item.name, single_input)
                sheet_key = file_key(input_id, args.K, focus)
                sheet_done = job.done(sheet_key, sheet) if job is not None and sheet is not None else None
                reuse = job is not None and (sheet is None or sheet_done is not None)
                renders = render_item(item, focus, args, render, device, report.timer, progress, files, job, index,
                                      input_id, reuse)
                if sheet is not None:
                    write_sheet(item, renders, args, focus, files, sheet, sheet_done, job, index, sheet_key,
                                report, progress)
                report.n_renders += len(renders)
                report.n_reused += len(args.K) * len(focus) - len(renders)
                report.megapixels += len(renders) * item.image.shape[1] * item.image.shape[2] / 1e6
            except DiskFullError:
                raise  # every later input would fail too: stop, keep what is finished (the caller says so)
            except Exception as error:  # noqa: BLE001 - one bad input is reported and skipped (CONTRIBUTING)
                report.failures.append((pending.name, f"{type(error).__name__}: {error}"))
                progress.write(f"FAILED {pending.name}: {type(error).__name__}: {error}", file=sys.stderr)
                if job is not None:
                    job.record({"kind": "failed", "index": index, "input": pending.name,
                                "error": f"{type(error).__name__}: {error}"})
            if main:
                with protected():
                    write_manifest(files, config)
            if whole_job and time.monotonic() - synced > 1.0:
                progress.n, synced = max(progress.n, job.renders_recorded()), time.monotonic()
                progress.refresh()
    return report


def stopped(stop: Interrupted | DiskFullError, *, files: OutputFiles | None, config: dict | None, job: Job | None,
            output_dir, rank: str = "") -> int:
    """A run stopped by a signal or a full disk: the main rank (``files`` given) lists in ``run_config.json``
    every output written so far, all ranks (the manifests keep them too, for the rerun); one line on stderr
    says what happened and what to do. Returns the exit code: ``128 + signal`` (130 SIGINT, 143 SIGTERM), or 1
    for a full disk."""
    if files is not None and config is not None:
        try:
            with protected():
                write_manifest(files, config, all_ranks=True)
        except DiskFullError:
            pass  # the rank manifests (appended and synced as each file was written) hold the same list
    done = job.counts()[0] if job is not None and job.run else 0
    kept = (f"{done} render(s) of this run are written and recorded in '{output_dir}'" if job is not None and job.run
            else "nothing was rendered yet")
    if isinstance(stop, Interrupted):
        print(f"{rank}interrupted by {stop.name}: {kept}; rerun the same command to render the rest", file=sys.stderr)
        return stop.exit_code
    print(f"{rank}error: {stop.strerror}. {kept}; free space there, then rerun the same command to render the rest",
          file=sys.stderr)
    return 1
