"""Command-line and YAML configuration of ``train_lora_otf.py``: one source of truth, unknown keys fail.

Resolution order (later wins):

1. ``configs/train_default.yaml``: **every** option's default lives there (the parser itself holds none, so
   the YAML and ``--help`` cannot drift apart; a test checks the two cover the same keys);
2. ``--config PRESET.yaml`` (e.g. ``configs/train_tiny.yaml``): overrides some defaults;
3. command-line flags.

A YAML key that is not an option, or a value of the wrong type, raises ``ValueError`` naming the file, the key
and the fix. The resolved configuration is written to ``<output_dir>/train_config.yaml`` by the training script
(and into every checkpoint's metadata), so a run can be repeated with ``--config <output_dir>/train_config.yaml``.

Gamma: ``--model_gamma`` is the model's input/output transfer (``models.onestep``: the VAE sees
``srgb ** model_gamma``), ``--synthesis_gamma`` the gamma the training pairs are rendered in (linear light =
``srgb ** synthesis_gamma``). The released model was trained at model gamma 1 on pairs rendered at 2.2.
``--gamma G`` is kept as an alias that sets both. Rule when combined: sources apply in the order above and,
within one source, the alias together with either specific key is an error (ambiguous); a later source's
specific key overrides an earlier source's alias and vice versa (e.g. ``--config train_published.yaml
--gamma 2.2`` trains with 2.2 for both). After resolution ``gamma`` is null in the written configuration.

The published README command of BokehDiff is accepted unchanged (``--opt_vae 1`` or bare ``--opt_vae``; boolean
flags such as ``--lpips`` also have ``--no-lpips`` forms so a preset can be overridden from the command line).
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from data.io import write_text_atomic

__all__ = [
    "DEFAULT_CONFIG",
    "LR_SCHEDULERS",
    "TRACKER_PACKAGES",
    "build_parser",
    "check_report_to",
    "report_to_names",
    "dump_config",
    "load_yaml_config",
    "parse_args",
    "resolve_gammas",
]

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train_default.yaml"

# diffusers.optimization.get_scheduler names that need no extra arguments (piecewise_constant needs step rules).
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")

_BOOL = argparse.BooleanOptionalAction


def _optional(kind: type):
    """An argparse type for a number option whose YAML default may be null: ``none`` / ``null`` on the command
    line give None (argparse alone could not say null), anything else is parsed as ``kind``."""
    def parse(text: str):
        return None if text.strip().lower() in ("none", "null") else kind(text)

    parse.kind = kind  # for _check_value (YAML values are typed, not strings)
    parse.__name__ = kind.__name__  # argparse's "invalid int value" message
    return parse


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
    g.add_argument("--lora_alpha", type=_optional(float), help="LoRA alpha; null (none) means equal to --rank")
    g.add_argument("--opt_vae", type=int, nargs="?", const=1,
                   help="1: also train the VAE encoder's conv_in, mid_block and conv_out (at vae_lr_scale x LR); 0: not")
    g.add_argument("--timestep", type=int, help="the one-step model's fixed diffusion timestep")
    g.add_argument("--gamma", type=float,
                   help="alias setting both --model_gamma and --synthesis_gamma (combining rule: docs/training_recipe.md)")
    g.add_argument("--model_gamma", type=float,
                   help="gamma of the model's input/output transfer: the VAE sees srgb ** model_gamma (1 disables; "
                   "the released model: 1); recorded in the adapter so inference uses it")
    g.add_argument("--synthesis_gamma", type=float,
                   help="gamma of the training data's rendering: linear light = srgb ** synthesis_gamma (released: 2.2)")
    g.add_argument("--pisa", action=_BOOL, help="install PISA processors (--no-pisa is the paper's ablation)")
    g.add_argument("--pisa_hardness_start", type=float, help="PISA hardness at step 0 (soft CoC constraint)")
    g.add_argument("--pisa_hardness_per_step", type=float,
                   help="hardness added per optimisation step (the published code: +1 per PISA call, 2 calls/step)")
    g.add_argument("--pisa_hardness_max", type=float,
                   help="hardness cap while training (published: 1e6; inference uses 1e7: inference_hf.py --pisa_hardness)")
    g.add_argument("--pisa_seed", type=_optional(int),
                   help="occlusion-jitter seed of the PISA layers while training; null (none): a fresh seed per call "
                   "from the torch RNG (the published random jitter; resumes exactly, the RNG state is checkpointed)")
    g.add_argument("--pisa_dropout", type=float,
                   help="dropout on PISA's attention weights while training (published: 0.1; never at inference)")
    g.add_argument("--pisa_segments", type=int, help="PISA occlusion: segment samples per ray while training")
    g.add_argument("--pisa_supersamples", type=int, help="PISA occlusion: supersamples per pair while training")
    g.add_argument("--pisa_compat", action=_BOOL,
                   help="train PISA with the published discretisation (models.pisa compat); recorded in the adapter "
                   "so inference uses the same one")
    g.add_argument("--gradient_checkpointing", action=_BOOL, help="UNet gradient checkpointing (memory for time)")
    g.add_argument("--enable_xformers_memory_efficient_attention", action=_BOOL,
                   help="accepted for the published command; attention already uses PyTorch SDPA, PISA its own "
                   "kernel (sparse or chunked, picked per call)")
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

    g = p.add_argument_group("data synthesis (data.synthesis.SceneConfig / OnTheFlyDataset)")
    g.add_argument("--min_foregrounds", type=int, help="fewest foreground cut-outs per scene")
    g.add_argument("--max_foregrounds", type=int, help="most foreground cut-outs per scene")
    g.add_argument("--fg_scale_min", type=float, help="foreground size: lowest sqrt(box area / scene area)")
    g.add_argument("--fg_scale_max", type=float, help="foreground size: highest sqrt(box area / scene area)")
    g.add_argument("--fg_tilt_p", type=float, help="probability that a foreground plane is tilted (0: fronto-parallel)")
    g.add_argument("--fg_gap", type=float, help="least disparity between the background's nearest point and a foreground")
    g.add_argument("--bg_far_min", type=float, help="background disparity at its farthest point: lowest value")
    g.add_argument("--bg_far_max", type=float, help="background disparity at its farthest point: highest value")
    g.add_argument("--bg_span_max", type=float, help="background disparity span (tilt) is U(0, bg_span_max)")
    g.add_argument("--bg_tilt_direction", type=str, choices=("angle", "square"),
                   help="background tilt direction: uniform angle, or uniform in [-1, 1]^2 (released)")
    g.add_argument("--brightness_p", type=float, help="probability of the brightness augmentation")
    g.add_argument("--brightness_min", type=float, help="brightness factor U(min, max), on sRGB values")
    g.add_argument("--brightness_max", type=float, help="brightness factor U(min, max), on sRGB values")
    g.add_argument("--brightness_cap", type=_optional(float),
                   help="brightness factor capped at this value (null, or none on the command line: no cap)")
    g.add_argument("--brightness_clip", action=_BOOL,
                   help="allow factors above 1, clipping the images to [0, 1] (released)")
    g.add_argument("--aif_composite", type=str, choices=("linear", "srgb"),
                   help="composite the all-in-focus input in linear light or on sRGB values (released)")
    g.add_argument("--coc_condition", type=str, choices=("rendered", "published"),
                   help="condition on the rendered CoC, or on the release's K * U(2/3, 1) * max(f, 1 - f)")
    g.add_argument("--aperture_samples", type=str, choices=("auto", "published"),
                   help="ground-truth aperture samples: the renderer's count, or the release's 21 t-per-side grid count")

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
                   help="accelerate mixed precision: bf16 (Ampere+ GPUs) or no; fp16 is rejected (its loss "
                        "scaling is not wired for the separate generator and discriminator optimisers)")
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
    g.add_argument("--gan_backbone", type=str,
                   help="timm model name overriding the cv_type's backbone (released: convnext_base.fb_in22k)")
    g.add_argument("--gan_levels", type=str, choices=("all", "last"),
                   help="discriminator heads on every backbone level or only the last (released)")
    g.add_argument("--gan_normalize", action=_BOOL,
                   help="normalise the discriminator input with the backbone's mean/std (released: no)")
    g.add_argument("--gan_head", type=str, choices=("patch", "mlp"), help="discriminator head (released: mlp)")
    g.add_argument("--gan_head_channels", type=int, help="hidden channels of each discriminator head (released: 256)")
    g.add_argument("--gan_generator_target", type=float,
                   help="BCE target of the generator's GAN term (1; released: the real label 0.8)")
    g.add_argument("--gan_batch_reduction", type=str, choices=("mean", "sum"),
                   help="GAN losses averaged or summed (released) over the batch")
    g.add_argument("--loss_signed_range", action=_BOOL,
                   help="MSE and edge loss on images mapped to [-1, 1] (released; 4x the MSE of [0, 1])")
    g.add_argument("--edge_weight_mode", type=str, choices=("channel_mean", "per_channel"),
                   help="edge-loss weights per pixel (channel mean) or per channel (released)")
    g.add_argument("--loss_clamp_pred", action=_BOOL,
                   help="clamp the prediction to [0, 1] before the edge, LPIPS and GAN terms (released)")

    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--output_dir", type=str, help="run folder: checkpoints, export, logs, resolved config")
    g.add_argument("--checkpointing_steps", type=int, help="save a resumable checkpoint every N steps")
    g.add_argument("--checkpoints_total_limit", type=_optional(int),
                   help="keep at most N checkpoints (null, or none on the command line: all)")
    g.add_argument("--resume_from_checkpoint", type=str,
                   help="'latest' (newest checkpoint in output_dir; starts fresh if none) or a checkpoint folder")
    g.add_argument("--allow_inexact_resume", action=_BOOL,
                   help="resume even if this process's random_states_<rank>.pkl in the checkpoint cannot be read "
                   "(the run then continues with other random draws: not exact; without it that is an error)")
    g.add_argument("--overwrite_output_dir", action=_BOOL,
                   help="start fresh in an output_dir that holds an earlier run, deleting its checkpoints, logs, config "
                   "and exported weights first; other files are left alone (without it such a run is refused; never "
                   "written to the resolved config)")
    g.add_argument("--validation_steps", type=int, help="validate (PSNR/SSIM, images) every N steps; 0 disables")
    g.add_argument("--report_to", type=str, help="accelerate tracker: tensorboard, wandb, all or none (a tracker "
                   "whose package is not installed is refused, with the install command)")
    g.add_argument("--logging_dir", type=str, help="tracker folder inside output_dir")
    g.add_argument("--log_steps", type=int, help="status line / tracker scalars every N steps")
    g.add_argument("--local_rank", type=int, help="set by torch.distributed launchers; read from LOCAL_RANK")

    g = p.add_argument_group("sharing (model card, hub)")
    g.add_argument("--push_to_hub", action=_BOOL,
                   help="at the end, upload the export, model card and validation grids to the Hugging Face hub "
                   "(checked before training: an unreachable hub or a missing token is refused at once)")
    g.add_argument("--hub_model_id", type=str,
                   help="hub repo for --push_to_hub, e.g. user/bokehdiff-lora (null: the output_dir's name)")
    g.add_argument("--hub_token", type=str,
                   help="hub token for --push_to_hub (null: HF_TOKEN or the one `hf auth login` stored); never "
                   "written to train_config.yaml, the checkpoints or the trackers")
    g.add_argument("--model_card_license", type=str,
                   help="license in the model card's metadata (the base SDXL's: openrail++)")
    return p


# The packages an accelerate tracker can use (one suffices) and how to install one ("all" uses what is installed).
TRACKER_PACKAGES = {"wandb": (("wandb",), "pip install wandb"),
                    "tensorboard": (("tensorboard", "tensorboardX"), "pip install tensorboard"),
                    "comet_ml": (("comet_ml",), "pip install comet_ml"), "mlflow": (("mlflow",), "pip install mlflow"),
                    "clearml": (("clearml",), "pip install clearml"), "aim": (("aim",), "pip install aim"),
                    "dvclive": (("dvclive",), "pip install dvclive")}


def report_to_names(report_to: str | None) -> list[str]:
    """The trackers ``--report_to`` names (comma-separated), without ``none``; empty for none."""
    return [n.strip() for n in (report_to or "").split(",") if n.strip() and n.strip() != "none"]


def check_report_to(report_to: str | None) -> None:
    """Refuse a ``--report_to`` name accelerate does not know (it raised a bare ValueError after the output folder
    was made) and a tracker whose package is not installed (accelerate would only warn and train untracked).
    Raises ``ValueError`` with the supported names or the install command."""
    from accelerate.utils import LoggerType

    known = [t.value for t in LoggerType]
    for name in report_to_names(report_to):
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean --report_to {close[0]}? " if close else ""
            raise ValueError(f"--report_to {report_to}: '{name}' is not a tracker accelerate supports "
                             f"({', '.join(known)}, or none); {hint}pass one of those (comma-separated for several)")
        if name in TRACKER_PACKAGES and all(importlib.util.find_spec(m) is None for m in TRACKER_PACKAGES[name][0]):
            raise ValueError(f"--report_to {report_to}: the '{name}' tracker is not installed, so the run would be "
                             f"untracked. Install it (`{TRACKER_PACKAGES[name][1]}`) or choose another tracker "
                             f"(--report_to tensorboard, or none)")


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
    kind = getattr(action.type, "kind", action.type)  # _optional(int) checks as int
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
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(error).split())}); fix the file or pass another "
                         f"--config") from error
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
    preset = load_yaml_config(known.config, parser) if known.config is not None else {}
    parser.set_defaults(**preset)
    args = parser.parse_args(input_args)
    layers = [(str(DEFAULT_CONFIG), defaults), (str(known.config), preset),
              ("the command line", _given_on_command_line(input_args))]
    args.model_gamma, args.synthesis_gamma = resolve_gammas(layers)
    args.gamma = None  # consumed: the written configuration holds the two resolved values
    env_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_rank != -1:
        args.local_rank = env_rank
    validate_args(args)
    return args


def _given_on_command_line(input_args: Sequence[str] | None) -> dict[str, Any]:
    """The options present on the command line (not defaults), as ``{dest: value}``."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_known_args(input_args)[0])


