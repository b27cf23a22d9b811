"""train_lora_otf.py run as a script, in-process (``main(argv)``) except the 2-process gloo run: the published
command, refusals before anything is loaded, and end-to-end runs with checkpoints, exact resume, distributed
consistency and learning. The units of training/ are tested in tests/training/.

Everything runs on CPU with the tiny SDXL stack (models/tiny.py) and a tiny synthetic fg/bg set written by a
fixture. Torch is pinned to one thread here: on a shared 2-core machine OpenMP spin-waiting makes
multi-threaded tiny kernels 50x slower.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys

import pytest
import torch
import yaml

import train_lora_otf
import training.run
from tests.forked_ranks import GROUP as FORKED
from tests.forked_ranks import run_ranks
from tests.training.helpers import (PATHS, REPO, FakeAccelerator, build_stack, check_png, read_log,
                                   train_argv)
from training.checkpoint import (CHECKPOINT_PREFIX, META_NAME, check_fresh_output_dir, list_checkpoints,
                                 resolve_resume_path, save_checkpoint)
from training.config import dump_config, parse_args

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return build_stack(tmp_path_factory.mktemp("train_stack"))


def crash_training_in_step(monkeypatch, argv: list[str], crash_step: int) -> None:
    """Run ``train_lora_otf.main(argv)`` with ``train_step`` raising when its 0-based ``step`` is ``crash_step``
    (logged step ``crash_step + 1``); checks the crash propagates, then restores the real step."""
    real_step = training.run.train_step

    def crashing_step(*args, step, **kwargs):
        if step == crash_step:
            raise RuntimeError("simulated crash")
        return real_step(*args, step=step, **kwargs)

    monkeypatch.setattr(training.run, "train_step", crashing_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_lora_otf.main(argv)
    monkeypatch.setattr(training.run, "train_step", real_step)


# ------------------------------------------------------------------------------------------------------------
# The published command, and refusals before any data or model is loaded
# ------------------------------------------------------------------------------------------------------------
PUBLISHED = ("--train_data_dir data/otf --pretrained_model_name_or_path SG161222/RealVisXL_V5.0 --train_batch_size 4 "
             "--output_dir ckpt/bokehdiff --mixed_precision bf16 --opt_vae 1 --max_train_steps 100000 "
             "--enable_xformers_memory_efficient_attention --learning_rate 5e-5 --lr_scheduler cosine_with_restarts "
             "--lr_num_cycles 10 --lr_warmup_steps 1000 --resolution 512 --lpips --edge --lambda_lpips 1 "
             "--checkpointing_steps 2000 --gan_loss_type multilevel_sigmoid_s --cv_type clip --lambda_gan 0.1 "
             "--gan_step 2000").split()


def test_published_command_parses_unchanged(capsys):
    args = parse_args(PUBLISHED)
    assert (args.opt_vae, args.lpips, args.edge, args.lr_num_cycles, args.cv_type) == (1, True, True, 10, "clip")
    assert args.enable_xformers_memory_efficient_attention and args.mixed_precision == "bf16"
    assert PUBLISHED[10:12] == ["--opt_vae", "1"]
    assert parse_args(PUBLISHED[:11] + PUBLISHED[12:]).opt_vae == 1  # bare flag form
    assert train_lora_otf.main(PUBLISHED + ["--dry_run"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["lambda_lpips"] == 1.0


def test_fresh_run_into_a_folder_with_checkpoints_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    save_checkpoint(FakeAccelerator(), out, 4, total_limit=None)
    # Through the script: refused before any data or model is loaded (the paths here do not exist), with one
    # error line naming the remedies and exit status 2.
    remedy = "--resume_from_checkpoint latest.*new --output_dir.*--overwrite_output_dir"
    assert train_lora_otf.main(train_argv(PATHS, out)) == 2
    err = capsys.readouterr().err
    assert re.search("train_lora_otf.py: error: .*" + remedy, err) and "Traceback" not in err
    with pytest.raises(FileExistsError, match=remedy):
        check_fresh_output_dir(out, None, overwrite=False)
    assert [s for s, _ in list_checkpoints(out)] == [4]
    check_fresh_output_dir(out, "latest", overwrite=False)  # resuming is what the folder is for
    check_fresh_output_dir(tmp_path / "new", None, overwrite=False)
    check_fresh_output_dir(out, None, overwrite=True, is_main_process=False)  # other ranks never delete
    assert [s for s, _ in list_checkpoints(out)] == [4]
    check_fresh_output_dir(out, None, overwrite=True)
    assert list_checkpoints(out) == []
    # A one-off action, not a setting: never carried into the resolved config a rerun may load.
    args = parse_args(train_argv(PATHS, out, "--overwrite_output_dir"))
    assert "overwrite_output_dir" not in yaml.safe_load(dump_config(args, tmp_path / "c.yaml").read_text())


_RUN_FILES = ("train_log.jsonl", "validation.jsonl", "train_config.yaml", "pytorch_lora_weights.safetensors",
              META_NAME)


def test_fresh_run_into_a_finished_run_without_checkpoints_is_refused(tmp_path, capsys):
    """A finished run whose checkpoint-* folders were deleted keeps its logs, config and weights: a fresh run
    there is refused like one into a folder with checkpoints (it used to wipe the logs and config)."""
    out = tmp_path / "run"
    out.mkdir()
    for name in _RUN_FILES:
        (out / name).write_text("earlier run")
    assert train_lora_otf.main(train_argv(PATHS, out)) == 2
    assert re.search("error: .*earlier run.*new --output_dir.*--overwrite_output_dir", capsys.readouterr().err)
    # `latest` finds no checkpoint to continue from: starting over would wipe the finished run just the same.
    with pytest.raises(FileExistsError, match="no checkpoint to resume"):
        check_fresh_output_dir(out, "latest", overwrite=False)
    assert all((out / name).read_text() == "earlier run" for name in _RUN_FILES)
    check_fresh_output_dir(out, None, overwrite=True, is_main_process=False)  # other ranks never delete
    assert all((out / name).exists() for name in _RUN_FILES)
    check_fresh_output_dir(out, None, overwrite=True)
    assert not any((out / name).exists() for name in _RUN_FILES)
    # A run interrupted before its first checkpoint (config and log only) is simply restarted by `latest`.
    (out / "train_config.yaml").write_text("x")
    (out / "train_log.jsonl").write_text("{}\n")
    check_fresh_output_dir(out, "latest", overwrite=False)


def test_an_explicit_incomplete_checkpoint_is_refused_with_a_clear_error(tmp_path, capsys):
    """`--resume_from_checkpoint <folder>` naming an interrupted save (metadata written, files missing, no
    marker) is refused up front, naming what is missing, instead of failing inside accelerate's load_state (or
    as a misleading RNG-state error); through the script it is one `error:` line and exit 2, before loading."""
    elsewhere = tmp_path / "saved" / f"{CHECKPOINT_PREFIX}6"
    elsewhere.mkdir(parents=True)
    (elsewhere / META_NAME).write_text("{}")
    (elsewhere / "random_states_0.pkl").write_text("x")
    with pytest.raises(FileNotFoundError, match="incomplete checkpoint.*optimizer.bin.*another checkpoint"):
        resolve_resume_path(str(elsewhere), tmp_path / "run")
    # The paths of PATHS do not exist: the error must come before any data or model is loaded.
    assert train_lora_otf.main(train_argv(PATHS, tmp_path / "run", "--resume_from_checkpoint", elsewhere)) == 2
    err = capsys.readouterr().err
    assert "error: --resume_from_checkpoint" in err and "incomplete checkpoint" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------------------
# End to end
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_checkpoint_limit_resume_is_exact_and_export_loads(stack, tmp_path, monkeypatch):
    """6 steps, checkpoint every 2 with limit 2 (GAN from step 2, validation at 3), vs. the same run crashed
    during step 5 and resumed from ``latest``: the loss sequences and final weights are identical."""
    ref = tmp_path / "uninterrupted"
    assert train_lora_otf.main(train_argv(stack, ref, "--report_to", "tensorboard")) == 0
    ref_log = read_log(ref)
    assert [r["step"] for r in ref_log] == [1, 2, 3, 4, 5, 6]
    assert "gan_g" not in ref_log[1] and "gan_g" in ref_log[2] and all("gan_d" in r for r in ref_log)
    assert [s for s, _ in list_checkpoints(ref)] == [4, 6]
    assert list((ref / "logs").rglob("events.out.tfevents.*")), "tensorboard event file missing"
    assert [r["step"] for r in read_log(ref, "validation.jsonl")] == [0, 3, 6]

    crashed = tmp_path / "crashed"
    crash_training_in_step(monkeypatch, train_argv(stack, crashed), 4)  # during step 5
    assert [s for s, _ in list_checkpoints(crashed)] == [2, 4]
    assert train_lora_otf.main(train_argv(stack, crashed, "--resume_from_checkpoint", "latest")) == 0

    resumed_log = read_log(crashed)
    keys = ["total", "mse", "edge", "gan_g", "gan_d", "lr", "grad_norm"]
    assert [[r.get(k) for k in keys] for r in resumed_log] == [[r.get(k) for k in keys] for r in ref_log]

    # The checkpoint describes itself; its LoRA (peft keys, `unet.` prefix) and the export load with models.lora.
    meta = json.loads((ref / f"{CHECKPOINT_PREFIX}6" / META_NAME).read_text())
    assert meta["lora"]["rank"] == 4 and "to_q" in meta["lora"]["targets"] and meta["resolution"] == 64
    assert meta["pisa"]["layers"] and meta["progress"]["step"] == 6 and meta["base_model"] == stack["sdxl"]
    # Trained as published: per-call random occlusion jitter and attention dropout 0.1 (exact resume still holds).
    assert (meta["pisa"]["seed"], meta["pisa"]["dropout"], meta["pisa"]["compat"]) == (None, 0.1, False)
    # The recorded inference hardness is the one inference uses, not the training cap.
    from models.pipeline import DEFAULT_PISA
    assert meta["pisa"]["inference_hardness"] == DEFAULT_PISA["hardness"] == 1e7
    assert meta["pisa"]["hardness_schedule"]["max"] < meta["pisa"]["inference_hardness"]
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from models.lora import LORA_WEIGHT_NAME, load_lora, lora_state_dict

    ref_lora = load_file(str(ref / LORA_WEIGHT_NAME))
    assert all(k.startswith("unet.") for k in ref_lora)
    assert any(v.abs().sum() > 0 for k, v in ref_lora.items() if "lora_B" in k), "LoRA did not train"
    resumed_lora = load_file(str(crashed / LORA_WEIGHT_NAME))
    assert all(torch.equal(ref_lora[k], resumed_lora[k]) for k in ref_lora)
    unet = UNet2DConditionModel.from_pretrained(stack["sdxl"], subfolder="unet")
    load_lora(unet, ref)
    assert all(torch.equal(v, ref_lora[k]) for k, v in lora_state_dict(unet).items())
    from models.pipeline import BokehDiffPipeline  # what inference_hf.py uses: loads and verifies every tensor

    pipe = BokehDiffPipeline.from_pretrained(stack["sdxl"], adapter=str(ref))
    assert pipe.info["lora"]["tensors"] == len(ref_lora) and pipe.info["vae"]["tensors"] > 0
    # The resolved config is a valid preset that reproduces the run's options.
    again = parse_args(["--config", str(ref / "train_config.yaml")])
    assert again.rank == 4 and again.report_to == "tensorboard"
    # Every weight file is readable like any other output (safetensors alone would create them 0600).
    from data.io import new_file_mode

    weights = [ref / LORA_WEIGHT_NAME, ref / "vae.ckpt", *(ref / f"{CHECKPOINT_PREFIX}6").iterdir()]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in weights} == {p.name: oct(new_file_mode()) for p in weights}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")  # skipped updates
def test_nonfinite_losses_skip_updates_and_stop_with_nonzero_exit(stack, tmp_path, monkeypatch, caplog):
    from losses import BokehLoss

    real_forward = BokehLoss.forward

    def nan_forward(self, *args, **kwargs):
        total, terms = real_forward(self, *args, **kwargs)
        return total * float("nan"), {**terms, "total": float("nan")}

    monkeypatch.setattr(BokehLoss, "forward", nan_forward)
    out = tmp_path / "nan"
    assert train_lora_otf.main(train_argv(stack, out, "--validation_steps", 0, "--lambda_gan", 0)) == 2
    assert "3 consecutive steps had a non-finite loss" in caplog.text
    log = read_log(out)  # strict JSON: the NaN loss is written as null, the step's "skipped" says why
    assert [r["skipped"] for r in log] == [True, True]
    assert [r["total"] for r in log] == [None, None] and all(math.isfinite(r["mse"]) for r in log)
    check_png(out / "training_curves.png")  # a stopped run is plotted too: the curves show where it went wrong
    from safetensors.torch import load_file

    lora = load_file(str(out / f"{CHECKPOINT_PREFIX}2" / "pytorch_lora_weights.safetensors"))
    assert all(torch.count_nonzero(v) == 0 for k, v in lora.items() if "lora_B" in k), "a NaN step updated LoRA"


@pytest.mark.xdist_group(FORKED)
@pytest.mark.slow
def test_two_processes_gloo_keep_lora_identical(stack, tmp_path):
    """Two ranks (gloo; tests/forked_ranks.py gives them torchrun's environment): gradient accumulation over
    2 micro-batches, a checkpoint with each rank's random state, and the same LoRA on both ranks."""
    out = tmp_path / "ddp"
    argv = train_argv(stack, out, "--max_train_steps", 3, "--validation_steps", 0, "--gradient_accumulation_steps", 2,
                      "--checkpointing_steps", 3)
    proc = run_ranks(2, REPO / "train_lora_otf.py", *argv)
    assert proc.returncode == 0, proc.stderr[-4000:]
    meta = json.loads((out / META_NAME).read_text())
    assert meta["num_processes"] == 2 and len(meta["rank_checksums"]) == 2
    assert len(set(meta["rank_checksums"])) == 1
    assert sorted(p.name for p in (out / f"{CHECKPOINT_PREFIX}3").glob("random_states_*.pkl")) == [
        "random_states_0.pkl", "random_states_1.pkl"]


@pytest.mark.slow
def test_learning_lowers_heldout_l1(stack, tmp_path):
    """A fixed, seeded tiny run (MSE only, 32-px crops, 20 steps of batch 4): the held-out L1 falls by at least
    10% from step 0 (measured: 0.272 -> 0.241, -11%). The frozen random tiny VAE decoder bounds what is reachable:
    60 steps at a quarter of the learning rate end at the same -12%."""
    out = tmp_path / "learn"
    argv = train_argv(stack, out, "--resolution", 32, "--max_train_steps", LEARN_STEPS, "--validation_steps", LEARN_STEPS,
                 "--checkpointing_steps", LEARN_STEPS, "--lambda_gan", 0, "--no-edge", "--learning_rate", 2e-2,
                 "--train_batch_size", 4, "--num_validation_samples", 8, "--log_steps", 50)
    assert train_lora_otf.main(argv) == 0
    val = read_log(out, "validation.jsonl")
    assert [v["step"] for v in val] == [0, LEARN_STEPS]
    assert val[-1]["l1"] <= 0.9 * val[0]["l1"], val


LEARN_STEPS = 20


@pytest.mark.slow
def test_synthesize_on_device_trains_and_matches_worker_rendering(stack, tmp_path):
    """Targets rendered in the main process from scene layers: the same scenes, seeds and sample counts as the
    workers' renders (synthesize_batch renders per item), so the first loss (before any update) agrees."""
    common = ("--max_train_steps", 1, "--validation_steps", 0, "--lambda_gan", 0, "--no-edge")
    on, off = tmp_path / "on", tmp_path / "off"
    assert train_lora_otf.main(train_argv(stack, on, *common, "--synthesize_on_device")) == 0
    assert train_lora_otf.main(train_argv(stack, off, *common)) == 0
    assert read_log(on)[0]["mse"] == pytest.approx(read_log(off)[0]["mse"], rel=1e-5)


def test_a_refused_resume_keeps_the_runs_config_and_the_gamma_alias_resumes_as_its_split_form(stack, tmp_path,
                                                                                                 capsys):
    """A run started with `--gamma 2.2` resumes with `--model_gamma 2.2 --synthesis_gamma 2.2` (the same values).
    A resume with another model gamma is refused (one `error:` line, exit 2) and must leave the run's
    train_config.yaml as it was: it used to be replaced by the refused run's settings before the check."""
    out = tmp_path / "run"
    fast = ("--max_train_steps", 2, "--validation_steps", 0)
    assert train_lora_otf.main(train_argv(stack, out, "--gamma", 2.2, *fast)) == 0
    config = (out / "train_config.yaml").read_text()
    assert yaml.safe_load(config)["model_gamma"] == 2.2 and yaml.safe_load(config)["synthesis_gamma"] == 2.2
    refused = train_lora_otf.main(train_argv(stack, out, "--model_gamma", 1, "--max_train_steps", 4, "--validation_steps",
                                        0, "--resume_from_checkpoint", "latest"))
    assert refused == 2 and "error: checkpoint" in (err := capsys.readouterr().err) and "model_gamma=2.2" in err
    assert (out / "train_config.yaml").read_text() == config
    assert train_lora_otf.main(train_argv(stack, out, "--model_gamma", 2.2, "--synthesis_gamma", 2.2, "--max_train_steps",
                                     4, "--validation_steps", 0, "--resume_from_checkpoint", "latest")) == 0
    assert [s for s, _ in list_checkpoints(out)] == [2, 4] and read_log(out)[-1]["step"] == 4
    check_png(out / "training_curves.png")  # drawn at the end of the run, also of a resumed one


def test_a_resume_with_another_learning_rate_is_refused_before_loading(stack, tmp_path, monkeypatch, capsys):
    """Crashed in step 3 of a cosine run, resumed with another --learning_rate: the restored optimiser and schedule
    state kept the old rate (logs and weights equal to the uninterrupted run) while train_config.yaml, the model
    card and the checkpoints recorded the new one. Now refused (one `error:` line, exit 2) before any model is
    loaded, and the run's train_config.yaml is left as it was."""
    out = tmp_path / "run"
    fast = ("--lr_scheduler", "cosine", "--max_train_steps", 4, "--validation_steps", 0, "--lambda_gan", 0)
    crash_training_in_step(monkeypatch, train_argv(stack, out, *fast), 2)
    config = (out / "train_config.yaml").read_text()
    monkeypatch.setattr(training.run, "build_components", lambda *a: pytest.fail("models loaded before the check"))
    code = train_lora_otf.main(train_argv(stack, out, *fast, "--resume_from_checkpoint", "latest",
                                          "--learning_rate", 0.05))
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert "--learning_rate 0.001 in the checkpoint, 0.05 now" in err and "new --output_dir" in err
    assert (out / "train_config.yaml").read_text() == config
    assert [r["step"] for r in read_log(out)] == [1, 2] and [s for s, _ in list_checkpoints(out)] == [2]


def test_resuming_an_older_checkpoint_than_the_newest_is_refused(stack, tmp_path, monkeypatch, capsys):
    """`--resume_from_checkpoint checkpoint-1` with checkpoint-2 there: the newer checkpoint of the abandoned
    branch outlived the resumed run and a later `latest` went back to it. Refused (one `error:` line naming it,
    exit 2) before any model is loaded; nothing is deleted or rewritten."""
    out = tmp_path / "run"
    fast = ("--max_train_steps", 2, "--checkpointing_steps", 1, "--validation_steps", 0, "--lambda_gan", 0)
    assert train_lora_otf.main(train_argv(stack, out, *fast)) == 0
    config = (out / "train_config.yaml").read_text()
    monkeypatch.setattr(training.run, "build_components", lambda *a: pytest.fail("models loaded before the check"))
    code = train_lora_otf.main(train_argv(stack, out, *fast, "--resume_from_checkpoint", f"{CHECKPOINT_PREFIX}1"))
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert "newer checkpoints (checkpoint-2)" in err and "new --output_dir" in err
    assert (out / "train_config.yaml").read_text() == config and [s for s, _ in list_checkpoints(out)] == [1, 2]


def test_a_plotting_failure_is_a_warning_not_a_failed_run(stack, tmp_path, monkeypatch, caplog):
    def broken(run_dir, out=None):
        raise RuntimeError("no fonts here")

    monkeypatch.setattr(training.run, "write_training_curves", broken)
    out = tmp_path / "run"
    assert train_lora_otf.main(train_argv(stack, out, "--max_train_steps", 1, "--validation_steps", 0,
                                          "--lambda_gan", 0, "--no-edge")) == 0
    assert "training curves could not be drawn (RuntimeError: no fonts here)" in caplog.text
    assert f"python -m scripts.plot_run {out}" in caplog.text
    assert (out / "pytorch_lora_weights.safetensors").is_file() and not (out / "training_curves.png").exists()


def test_an_ablation_adapter_renders_as_it_was_trained(stack, tmp_path, capsys):
    """``--no-pisa --opt_vae 0`` (the paper's ablations): inference_hf.py renders the export without PISA and
    with the base VAE encoder, and says so. It used to install PISA (a different model from the one trained)
    and to refuse the adapter for its missing vae.ckpt, with no flag to accept it."""
    import inference_hf

    out = tmp_path / "run"
    assert train_lora_otf.main(train_argv(stack, out, "--max_train_steps", 1, "--validation_steps", 0, "--lambda_gan",
                                          0, "--no-edge", "--no-pisa", "--opt_vae", 0)) == 0
    assert not (out / "vae.safetensors").exists() and not (out / "vae.ckpt").exists()
    capsys.readouterr()
    renders = tmp_path / "renders"
    assert inference_hf.main(["--pretrained_model_name_or_path", stack["sdxl"], "--adapter", str(out), "--device", "cpu",
                              "--test_data_dir", str(REPO / "test_data" / "ebb"), "--data_id", "scene00",
                              "--max_side", "32", "--no_contact_sheet", "--output_dir", str(renders)]) == 0
    printed = capsys.readouterr().out
    assert "PISA off: adapter" in printed and "trained without PISA" in printed
    assert "trained with the base VAE encoder" in printed and "PISA with the" not in printed
    assert len(list(renders.glob("scene00_K*.png"))) == 1


def test_a_kill_between_publishing_and_rotating_still_ends_within_the_limit(stack, tmp_path):
    """Killed after the last checkpoint was published but before the rolling limit deleted the oldest one: the
    resume at the last step saves nothing more, and the finished run used to keep limit + 1 checkpoints."""
    out = tmp_path / "run"
    fast = ("--max_train_steps", 2, "--checkpointing_steps", 1, "--checkpoints_total_limit", 1, "--validation_steps", 0)
    assert train_lora_otf.main(train_argv(stack, out, *fast)) == 0
    assert [s for s, _ in list_checkpoints(out)] == [2]
    shutil.copytree(out / f"{CHECKPOINT_PREFIX}2", out / f"{CHECKPOINT_PREFIX}1")  # the one rotation did not delete
    assert train_lora_otf.main(train_argv(stack, out, *fast, "--resume_from_checkpoint", "latest")) == 0
    assert [s for s, _ in list_checkpoints(out)] == [2]


# ------------------------------------------------------------------------------------------------------------
# Training data that cannot give one sample (issue 23 item 14): one error line, nothing written, no blocking
# ------------------------------------------------------------------------------------------------------------
def _rgb_only(data):
    import cv2

    for path in sorted((data / "fg").iterdir()):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        path.unlink()
        cv2.imwrite(str(path.with_suffix(".jpg")), image[..., :3])


def _emptied(sub):
    def empty(data):
        for path in (data / sub).iterdir():
            path.unlink()
    return empty


def _transparent(data):
    import cv2

    for path in (data / "fg").iterdir():
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        image[..., 3] = 0
        cv2.imwrite(str(path), image)


def _tiny_backgrounds(data):
    import cv2

    for path in (data / "bg").iterdir():
        cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path)), (8, 8)))


