"""One job over several processes (accelerate's ``PartialState``) and its resume: ranks, manifests, merge.

Ranks (:mod:`data.ranks`): ``accelerate launch``, ``torchrun`` or one plain process. Every rank lists the same
inputs and takes a contiguous block of them (``PartialState.split_between_processes``), so what a rank renders, and every output
name and byte, is independent of the number of processes. Each rank appends one JSON record per line to its
own manifest ``OUT/.manifests/rank-<index>.jsonl`` as it finishes files (``start``, ``output``, ``failed``);
when all ranks are done the main rank merges them into ``run_config.json`` (``outputs`` and
``output_records``) and removes ``.manifests/``, so a finished folder looks as it did before sharding. A killed
run leaves ``.manifests/`` (with ``settings.json``) behind for its rerun. A rerun with other settings than the
folder's outputs were made with is refused (:class:`SettingsChanged`).

A file is *done* when a manifest records it for the same input (path, size, mtime of its source files) and the
file on disk still has the recorded SHA-256: a rerun skips it, whoever (which rank, which run) wrote it.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from data.disk import disk_full_error, is_disk_full
from data.inference_io import MANIFEST_NAME
from data.io import write_text_atomic
from data.ranks import Ranks

MANIFEST_DIR = ".manifests"
SETTINGS_NAME = "settings.json"
RUN_NAME = "run.json"
# Options that say where and how a run executes, not what a file holds: they may change between a run and its
# resume. The inputs' paths are not settings either: each output record carries its input's identity.
RUN_ONLY = ("output_dir", "overwrite", "local_rank", "device", "data_id", "test_data_dir", "image", "disparity",
            "mask", "no_contact_sheet", "outputs", "output_records",
            # K and focus are in each output's name, and each record carries its exact values (:func:`file_key`).
            "K", "focus_disparity", "focus_xy", "focus_percentile", "focus_protocol")


class FolderBusy(RuntimeError):
    """Another run holds ``--output_dir`` (:class:`FolderLock`)."""


class FolderLock:
    """An exclusive advisory lock (``flock``) on an output folder, held by one job's main rank from its start to
    its end: a second run into the same folder (which would interleave manifests and list only its own outputs)
    is refused instead. The kernel drops the lock when the process ends, however it ends. Where ``fcntl`` is
    missing (Windows) nothing is locked."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False when another process holds it."""
        try:
            import fcntl
        except ImportError:
            return True
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


class SettingsChanged(ValueError):
    """A rerun into a folder whose outputs were made with other settings (the message names the flags)."""


def render_settings(config: dict) -> dict:
    """The part of a run's config that decides the bytes of its outputs (JSON-ready): everything except
    :data:`RUN_ONLY` (and the ``outputs`` a finished run lists), plus the device type (``cuda`` and ``cpu`` renders may differ in the last bit)."""
    settings = {key: value for key, value in config.items() if key not in RUN_ONLY}
    settings["device_type"] = str(config.get("device", "cpu")).split(":")[0]
    return json.loads(json.dumps(settings, default=str))


