"""train_lora_otf.py and training/: configuration, checkpoints, exact resume, distributed consistency, learning.

Everything runs on CPU with the tiny SDXL stack (models/tiny.py) and a tiny synthetic fg/bg set written by a
fixture. Runs are in-process (``main(argv)``) except the 2-process gloo run. Torch is pinned to one thread
here: on a shared 2-core machine OpenMP spin-waiting makes multi-threaded tiny kernels 50x slower.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import train_lora_otf
import training.run
from training.checkpoint import (CHECKPOINT_PREFIX, META_NAME, TrainProgress, check_fresh_output_dir,
                                 compare_run_settings, list_checkpoints, remove_stale_temporaries, resolve_resume_path,
                                 save_checkpoint)
from training.config import DEFAULT_CONFIG, build_parser, dump_config, load_yaml_config, parse_args
from training.data import SampleStream, build_validation_set
from training.loop import NonFiniteGuard, NonFiniteLossError, build_optimizers, describe_run, pisa_hardness

REPO = Path(train_lora_otf.__file__).resolve().parent
TINY = str(REPO / "configs" / "train_tiny.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")


def _write_otf_data(root: Path) -> Path:
    """Two RGBA foregrounds (opaque squares with soft edges) and two textured backgrounds (128 x 96 px)."""
    rng = np.random.default_rng(0)
    for sub in ("fg", "bg"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:96, 0:128]
    for i in range(2):
        bg = np.stack([(xx * (i + 2)) % 256, (yy * 3) % 256, ((xx + yy) * (i + 1)) % 256], -1).astype(np.uint8)
        Image.fromarray(bg).save(root / "bg" / f"bg{i}.png")
        fg = np.zeros((40, 40, 4), np.uint8)
        fg[..., :3] = rng.integers(0, 255, (40, 40, 3))
        fg[6 + i : 34, 6:34 - i, 3] = 255
        Image.fromarray(fg, "RGBA").save(root / "fg" / f"fg{i}.png")
    return root


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from models.tiny import save_tiny_sdxl

    root = tmp_path_factory.mktemp("train_stack")
    return dict(sdxl=str(save_tiny_sdxl(root / "sdxl")), data=str(_write_otf_data(root / "data")))


def _argv(stack, out, *extra):
    return ["--config", TINY, "--pretrained_model_name_or_path", stack["sdxl"], "--train_data_dir", stack["data"],
            "--output_dir", str(out), *map(str, extra)]


def _strict(line: str) -> dict:
    """json.loads that refuses NaN / Infinity: the logs are strict JSON (non-finite values are null)."""
    def refuse(constant):
        raise AssertionError(f"non-strict JSON constant {constant} in log line {line!r}")

    return json.loads(line, parse_constant=refuse)


def _log(out, name: str = "train_log.jsonl") -> list[dict]:
    return [_strict(line) for line in (Path(out) / name).read_text().splitlines()]


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
# Configuration
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


def test_default_yaml_holds_every_option_and_presets_are_valid():
    parser = build_parser()
    options = {a.dest for a in parser._actions} - {"help", "config"}
    assert set(load_yaml_config(DEFAULT_CONFIG, parser)) == options
    for preset in (REPO / "configs").glob("train_*.yaml"):
        load_yaml_config(preset, parser)


_PATHS = dict(sdxl="tiny-sdxl", data="otf-data")  # parsing does not touch the paths


def test_precedence_default_preset_cli(tmp_path):
    args = parse_args(_argv(_PATHS, tmp_path))
    assert args.rank == 4 and args.edge and args.adam_beta2 == 0.95  # preset, preset, default
    args = parse_args(_argv(_PATHS, tmp_path, "--rank", 2, "--no-edge"))
    assert args.rank == 2 and not args.edge


@pytest.mark.parametrize("content, message", [
    ("learning_rat: 0.1\n", "did you mean 'learning_rate'"),
    ("rank: eight\n", "key 'rank' must be an integer"),
    ("edge: 1\n", "key 'edge' must be true or false"),
    ("lr_scheduler: cosine_annealing\n", "must be one of"),
])
def test_bad_preset_keys_fail(tmp_path, content, message):
    preset = tmp_path / "bad.yaml"
    preset.write_text(content)
    with pytest.raises(ValueError, match=message):
        parse_args(["--config", str(preset), "--train_data_dir", "x", "--output_dir", "y"])


@pytest.mark.parametrize("flag, value, message", [
    ("--resolution", 72, "--resolution must be a multiple of 16"),
    ("--opt_vae", 2, "--opt_vae must be 0 or 1"),
    ("--checkpoints_total_limit", 0, "--checkpoints_total_limit"),
    # fp16 would share accelerate's one GradScaler between the generator and discriminator optimisers (unscaled
    # once per clip call -> "unscale_() has already been called"): refused up front, with the remedy.
    ("--mixed_precision", "fp16", "--mixed_precision fp16 is not supported.*--mixed_precision bf16"),
    ("--pisa_dropout", 1.0, r"--pisa_dropout must be in \[0, 1\)"),
    ("--gamma", 0, "--model_gamma must be > 0.*--gamma sets both"),  # the alias is named: it is what was given
])
def test_bad_flag_values_fail(tmp_path, flag, value, message):
    with pytest.raises(ValueError, match=message):
        parse_args(_argv(_PATHS, tmp_path, flag, value))


def test_fp16_in_a_preset_is_rejected_too(tmp_path):
    preset = tmp_path / "fp16.yaml"
    preset.write_text("mixed_precision: fp16\n")
    with pytest.raises(ValueError, match="--mixed_precision fp16 is not supported"):
        parse_args(["--config", str(preset), "--train_data_dir", "x", "--output_dir", "y"])


def _groups_lr(opt):
    return [group["lr"] for group in opt.param_groups]


def test_vae_and_discriminator_lr_groups_follow_the_schedule(tmp_path):
    """LoRA at the schedule's LR, the VAE group at 0.1x, the discriminator at 2x, at every step of a warm-up +
    cosine schedule; accelerate steps a prepared scheduler once per process, which build_optimizers offsets."""
    args = parse_args(_argv(_PATHS, tmp_path, "--lr_scheduler", "cosine", "--lr_warmup_steps", 3,
                            "--max_train_steps", 10, "--learning_rate", 1e-3))
    lora, vae, disc = ([torch.nn.Parameter(torch.zeros(2))] for _ in range(3))
    schedules = []
    for num_processes in (1, 2):
        opt, sched, d_opt, d_sched = build_optimizers(args, lora, vae, disc, num_processes=num_processes)
        assert [g["name"] for g in opt.param_groups] == ["lora", "vae"]
        seen = []
        for _ in range(args.max_train_steps):
            base = sched.get_last_lr()[0]
            assert _groups_lr(opt) == pytest.approx([base, 0.1 * base])
            assert _groups_lr(d_opt) == pytest.approx([2 * base])
            seen.append(base)
            for _ in range(num_processes):  # what accelerate's prepared scheduler does per optimisation step
                opt.step(), d_opt.step(), sched.step(), d_sched.step()
        schedules.append(seen)
    assert schedules[1] == pytest.approx(schedules[0])  # the same schedule whatever the process count
    # ... and the warm-up reached the peak at step 3 from 0.
    opt, sched, _, _ = build_optimizers(args, lora, [], [], num_processes=1)
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        opt.step(), sched.step()
    assert lrs[:4] == pytest.approx([0.0, 1e-3 / 3, 2e-3 / 3, 1e-3])
    assert 1e-3 > lrs[4] > lrs[5] > 0  # cosine decay after the warm-up


def test_lr_warmup_and_restart_cycles_are_honoured(tmp_path):
    """cosine_with_restarts with 2 cycles after 2 warm-up steps over 10: peak at 2 and again at 6 (the generator);
    the discriminator's schedule has one cycle (published), so it keeps decaying through the restart."""
    args = parse_args(_argv(_PATHS, tmp_path, "--lr_scheduler", "cosine_with_restarts", "--lr_num_cycles", 2,
                            "--lr_warmup_steps", 2, "--max_train_steps", 10, "--learning_rate", 1e-3))
    opt, sched, d_opt, d_sched = build_optimizers(args, [torch.nn.Parameter(torch.zeros(1))], [],
                                                  [torch.nn.Parameter(torch.zeros(1))], num_processes=1)
    gen, disc = [], []
    for _ in range(10):
        gen.append(_groups_lr(opt)[0])
        disc.append(_groups_lr(d_opt)[0])
        opt.step(), d_opt.step(), sched.step(), d_sched.step()
    assert gen[:3] == pytest.approx([0.0, 5e-4, 1e-3])
    assert gen[6] == pytest.approx(1e-3) and gen[5] < 1e-3 / 2  # restart after 4 of the 8 decay steps
    assert disc[:3] == pytest.approx([0.0, 1e-3, 2e-3])
    assert all(a > b for a, b in zip(disc[2:], disc[3:]))  # one cycle: no restart