@pytest.mark.parametrize("mutate, expected", [
    (_rgb_only, r"no usable foreground in fg/ \(2 files without an alpha channel \(RGB or JPEG\), e\.g\. 'fg\d\.jpg'\)"
                r"; foregrounds must be cut-outs saved as PNG with an alpha channel"),
    (_emptied("fg"), r"no image in '.*/fg' .*put RGBA foreground cut-outs \(PNG with alpha\) there"),
    (_emptied("bg"), r"no image in '.*/bg' .*put background photos there"),
    (_transparent, r"no usable foreground in fg/ \(2 files fully transparent"),
    (_tiny_backgrounds, r"no usable background in bg/ \(\d files smaller than 64x64 px.*at least 64x64 px"),
], ids=["rgb_only", "empty_fg", "empty_bg", "transparent", "8x8_backgrounds"])
def test_unusable_training_data_is_one_error_before_anything_is_written(stack, tmp_path, capsys, mutate, expected):
    data = tmp_path / "data"
    shutil.copytree(stack["data"], data)
    mutate(data)
    out = tmp_path / "run"
    argv = train_argv({**stack, "data": str(data)}, out, "--max_train_steps", 1, "--validation_steps", 0)
    assert train_lora_otf.main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and re.search(expected, errors[0]), err
    assert "Traceback" not in err and "skipping" not in err
    assert str(data) in errors[0]
    assert not out.exists() or list(out.iterdir()) == []  # no train_config.yaml to block the rerun
    if mutate is _transparent:  # once (a 1-step run each costs seconds): the data fixed, the same command runs
        shutil.rmtree(data)
        shutil.copytree(stack["data"], data)
        assert train_lora_otf.main(argv) == 0


