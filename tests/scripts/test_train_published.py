"""configs/train_published.yaml and the model / synthesis gamma split: the preset holds the released README
command, the gamma flags combine by a clear rule, resume compares both gammas, and a tiny-stack run with the
preset trains, resumes exactly and writes an adapter that inference (inference_hf.py, models.pipeline) runs at
gamma 1 with the published PISA discretisation without any flag."""

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
from training.checkpoint import compare_run_settings, list_checkpoints
from training.config import parse_args

REPO = Path(train_lora_otf.__file__).resolve().parent
PRESET = str(REPO / "configs" / "train_published.yaml")
OTF = REPO / "test_data" / "otf"
EBB = REPO / "test_data" / "ebb"

pytestmark = pytest.mark.usefixtures("one_thread")

# The release README's training command (FreeButUselessSoul/bokehdiff), paths replaced.
README_COMMAND = ("--train_data_dir DATA --pretrained_model_name_or_path SG161222/RealVisXL_V5.0 "
                  "--train_batch_size 1 --output_dir logs_bokehdiff --mixed_precision no --opt_vae 1 "
                  "--max_train_steps 120000 --enable_xformers_memory_efficient_attention "
                  "--learning_rate 5e-5 --lr_scheduler cosine --lr_num_cycles 1 --lr_warmup_steps 20 --resolution 512 "
                  "--lpips --edge --lambda_lpips 5 --checkpointing_steps 60000 "
                  "--gan_loss_type multilevel_sigmoid_s --cv_type convnext --lambda_gan 0.1 --gan_step 30000").split()


def test_preset_holds_the_readme_command():
    """Every setting of the README command is in the preset (gan_step shifted by one: the release tests
    `global_step > gan_step`, we test `step >= gan_step`)."""
    from_command = vars(parse_args(README_COMMAND))
    from_preset = vars(parse_args(["--config", PRESET, "--train_data_dir", "DATA", "--output_dir", "logs_bokehdiff"]))
    given = {token[2:] for token in README_COMMAND if token.startswith("--")}
    differ = {k: (from_command[k], from_preset[k]) for k in given if from_command[k] != from_preset[k]}
    assert differ == {"gan_step": (30000, 30001)}
    assert (from_preset["model_gamma"], from_preset["synthesis_gamma"], from_preset["pisa_compat"]) == (1.0, 2.2, True)
    assert (from_preset["pisa_segments"], from_preset["pisa_supersamples"]) == (5, 4)


def test_gamma_alias_and_specific_flags_combine_by_the_documented_rule(tmp_path):
    base = ["--train_data_dir", "d", "--output_dir", str(tmp_path)]
    g = lambda *extra: (lambda a: (a.model_gamma, a.synthesis_gamma, a.gamma))(parse_args(base + [str(e) for e in extra]))
    assert g() == (2.2, 2.2, None)
    assert g("--gamma", 1) == (1.0, 1.0, None)  # the alias sets both
    assert g("--model_gamma", 1) == (1.0, 2.2, None)
    assert g("--config", PRESET) == (1.0, 2.2, None)
    assert g("--config", PRESET, "--gamma", 2.2) == (2.2, 2.2, None)  # the command line overrides the preset
    with pytest.raises(ValueError, match="the command line: gamma 2.0 .* model_gamma 1.0"):
        g("--gamma", 2, "--model_gamma", 1)
    both = tmp_path / "both.yaml"
    both.write_text("gamma: 1.0\nsynthesis_gamma: 2.2\n")
    with pytest.raises(ValueError, match="both.yaml: gamma 1.0 .* synthesis_gamma 2.2"):
        g("--config", str(both))
    old = tmp_path / "old_train_config.yaml"  # a resolved config written before the split: one gamma
    old.write_text("gamma: 1.0\n")
    assert g("--config", str(old), "--synthesis_gamma", 2.2) == (1.0, 2.2, None)
    with pytest.raises(ValueError, match="--model_gamma must be > 0"):
        g("--model_gamma", 0)


def test_resume_compares_model_and_synthesis_gamma():
    current = {"lora": {"rank": 4}, "gamma": 1.0, "model_gamma": 1.0, "synthesis_gamma": 2.2}
    assert compare_run_settings(dict(current), current)[0] == []
    errors = compare_run_settings(dict(current, synthesis_gamma=1.0), current)[0]
    assert errors == [("synthesis_gamma", 1.0, 2.2)]
    # A checkpoint written before the split recorded one gamma for the model and the data.
    errors = compare_run_settings({"lora": {"rank": 4}, "gamma": 1.0}, current)[0]
    assert errors == [("synthesis_gamma", 1.0, 2.2)]
    assert compare_run_settings({"lora": {"rank": 4}, "gamma": 2.2}, dict(current, model_gamma=2.2, gamma=2.2))[0] \
        == []


def test_resume_of_a_checkpoint_from_before_the_pisa_count_options():
    pisa = {"enabled": True, "dropout": 0.1, "compat": False}
    current = {"pisa": dict(pisa, n_segments=7, n_supersamples=5)}
    assert compare_run_settings({"pisa": pisa}, current)[0] == []  # it trained with the processor's 7 x 5
    errors = compare_run_settings({"pisa": pisa}, {"pisa": dict(pisa, n_segments=5, n_supersamples=4)})[0]
    assert [e[0] for e in errors] == ["pisa"]


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