def test_pisa_training_settings_are_recorded_for_inference(tmp_path):
    from types import SimpleNamespace

    from models.pipeline import pisa_compat_for

    args = parse_args(_argv(_PATHS, tmp_path))
    assert (args.pisa_seed, args.pisa_dropout) == (None, 0.1)  # published: random jitter, attention dropout 0.1
    c = SimpleNamespace(lora_modules=["m"], vae_params=[], pisa_layers=["down_blocks.1.attentions.0.x.attn1"])
    meta = describe_run(args, c, 1)
    assert {k: meta["pisa"][k] for k in ("seed", "dropout", "compat")} == {"seed": None, "dropout": 0.1,
                                                                           "compat": False}
    assert pisa_compat_for(meta) is False
    meta = describe_run(parse_args(_argv(_PATHS, tmp_path, "--pisa_seed", 5, "--pisa_dropout", 0)), c, 1)
    assert (meta["pisa"]["seed"], meta["pisa"]["dropout"]) == (5, 0.0)


# ------------------------------------------------------------------------------------------------------------
# Pieces: data stream, hardness, non-finite guard, checkpoint folders
# ------------------------------------------------------------------------------------------------------------
def test_sample_stream_is_stateless_resumable_and_sharded():
    def take(stream, n):
        it = iter(stream)
        return [next(it) for _ in range(n)]

    full = take(SampleStream(4, seed=7, rank=1, world_size=2), 10)
    assert take(SampleStream(4, seed=7, rank=1, world_size=2, start=6), 4) == full[6:]
    other = take(SampleStream(4, seed=7, rank=0, world_size=2), 10)
    assert not set(full) & set(other)  # ranks never draw the same global sample
    assert {i % 4 for i in full + other} == {0, 1, 2, 3}  # every pair is used
    assert take(SampleStream(4, seed=8, rank=1, world_size=2), 10) != full