def _offline_torch_hub(monkeypatch, tmp_path):
    """torchvision's downloads fail as on a machine without network (an empty torch hub cache)."""
    import urllib.error

    def refused(*args, **kwargs):
        raise urllib.error.URLError("[Errno 111] Connection refused")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "urlopen", refused)


def _garbage_vgg(monkeypatch, tmp_path):
    (tmp_path / "vgg16.pth").write_bytes(b"this is not a checkpoint" * 40)


@pytest.mark.parametrize("flags, setup, expected", [
    (["--config", "configs/nope.yaml"], None, "--config: no such file 'configs/nope.yaml'"),
    (["--report_to", "tensorbord"], None, "--report_to tensorbord: 'tensorbord' is not a tracker accelerate "
                                          "supports .*did you mean --report_to tensorboard"),
    (["--gan_loss_type", "foo"], None, "--gan_loss_type must be one of .*multilevel_sigmoid_s.*found 'foo'"),
    (["--cv_type", "foo"], None, "--cv_type must be one of .*convnext.*found 'foo'"),
    (["--timestep", 5000], None, r"--timestep must be in \[0, 999\].*found 5000"),
    (["--validation_steps", 1, "--validation_data_dir", "{tmp}/nonexist"], None,
     "--validation_data_dir '.*/nonexist' is not a folder"),
    (["--validation_steps", 1, "--validation_data_dir", "{tmp}"], None,
     "folder '.*/fg' not found; --validation_data_dir must contain fg/"),
    (["--lpips", "--lpips_vgg_weights", "{tmp}/vgg16.pth"], None,
     "--lpips_vgg_weights .*vgg16.pth is given with --no-lpips_pretrained"),
    (["--lpips", "--lpips_pretrained", "--lpips_vgg_weights", "{tmp}/vgg16.pth"], _garbage_vgg,
     "LPIPS: cannot read `lpips_vgg_weights` file '.*/vgg16.pth' \\(\\w+Error: .*download it again"),
    (["--lpips", "--lpips_pretrained"], _offline_torch_hub,
     "LPIPS: could not obtain the pretrained VGG-16 trunk .*Connection refused.*--lpips_vgg_weights"),
], ids=["no_config", "report_to", "gan_loss_type", "cv_type", "timestep", "no_validation_dir",
        "validation_dir_without_fg", "vgg_weights_unused", "garbage_vgg", "lpips_offline"])
