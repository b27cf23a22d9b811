"""The model card of a training run or checkpoint: ``README.md`` with YAML front matter, for the hub and people.

Written at the end of every run into ``output_dir``; on demand for any run folder or checkpoint::

    python -m training.model_card RUN_DIR                 # or RUN_DIR/checkpoint-2000
    python -m training.model_card RUN_DIR --license mit

The front matter (``huggingface_hub.ModelCard`` parses it) holds ``base_model``, ``license``, ``tags``
(``bokehdiff``, ``lora``, ``sdxl``, ...), ``bokehdiff_recipe`` (how the weights were trained, from
``bokehdiff_checkpoint.json``), ``validation_metrics`` (the last ``validation.jsonl`` record up to the folder's
step) and a ``widget`` entry showing the newest validation grid (``validation/step-*.png``). On demand, the
folder also gets peft's adapter files (``models.lora.write_peft_adapter``) when they are missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from training.checkpoint import META_NAME
from training.tracking import VALIDATION_DIR, validation_grids

__all__ = ["CARD_NAME", "CARD_TAGS", "DEFAULT_LICENSE", "card_metadata", "main", "write_model_card"]

CARD_NAME = "README.md"
CARD_TAGS = ("bokehdiff", "lora", "sdxl", "stable-diffusion-xl", "diffusers", "image-to-image", "bokeh",
             "depth-of-field")
DEFAULT_LICENSE = "openrail++"  # the base SDXL's (CreativeML Open RAIL++-M)


def _loss_weights(config: Mapping[str, Any]) -> dict:
    """Each loss term's weight, or ``"off"`` for a term the run did not train with: ``edge`` / ``lpips`` false,
    or the GAN without ``gan_loss_type`` or at ``lambda_gan`` 0 (the rule of training.loop.build_losses_from_args).
    A config without the switch (older runs) lists the weight."""
    switches = {"lambda_l2": True, "lambda_edge": config.get("edge", True), "lambda_lpips": config.get("lpips", True),
                "lambda_gan": bool(config.get("gan_loss_type", True)) and (config.get("lambda_gan") or 0) > 0}
    return {k: (config[k] if on else "off") for k, on in switches.items() if config.get(k) is not None}


def _recipe(describe: Mapping[str, Any]) -> dict:
    """The training settings a reader needs, from ``bokehdiff_checkpoint.json`` (training.loop.describe_run)."""
    config = describe.get("config", {})
    lora, pisa = describe.get("lora", {}), describe.get("pisa", {})
    recipe = {
        "format": describe.get("format"), "steps": describe.get("progress", {}).get("step"),
        "resolution": describe.get("resolution"), "timestep": describe.get("timestep"),
        "lora_rank": lora.get("rank"), "lora_alpha": lora.get("alpha"), "lora_modules": lora.get("modules"),
        "vae_encoder_trained": bool(describe.get("vae_trainable")),
        "model_gamma": describe.get("model_gamma"), "synthesis_gamma": describe.get("synthesis_gamma"),
        "pisa": bool(pisa.get("enabled")), "pisa_compat": pisa.get("compat"),
        "train_batch_size": describe.get("train_batch_size"),
        "gradient_accumulation_steps": describe.get("gradient_accumulation_steps"),
        "num_processes": describe.get("num_processes"),
        "learning_rate": config.get("learning_rate"), "lr_scheduler": config.get("lr_scheduler"),
        "mixed_precision": config.get("mixed_precision"), "seed": config.get("seed"),
        "losses": _loss_weights(config),
        **({"gan_loss_type": config.get("gan_loss_type"), "gan_step": config.get("gan_step")}
           if _loss_weights(config).get("lambda_gan") != "off" else {}),
        "code_version": describe.get("versions", {}).get("code"),
    }
    return {k: v for k, v in recipe.items() if v is not None}


def _last_metrics(run_dir: Path, step: int | None) -> dict:
    """The last ``validation.jsonl`` record at or before ``step`` (any step if None); empty without one."""
    path = run_dir / "validation.jsonl"
    if not path.is_file():
        return {}
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # an interrupted append; training.loop.StepLog drops it too
            continue
        if isinstance(record, dict) and "step" in record and (step is None or record["step"] <= step):
            records.append(record)
    return max(records, key=lambda r: r["step"]) if records else {}


def card_metadata(describe: Mapping[str, Any], metrics: Mapping[str, Any], image: str | None,
                  license: str = DEFAULT_LICENSE) -> dict:
    """The card's front matter as a dict (``image``: the grid's path relative to the card, or None)."""
    data = {"base_model": describe.get("base_model"), "license": license, "library_name": "diffusers",
            "pipeline_tag": "image-to-image", "tags": list(CARD_TAGS), "bokehdiff_recipe": _recipe(describe)}
    if metrics:
        data["validation_metrics"] = {k: metrics[k] for k in ("step", "psnr", "ssim", "l1") if k in metrics}
    if image:
        data["widget"] = [{"text": "AIF | prediction | target | disparity", "output": {"url": image}}]
    return {k: v for k, v in data.items() if v is not None}


def _body(meta: Mapping[str, Any], image: str | None, repo_id: str | None) -> str:
    recipe, metrics = meta["bokehdiff_recipe"], meta.get("validation_metrics", {})
    adapter = repo_id or "PATH/TO/THIS/FOLDER"
    lines = [
        "# BokehDiff LoRA", "",
        f"A BokehDiff adapter (LoRA on the SDXL UNet{' and the fine-tuned VAE encoder' if recipe.get('vae_encoder_trained') else ''}) "
        f"trained from `{meta.get('base_model')}`: one-step lens blur of an all-in-focus photo, given its disparity "
        "map, a blur strength K and a focus plane (Zhu et al., ICCV 2025).", "",
        "## Use", "", "```python",
        "from models.pipeline import BokehDiffPipeline  # this repository",
        f"pipe = BokehDiffPipeline.from_pretrained({meta.get('base_model')!r}, adapter={adapter!r})",
        "bokeh = pipe(image, disparity, K=20, disp_focus=0.5)  # (B, 3, H, W) sRGB in [0, 1]",
        "```", "",
        "`pytorch_lora_weights.safetensors` carries diffusers' LoRA metadata (`pipe.load_lora_weights` scales it by "
        "alpha / rank); `adapter_config.json` + `adapter_model.safetensors` load with `peft.PeftModel.from_pretrained`"
        + ("; `vae.safetensors` holds the fine-tuned VAE encoder tensors (`vae.ckpt`: the same, for the released "
           "scripts)." if recipe.get("vae_encoder_trained") else "."), "",
        "## Training recipe", "", "| setting | value |", "|---|---|",
        *[f"| {k} | {json.dumps(v) if isinstance(v, (dict, list)) else v} |" for k, v in recipe.items()], "",
    ]
    if metrics:
        lines += ["## Validation", "", f"At step {metrics.get('step')}: PSNR {metrics.get('psnr', float('nan')):.2f} dB, "
                  f"SSIM {metrics.get('ssim', float('nan')):.4f}, L1 {metrics.get('l1', float('nan')):.4f} "
                  "(held-out synthetic scenes).", ""]
    if image:
        lines += [f"![validation grid: AIF | prediction | target | disparity]({image})", ""]
    return "\n".join(lines)


def write_model_card(folder: str | Path, *, run_dir: str | Path | None = None, license: str = DEFAULT_LICENSE,
                     repo_id: str | None = None) -> Path:
    """Write ``folder/README.md`` for an export folder (a run's ``output_dir`` or a ``checkpoint-N``).

    Args:
        folder: holds ``bokehdiff_checkpoint.json`` and the weights.
        run_dir: the run folder with ``validation.jsonl`` and ``validation/`` (default: ``folder`` itself if it
            has ``validation.jsonl``, else its parent, as for a checkpoint). A grid from outside ``folder`` is
            copied into ``folder/validation/`` so the card is self-contained.
        repo_id: the hub id shown in the usage snippet (default: a placeholder path).

    Raises:
        FileNotFoundError: ``folder`` has no ``bokehdiff_checkpoint.json`` (not written by this training).
    """
    from huggingface_hub import ModelCard

    folder = Path(folder)
    meta_file = folder / META_NAME
    if not meta_file.is_file():
        raise FileNotFoundError(f"'{folder}' has no {META_NAME}: pass a run's --output_dir or one of its "
                                f"checkpoint-<step> folders, written by train_lora_otf.py")
    describe = json.loads(meta_file.read_text())
    run = Path(run_dir) if run_dir is not None else (folder if (folder / "validation.jsonl").is_file() else folder.parent)
    step = describe.get("progress", {}).get("step")
    grids = [(s, p) for s, p in validation_grids(run) if step is None or s <= step]
    image = None
    if grids:
        source = grids[-1][1]
        target = folder / VALIDATION_DIR / source.name
        if source.resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        image = f"{VALIDATION_DIR}/{source.name}"
    meta = card_metadata(describe, _last_metrics(run, step), image, license)
    text = "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + _body(meta, image, repo_id)
    card = ModelCard(text)  # parses the front matter: a card the hub cannot read fails here, not after upload
    from data.io import write_text_atomic

    return write_text_atomic(folder / CARD_NAME, str(card))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.model_card FOLDER``: the model card (and missing peft files) of a run or checkpoint."""
    parser = argparse.ArgumentParser(prog="python -m training.model_card",
                                     description="Write README.md (model card) for a training run or checkpoint.")
    parser.add_argument("folder", help="a run's --output_dir or one of its checkpoint-<step> folders")
    parser.add_argument("--license", default=DEFAULT_LICENSE, help=f"license in the card's metadata ({DEFAULT_LICENSE})")
    parser.add_argument("--hub_model_id", default=None, help="hub id shown in the card's usage snippet")
    args = parser.parse_args(argv)
    try:
        path = write_model_card(args.folder, license=args.license, repo_id=args.hub_model_id)
        from models.lora import LORA_WEIGHT_NAME, write_peft_adapter
        from models.lora_formats import PEFT_CONFIG_NAME

        if not (Path(args.folder) / PEFT_CONFIG_NAME).is_file() and (Path(args.folder) / LORA_WEIGHT_NAME).is_file():
            write_peft_adapter(Path(args.folder) / LORA_WEIGHT_NAME)
    except (OSError, ValueError) as error:
        print(f"python -m training.model_card: error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