def test_pisa_hardness_schedule():
    assert pisa_hardness(0, 3.0, 2.0, 1e6) == 3.0
    assert pisa_hardness(10, 3.0, 2.0, 1e6) == 23.0
    assert pisa_hardness(10**9, 3.0, 2.0, 1e6) == 1e6


def test_nonfinite_guard_counts_resets_and_stops():
    progress = TrainProgress()
    guard = NonFiniteGuard(progress, limit=2)
    guard.update(True, 0)
    guard.update(False, 1)
    assert (progress.nonfinite_total, progress.nonfinite_in_a_row) == (1, 0)
    guard.update(True, 2)
    with pytest.raises(NonFiniteLossError, match="--max_nonfinite_steps 2.*Last good checkpoint: ck"):
        guard.update(True, 3, "ck")
    assert progress.nonfinite_total == 3


class _FakeAccelerator:
    """Stand-in with accelerate's save_state contract: writes files into the folder; may crash midway."""

    is_main_process = True

    def __init__(self, crash=False):
        self.crash = crash

    def wait_for_everyone(self):
        pass

    def save_state(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / META_NAME).write_text("{}")
        if self.crash:
            raise KeyboardInterrupt("killed while saving")
        (Path(folder) / "optimizer.bin").write_bytes(b"x" * 10)


def test_checkpoints_are_atomic_rotated_and_found(tmp_path):
    for step in (2, 4, 6):
        save_checkpoint(_FakeAccelerator(), tmp_path, step, total_limit=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 6]
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_FakeAccelerator(crash=True), tmp_path, 8, total_limit=2)
    # The interrupted save is invisible: 'latest' is still the last complete checkpoint, none was rotated away.
    assert resolve_resume_path("latest", tmp_path) == tmp_path / f"{CHECKPOINT_PREFIX}6"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 6]
    assert (tmp_path / f"{CHECKPOINT_PREFIX}6" / "optimizer.bin").read_bytes() == b"x" * 10
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [f".tmp-{CHECKPOINT_PREFIX}8"]
    assert resolve_resume_path(None, tmp_path) is None
    assert resolve_resume_path("latest", tmp_path / "empty") is None
    with pytest.raises(FileNotFoundError, match="--resume_from_checkpoint"):
        resolve_resume_path(str(tmp_path / "nope"), tmp_path)


