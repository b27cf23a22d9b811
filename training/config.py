"""Command-line and YAML configuration of ``train_lora_otf.py``: one source of truth, unknown keys fail.

Resolution order (later wins):

1. ``configs/train_default.yaml``: **every** option's default lives there (the parser itself holds none, so
   the YAML and ``--help`` cannot drift apart; a test checks the two cover the same keys);
2. ``--config PRESET.yaml`` (e.g. ``configs/train_tiny.yaml``): overrides some defaults;
3. command-line flags.

A YAML key that is not an option, or a value of the wrong type, raises ``ValueError`` naming the file, the key
and the fix. The resolved configuration is written to ``<output_dir>/train_config.yaml`` by the training script
(and into every checkpoint's metadata), so a run can be repeated with ``--config <output_dir>/train_config.yaml``.

The published README command of BokehDiff is accepted unchanged (``--opt_vae 1`` or bare ``--opt_vae``; boolean
flags such as ``--lpips`` also have ``--no-lpips`` forms so a preset can be overridden from the command line).
"""

from __future__ import annotations

import argparse
import difflib
import os
from pathlib import Path
from typing import Any, Sequence

import yaml

__all__ = [
    "DEFAULT_CONFIG",
    "LR_SCHEDULERS",
    "build_parser",
    "dump_config",
    "load_yaml_config",
    "parse_args",
]

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train_default.yaml"

# diffusers.optimization.get_scheduler names that need no extra arguments (piecewise_constant needs step rules).
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")

_BOOL = argparse.BooleanOptionalAction