def test_a_bad_option_is_one_error_line_before_anything_is_written(stack, tmp_path, monkeypatch, capsys, flags,
                                                                   setup, expected):
    """Each used to end in a traceback with exit 1 (a FileNotFoundError, accelerate's or the losses' ValueError, a
    pickle error or a RuntimeError after the model was loaded), some after train_config.yaml was written."""
    if setup is not None:
        setup(monkeypatch, tmp_path)
    out = tmp_path / "run"
    argv = train_argv(stack, out, "--max_train_steps", 1, "--validation_steps", 0,
                      *[str(f).format(tmp=tmp_path) for f in flags])
    monkeypatch.chdir(REPO)
    assert train_lora_otf.main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and re.search(expected, errors[0]), err
    assert errors[0].startswith("train_lora_otf.py: error:") and "Traceback" not in err
    assert not out.exists() or list(out.iterdir()) == []


def test_a_folder_holding_only_a_config_does_not_block_a_fresh_run(tmp_path):
    """A run that stopped before its first step wrote only train_config.yaml: the next run rewrites it."""
    (tmp_path / "train_config.yaml").write_text("earlier")
    check_fresh_output_dir(tmp_path, None, overwrite=False)
    (tmp_path / "train_log.jsonl").write_text("{}\n")  # with a log, it is an earlier run
    with pytest.raises(FileExistsError, match="earlier run"):
        check_fresh_output_dir(tmp_path, None, overwrite=False)