def test_crash_while_resaving_a_step_keeps_that_step(tmp_path, monkeypatch):
    """Re-saving step 6 moves the old folder aside, then publishes the new one; a crash between the two renames
    leaves only `.old-checkpoint-6` (complete) and `.tmp-checkpoint-6`: start-up restores the old one."""
    import training.checkpoint as checkpoint

    save_checkpoint(_FakeAccelerator(), tmp_path, 6, total_limit=2)
    real_replace = os.replace

    def crash_on_publish(src, dst):
        if Path(src).name.startswith(".tmp-"):
            raise KeyboardInterrupt("killed between the renames")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", crash_on_publish)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_FakeAccelerator(), tmp_path, 6, total_limit=2)
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    assert not (tmp_path / f"{CHECKPOINT_PREFIX}6").exists()
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [f".tmp-{CHECKPOINT_PREFIX}6"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{CHECKPOINT_PREFIX}6"]
    assert (tmp_path / f"{CHECKPOINT_PREFIX}6" / "optimizer.bin").read_bytes() == b"x" * 10
    # An `.old-` copy whose replacement was published is just a leftover: removed, the new one kept.
    (tmp_path / f".old-{CHECKPOINT_PREFIX}6").mkdir()
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [f".old-{CHECKPOINT_PREFIX}6"]
    assert resolve_resume_path("latest", tmp_path) == tmp_path / f"{CHECKPOINT_PREFIX}6"


def test_fresh_run_into_a_folder_with_checkpoints_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    save_checkpoint(_FakeAccelerator(), out, 4, total_limit=None)
    # Through the script: refused before any data or model is loaded (the paths here do not exist), with one
    # error line naming the remedies and exit status 2.
    remedy = "--resume_from_checkpoint latest.*new --output_dir.*--overwrite_output_dir"
    assert train_lora_otf.main(_argv(_PATHS, out)) == 2
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
    args = parse_args(_argv(_PATHS, out, "--overwrite_output_dir"))
    assert "overwrite_output_dir" not in yaml.safe_load(dump_config(args, tmp_path / "c.yaml").read_text())


def test_validation_set_is_fixed_and_leaves_the_global_rng_alone(tmp_path):
    """After `load_state` only the main process builds the held-out set; a draw from the global torch RNG there
    would shift PISA's per-call jitter and dropout away from the uninterrupted run's."""
    data = _write_otf_data(tmp_path / "data")
    args = parse_args(_argv(dict(sdxl="x", data=str(data)), tmp_path, "--num_validation_samples", 2))
    state = torch.get_rng_state()
    first = build_validation_set(args, 2)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)
    again = build_validation_set(args, 2)
    assert all(torch.equal(a["bokeh"], b["bokeh"]) for a, b in zip(first, again))


def test_resume_compares_settings_and_warns_about_the_worker_count():
    saved = {"lora": {"rank": 4}, "pisa": {"dropout": 0.1}, "resolution": 64, "train_batch_size": 2,
             "config": {"dataloader_num_workers": 2}}  # older checkpoints: the worker count only in the config
    same = dict(saved, dataloader_num_workers=2)
    errors, warnings = compare_run_settings(saved, same)
    assert errors == [] and [w for w in warnings if w[0] == "dataloader_num_workers"] == []
    errors, warnings = compare_run_settings(saved, dict(same, dataloader_num_workers=4, pisa={"dropout": 0.0}))
    assert errors == [("pisa", {"dropout": 0.1}, {"dropout": 0.0})]
    assert ("dataloader_num_workers", 2, 4) in warnings


# ------------------------------------------------------------------------------------------------------------
# End to end
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_checkpoint_limit_resume_is_exact_and_export_loads(stack, tmp_path, monkeypatch):
    """6 steps, checkpoint every 2 with limit 2 (GAN from step 2, validation at 3), vs. the same run crashed
    during step 5 and resumed from ``latest``: the loss sequences and final weights are identical."""
    ref = tmp_path / "uninterrupted"
    assert train_lora_otf.main(_argv(stack, ref, "--report_to", "tensorboard")) == 0
    ref_log = _log(ref)
    assert [r["step"] for r in ref_log] == [1, 2, 3, 4, 5, 6]
    assert "gan_g" not in ref_log[1] and "gan_g" in ref_log[2] and all("gan_d" in r for r in ref_log)
    assert [s for s, _ in list_checkpoints(ref)] == [4, 6]
    assert list((ref / "logs").rglob("events.out.tfevents.*")), "tensorboard event file missing"
    assert [r["step"] for r in _log(ref, "validation.jsonl")] == [0, 3, 6]

    crashed = tmp_path / "crashed"
    crash_training_in_step(monkeypatch, _argv(stack, crashed), 4)  # during step 5
    assert [s for s, _ in list_checkpoints(crashed)] == [2, 4]
    assert train_lora_otf.main(_argv(stack, crashed, "--resume_from_checkpoint", "latest")) == 0

    resumed_log = _log(crashed)
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
    assert train_lora_otf.main(_argv(stack, out, "--validation_steps", 0, "--lambda_gan", 0)) == 2
    assert "3 consecutive steps had a non-finite loss" in caplog.text
    log = _log(out)  # strict JSON: the NaN loss is written as null, the step's "skipped" says why
    assert [r["skipped"] for r in log] == [True, True]
    assert [r["total"] for r in log] == [None, None] and all(math.isfinite(r["mse"]) for r in log)
    from safetensors.torch import load_file

    lora = load_file(str(out / f"{CHECKPOINT_PREFIX}2" / "pytorch_lora_weights.safetensors"))
    assert all(torch.count_nonzero(v) == 0 for k, v in lora.items() if "lora_B" in k), "a NaN step updated LoRA"


