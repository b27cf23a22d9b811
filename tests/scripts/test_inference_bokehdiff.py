"""inference_hf.py with the BokehDiff renderer (the default) on the tiny SDXL stack saved to disk: the published
README command on test_data/, bit-identical reruns, the published adapter format, offline and bad inputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import inference_hf
from data.io import read_image
from models.tiny import save_tiny_sdxl
from tests.tiny_weights import trained_tiny_stack, write_published_adapter

EBB = Path(__file__).resolve().parents[2] / "test_data" / "ebb"
NAMES = ("scene00", "scene01", "scene02")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """(base folder, adapter folder in the published layout: unprefixed LoRA at the root, small/vae.ckpt)."""
    root = tmp_path_factory.mktemp("weights")
    base = save_tiny_sdxl(root / "base", seed=0)
    adapter = write_published_adapter(trained_tiny_stack(seed=2), root / "adapter")
    return base, adapter


def _fast(base, adapter):
    return ["--pretrained_model_name_or_path", str(base), "--adapter", str(adapter), "--device", "cpu",
            "--max_side", "64", "--no_contact_sheet"]


def test_published_readme_command_with_run_name(weights, tmp_path, capsys):
    base, adapter = weights
    out = tmp_path / "out"
    code = inference_hf.main(["--test_data_dir", str(EBB), "--output_dir", str(out), "--data_id", "myrun",
                              "--K", "20", "--enable_xformers_memory_efficient_attention", *_fast(base, adapter)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "run name" in printed and "xformers" in printed and "all verified" in printed
    # PISA is on by default, with the discretisation the published adapter was trained with.
    assert "PISA with the published occlusion discretisation (--pisa_compat auto)" in printed
    # Focus from each subject mask (meta.json focus planes 0.168 / 0.949 / 0.274), K 20, in OUT/myrun.
    expected = ["scene00_K20_f0.17.png", "scene01_K20_f0.95.png", "scene02_K20_f0.27.png"]
    assert sorted(p.name for p in (out / "myrun").glob("*_K20_*.png")) == expected
    render = read_image(out / "myrun" / expected[0])
    assert render.shape == (3, 46, 64) and np.isfinite(render).all()
    config = json.loads((out / "myrun" / "run_config.json").read_text())
    assert config["renderer"] == "bokehdiff" and config["pretrained_model_name_or_path"] == str(base)


def test_data_id_optional_filter_and_bit_identical_reruns(weights, tmp_path):
    base, adapter = weights
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert inference_hf.main(["--test_data_dir", str(EBB), "--output_dir", str(out), "--data_id", "scene01",
                                  "--K", "20", "--focus_disparity", "0.3", "--seed", "3", *_fast(base, adapter)]) == 0
        files = sorted(out.glob("*.png"))
        assert [p.name for p in files] == ["scene01_K20_f0.30.png"]
        runs.append(files[0].read_bytes())
    assert runs[0] == runs[1]


def test_image_pair_with_sheet_upsample_and_tiles(weights, tmp_path):
    base, adapter = weights
    out = tmp_path / "pair"
    argv = ["--image", str(EBB / "input" / "scene00.png"), "--disparity", str(EBB / "depth" / "scene00_pred.npy"),
            "--output_dir", str(out), "--K", "10", "--focus_disparity", "0.5", "0.9", "--upsample", "1.5",
            "--tile_mode", "tiled", "--tile_size", "64", "--tile_overlap", "16",
            "--pretrained_model_name_or_path", str(base), "--resume_from_checkpoint", str(adapter),
            "--device", "cpu", "--max_side", "48"]
    assert inference_hf.main(argv) == 0
    assert sorted(p.name for p in out.glob("scene00_K10_*.png")) == ["scene00_K10_f0.50.png", "scene00_K10_f0.90.png"]
    assert read_image(out / "scene00_K10_f0.50.png").shape[1:] == (34, 48)
    assert (out / "contact_sheet.png").is_file()


def test_offline_hub_weights_one_clear_error(tmp_path, capsys):
    code = inference_hf.main(["--image", str(EBB / "input" / "scene00.png"), "--disparity",
                              str(EBB / "depth" / "scene00_pred.npy"), "--output_dir", str(tmp_path), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--renderer classical" in err and "local" in err


def test_adapter_with_foreign_keys_fails_before_rendering(weights, tmp_path, capsys):
    base, adapter = weights
    bad = tmp_path / "bad_adapter"
    (bad / "small").mkdir(parents=True)
    state = load_file(str(adapter / "pytorch_lora_weights.safetensors"))
    state["text_encoder_2.text_model.final_layer_norm.lora_A.weight"] = torch.zeros(4, 32)
    save_file(state, str(bad / "pytorch_lora_weights.safetensors"))
    (bad / "small" / "vae.ckpt").write_bytes((adapter / "small" / "vae.ckpt").read_bytes())
    code = inference_hf.main(["--test_data_dir", str(EBB), "--output_dir", str(tmp_path / "out"),
                              *_fast(base, bad)])
    assert code == 2
    assert "text_encoder_2.text_model" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*.png"))


def test_bad_bokehdiff_flags_exit_2(weights, tmp_path):
    base, adapter = weights
    common = ["--test_data_dir", str(EBB), "--output_dir", str(tmp_path), *_fast(base, adapter)]
    for extra in (["--tile_size", "100"], ["--upsample", "0"], ["--pisa_hardness", "0.5"],
                  ["--resume_from_checkpoint", str(tmp_path / "missing")]):
        with pytest.raises(SystemExit) as exit_info:
            inference_hf.main(common + extra)
        assert exit_info.value.code == 2, extra


def test_focus_changes_the_neural_render_and_foreign_flags_are_reported(weights, tmp_path, capsys):
    base, adapter = weights
    renders = []
    for focus in ("0.1", "0.9"):
        out = tmp_path / focus
        assert inference_hf.main(["--test_data_dir", str(EBB), "--output_dir", str(out), "--data_id", "scene00",
                                  "--K", "30", "--focus_disparity", focus, "--blades", "6",
                                  *_fast(base, adapter)]) == 0
        renders.append(read_image(next(out.glob("scene00_K30_*.png"))))
    assert np.abs(renders[0] - renders[1]).max() > 1 / 255  # PISA sees disparity and CoC
    assert "note: --blades is ignored by --renderer bokehdiff" in capsys.readouterr().out