def build_parser() -> argparse.ArgumentParser:
    """The parser of every training option. Defaults are filled in from ``configs/train_default.yaml``."""
    p = argparse.ArgumentParser(
        prog="train_lora_otf.py",
        description="Train BokehDiff (LoRA on the SDXL UNet + the VAE encoder's ends) on on-the-fly synthesised "
        "all-in-focus / bokeh pairs. Launch with `accelerate launch` for several processes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", type=str, default=None,
                   help="YAML preset overriding configs/train_default.yaml (unknown keys are errors); "
                   "command-line flags override it")
    p.add_argument("--dry_run", action=_BOOL, help="print the resolved configuration and exit")

    g = p.add_argument_group("model")
    g.add_argument("--pretrained_model_name_or_path", type=str,
                   help="SDXL base model: hub id (e.g. SG161222/RealVisXL_V5.0) or local diffusers folder")
    g.add_argument("--revision", type=str, help="hub revision of the base model")
    g.add_argument("--variant", type=str, help="weight variant of the base model files, e.g. fp16")
    g.add_argument("--rank", type=int, help="LoRA rank (alpha = rank unless --lora_alpha is set)")
    g.add_argument("--lora_alpha", type=float, help="LoRA alpha; null means equal to --rank")
    g.add_argument("--opt_vae", type=int, nargs="?", const=1,
                   help="1: also train the VAE encoder's conv_in, mid_block and conv_out (at vae_lr_scale x LR); 0: not")
    g.add_argument("--timestep", type=int, help="the one-step model's fixed diffusion timestep")
    g.add_argument("--gamma", type=float, help="gamma of the model's input/output transfer (1 disables)")
    g.add_argument("--pisa", action=_BOOL, help="install PISA processors (--no-pisa is the paper's ablation)")
    g.add_argument("--pisa_hardness_start", type=float, help="PISA hardness at step 0 (soft CoC constraint)")
    g.add_argument("--pisa_hardness_per_step", type=float,
                   help="hardness added per optimisation step (the published code: +1 per PISA call, 2 calls/step)")
    g.add_argument("--pisa_hardness_max", type=float, help="hardness cap (the inference value)")
    g.add_argument("--pisa_seed", type=int,
                   help="occlusion-jitter seed of the PISA layers while training; null: a fresh seed per call from "
                   "the torch RNG (the published random jitter; resumes exactly, the RNG state is checkpointed)")
    g.add_argument("--pisa_dropout", type=float,
                   help="dropout on PISA's attention weights while training (published: 0.1; never at inference)")
    g.add_argument("--gradient_checkpointing", action=_BOOL, help="UNet gradient checkpointing (memory for time)")
    g.add_argument("--enable_xformers_memory_efficient_attention", action=_BOOL,
                   help="accepted for the published command; attention already uses PyTorch SDPA / chunked PISA")
    g.add_argument("--allow_tf32", action=_BOOL, help="allow TF32 matmuls on Ampere+ GPUs")

    g = p.add_argument_group("data")
    g.add_argument("--train_data_dir", type=str, help="folder with fg/ (RGBA PNG) and bg/ (images) subfolders")
    g.add_argument("--resolution", type=int, help="training crop size in pixels (multiple of 16)")
    g.add_argument("--train_batch_size", type=int, help="batch size per process")
    g.add_argument("--dataloader_num_workers", type=int, help="DataLoader worker processes (0: main process)")
    g.add_argument("--synthesize_on_device", action=_BOOL,
                   help="workers build the scene layers; the ground-truth bokeh is rendered on the accelerator in "
                   "the main process (faster on GPU; CPU workers never touch CUDA)")
    g.add_argument("--validation_data_dir", type=str,
                   help="fg/bg folder of the held-out set; null: train_data_dir with --validation_seed "
                   "(fresh scenes, same source images)")
    g.add_argument("--num_validation_samples", type=int, help="size of the fixed held-out set")
    g.add_argument("--validation_seed", type=int, help="seed of the held-out set's scene synthesis")

    g = p.add_argument_group("optimisation")
    g.add_argument("--seed", type=int, help="seed of initialisation, data order and synthesis")
    g.add_argument("--max_train_steps", type=int, help="optimisation steps to run")
    g.add_argument("--gradient_accumulation_steps", type=int, help="micro-batches per optimisation step")
    g.add_argument("--learning_rate", type=float, help="LoRA learning rate")
    g.add_argument("--vae_lr_scale", type=float, help="VAE encoder LR as a multiple of --learning_rate (paper: 0.1)")
    g.add_argument("--disc_lr_scale", type=float, help="discriminator LR as a multiple of --learning_rate (paper: 2)")
    g.add_argument("--lr_scheduler", type=str, choices=LR_SCHEDULERS, help="diffusers LR schedule")
    g.add_argument("--lr_warmup_steps", type=int, help="linear warm-up steps of the LR schedule")
    g.add_argument("--lr_num_cycles", type=int, help="hard restarts of cosine_with_restarts")
    g.add_argument("--lr_power", type=float, help="power of the polynomial schedule")
    g.add_argument("--adam_beta1", type=float, help="AdamW beta1")
    g.add_argument("--adam_beta2", type=float, help="AdamW beta2")
    g.add_argument("--adam_weight_decay", type=float, help="AdamW weight decay")
    g.add_argument("--adam_epsilon", type=float, help="AdamW epsilon")
    g.add_argument("--max_grad_norm", type=float, help="gradient clipping norm (per parameter group)")
    g.add_argument("--mixed_precision", type=str, choices=("no", "fp16", "bf16"),
                   help="accelerate mixed precision: bf16 (Ampere+ GPUs) or no; fp16 is rejected (see validate_args)")
    g.add_argument("--max_nonfinite_steps", type=int,
                   help="stop (non-zero exit) after this many consecutive steps with a non-finite loss or gradient")

    g = p.add_argument_group("losses")
    g.add_argument("--lambda_l2", type=float, help="weight of the MSE term")
    g.add_argument("--edge", action=_BOOL, help="add the multi-scale edge loss")
    g.add_argument("--lambda_edge", type=float, help="weight of the edge loss")
    g.add_argument("--lpips", action=_BOOL, help="add the LPIPS (VGG) loss")
    g.add_argument("--lambda_lpips", type=float, help="weight of the LPIPS loss")
    g.add_argument("--lpips_pretrained", action=_BOOL,
                   help="LPIPS with ImageNet VGG weights (downloads once); --no-lpips_pretrained for offline tests")
    g.add_argument("--lambda_gan", type=float, help="weight of the generator's GAN term; 0 disables the GAN")
    g.add_argument("--gan_step", type=int, help="the generator's GAN term starts after this many steps")
    g.add_argument("--lpips_vgg_weights", type=str, help="local torchvision VGG-16 weights for LPIPS (offline)")
    g.add_argument("--gan_loss_type", type=str,
                   help="GAN loss (the paper: multilevel_sigmoid_s); empty or null disables the GAN")
    g.add_argument("--cv_type", type=str, help="discriminator backbone family: convnext, clip or dino")
    g.add_argument("--gan_pretrained", action=_BOOL, help="pretrained discriminator backbone (must be on for real runs)")
    g.add_argument("--gan_backbone_weights", type=str, help="local checkpoint of the discriminator backbone")
    g.add_argument("--gan_tiny", action=_BOOL, help="tiny random discriminator backbone (tests only)")

    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--output_dir", type=str, help="run folder: checkpoints, export, logs, resolved config")
    g.add_argument("--checkpointing_steps", type=int, help="save a resumable checkpoint every N steps")
    g.add_argument("--checkpoints_total_limit", type=int, help="keep at most N checkpoints (null: all)")
    g.add_argument("--resume_from_checkpoint", type=str,
                   help="'latest' (newest checkpoint in output_dir; starts fresh if none) or a checkpoint folder")
    g.add_argument("--allow_inexact_resume", action=_BOOL,
                   help="resume even if this process's random_states_<rank>.pkl in the checkpoint cannot be read "
                   "(the run then continues with other random draws: not exact; without it that is an error)")
    g.add_argument("--overwrite_output_dir", action=_BOOL,
                   help="start fresh in an output_dir that holds checkpoints of an earlier run, deleting them first "
                   "(without it such a run is refused; never written to the resolved config)")
    g.add_argument("--validation_steps", type=int, help="validate (PSNR/SSIM, images) every N steps; 0 disables")
    g.add_argument("--report_to", type=str, help="accelerate tracker: tensorboard, wandb, all or none")
    g.add_argument("--logging_dir", type=str, help="tracker folder inside output_dir")
    g.add_argument("--log_steps", type=int, help="status line / tracker scalars every N steps")
    g.add_argument("--local_rank", type=int, help="set by torch.distributed launchers; read from LOCAL_RANK")
    return p


