"""inference_hf.py stopped before its end (issue 23 items 10 and 11): SIGINT / SIGTERM end it with one line and
exit 130 / 143, every file it finished listed; a rerun into an input folder never takes a finished output for
an input; a second run into a folder in use is refused; a full disk stops the run with one sentence naming the
folder, keeping what was finished."""

import errno
import json
import shutil
from pathlib import Path

import pytest

import inference.batch
import inference_hf
from data.disk import DiskFullError, is_disk_full
from data.io import atomic_write, save_image
from inference.shard import FolderLock
from tests.forked_ranks import GROUP as FORKED
from tests.forked_ranks import run_forked

REPO = Path(__file__).resolve().parents[2]
EBB = REPO / "test_data" / "ebb"
ARGS = ("--renderer", "classical", "--max_side", "64", "--K", "3", "6", "--device", "cpu", "--no_contact_sheet")
N_RENDERS = 3 * 2  # three EBB scenes x two K


def _pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def _listed(folder: Path) -> list[str]:
    return sorted(json.loads((folder / "run_config.json").read_text())["outputs"])


@pytest.mark.xdist_group(FORKED)
@pytest.mark.parametrize("signal_name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_ends_the_run_with_one_line_and_the_shell_code(tmp_path, signal_name, code):
    """The signal arrives as file 3 starts to be written: it is finished and recorded, then the run ends.
    The run is a process of its own (forked from the preloaded forkserver: tests/forked_ranks.py)."""
    data = tmp_path / "ebb"
    shutil.copytree(EBB, data)
    out = data / "input"  # rendering into the input folder: the rerun must not read outputs as inputs
    proc = run_forked(REPO / "tests" / "scripts" / "die_on_save.py", "--test_data_dir", data, "--output_dir", out,
                      *ARGS, env={"DIE_SIGNAL": signal_name, "DIE_AT_SAVE": "3"}, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "interrupted" in line]
    assert lines == [f"interrupted by {signal_name}: 3 render(s) of this run are written and recorded in '{out}'; "
                     f"rerun the same command to render the rest"]
    renders = [name for name in _pngs(out) if "_K" in name]
    assert len(renders) == 3 and _listed(out) == renders  # every finished file is listed, nothing else
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    assert inference_hf.main(["--test_data_dir", str(data), "--output_dir", str(out), *ARGS]) == 0
    after = [name for name in _pngs(out) if "_K" in name]
    assert len(after) == N_RENDERS and not [name for name in after if "-2" in name]  # no output read as an input
    assert sorted(_listed(out)) == after


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    other = FolderLock(out)  # another run holds the folder
    assert other.acquire()
    try:
        assert inference_hf.main(["--test_data_dir", str(EBB), "--output_dir", str(out), *ARGS]) == 2
        assert "is in use by another inference_hf.py run" in capsys.readouterr().err
        assert _pngs(out) == []
    finally:
        other.release()
    assert inference_hf.main(["--test_data_dir", str(EBB), "--output_dir", str(out), *ARGS]) == 0
    assert len(_pngs(out)) == N_RENDERS
    lock = FolderLock(out)  # released at the end of the run
    assert lock.acquire()
    lock.release()


def _full_after(n_files: int, writer):
    """A ``save_image`` whose device is full from file ``n_files + 1`` on, failing as ``writer`` does."""
    calls = []

    def save(path, image, **kwargs):
        calls.append(Path(path).name)
        if len(calls) <= n_files:
            return save_image(path, image, **kwargs)
        with atomic_write(path):
            writer()

    return save, calls


def _numpy_short_write():
    raise OSError("884326 requested and 794624 written")  # numpy's tofile on a full device


def _enospc():
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("writer", [_numpy_short_write, _enospc])
def test_a_full_disk_stops_the_run_and_keeps_what_was_finished(tmp_path, capsys, monkeypatch, writer):
    out = tmp_path / "out"
    save, calls = _full_after(2, writer)
    monkeypatch.setattr(inference.batch, "save_image", save)
    assert inference_hf.main(["--test_data_dir", str(EBB), "--output_dir", str(out), *ARGS]) == 1
    err = capsys.readouterr().err
    assert len(calls) == 3  # stopped at the first failure: no render is attempted after it
    assert f"error: no space left on the device holding '{out}' while writing '{calls[2]}'" in err
    assert "2 render(s) of this run are written and recorded" in err and "free space there" in err
    assert "Traceback" not in err and "FAILED" not in err
    assert _pngs(out) == sorted(calls[:2]) == _listed(out)
    monkeypatch.undo()
    assert inference_hf.main(["--test_data_dir", str(EBB), "--output_dir", str(out), *ARGS]) == 0
    assert "resumed: 2 render(s)" in capsys.readouterr().out and len(_pngs(out)) == N_RENDERS


def test_a_full_disk_while_rewriting_run_config_is_one_message(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    real = inference.batch.write_text_atomic
    state = {"writes": 0}

    def write(path, text):
        state["writes"] += 1
        if state["writes"] > 2:  # the start-of-run manifest and the first rewrite succeed
            with atomic_write(path):
                _enospc()
        return real(path, text)

    monkeypatch.setattr(inference.batch, "write_text_atomic", write)
    assert inference_hf.main(["--test_data_dir", str(EBB), "--output_dir", str(out), *ARGS]) == 1
    err = capsys.readouterr().err
    assert f"no space left on the device holding '{out}' while writing 'run_config.json'" in err
    assert "Traceback" not in err


def test_disk_full_is_recognised_however_the_writer_says_it(tmp_path):
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(OSError("884326 requested and 794624 written"))
    assert is_disk_full(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("cannot encode"))
    with pytest.raises(DiskFullError, match=f"holding '{tmp_path}' while writing 'a.png'") as caught:
        with atomic_write(tmp_path / "a.png"):
            _numpy_short_write()
    assert caught.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []  # no temporary left
    with pytest.raises(PermissionError):  # other errors pass unchanged
        with atomic_write(tmp_path / "b.png"):
            raise PermissionError(errno.EACCES, "Permission denied")
