"""configs/train_published.yaml end to end: a tiny-stack run with the preset trains, resumes exactly and writes an
adapter that inference (inference_hf.py, models.pipeline) runs at gamma 1 with the published PISA discretisation
without any flag; the pipeline reads the model gamma from our metadata only. The preset's parsing, the gamma
flags and the resume comparison of both gammas are tested in tests/training/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import inference_hf
import train_lora_otf
from models.pipeline import model_gamma_for, pisa_compat_for
from tests.scripts.test_train import crash_training_in_step
from training.checkpoint import list_checkpoints

REPO = Path(train_lora_otf.__file__).resolve().parent
PRESET = str(REPO / "configs" / "train_published.yaml")
OTF = REPO / "test_data" / "otf"
EBB = REPO / "test_data" / "ebb"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_model_gamma_for_reads_our_metadata_only():
    assert model_gamma_for({"format": "bokehdiff-train", "model_gamma": 1.0, "gamma": 1.0}) == 1.0
    assert model_gamma_for({"format": "bokehdiff-train", "gamma": 2.2}) == 2.2  # written before the split
    assert model_gamma_for({"rank": 64}) is None  # published adapter: the protocol decides
    assert model_gamma_for({"gamma": 1.0}) is None  # not our format: its keys are not trusted


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    from models.tiny import save_tiny_sdxl

    return str(save_tiny_sdxl(tmp_path_factory.mktemp("published_stack") / "sdxl"))


def _argv(sdxl, out, *extra):
    """The preset scaled down: tiny stack, test_data/otf, 64-px crops, 4 steps, no pretrained networks, and
    the renderer's own aperture sample count (the release's grid count is thousands of samples at CPU speed)."""
    return ["--config", PRESET, "--pretrained_model_name_or_path", sdxl, "--train_data_dir", str(OTF),
            "--output_dir", str(out), "--resolution", "64", "--train_batch_size", "2", "--max_train_steps", "4",
            "--checkpointing_steps", "2", "--gan_step", "2", "--lr_warmup_steps", "1", "--rank", "4",
            "--learning_rate", "1e-3", "--no-lpips_pretrained", "--no-gan_pretrained", "--gan_tiny",
            "--aperture_samples", "auto", "--dataloader_num_workers", "0", "--validation_steps", "0",
            "--report_to", "none", "--log_steps", "1", "--num_validation_samples", "2", *extra]


def _log(out):
    return [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_published_preset_trains_resumes_exactly_and_inference_uses_its_gamma_and_pisa(tiny_sdxl, tmp_path,
                                                                                      monkeypatch, capsys):
    ref = tmp_path / "uninterrupted"
    assert train_lora_otf.main(_argv(tiny_sdxl, ref)) == 0
    ref_log = _log(ref)
    assert [r["step"] for r in ref_log] == [1, 2, 3, 4]
    assert "gan_g" not in ref_log[1] and "gan_g" in ref_log[2] and all("lpips" in r and "edge" in r for r in ref_log)

    crashed = tmp_path / "crashed"
    crash_training_in_step(monkeypatch, _argv(tiny_sdxl, crashed), 2)  # during step 3
    assert [s for s, _ in list_checkpoints(crashed)] == [2]
    assert train_lora_otf.main(_argv(tiny_sdxl, crashed, "--resume_from_checkpoint", "latest")) == 0
    keys = ["total", "mse", "edge", "lpips", "gan_g", "gan_d", "lr", "grad_norm"]
    assert [[r.get(k) for k in keys] for r in _log(crashed)] == [[r.get(k) for k in keys] for r in ref_log]
    from safetensors.torch import load_file

    ref_lora, resumed_lora = load_file(str(ref / "pytorch_lora_weights.safetensors")), load_file(
        str(crashed / "pytorch_lora_weights.safetensors"))
    assert ref_lora.keys() == resumed_lora.keys() and all(torch.equal(ref_lora[k], resumed_lora[k]) for k in ref_lora)

    # The written configuration reproduces the run: both gammas, the alias consumed.
    written = yaml.safe_load((ref / "train_config.yaml").read_text())
    assert (written["model_gamma"], written["synthesis_gamma"], written["gamma"]) == (1.0, 2.2, None)

    # The adapter describes itself; the pipeline resolves gamma 1 and the published discretisation from it.
    from models.lora import read_lora_file
    from models.pipeline import BokehDiffPipeline
    from models.pisa import PISAAttnProcessor

    _, meta = read_lora_file(ref)
    assert (meta["model_gamma"], meta["synthesis_gamma"], meta["gamma"], meta["pisa"]["compat"]) == (1.0, 2.2, 1.0, True)
    assert (model_gamma_for(meta), pisa_compat_for(meta)) == (1.0, True)
    pipe = BokehDiffPipeline.from_pretrained(tiny_sdxl, adapter=str(ref))
    assert pipe.model.gamma == 1.0 and pipe.info["gamma"] == 1.0 and pipe.info["pisa_compat"] is True
    processors = [p for p in pipe.model.unet.attn_processors.values() if isinstance(p, PISAAttnProcessor)]
    assert processors and all(p.compat for p in processors)
    assert BokehDiffPipeline.from_pretrained(tiny_sdxl, adapter=str(ref), gamma=2.2).model.gamma == 2.2  # explicit wins

    # inference_hf.py without --gamma / --pisa_compat: the adapter's settings, as printed.
    code = inference_hf.main(["--pretrained_model_name_or_path", tiny_sdxl, "--adapter", str(ref), "--device", "cpu",
                              "--test_data_dir", str(EBB), "--data_id", "scene00", "--output_dir",
                              str(tmp_path / "render"), "--max_side", "64", "--no_contact_sheet"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "--protocol auto -> corrected (gamma 1," in printed
    assert "PISA with the published occlusion discretisation (--pisa_compat auto)" in printed