@pytest.mark.slow
def test_two_processes_gloo_keep_lora_identical(stack, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with socket.socket() as sock:  # a free port: a fixed one fails when another run on the machine holds it
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           str(REPO / "train_lora_otf.py"), *_argv(stack, out, "--max_train_steps", 3, "--validation_steps", 0,
                                                  "--gradient_accumulation_steps", 2,
                                                  "--checkpointing_steps", 3)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    meta = json.loads((out / META_NAME).read_text())
    assert meta["num_processes"] == 2 and len(meta["rank_checksums"]) == 2
    assert len(set(meta["rank_checksums"])) == 1
    assert sorted(p.name for p in (out / f"{CHECKPOINT_PREFIX}3").glob("random_states_*.pkl")) == [
        "random_states_0.pkl", "random_states_1.pkl"]


@pytest.mark.slow
def test_learning_lowers_heldout_l1(stack, tmp_path):
    """A fixed, seeded tiny run (MSE only, 32-px crops, 60 steps of batch 4): the held-out L1 falls by at least
    10% from step 0 (measured: 0.335 -> 0.28, -16%; the frozen random tiny VAE decoder bounds what is reachable)."""
    out = tmp_path / "learn"
    argv = _argv(stack, out, "--resolution", 32, "--max_train_steps", LEARN_STEPS, "--validation_steps", LEARN_STEPS,
                 "--checkpointing_steps", LEARN_STEPS, "--lambda_gan", 0, "--no-edge", "--learning_rate", 5e-3,
                 "--train_batch_size", 4, "--num_validation_samples", 8, "--log_steps", 50)
    assert train_lora_otf.main(argv) == 0
    val = _log(out, "validation.jsonl")
    assert [v["step"] for v in val] == [0, LEARN_STEPS]
    assert val[-1]["l1"] <= 0.9 * val[0]["l1"], val


LEARN_STEPS = 60


def test_build_models_installs_pisa_with_the_training_settings(stack, tmp_path):
    from models.pisa import PISAAttnProcessor
    from training.loop import build_models

    args = parse_args(_argv(stack, tmp_path))
    model, _, pisa_layers, _, _ = build_models(args, torch.device("cpu"))
    processors = [p for p in model.unet.attn_processors.values() if isinstance(p, PISAAttnProcessor)]
    assert processors and len(pisa_layers) >= 1
    assert all((p.seed, p.dropout_p) == (None, 0.1) for p in processors)


def test_trainable_state_dict_keeps_spectral_norm_vectors_and_skips_frozen_parts():
    from training.checkpoint import trainable_state_dict

    frozen = torch.nn.Conv2d(3, 4, 3).requires_grad_(False)
    head = torch.nn.utils.parametrizations.spectral_norm(torch.nn.Conv2d(4, 1, 1))
    state = trainable_state_dict(torch.nn.Sequential(frozen, head))
    assert "1.parametrizations.weight.original" in state and "1.bias" in state
    assert {"1.parametrizations.weight.0._u", "1.parametrizations.weight.0._v"} <= set(state)
    assert not any(k.startswith("0.") for k in state)


class _WhoMadeMe(torch.utils.data.Dataset):
    """Returns its index and the DataLoader worker that produced it (the OnTheFlyDataset seeds with both)."""

    num_pairs = 3

    def __len__(self):
        return 10**6

    def __getitem__(self, index):
        info = torch.utils.data.get_worker_info()
        return torch.tensor([index, -1 if info is None else info.id])


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_iterator_yields_the_same_samples_from_the_same_workers(workers):
    from training.data import make_train_iterator

    def batches(start, n):
        it = make_train_iterator(_WhoMadeMe(), batch_size=2, num_workers=workers, seed=3, rank=0, world_size=1,
                                 start_samples=start)
        return [next(it).tolist() for _ in range(n)]

    full = batches(0, 6)
    assert batches(6, 3) == full[3:]  # resumed after 3 batches: odd batch count, so worker order must be fixed


@pytest.mark.slow
def test_synthesize_on_device_trains_and_matches_worker_rendering(stack, tmp_path):
    """Targets rendered in the main process from scene layers: the same scenes, seeds and sample counts as the
    workers' renders (synthesize_batch renders per item), so the first loss (before any update) agrees."""
    common = ("--max_train_steps", 1, "--validation_steps", 0, "--lambda_gan", 0, "--no-edge")
    on, off = tmp_path / "on", tmp_path / "off"
    assert train_lora_otf.main(_argv(stack, on, *common, "--synthesize_on_device")) == 0
    assert train_lora_otf.main(_argv(stack, off, *common)) == 0
    assert _log(on)[0]["mse"] == pytest.approx(_log(off)[0]["mse"], rel=1e-5)


# ------------------------------------------------------------------------------------------------------------
# Outputs never lost: finished runs, rotation, logs, RNG state, disk full
# ------------------------------------------------------------------------------------------------------------
_RUN_FILES = ("train_log.jsonl", "validation.jsonl", "train_config.yaml", "pytorch_lora_weights.safetensors",
              META_NAME)


def test_fresh_run_into_a_finished_run_without_checkpoints_is_refused(tmp_path, capsys):
    """A finished run whose checkpoint-* folders were deleted keeps its logs, config and weights: a fresh run
    there is refused like one into a folder with checkpoints (it used to wipe the logs and config)."""
    out = tmp_path / "run"
    out.mkdir()
    for name in _RUN_FILES:
        (out / name).write_text("earlier run")
    assert train_lora_otf.main(_argv(_PATHS, out)) == 2
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


def _kill_during_rotation(monkeypatch, checkpoint):
    """shutil.rmtree that deletes one file of the folder, then dies like kill -9."""
    def dying_rmtree(path, *args, **kwargs):
        victim = sorted(p for p in Path(path).rglob("*") if p.is_file())[0]
        victim.unlink()
        raise KeyboardInterrupt(f"killed while deleting {path}")

    monkeypatch.setattr(checkpoint.shutil, "rmtree", dying_rmtree)


def test_kill_during_rotation_never_leaves_a_half_deleted_checkpoint(tmp_path, monkeypatch):
    import training.checkpoint as checkpoint

    for step in (2, 4):
        save_checkpoint(_FakeAccelerator(), tmp_path, step, total_limit=2)
    real_rmtree = shutil.rmtree
    _kill_during_rotation(monkeypatch, checkpoint)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_FakeAccelerator(), tmp_path, 6, total_limit=2)  # rotation deletes checkpoint-2
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    # checkpoint-2 is no longer named as a checkpoint: it was moved aside before its deletion began.
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 6]
    assert resolve_resume_path("latest", tmp_path) == tmp_path / f"{CHECKPOINT_PREFIX}6"
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [f".del-{CHECKPOINT_PREFIX}2"]
    save_checkpoint(_FakeAccelerator(), tmp_path, 8, total_limit=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{CHECKPOINT_PREFIX}6", f"{CHECKPOINT_PREFIX}8"]


def test_an_incomplete_checkpoint_folder_is_not_resumed_and_is_cleaned_up(tmp_path):
    """A `checkpoint-N` left half-deleted by an older version (no completeness marker, files missing): `latest`
    picks the newest complete checkpoint, and start-up removes the broken one."""
    for step in (2, 4):
        save_checkpoint(_FakeAccelerator(), tmp_path, step, total_limit=None)
    broken = tmp_path / f"{CHECKPOINT_PREFIX}6"
    shutil.copytree(tmp_path / f"{CHECKPOINT_PREFIX}4", broken)
    for child in broken.iterdir():
        if child.name != META_NAME:
            child.unlink()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4]
    assert resolve_resume_path("latest", tmp_path) == tmp_path / f"{CHECKPOINT_PREFIX}4"
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [broken.name]
    assert not broken.exists()