def resolve_gammas(layers: Sequence[tuple[str, Mapping[str, Any]]]) -> tuple[float, float]:
    """``(model_gamma, synthesis_gamma)`` from configuration layers applied in order (later wins).

    Each layer is ``(name, {key: value})``. ``gamma`` (the alias) sets both; a layer that holds the alias and
    either specific key raises ``ValueError`` (ambiguous), naming the layer.
    """
    model = synthesis = None
    for name, values in layers:
        alias = values.get("gamma")
        specific = [k for k in ("model_gamma", "synthesis_gamma") if values.get(k) is not None]
        if alias is not None and specific:
            raise ValueError(
                f"{name}: gamma {alias} (sets both the model and the synthesis gamma) is combined with "
                f"{', '.join(f'{k} {values[k]}' for k in specific)}; give either gamma or model_gamma/synthesis_gamma")
        if alias is not None:
            model = synthesis = alias
        model = values.get("model_gamma") if values.get("model_gamma") is not None else model
        synthesis = values.get("synthesis_gamma") if values.get("synthesis_gamma") is not None else synthesis
    if model is None or synthesis is None:
        raise ValueError("model_gamma and synthesis_gamma need values (configs/train_default.yaml sets them)")
    return float(model), float(synthesis)


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
        raise ValueError(f"--checkpoints_total_limit must be >= 1, or none (null in YAML) to keep every checkpoint, "
                         f"found {args.checkpoints_total_limit}")
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
    for name in ("model_gamma", "synthesis_gamma"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name} must be > 0 (1 disables the transfer; --gamma sets both --model_gamma and "
                             f"--synthesis_gamma), found {getattr(args, name)}")
    for name in ("pisa_segments", "pisa_supersamples", "min_foregrounds", "gan_head_channels"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, found {getattr(args, name)}")
    pairs = (("min_foregrounds", "max_foregrounds"), ("fg_scale_min", "fg_scale_max"), ("bg_far_min", "bg_far_max"),
             ("brightness_min", "brightness_max"))
    for lo, hi in pairs:
        if getattr(args, lo) > getattr(args, hi):
            raise ValueError(f"--{lo} ({getattr(args, lo)}) must not exceed --{hi} ({getattr(args, hi)})")
    for name in ("fg_tilt_p", "brightness_p"):
        if not 0 <= getattr(args, name) <= 1:
            raise ValueError(f"--{name} is a probability in [0, 1], found {getattr(args, name)}")
    if not (0 < args.bg_far_min and args.bg_far_max + args.bg_span_max < 1):
        raise ValueError(f"the background's disparity must stay in (0, 1): need 0 < --bg_far_min and --bg_far_max + "
                         f"--bg_span_max < 1, found {args.bg_far_min}, {args.bg_far_max} + {args.bg_span_max}")
    top = args.brightness_max if args.brightness_cap is None else min(args.brightness_max, args.brightness_cap)
    if args.brightness_min <= 0 or (top > 1 and not args.brightness_clip):
        raise ValueError(f"brightness factors must be > 0 and, without --brightness_clip, at most 1; found "
                         f"--brightness_min {args.brightness_min}, largest factor {top}. Add --brightness_clip to "
                         "clip brightened images to [0, 1] (the released recipe) or lower --brightness_max/--brightness_cap")
    if not 0 <= args.gan_generator_target <= 1:
        raise ValueError(f"--gan_generator_target is a BCE target in [0, 1], found {args.gan_generator_target}")
    check_report_to(args.report_to)
    # The one-step model's timestep indexes the base model's noise schedule (SDXL: 1000 training timesteps).
    if not 0 <= args.timestep <= 999:
        raise ValueError(f"--timestep must be in [0, 999] (a timestep of SDXL's 1000-step noise schedule; the paper: "
                         f"499), found {args.timestep}")
    from losses.gan import CV_TYPES, GAN_LOSS_TYPES

    if args.gan_loss_type and args.gan_loss_type not in GAN_LOSS_TYPES:
        raise ValueError(f"--gan_loss_type must be one of {list(GAN_LOSS_TYPES)} (the paper: multilevel_sigmoid_s), "
                         f"or empty / null to train without the GAN; found {args.gan_loss_type!r}")
    if args.cv_type is not None and args.cv_type not in CV_TYPES:
        raise ValueError(f"--cv_type must be one of {list(CV_TYPES)} (the paper: convnext), found {args.cv_type!r}")
    for weights, switch, loss in (("lpips_vgg_weights", "lpips_pretrained", "lpips"),
                                  ("gan_backbone_weights", "gan_pretrained", "gan_loss_type")):
        if getattr(args, weights) and getattr(args, loss) and not getattr(args, switch):
            raise ValueError(f"--{weights} {getattr(args, weights)} is given with --no-{switch}: pretrained weights "
                             f"are only loaded with --{switch}; pass --{switch}, or drop --{weights}")
    if args.validation_steps and args.validation_data_dir and not Path(args.validation_data_dir).is_dir():
        raise ValueError(f"--validation_data_dir '{args.validation_data_dir}' is not a folder; pass a folder with fg/ "
                         f"and bg/ like --train_data_dir, or null to validate on fresh scenes of --train_data_dir")
    if (args.hub_model_id or args.hub_token) and not args.push_to_hub:
        raise ValueError("--hub_model_id / --hub_token are given without --push_to_hub; add --push_to_hub to upload "
                         "the run at the end, or drop them")
    if args.pisa_hardness_start < 1 or args.pisa_hardness_max < args.pisa_hardness_start:
        raise ValueError("PISA hardness must satisfy 1 <= --pisa_hardness_start <= --pisa_hardness_max "
                         f"(log(hardness) is the CoC sigmoid's slope), found {args.pisa_hardness_start} and "
                         f"{args.pisa_hardness_max}")


def dump_config(args: argparse.Namespace, path: str | os.PathLike) -> Path:
    """Write the resolved options (loadable again with ``--config``) as YAML; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One-off actions, not settings: a rerun with `--config train_config.yaml` must not delete checkpoints.
    # The hub token is a secret: never written next to the weights.
    skip = ("config", "dry_run", "local_rank", "overwrite_output_dir", "allow_inexact_resume", "hub_token")
    data = {k: v for k, v in sorted(vars(args).items()) if k not in skip}
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=True))  # unique temporary, never a planted symlink
    return path
