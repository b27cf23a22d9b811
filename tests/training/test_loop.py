"""training/loop.py's pieces: the run description, the models it builds, the non-finite guard, the step log,
and validation's metrics (the same numbers as evaluate.py's)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.training.helpers import PATHS, strict_json, train_argv
from training.checkpoint import TrainProgress
from training.config import parse_args
from training.loop import NonFiniteGuard, NonFiniteLossError, describe_run, validate

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pisa_training_settings_are_recorded_for_inference(tmp_path):
    from types import SimpleNamespace

    from models.pipeline import pisa_compat_for

    args = parse_args(train_argv(PATHS, tmp_path))
    assert (args.pisa_seed, args.pisa_dropout) == (None, 0.1)  # published: random jitter, attention dropout 0.1
    c = SimpleNamespace(lora_modules=["m"], vae_params=[], pisa_layers=["down_blocks.1.attentions.0.x.attn1"])
    meta = describe_run(args, c, 1)
    assert {k: meta["pisa"][k] for k in ("seed", "dropout", "compat")} == {"seed": None, "dropout": 0.1,
                                                                           "compat": False}
    assert pisa_compat_for(meta) is False
    meta = describe_run(parse_args(train_argv(PATHS, tmp_path, "--pisa_seed", 5, "--pisa_dropout", 0)), c, 1)
    assert (meta["pisa"]["seed"], meta["pisa"]["dropout"]) == (5, 0.0)


def test_build_models_installs_pisa_with_the_training_settings(stack, tmp_path):
    from models.pisa import PISAAttnProcessor
    from training.loop import build_models

    args = parse_args(train_argv(stack, tmp_path))
    model, _, pisa_layers, _, _ = build_models(args, torch.device("cpu"))
    processors = [p for p in model.unet.attn_processors.values() if isinstance(p, PISAAttnProcessor)]
    assert processors and len(pisa_layers) >= 1
    assert all((p.seed, p.dropout_p) == (None, 0.1) for p in processors)


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
    new = strict_json(lines[-1])
    assert new == {"step": 3, "psnr": PSNR_MAX_DB, "total": None, "grad_norm": None, "terms": [1.0, None],
                   "skipped": True}


class _FixedRender(torch.nn.Module):
    """Stands in for the one-step model: ``validate`` calls it like ``OneStepBokeh`` and gets ``pred``."""

    def __init__(self, pred: torch.Tensor):
        super().__init__()
        self.pred = pred

    def forward(self, aif, disparity, coc_px, *, original_size, crop_top_left, pisa_hardness):
        return self.pred.to(aif.device)


def test_validation_and_evaluation_report_the_same_psnr_and_ssim(tmp_path):
    """One SSIM and one PSNR (issue 22): validation (training.loop.validate) and evaluation (metrics.report's
    per-image scoring, through PNG files as evaluate.py reads them) give the same numbers on one pair.

    Validation used to take SSIM from piq.ssim, which averages only the interior where the 11-px window fits
    (here 54 x 70 of 64 x 80 px) and average-pools images wider than 256 px; metrics.image's kornia map covers
    every pixel ('same' reflect padding), so the reported value changed (measured on this pair: piq 0.76734,
    metrics.image 0.74128; the interior of metrics.image's map averages to piq's 0.76735)."""
    import piq

    from data.io import save_image
    from metrics.image import SSIM_WINDOW, psnr_per_image, ssim_map, ssim_per_image
    from metrics.report import Pair, evaluate_pairs

    generator = torch.Generator().manual_seed(22)
    # A smooth random image and a noisy copy, on the 8-bit grid so the PNGs hold exactly these values.
    target = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 10, generator=generator), size=(64, 80),
                                             mode="bilinear", align_corners=False)
    pred = (target + 0.05 * torch.randn(target.shape, generator=generator)).clamp(0, 1)
    target, pred = (target * 255).round() / 255, (pred * 255).round() / 255

    batch = {"aif": torch.rand(1, 3, 64, 80, generator=generator), "disparity": torch.rand(1, 1, 64, 80),
             "coc_px": torch.zeros(1, 1, 64, 80), "original_size": [(64, 80)], "crop_top_left": [(0, 0)],
             "bokeh": target}
    metrics, grid = validate(_FixedRender(pred), [batch], hardness=None, device=torch.device("cpu"))
    assert grid.shape == (3, 64, 4 * 80)

    evaluation = evaluate_pairs([Pair("pair", save_image(tmp_path / "pred.png", pred[0]),
                                      save_image(tmp_path / "gt.png", target[0]))])
    row = evaluation.rows[0]
    assert not evaluation.failures
    assert metrics["ssim"] == pytest.approx(row["ssim"], rel=1e-6, abs=1e-7)
    assert metrics["psnr"] == pytest.approx(row["psnr"], rel=1e-6)
    assert metrics["ssim"] == pytest.approx(float(ssim_per_image(pred, target)[0]), rel=1e-6)
    assert metrics["psnr"] == pytest.approx(float(psnr_per_image(pred, target)[0]), rel=1e-6)
    assert 0.5 < metrics["ssim"] < 0.95 and 20 < metrics["psnr"] < 35  # a pair that is similar, not equal

    old = float(piq.ssim(pred, target, data_range=1.0))  # what validation reported before
    assert abs(old - metrics["ssim"]) > 1e-2, (old, metrics["ssim"])
    # Why: piq averages the same SSIM map over the interior only (no padding; no pooling below 256 px).
    half = SSIM_WINDOW // 2
    assert old == pytest.approx(float(ssim_map(pred, target)[..., half:-half, half:-half].mean()), abs=1e-4)
