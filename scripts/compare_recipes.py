"""The tiny-stack learning check, once per recipe variant: how each difference between our default training
recipe and the released one (configs/train_published.yaml) changes what a short run learns.

Each variant is the learning check of tests/scripts/test_train.py (tiny random SDXL stack, MSE only, 32-px
crops, batch 4, seeded) with one group of the preset's settings added, plus the whole preset scaled down. It
prints, and with ``--markdown`` writes, the held-out L1 at step 0 and at the end and its relative change.
The numbers describe the tiny random stack only (its frozen random VAE decoder bounds what is reachable);
they show the direction and rough size of each effect, not what a real run would reach. Variants that change
the synthesis also change the held-out scenes (the validation set is synthesised with the run's options), so
compare their relative change, not their absolute L1. Used for docs/training_recipe.md:

    python -m scripts.compare_recipes --out outputs/recipes --markdown outputs/recipes/table.md
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:  # run as a file path: the repository's packages are not importable
    sys.exit("run it as a module from the repository root: python -m scripts.compare_recipes [options]")

import argparse
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESET = str(REPO / "configs" / "train_published.yaml")

#: The learning check's settings (tests/scripts/test_train.py::test_learning_lowers_heldout_l1).
LEARNING_CHECK = ["--config", str(REPO / "configs" / "train_tiny.yaml"), "--resolution", "32", "--lambda_gan", "0",
                  "--no-edge", "--learning_rate", "5e-3", "--train_batch_size", "4", "--num_validation_samples", "8"]
_SYNTHESIS = ["--min_foregrounds", "1", "--max_foregrounds", "1", "--fg_tilt_p", "0", "--fg_gap", "0",
              "--fg_scale_min", "0.53125", "--fg_scale_max", "1.0625", "--bg_far_min", "0.001", "--bg_far_max", "0.001",
              "--bg_span_max", "0.249", "--bg_tilt_direction", "square", "--brightness_min", "0.7",
              "--brightness_max", "1.7", "--brightness_cap", "1.1", "--brightness_clip", "--aif_composite", "srgb"]
#: name -> extra flags on top of the learning check.
VARIANTS: dict[str, list[str]] = {
    "ours (default recipe)": [],
    "model gamma 1": ["--model_gamma", "1"],
    "MSE on [-1, 1]": ["--loss_signed_range"],
    "PISA 5 x 4, published discretisation": ["--pisa_segments", "5", "--pisa_supersamples", "4", "--pisa_compat"],
    "released scene distributions and input": _SYNTHESIS,
    "released CoC conditioning": ["--coc_condition", "published"],
    "released preset (scaled down)": ["--config", PRESET, "--resolution", "32", "--train_batch_size", "4",
                                      "--learning_rate", "5e-3", "--lr_warmup_steps", "2", "--rank", "4",
                                      "--num_validation_samples", "8", "--no-lpips_pretrained",
                                      "--no-gan_pretrained", "--gan_tiny", "--aperture_samples", "auto",
                                      "--dataloader_num_workers", "0", "--report_to", "none"],
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the tiny base model and one run folder per variant")
    parser.add_argument("--steps", type=int, default=60, help="optimisation steps per run (the check uses 60)")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=None,
                        help="run only these variants (default: all)")
    parser.add_argument("--markdown", default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from models.tiny import save_tiny_sdxl
    from training.run import main as train

    out = Path(args.out)
    sdxl = out / "tiny_sdxl"
    if not (sdxl / "model_index.json").exists():
        save_tiny_sdxl(sdxl)
    rows = ["| variant | held-out L1, step 0 | held-out L1, end | change |", "|---|---|---|---|"]
    for name in args.variants or list(VARIANTS):
        run = out / re.sub(r"[,()\[\]]", "", name).replace(" ", "_")  # a folder name without brackets or commas
        flags = VARIANTS[name]
        # A preset variant brings its own --config; otherwise the learning check's preset and settings apply.
        base = [] if "--config" in flags else LEARNING_CHECK
        steps = str(args.steps)
        argv_run = [*base, *flags, "--pretrained_model_name_or_path", str(sdxl), "--train_data_dir",
                    str(REPO / "test_data" / "otf"), "--output_dir", str(run), "--overwrite_output_dir",
                    "--max_train_steps", steps, "--validation_steps", steps, "--checkpointing_steps", steps,
                    "--log_steps", steps, "--gan_step", str(max(1, args.steps // 2))]
        if train(argv_run) != 0:  # the train_lora_otf.py command line, in-process
            print(f"{name}: the run failed")
            return 1
        val = [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines()]
        first, last = val[0]["l1"], val[-1]["l1"]
        rows.append(f"| {name} | {first:.4f} | {last:.4f} | {100 * (last / first - 1):+.1f}% |")
    table = "\n".join(rows)
    print(table)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