def test_a_partial_last_log_line_is_dropped_with_a_warning(tmp_path, caplog):
    from training.loop import StepLog

    path = tmp_path / "train_log.jsonl"
    path.write_text('{"step": 1, "total": 0.5}\n{"step": 2, "total": 0.4}\n{"step": 3, "tot')  # killed mid-append
    with caplog.at_level("WARNING"):
        log = StepLog(path, start_step=2, enabled=True)
    assert "train_log.jsonl" in caplog.text and "line 3" in caplog.text
    log.write({"step": 3, "total": 0.3})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_logs_are_strict_json_and_resume_reads_older_non_strict_lines(tmp_path):
    from metrics.image import PSNR_MAX_DB, psnr_from_mse
    from training.loop import StepLog

    path = tmp_path / "train_log.jsonl"
    # Logs written before the logs were strict JSON hold Infinity / NaN; resume still reads them.
    path.write_text('{"step": 1, "psnr": Infinity, "grad_norm": NaN}\n{"step": 2, "psnr": 30.0}\n{"step": 3}\n')
    log = StepLog(path, start_step=2, enabled=True)
    log.write({"step": 3, "psnr": psnr_from_mse(torch.tensor(0.0, dtype=torch.float64)).item(),
               "total": float("nan"), "grad_norm": float("inf"), "terms": [1.0, float("-inf")], "skipped": True})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]  # the interrupted run's step 3 replaced
    new = _strict(lines[-1])
    assert new == {"step": 3, "psnr": PSNR_MAX_DB, "total": None, "grad_norm": None, "terms": [1.0, None],
                   "skipped": True}


