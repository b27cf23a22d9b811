"""inference_hf.py over several processes (torchrun, gloo on CPU) and its resume: the outputs and run_config.json
of 2 processes equal those of 1, a killed rank loses nothing the others finished, a rerun renders only what is
missing, and a rerun with other settings is refused (or, with --overwrite, renders everything again)."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import inference.batch
import inference_hf
from inference.shard import MANIFEST_DIR, manifest_records
from tests.forked_ranks import GROUP as FORKED
from tests.forked_ranks import run_ranks

REPO = Path(__file__).resolve().parents[2]
EBB = REPO / "test_data" / "ebb"
ARGS = ("--renderer", "classical", "--test_data_dir", str(EBB), "--max_side", "64", "--K", "3", "6",
        "--device", "cpu")
N_RENDERS = 3 * 2  # three EBB scenes x two K, one focus plane each


def torchrun(n_processes: int, script: Path, *args, env=None, accelerate: bool = False) -> subprocess.CompletedProcess:
    """Run ``script args`` in ``n_processes`` processes started by torchrun, or by ``accelerate launch
    --multi_gpu`` (torchrun underneath; its ``--cpu`` would start one process), gloo on CPU."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
    with socket.socket() as sock:  # a free port: a fixed one fails when another run on the machine holds it
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    launcher = (["accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n_processes),
                 "--main_process_port", port] if accelerate else
                ["torch.distributed.run", "--nproc_per_node", str(n_processes), "--master_port", port])
    cmd = [sys.executable, "-m", *launcher, str(script), *map(str, args)]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def launch(n_processes: int, out: Path, *extra, script: Path = REPO / "inference_hf.py", env=None, accelerate=False):
    """``inference_hf.py`` (or ``script``) with :data:`ARGS` into ``out`` in ``n_processes`` processes."""
    return torchrun(n_processes, script, *ARGS, "--output_dir", out, *extra, env=env, accelerate=accelerate)


