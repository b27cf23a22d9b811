"""Shared pieces of the training tests (here and in tests/scripts/): a tiny fg/bg folder, the tiny preset's
command line, strict-JSON log readers, a stand-in for accelerate's ``save_state``, and a run folder's logs with
the check of its training-curves PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from training.checkpoint import META_NAME
from training.loop import StepLog

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "train_tiny.yaml")


def write_otf_data(root: Path) -> Path:
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


def build_stack(root: Path) -> dict:
    """The tiny SDXL stack (models/tiny.py) and :func:`write_otf_data` under ``root``: ``{"sdxl", "data"}`` paths."""
    from models.tiny import save_tiny_sdxl

    return dict(sdxl=str(save_tiny_sdxl(root / "sdxl")), data=str(write_otf_data(root / "data")))


def train_argv(stack, out, *extra):
    """``train_lora_otf.py``'s arguments for the tiny preset on ``stack`` (``{"sdxl", "data"}``) into ``out``."""
    return ["--config", TINY, "--pretrained_model_name_or_path", stack["sdxl"], "--train_data_dir", stack["data"],
            "--output_dir", str(out), *map(str, extra)]


PATHS = dict(sdxl="tiny-sdxl", data="otf-data")  # parsing does not touch the paths


def strict_json(line: str) -> dict:
    """json.loads that refuses NaN / Infinity: the logs are strict JSON (non-finite values are null)."""
    def refuse(constant):
        raise AssertionError(f"non-strict JSON constant {constant} in log line {line!r}")

    return json.loads(line, parse_constant=refuse)


def read_log(out, name: str = "train_log.jsonl") -> list[dict]:
    """The records of a run's JSON-lines log, each read with :func:`strict_json`."""
    return [strict_json(line) for line in (Path(out) / name).read_text().splitlines()]


class FakeAccelerator:
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


def write_run(run, steps: int = 12, *, validation_every: int | None = 4, nan_step: int | None = 5):
    """Logs as train_lora_otf.py writes them: StepLog lines with training.run's keys (a skipped non-finite step's
    loss is null), validation at step 0 and every ``validation_every`` steps (None: no validation.jsonl)."""
    run.mkdir(parents=True, exist_ok=True)
    train = StepLog(run / "train_log.jsonl", -1, True)
    for step in range(1, steps + 1):
        mse = 0.05 / step
        train.write({"step": step, "total": float("nan") if step == nan_step else mse + 0.02, "mse": mse,
                     "edge": 0.02, "gan_g": 0.7 if step > 2 else None, "gan_d": 1.3, "skipped": step == nan_step,
                     "psnr": float(10 * np.log10(1 / mse)), "lr": 1e-3 * min(1.0, step / 2), "grad_norm": 1.0 / step})
    if validation_every:
        validation = StepLog(run / "validation.jsonl", -1, True)
        for step in range(0, steps + 1, validation_every):
            validation.write({"step": step, "psnr": 20.0 + step, "ssim": 0.5 + step / 100, "l1": 0.1 - step / 1000})
    return run


def check_png(path, size=(1600, 750)):
    """A complete PNG of the figure's size (16 x 7.5 in at 100 dpi) with something drawn on it."""
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size
        image.verify()
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.01  # lines and text, not a blank page