def upgrade_settings(previous: dict, settings: dict) -> dict:
    """``previous`` (an earlier run's :func:`render_settings`) in today's terms, so that a run made before a
    setting was recorded still resumes. Before ``disparity_rule`` was recorded, ``--disparity_normalise``
    defaulted to ``"auto"``, which test sets ignored (each layout read its own rule, the rule that the default
    ``None`` means now) and ``--image`` applied (what ``None`` means for it now)."""
    if "disparity_rule" in previous or "disparity_normalise" not in previous:
        return previous
    upgraded = dict(previous)
    if upgraded["disparity_normalise"] == "auto":
        upgraded["disparity_normalise"] = None
    if upgraded["disparity_normalise"] is None and settings.get("disparity_normalise") is None:
        upgraded["disparity_rule"] = settings.get("disparity_rule")
    return upgraded


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_identity(sources: Iterable[str | os.PathLike], name: str) -> str:
    """Identity of an input: its name and the path, size and modification time (ns) of each source file
    (``name`` alone for inputs without files, e.g. the demo). 16 hex digits of a SHA-1."""
    parts = [name]
    for source in sources:
        stat = os.stat(source)
        parts.append([os.path.realpath(source), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha1(json.dumps(parts).encode("utf-8")).hexdigest()[:16]


def file_key(input_id: str, *values) -> str:
    """What a recorded file was made from: the input's identity and the exact values (K, focus, the contact
    sheet's K list and focus planes) that its name gives only rounded, or not at all."""
    return f"{input_id}:{hashlib.sha1(json.dumps(values).encode('utf-8')).hexdigest()[:12]}"


def read_records(path: Path) -> list[dict]:
    """The records of one manifest; a last line cut short by a killed process is ignored."""
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return records
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def manifest_records(output_dir: str | os.PathLike) -> list[dict]:
    """Every record of every rank's manifest in ``output_dir`` (rank order, then file order)."""
    folder = Path(output_dir) / MANIFEST_DIR
    return [record for path in sorted(folder.glob("rank-*.jsonl")) for record in read_records(path)]


def recorded_outputs(output_dir: str | os.PathLike) -> list[Path]:
    """The outputs a killed run's manifests in ``output_dir`` record (existing or not), in the role of
    :func:`data.inference_io.previous_outputs`: outputs, not inputs, when ``output_dir`` lies in an input folder."""
    names = dict.fromkeys(r["output"] for r in manifest_records(output_dir) if r.get("kind") == "output")
    return [Path(output_dir) / name for name in names]


def finished_run(output_dir: str | os.PathLike) -> dict:
    """The ``run_config.json`` a finished run left in ``output_dir`` (empty when none or unreadable)."""
    try:
        config = json.loads((Path(output_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


@dataclass
class Job:
    """The manifests of one run in ``output_dir``, seen from one rank.

    Lifecycle: :meth:`check` on every rank (read only) -> barrier -> :meth:`begin` on the main rank -> barrier
    -> :meth:`attach` on every rank -> renders with :meth:`done` / :meth:`record` -> barrier -> :meth:`outputs`
    and :meth:`failures` (this run's, all ranks).
    """

    output_dir: Path
    settings: dict
    ranks: Ranks
    run: str = ""
    known: dict = field(default_factory=dict)  # (file_key, requested name) -> set of (output, sha256)
    read_to: dict = field(default_factory=dict)  # manifest -> bytes counted by renders_recorded
    n_recorded: int = 0

    @property
    def folder(self) -> Path:
        return self.output_dir / MANIFEST_DIR

    def check(self, overwrite: bool) -> None:
        """Raise :class:`SettingsChanged` when the folder holds outputs recorded with other settings (unless
        ``overwrite``); read the records of earlier runs otherwise."""
        if overwrite:
            return
        finished = finished_run(self.output_dir)
        records = [{"kind": "output", "output": output, **record}
                   for output, record in (finished.get("output_records") or {}).items()]
        records += manifest_records(self.output_dir)
        try:
            previous = json.loads((self.folder / SETTINGS_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = render_settings(finished) if finished.get("output_records") else None
        if previous is not None:
            previous = upgrade_settings(previous, self.settings)
        if previous is not None and previous != self.settings and any(r.get("kind") == "output" for r in records):
            changed = sorted(key for key in set(previous) | set(self.settings)
                             if previous.get(key) != self.settings.get(key))
            flags = ", ".join(f"--{key} (was {previous.get(key)!r}, now {self.settings.get(key)!r})"
                              for key in changed)
            raise SettingsChanged(
                f"--output_dir '{self.output_dir}' holds outputs made with other settings: {flags}. Rerun with "
                f"the earlier settings to resume, choose another --output_dir, or pass --overwrite to render "
                f"everything again with the new settings")
        for record in records:
            if record.get("kind") == "output":
                self.known.setdefault((record["input_id"], record["requested"]), set()).add(
                    (record["output"], record["sha256"]))

    def begin(self, overwrite: bool) -> None:
        """Main rank: drop old manifests on ``overwrite``; else keep a finished run's records in
        ``.manifests/rank-finished.jsonl`` (``run_config.json`` is rewritten during the run, without them).
        Then store the settings and a fresh run token."""
        if overwrite and self.folder.is_dir():
            for path in self.folder.glob("rank-*.jsonl"):
                path.unlink()
        finished = {} if overwrite else finished_run(self.output_dir).get("output_records") or {}
        if finished:
            lines = [json.dumps({"kind": "output", "output": output, **record}) for output, record in finished.items()]
            write_text_atomic(self.folder / "rank-finished.jsonl", "\n".join(lines) + "\n")
        write_text_atomic(self.folder / SETTINGS_NAME, json.dumps(self.settings, indent=2, sort_keys=True) + "\n")
        write_text_atomic(self.folder / RUN_NAME, json.dumps({"run": uuid.uuid4().hex}) + "\n")

    def attach(self) -> None:
        """Every rank: read the run token and record this rank's start."""
        self.run = json.loads((self.folder / RUN_NAME).read_text(encoding="utf-8"))["run"]
        self.record({"kind": "start", "pid": os.getpid(), "num_processes": self.ranks.count})

    @property
    def manifest(self) -> Path:
        return self.folder / f"rank-{self.ranks.index:05d}.jsonl"

    def record(self, record: dict) -> None:
        """Append one record to this rank's manifest, flushed to the OS at once (a killed rank keeps it)."""
        line = json.dumps({**record, "run": self.run, "rank": self.ranks.index}) + "\n"
        try:
            with open(self.manifest, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            if is_disk_full(error):
                raise disk_full_error(error, self.manifest) from error
            raise

    def done(self, key: str, requested: str) -> Path | None:
        """The existing file an earlier run recorded for ``key`` (:func:`file_key`) and the requested name, if
        its bytes are still the recorded ones; else None."""
        for output, sha in sorted(self.known.get((key, requested), ())):
            path = self.output_dir / output
            if path.is_file() and file_sha256(path) == sha:
                return path
        return None

    def record_output(self, index: int, name: str, key: str, requested: str, path: Path, *, reused: bool,
                      sheet: bool = False) -> None:
        """Record one output file of input ``index`` made from ``key`` (:func:`file_key`; stored as
        ``input_id``), written now or ``reused`` from an earlier run."""
        sha = file_sha256(path)
        self.record({"kind": "output", "index": index, "input": name, "input_id": key, "requested": requested,
                     "output": path.name, "sha256": sha, "reused": reused, "sheet": sheet})
        self.known.setdefault((key, requested), set()).add((path.name, sha))

    def renders_recorded(self) -> int:
        """Renders this run recorded so far, all ranks (for the main rank's progress bar); reads only what was
        appended since the last call."""
        for path in sorted(self.folder.glob("rank-*.jsonl")):
            with open(path, "rb") as handle:
                handle.seek(self.read_to.get(path, 0))
                data = handle.read()
            complete = data[: data.rfind(b"\n") + 1]  # a line being written is counted next time
            self.read_to[path] = self.read_to.get(path, 0) + len(complete)
            for line in complete.splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("run") == self.run and record.get("kind") == "output" and not record.get("sheet"):
                    self.n_recorded += 1
        return self.n_recorded

    def this_run(self) -> list[dict]:
        return [r for r in manifest_records(self.output_dir) if r.get("run") == self.run]

    def output_records(self) -> dict[str, dict]:
        """This run's outputs, all ranks, in the order one process would have written them (input order, then
        the order within an input): ``{file name: {input, input_id, requested, sha256}}``."""
        records = [r for r in self.this_run() if r.get("kind") == "output"]
        ordered = sorted(enumerate(records), key=lambda pair: (pair[1]["index"], pair[1]["rank"], pair[0]))
        keep = ("input", "input_id", "requested", "sha256")
        return {record["output"]: {key: record[key] for key in keep} for _, record in ordered}

    def finish(self, config: dict, earlier: Iterable[Path], overwrite: bool) -> None:
        """Main rank, all ranks done: ``run_config.json`` = ``config`` + ``outputs`` (this run's, then earlier
        outputs still on disk) + ``output_records`` (what a rerun trusts); then ``.manifests/`` is removed.
        Earlier outputs keep their records unless ``overwrite`` (they were made with other settings)."""
        records = self.output_records()
        outputs = list(records)
        earlier_records = {} if overwrite else {
            output: {"requested": requested, "input_id": input_id, "sha256": sha}
            for (input_id, requested), found in self.known.items() for output, sha in found}
        for path in earlier:
            if path.name != MANIFEST_NAME and path.name not in records and path.is_file():
                outputs.append(path.name)
                if path.name in earlier_records:
                    records[path.name] = earlier_records[path.name]
        outputs = list(dict.fromkeys(outputs))
        text = json.dumps({**config, "outputs": outputs, "output_records": records}, indent=2) + "\n"
        write_text_atomic(self.output_dir / MANIFEST_NAME, text)
        for path in self.folder.glob("*"):
            path.unlink()
        self.folder.rmdir()

    def failures(self) -> list[tuple[str, str]]:
        """This run's failed inputs, all ranks, in input order, as ``(name, error)``."""
        failed = sorted((r["index"], r["input"], r["error"]) for r in self.this_run() if r.get("kind") == "failed")
        return [(name, error) for _, name, error in failed]

    def counts(self) -> tuple[int, int]:
        """This run's ``(renders written, renders already done)``, all ranks (contact sheets not counted)."""
        renders = [r for r in self.this_run() if r.get("kind") == "output" and not r.get("sheet")]
        reused = sum(1 for r in renders if r.get("reused"))
        return len(renders) - reused, reused
