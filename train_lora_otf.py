"""Train BokehDiff: LoRA on the SDXL UNet (+ the VAE encoder's ends) on on-the-fly synthesised bokeh pairs.

    accelerate launch train_lora_otf.py --train_data_dir prepared/otf --output_dir runs/bokehdiff \\
        --pretrained_model_name_or_path SG161222/RealVisXL_V5.0 --mixed_precision bf16 [--config PRESET.yaml]

Options and their defaults: configs/train_default.yaml and --help; the run (and its exit codes) lives in
``training/run.py``, the rest of the machinery in ``training/``.
"""

from __future__ import annotations

import sys

from training.run import main, prepare_output_dir, setup_accelerator

__all__ = ["main", "prepare_output_dir", "setup_accelerator"]  # importable from here as before

if __name__ == "__main__":
    sys.exit(main())