def test_an_unreadable_rng_state_stops_the_resume_unless_allowed(tmp_path, caplog):
    from training.checkpoint import check_rng_state

    folder = tmp_path / f"{CHECKPOINT_PREFIX}4"
    folder.mkdir()
    torch.save({"random_state": random.getstate(), "numpy_random_seed": np.random.get_state(),
                "torch_manual_seed": torch.get_rng_state()}, folder / "random_states_0.pkl")
    check_rng_state(folder, process_index=0, allow_inexact=False)  # a good file passes
    (folder / "random_states_0.pkl").write_bytes((folder / "random_states_0.pkl").read_bytes()[:40])  # truncated
    with pytest.raises(RuntimeError, match="random_states_0.pkl.*--allow_inexact_resume"):
        check_rng_state(folder, process_index=0, allow_inexact=False)
    with caplog.at_level("WARNING"):
        check_rng_state(folder, process_index=0, allow_inexact=True)
    assert "random_states_0.pkl" in caplog.text and "not exactly" in caplog.text
    with pytest.raises(RuntimeError, match="random_states_1.pkl"):
        check_rng_state(folder, process_index=1, allow_inexact=False)  # another rank's file is missing
    assert parse_args(_argv(_PATHS, tmp_path, "--allow_inexact_resume")).allow_inexact_resume is True
    assert parse_args(_argv(_PATHS, tmp_path)).allow_inexact_resume is False


def _safetensors_error(message):
    from safetensors import SafetensorError

    return SafetensorError(message)


