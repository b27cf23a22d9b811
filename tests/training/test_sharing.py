"""Shareable training results: the model card, validation grids as PNGs and in wandb, ``--push_to_hub`` (refused
up front when the hub is unreachable), ``--report_to wandb`` without wandb refused up front. No network: the
hub is unreachable in tests (tests/conftest.py sets HF_HUB_OFFLINE=1; one test points it at a closed port)."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import types

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

import train_lora_otf
from tests.training.helpers import PATHS, train_argv
from training.checkpoint import META_NAME
from training.config import dump_config, parse_args
from training.model_card import CARD_NAME, main as model_card_main, write_model_card
from training.publish import UPLOAD_IGNORE, HubTarget, push_run
from training.tracking import log_validation_grid, validation_grid_path, write_validation_grid

pytestmark = pytest.mark.usefixtures("one_thread")

_DESCRIBE = {"format": "bokehdiff-train", "base_model": "SG161222/RealVisXL_V5.0", "resolution": 512, "timestep": 499,
             "model_gamma": 2.2, "synthesis_gamma": 2.2, "lora": {"rank": 8, "alpha": 8, "modules": 300},
             "vae_trainable": ["encoder.conv_in."], "pisa": {"enabled": True, "compat": False},
             "train_batch_size": 4, "gradient_accumulation_steps": 1, "num_processes": 1,
             "config": {"learning_rate": 1e-4, "lambda_l2": 1.0, "lambda_gan": 0.1, "seed": 42}}


def _fake_run(root, steps=(0, 3, 6), final=6):
    """A run folder as training leaves it: metadata, validation.jsonl, validation/step-*.png, checkpoint-3."""
    for folder, step in ((root, final), (root / "checkpoint-3", 3)):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / META_NAME).write_text(json.dumps({**_DESCRIBE, "progress": {"step": step}}))
    (root / "validation.jsonl").write_text("".join(
        json.dumps({"step": s, "psnr": 20.0 + s, "ssim": 0.5, "l1": 0.1}) + "\n" for s in steps))
    for s in steps:
        write_validation_grid(torch.full((3, 8, 16), s / 10), root, s)
    return root


def test_model_card_parses_with_the_hub_library(tmp_path):
    run = _fake_run(tmp_path / "run")
    card = ModelCard.load(write_model_card(run))  # a local path: parsed offline
    data = card.data.to_dict()
    assert data["base_model"] == "SG161222/RealVisXL_V5.0" and data["license"] == "openrail++"
    assert {"bokehdiff", "lora", "sdxl"} <= set(data["tags"])
    assert data["bokehdiff_recipe"]["lora_rank"] == 8 and data["bokehdiff_recipe"]["steps"] == 6
    assert data["validation_metrics"] == {"step": 6, "psnr": 26.0, "ssim": 0.5, "l1": 0.1}
    assert data["widget"][0]["output"]["url"] == "validation/step-000006.png"
    assert "![validation grid" in card.text and (run / "validation" / "step-000006.png").is_file()


def test_model_card_of_a_checkpoint_on_demand_is_self_contained(tmp_path, capsys):
    from models.lora import add_lora, save_lora
    from models.lora_formats import PEFT_CONFIG_NAME
    from models.tiny import build_tiny_sdxl

    run = _fake_run(tmp_path / "run")
    unet = build_tiny_sdxl(seed=0)["unet"]
    add_lora(unet, rank=4)
    save_lora(unet, run / "checkpoint-3")
    assert model_card_main([str(run / "checkpoint-3"), "--license", "mit"]) == 0
    data = ModelCard.load(run / "checkpoint-3" / CARD_NAME).data.to_dict()
    assert data["license"] == "mit" and data["validation_metrics"]["step"] == 3  # not the later step 6
    assert (run / "checkpoint-3" / "validation" / "step-000003.png").is_file()  # copied next to the card
    assert (run / "checkpoint-3" / PEFT_CONFIG_NAME).is_file()
    assert model_card_main([str(tmp_path / "nothing")]) == 2
    assert "error:" in capsys.readouterr().err


def test_validation_grids_go_to_wandb_and_tensorboard(monkeypatch):
    logged = []
    fake = types.ModuleType("wandb")
    fake.Image = lambda array, caption=None: ("image", array.shape, array.dtype.name, caption)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    wandb_tracker = types.SimpleNamespace(name="wandb", log=lambda values, step: logged.append((values, step)))
    added = []
    writer = types.SimpleNamespace(add_image=lambda tag, grid, step: added.append((tag, step)))
    log_validation_grid([wandb_tracker, types.SimpleNamespace(name="tensorboard", writer=writer)],
                        torch.rand(3, 8, 16), 3)
    assert logged == [({"val/grid": [("image", (8, 16, 3), "uint8", "AIF | prediction | target | disparity")]}, 3)]
    assert added == [("val/aif|pred|target|disparity", 3)]
    assert validation_grid_path("run", 3).as_posix() == "run/validation/step-000003.png"


def _without_wandb(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))


def test_report_to_wandb_without_wandb_is_refused_with_the_install_command(tmp_path, monkeypatch, capsys):
    _without_wandb(monkeypatch)
    with pytest.raises(ValueError, match=r"'wandb' tracker is not installed.*`pip install wandb`"):
        parse_args(train_argv(PATHS, tmp_path, "--report_to", "wandb"))
    assert train_lora_otf.main(train_argv(PATHS, tmp_path / "run", "--report_to", "tensorboard,wandb")) == 2
    assert "pip install wandb" in capsys.readouterr().err and not (tmp_path / "run").exists()
    parse_args(train_argv(PATHS, tmp_path, "--report_to", "all"))  # accelerate's "all": whatever is installed


@pytest.mark.parametrize("closed_port", [False, True], ids=["HF_HUB_OFFLINE", "closed-port"])
def test_push_to_hub_offline_fails_at_once_before_training(tmp_path, monkeypatch, capsys, closed_port):
    if closed_port:  # not offline by the variable: the one probe finds nothing listening
        from huggingface_hub import constants

        from models import hub

        monkeypatch.setattr(hub, "_offline_env", lambda: False)
        monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:1")
    start = time.perf_counter()
    # PATHS do not exist: reaching the data or model loading would give another error.
    assert train_lora_otf.main(train_argv(PATHS, tmp_path / "run", "--push_to_hub", "--hub_model_id", "me/x")) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - start < 10
    assert err.count("error:") == 1 and "--push_to_hub: the hub" in err and "unreachable" in err
    assert "hf upload me/x" in err and "Traceback" not in err and not (tmp_path / "run").exists()


def test_hub_token_is_never_written_and_hub_flags_need_push_to_hub(tmp_path, capsys):
    args = parse_args(train_argv(PATHS, tmp_path, "--push_to_hub", "--hub_token", "hf_secret"))
    assert args.hub_token == "hf_secret"
    assert "hf_secret" not in dump_config(args, tmp_path / "c.yaml").read_text()
    assert train_lora_otf.main(train_argv(PATHS, tmp_path, "--push_to_hub", "--hub_token", "hf_secret",
                                          "--dry_run")) == 0
    assert "hf_secret" not in capsys.readouterr().out
    assert "hf_secret" not in repr(HubTarget("me/x", "hf_secret"))
    with pytest.raises(ValueError, match="without --push_to_hub"):
        parse_args(train_argv(PATHS, tmp_path, "--hub_model_id", "me/x"))


def test_push_run_uploads_the_run_without_checkpoints(tmp_path, monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token):
            calls["token"] = token

        def create_repo(self, repo_id, exist_ok):
            return types.SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, **kwargs):
            calls.update(kwargs)
            return types.SimpleNamespace(commit_url="https://hub/commit/1")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert push_run(tmp_path, HubTarget("me/x", "tok")) == "https://hub/commit/1"
    assert calls["token"] == "tok" and calls["repo_id"] == "me/x" and calls["folder_path"] == str(tmp_path)
    assert "checkpoint-*" in calls["ignore_patterns"] == UPLOAD_IGNORE


@pytest.mark.slow
def test_a_run_ends_with_a_shareable_folder(stack, tmp_path):
    """The tiny preset end to end: model card, validation PNGs, peft and diffusers loadable export."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from peft import PeftModel

    from models.lora import load_lora

    out = tmp_path / "run"
    assert train_lora_otf.main(train_argv(stack, out, "--max_train_steps", 3, "--lambda_gan", 0)) == 0
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-000000.png", "step-000003.png"]
    data = ModelCard.load(out / CARD_NAME).data.to_dict()
    assert data["base_model"] == stack["sdxl"] and data["validation_metrics"]["step"] == 3
    assert data["widget"][0]["output"]["url"] == "validation/step-000003.png"
    assert {"adapter_config.json", "adapter_model.safetensors", "vae.safetensors", "vae.ckpt"} <= {
        p.name for p in out.iterdir()}
    assert not (out / "checkpoint-2" / "vae.ckpt").exists() and (out / "checkpoint-2" / "vae.safetensors").is_file()
    assert "hub_token" not in yaml.safe_load((out / "train_config.yaml").read_text())

    inputs = dict(sample=torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), timestep=499,
                  encoder_hidden_states=torch.randn(1, 77, 64, generator=torch.Generator().manual_seed(1)),
                  added_cond_kwargs=dict(text_embeds=torch.zeros(1, 32), time_ids=torch.zeros(1, 6)))
    with torch.no_grad():
        ours = UNet2DConditionModel.from_pretrained(stack["sdxl"], subfolder="unet")
        load_lora(ours, out)
        expected = ours(**inputs).sample
        peft_unet = PeftModel.from_pretrained(UNet2DConditionModel.from_pretrained(stack["sdxl"], subfolder="unet"),
                                              str(out)).get_base_model()
        pipe = StableDiffusionXLPipeline.from_pretrained(stack["sdxl"])
        pipe.load_lora_weights(str(out))
        for got in (peft_unet(**inputs).sample, pipe.unet(**inputs).sample):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("switches, listed, off", [
    ({"lpips": False, "edge": True, "gan_loss_type": "multilevel_sigmoid_s", "lambda_gan": 0.1},
     {"lambda_l2", "lambda_edge", "lambda_gan"}, {"lambda_lpips"}),
    ({"lpips": True, "edge": False, "gan_loss_type": "multilevel_sigmoid_s", "lambda_gan": 0.0},
     {"lambda_l2", "lambda_lpips"}, {"lambda_edge", "lambda_gan"}),
    ({"lpips": True, "edge": True, "gan_loss_type": None, "lambda_gan": 0.1},
     {"lambda_l2", "lambda_edge", "lambda_lpips"}, {"lambda_gan"}),
])
def test_the_model_card_lists_a_switched_off_loss_as_off(tmp_path, switches, listed, off):
    """configs/train_tiny.yaml (`lpips: false`) gave a card listing lambda_lpips 0.1: the card ignored the `lpips`
    and `edge` switches (and the GAN's: no gan_loss_type, or lambda_gan 0)."""
    config = {**_DESCRIBE["config"], "lambda_edge": 0.05, "lambda_lpips": 0.2, **switches}
    run = tmp_path / "run"
    run.mkdir()
    (run / META_NAME).write_text(json.dumps({**_DESCRIBE, "config": config, "progress": {"step": 6}}))
    recipe = ModelCard.load(write_model_card(run)).data.to_dict()["bokehdiff_recipe"]
    assert {k for k, v in recipe["losses"].items() if v != "off"} == listed
    assert {k for k, v in recipe["losses"].items() if v == "off"} == off
    assert all(recipe["losses"][k] == config[k] for k in listed)
    assert ("gan_loss_type" in recipe) == ("lambda_gan" in listed)


def test_the_readme_names_the_validation_grids_as_they_are_written(tmp_path):
    """The README said `validation/step-<N>.png` while the files are `validation/step-000006.png`: its example
    must be the name training.tracking writes for that step."""
    from tests.training.helpers import REPO
    from training.tracking import validation_grid_path

    readme = " ".join((REPO / "README.md").read_text().split())
    assert f"`{validation_grid_path(tmp_path, 6).relative_to(tmp_path).as_posix()}`" in readme
