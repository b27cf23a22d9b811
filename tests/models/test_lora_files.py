"""Broken weight files fail with one error naming the file, before anything is applied."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from models.lora import WeightLoadingError, load_vae_partial, read_lora_file
from models.tiny import build_tiny_sdxl

KEY = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"


def _lora(value: float) -> dict[str, torch.Tensor]:
    return {f"{KEY}.lora_A.weight": torch.full((4, 8), value), f"{KEY}.lora_B.weight": torch.zeros(8, 4)}


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_lora_weights_are_refused_by_name(tmp_path, value):
    path = tmp_path / "pytorch_lora_weights.safetensors"
    save_file(_lora(value), str(path))
    with pytest.raises(WeightLoadingError, match=rf"non-finite .* 1 tensor\(s\): .*{KEY}\.lora_A\.weight"):
        read_lora_file(path)
    assert read_lora_file(_write(tmp_path / "ok", _lora(0.1)))[0]  # the same file with finite values loads


def _write(folder, tensors, metadata=None):
    folder.mkdir()
    save_file(tensors, str(folder / "pytorch_lora_weights.safetensors"), metadata=metadata)
    return folder


@pytest.mark.parametrize("content", [b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}", b"\xff" * 16])
def test_unreadable_safetensors_name_the_file(tmp_path, content):
    path = tmp_path / "pytorch_lora_weights.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightLoadingError, match=r"cannot read '.*pytorch_lora_weights\.safetensors' as safetensors"):
        read_lora_file(path)


def test_truncated_safetensors_name_the_file(tmp_path):
    whole = _write(tmp_path / "whole", _lora(0.1)) / "pytorch_lora_weights.safetensors"
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:-40])
    with pytest.raises(WeightLoadingError, match=r"cut\.safetensors' as safetensors"):
        read_lora_file(cut)


def test_metadata_that_is_not_json_names_the_file(tmp_path):
    folder = _write(tmp_path / "a", _lora(0.1), metadata={"bokehdiff_lora": "{not json"})
    with pytest.raises(WeightLoadingError, match=r"'.*pytorch_lora_weights\.safetensors': its 'bokehdiff_lora' "
                                                 r"metadata is not JSON"):
        read_lora_file(folder)


def test_non_finite_vae_weights_are_refused(tmp_path):
    vae = build_tiny_sdxl(seed=0)["vae"]
    state = {k: v.clone() for k, v in vae.state_dict().items() if k.startswith("encoder.conv_in")}
    state["encoder.conv_in.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "vae.ckpt")
    with pytest.raises(WeightLoadingError, match="encoder.conv_in.weight"):
        load_vae_partial(vae, tmp_path / "vae.ckpt")


def test_a_module_missing_from_the_file_is_refused(tmp_path):
    import json

    two = _lora(0.1) | {k.replace("to_q", "to_k"): v for k, v in _lora(0.1).items()}
    folder = _write(tmp_path / "two", two, metadata={"bokehdiff_lora": json.dumps({"rank": 4, "modules": 2})})
    assert len(read_lora_file(folder)[0]) == 4
    one = _write(tmp_path / "one", _lora(0.1), metadata={"bokehdiff_lora": json.dumps({"rank": 4, "modules": 2})})
    with pytest.raises(WeightLoadingError, match="holds 1 adapted modules but its metadata says 2"):
        read_lora_file(one)
    half = _write(tmp_path / "half", {f"{KEY}.lora_A.weight": torch.zeros(4, 8)})
    with pytest.raises(WeightLoadingError, match="only one of lora_A / lora_B"):
        read_lora_file(half)