# What each writer raises on a full disk (measured on a 64 KiB tmpfs): the OS, torch.save, safetensors.
@pytest.mark.parametrize("failure", [
    OSError(28, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
    _safetensors_error("Error while serializing: I/O error: No space left on device (os error 28)"),
])
def test_disk_full_during_a_save_names_the_device_and_keeps_the_previous_checkpoint(tmp_path, failure):
    class _DiskFull(_FakeAccelerator):
        def save_state(self, folder):
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / META_NAME).write_text("{}")
            raise failure

    from training.checkpoint import CheckpointSaveError

    save_checkpoint(_FakeAccelerator(), tmp_path, 2, total_limit=1)
    with pytest.raises(CheckpointSaveError, match=f"no space left on the device holding '{tmp_path}'.*"
                                                  f"{CHECKPOINT_PREFIX}2' is kept"):
        save_checkpoint(_DiskFull(), tmp_path, 4, total_limit=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{CHECKPOINT_PREFIX}2"]  # no half-written temporary
    assert (tmp_path / f"{CHECKPOINT_PREFIX}2" / "optimizer.bin").read_bytes() == b"x" * 10


_KILL_DURING_ROTATION = """
import os, shutil, signal, sys
from pathlib import Path
import training.checkpoint as checkpoint

class Accelerator:
    is_main_process = True
    def wait_for_everyone(self):
        pass
    def save_state(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        for name in ("bokehdiff_checkpoint.json", "optimizer.bin", "random_states_0.pkl"):
            (Path(folder) / name).write_text("x")

def die_midway(path, *args, **kwargs):
    next(p for p in sorted(Path(path).iterdir()) if p.is_file()).unlink()
    os.kill(os.getpid(), signal.SIGKILL)

root = Path(sys.argv[1])
for step in (2, 4):
    checkpoint.save_checkpoint(Accelerator(), root, step, total_limit=2)
checkpoint.shutil.rmtree = die_midway
checkpoint.save_checkpoint(Accelerator(), root, 6, total_limit=2)
"""


def test_sigkill_during_rotation_leaves_only_complete_checkpoints(tmp_path):
    """The issue's scenario for real: a process killed with SIGKILL while the rolling limit deletes a folder."""
    result = subprocess.run([sys.executable, "-c", _KILL_DURING_ROTATION, str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 6]
    assert all(p.name.startswith(".del-") for p in tmp_path.iterdir() if p.name not in (
        f"{CHECKPOINT_PREFIX}4", f"{CHECKPOINT_PREFIX}6"))
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{CHECKPOINT_PREFIX}4", f"{CHECKPOINT_PREFIX}6"]


def test_another_tools_checkpoint_folder_is_never_deleted(tmp_path):
    """A `checkpoint-N` without this script's metadata or marker (e.g. a diffusers trainer's, with the same LoRA
    and accelerate file names) is not ours: start-up leaves it untouched (it used to delete it as an 'incomplete
    checkpoint'), it is never listed, and the run is refused, --overwrite_output_dir or not, because a save of
    the same step would replace it."""
    foreign = tmp_path / f"{CHECKPOINT_PREFIX}500"
    foreign.mkdir()
    for name in ("optimizer.bin", "random_states_0.pkl", "pytorch_lora_weights.safetensors", "scheduler.bin"):
        (foreign / name).write_text("not ours")
    assert remove_stale_temporaries(tmp_path) == []
    assert list_checkpoints(tmp_path) == []
    for resume, overwrite in ((None, False), (None, True), ("latest", False)):
        with pytest.raises(FileExistsError, match="checkpoint-500.*not written by it.*Move it"):
            check_fresh_output_dir(tmp_path, resume, overwrite=overwrite)
    assert sorted(p.name for p in foreign.iterdir()) == [
        "optimizer.bin", "pytorch_lora_weights.safetensors", "random_states_0.pkl", "scheduler.bin"]


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
    # The paths of _PATHS do not exist: the error must come before any data or model is loaded.
    assert train_lora_otf.main(_argv(_PATHS, tmp_path / "run", "--resume_from_checkpoint", elsewhere)) == 2
    err = capsys.readouterr().err
    assert "error: --resume_from_checkpoint" in err and "incomplete checkpoint" in err and "Traceback" not in err


def test_a_refused_resume_keeps_the_runs_config_and_the_gamma_alias_resumes_as_its_split_form(stack, tmp_path,
                                                                                                 capsys):
    """A run started with `--gamma 2.2` resumes with `--model_gamma 2.2 --synthesis_gamma 2.2` (the same values).
    A resume with another model gamma is refused (one `error:` line, exit 2) and must leave the run's
    train_config.yaml as it was: it used to be replaced by the refused run's settings before the check."""
    out = tmp_path / "run"
    fast = ("--max_train_steps", 2, "--validation_steps", 0)
    assert train_lora_otf.main(_argv(stack, out, "--gamma", 2.2, *fast)) == 0
    config = (out / "train_config.yaml").read_text()
    assert yaml.safe_load(config)["model_gamma"] == 2.2 and yaml.safe_load(config)["synthesis_gamma"] == 2.2
    refused = train_lora_otf.main(_argv(stack, out, "--model_gamma", 1, "--max_train_steps", 4, "--validation_steps",
                                        0, "--resume_from_checkpoint", "latest"))
    assert refused == 2 and "error: checkpoint" in (err := capsys.readouterr().err) and "model_gamma=2.2" in err
    assert (out / "train_config.yaml").read_text() == config
    assert train_lora_otf.main(_argv(stack, out, "--model_gamma", 2.2, "--synthesis_gamma", 2.2, "--max_train_steps",
                                     4, "--validation_steps", 0, "--resume_from_checkpoint", "latest")) == 0
    assert [s for s, _ in list_checkpoints(out)] == [2, 4] and _log(out)[-1]["step"] == 4


def test_a_kill_between_publishing_and_rotating_still_ends_within_the_limit(stack, tmp_path):
    """Killed after the last checkpoint was published but before the rolling limit deleted the oldest one: the
    resume at the last step saves nothing more, and the finished run used to keep limit + 1 checkpoints."""
    out = tmp_path / "run"
    fast = ("--max_train_steps", 2, "--checkpointing_steps", 1, "--checkpoints_total_limit", 1, "--validation_steps", 0)
    assert train_lora_otf.main(_argv(stack, out, *fast)) == 0
    assert [s for s, _ in list_checkpoints(out)] == [2]
    shutil.copytree(out / f"{CHECKPOINT_PREFIX}2", out / f"{CHECKPOINT_PREFIX}1")  # the one rotation did not delete
    assert train_lora_otf.main(_argv(stack, out, *fast, "--resume_from_checkpoint", "latest")) == 0
    assert [s for s, _ in list_checkpoints(out)] == [2]