def _option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    skip = {"help", "config"}
    return {a.dest: a for a in parser._actions if a.dest not in skip}


def _check_value(key: str, value: Any, action: argparse.Action, source: str) -> None:
    """Type-check one YAML value against its option (YAML types, not strings, so argparse cannot do it)."""
    if value is None:
        return
    where = f"{source}: key '{key}'"
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, found {value!r}")
        return
    kind = action.type
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{where} must be an integer, found {value!r} ({type(value).__name__})")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{where} must be a number, found {value!r} ({type(value).__name__})")
    if kind is str and not isinstance(value, str):
        raise ValueError(f"{where} must be a string, found {value!r} ({type(value).__name__})")
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{where} must be one of {list(action.choices)}, found {value!r}")


def load_yaml_config(path: str | os.PathLike, parser: argparse.ArgumentParser | None = None) -> dict[str, Any]:
    """Read a YAML preset and check every key and value against the parser's options.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a mapping, an unknown key (with the closest option name), or a mistyped value.
    """
    parser = parser or build_parser()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config: no such file {str(path)!r}; presets live in configs/ (e.g. train_tiny.yaml)")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option: value, found {type(data).__name__}")
    actions = _option_actions(parser)
    for key, value in data.items():
        if key not in actions:
            close = difflib.get_close_matches(str(key), list(actions), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "; see `train_lora_otf.py --help`"
            raise ValueError(f"{path}: unknown key '{key}'{hint}")
        _check_value(key, value, actions[key], str(path))
        if actions[key].dest == "opt_vae" and value not in (0, 1):
            raise ValueError(f"{path}: key 'opt_vae' must be 0 or 1, found {value!r}")
    return data


def parse_args(input_args: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``input_args`` (``sys.argv[1:]`` when None) into the resolved, validated configuration."""
    parser = build_parser()
    defaults = load_yaml_config(DEFAULT_CONFIG, parser)
    missing = sorted(set(_option_actions(parser)) - set(defaults))
    if missing:
        raise ValueError(f"{DEFAULT_CONFIG}: no default for {missing}; every option needs one there")
    parser.set_defaults(**defaults)
    # A first pass finds --config so its values become defaults that the command line then overrides.
    known, _ = parser.parse_known_args(input_args)
    if known.config is not None:
        parser.set_defaults(**load_yaml_config(known.config, parser))
    args = parser.parse_args(input_args)
    env_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_rank != -1:
        args.local_rank = env_rank
    validate_args(args)
    return args


def validate_args(args: argparse.Namespace) -> None:
    """Check flag combinations; raise ``ValueError`` naming the flag, what it must be and what was found."""
    for name in ("train_data_dir", "pretrained_model_name_or_path", "output_dir"):
        if not getattr(args, name):
            raise ValueError(f"--{name} is required (on the command line or in the --config preset)")
    positive = ("rank", "resolution", "train_batch_size", "max_train_steps", "gradient_accumulation_steps",
                "checkpointing_steps", "max_nonfinite_steps", "log_steps", "num_validation_samples")
    for name in positive:
        if getattr(args, name) is None or getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, found {getattr(args, name)!r}")
    if args.resolution % 16:
        raise ValueError(f"--resolution must be a multiple of 16 (VAE 8x and PISA's 1/16 token grid), "
                         f"found {args.resolution}; try {max(16, args.resolution // 16 * 16)}")
    if args.opt_vae not in (0, 1):
        raise ValueError(f"--opt_vae must be 0 or 1, found {args.opt_vae}")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        raise ValueError(f"--checkpoints_total_limit must be >= 1 or null, found {args.checkpoints_total_limit}")
    if args.validation_steps < 0 or args.lr_warmup_steps < 0 or args.gan_step < 0:
        raise ValueError("--validation_steps, --lr_warmup_steps and --gan_step must be >= 0")
    if args.learning_rate <= 0:
        raise ValueError(f"--learning_rate must be > 0, found {args.learning_rate}")
    if args.lr_num_cycles < 1:
        raise ValueError(f"--lr_num_cycles must be >= 1, found {args.lr_num_cycles}")
    for name in ("lambda_l2", "lambda_edge", "lambda_lpips", "lambda_gan"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0, found {getattr(args, name)}")
    if not 0 <= args.pisa_dropout < 1:
        raise ValueError(f"--pisa_dropout must be in [0, 1) (published: 0.1), found {args.pisa_dropout}")
    if args.mixed_precision == "fp16":
        # One GradScaler (accelerate's) serves the generator and discriminator optimisers: clipping unscales
        # every prepared optimiser each time it is called and each optimiser's step updates the shared scale,
        # so fp16 fails on the first step or unscales twice. bf16 needs no loss scaling at all.
        raise ValueError("--mixed_precision fp16 is not supported: its loss scaling is not wired for the separate "
                         "generator and discriminator optimisers. Use --mixed_precision bf16 (Ampere or newer GPUs; "
                         "no loss scaling needed) or --mixed_precision no (float32)")
    if args.pisa_hardness_start < 1 or args.pisa_hardness_max < args.pisa_hardness_start:
        raise ValueError("PISA hardness must satisfy 1 <= --pisa_hardness_start <= --pisa_hardness_max "
                         f"(log(hardness) is the CoC sigmoid's slope), found {args.pisa_hardness_start} and "
                         f"{args.pisa_hardness_max}")


def dump_config(args: argparse.Namespace, path: str | os.PathLike) -> Path:
    """Write the resolved options (loadable again with ``--config``) as YAML; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One-off actions, not settings: a rerun with `--config train_config.yaml` must not delete checkpoints.
    skip = ("config", "dry_run", "local_rank", "overwrite_output_dir", "allow_inexact_resume")
    data = {k: v for k, v in sorted(vars(args).items()) if k not in skip}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=True))
    os.replace(tmp, path)
    return path