def files(folder: Path) -> dict[str, bytes]:
    """Every file of an output folder but hidden ones (temporaries of a killed writer), with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


def test_two_processes_write_what_one_writes_bit_for_bit(tmp_path):
    out = tmp_path / "out"
    assert inference_hf.main([*ARGS, "--output_dir", str(out)]) == 0
    one = files(out)
    shutil.rmtree(out)
    proc = launch(2, out, accelerate=True)  # accelerate launch here, torchrun in the other tests
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "by 2 processes (6 renders in all)" in proc.stdout
    assert files(out) == one  # renders, contact sheets and run_config.json (same --output_dir: same bytes)
    assert not (out / MANIFEST_DIR).exists()  # merged into run_config.json
    assert len(json.loads(one["run_config.json"])["outputs"]) == N_RENDERS + 3


def test_a_killed_rank_loses_nothing_and_the_rerun_renders_only_the_rest(tmp_path, capsys):
    # Without contact sheets every recorded render is kept (a sheet is drawn from unrounded renders: an input
    # whose sheet is missing is rendered again whole, test_rerun_renders_only_what_is_missing...).
    reference = tmp_path / "reference"
    assert inference_hf.main([*ARGS, "--output_dir", str(reference), "--no_contact_sheet"]) == 0
    out = tmp_path / "out"
    # Rank 1 (the third scene) dies as it starts its second render, after its first was written and recorded;
    # torchrun then stops rank 0 wherever it is.
    proc = launch(2, out, "--no_contact_sheet", script=REPO / "tests" / "scripts" / "die_on_save.py",
                  env={"DIE_RANK": "1", "DIE_AT_SAVE": "2"})
    assert proc.returncode != 0
    renders = [r for r in manifest_records(out) if r.get("kind") == "output" and not r["sheet"]]
    assert [r["output"] for r in renders if r["rank"] == 1] == ["scene02_K3_f0.27.png"]
    capsys.readouterr()
    assert inference_hf.main([*ARGS, "--output_dir", str(out), "--no_contact_sheet"]) == 0  # the rerun: one process
    stdout = capsys.readouterr().out
    assert f"{N_RENDERS - len(renders)} renders in" in stdout and f"resumed: {len(renders)} render(s)" in stdout
    assert files(out) == {**files(reference), "run_config.json": files(out)["run_config.json"]}
    config, expected = (json.loads((folder / "run_config.json").read_text()) for folder in (out, reference))
    assert {**config, "output_dir": None} == {**expected, "output_dir": None}


def test_rerun_renders_only_what_is_missing_and_refuses_other_settings(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    run = lambda *extra: inference_hf.main([*ARGS, "--output_dir", str(out), *extra])  # noqa: E731
    assert run() == 0
    before = files(out)
    (out / "scene01_K6_f0.95.png").unlink()
    (out / "scene02_K3_f0.27.png").write_bytes(b"not the recorded bytes")  # a file alone is not trusted
    capsys.readouterr()
    assert run() == 0
    assert "2 renders in" in capsys.readouterr().out and files(out) == before
    (out / "scene00_contact_sheet.png").unlink()  # the sheet is drawn from unrounded renders: all of scene00 again
    assert run() == 0
    assert "2 renders in" in capsys.readouterr().out and files(out) == before
    assert run() == 0 and "0 renders in" in capsys.readouterr().out

    # A rerun stopped before it wrote anything keeps the finished run's records (run_config.json is rewritten
    # during a run): the next rerun renders only the missing file.
    (out / "scene01_K6_f0.95.png").unlink()
    with monkeypatch.context() as patch:
        patch.setattr(inference.batch, "save_image", lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            run()
    assert (out / MANIFEST_DIR).is_dir()
    capsys.readouterr()
    assert run() == 0 and "1 renders in" in capsys.readouterr().out and files(out) == before

    assert run("--gamma", "1.5") == 2  # another setting, same names: refused, nothing touched
    err = capsys.readouterr().err
    assert "--gamma (was None, now 1.5)" in err and "--overwrite" in err and files(out) == before
    assert run("--gamma", "1.5", "--overwrite") == 0
    after = files(out)
    assert "6 renders in" in capsys.readouterr().out
    assert all(after[name] != before[name] for name in before if name.endswith("K6_f0.95.png"))
    assert run("--gamma", "1.5") == 0 and "0 renders in" in capsys.readouterr().out  # resumes the new settings
    assert run("--K", "4", "--gamma", "1.5") == 0  # another K is another name: rendered beside the others
    assert "3 renders in" in capsys.readouterr().out and (out / "scene00_K4_f0.17.png").is_file()


@pytest.mark.xdist_group(FORKED)
def test_two_processes_render_the_tiny_bokehdiff_stack_as_one(tmp_path, one_thread):
    """The default renderer (tiny SDXL stack on disk, published adapter layout): 2 ranks (tests/forked_ranks.py:
    forks of a process that imported diffusers once) write the same renders and run_config.json as 1, bit for
    bit."""
    from models.tiny import save_tiny_sdxl
    from tests.tiny_weights import trained_tiny_stack, write_published_adapter

    base = save_tiny_sdxl(tmp_path / "base", seed=0)
    adapter = write_published_adapter(trained_tiny_stack(seed=2), tmp_path / "adapter")
    argv = ["--renderer", "bokehdiff", "--test_data_dir", str(EBB), "--max_side", "64", "--K", "20", "--device",
            "cpu", "--pretrained_model_name_or_path", str(base), "--adapter", str(adapter), "--no_contact_sheet"]
    out = tmp_path / "out"
    assert inference_hf.main([*argv, "--output_dir", str(out)]) == 0
    one = files(out)
    shutil.rmtree(out)
    proc = run_ranks(2, REPO / "inference_hf.py", *argv, "--output_dir", out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert files(out) == one and len(one) == 3 + 1
