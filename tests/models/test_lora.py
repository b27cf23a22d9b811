"""LoRA and partial-VAE weights: targets, save/load round trips in our and the published format, and the
errors that replace the silent non-loading of the public script."""

import os
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.lora import (
    PAPER_LORA_TARGETS,
    VAE_TRAINABLE_PREFIXES,
    WeightLoadingError,
    add_lora,
    load_lora,
    load_vae_partial,
    lora_module_names,
    read_lora_file,
    save_lora,
    save_vae_partial,
    set_vae_trainable,
)
from models.tiny import build_tiny_sdxl


def _unet():
    return build_tiny_sdxl(seed=0)["unet"]


def _unet_inputs():
    g = torch.Generator().manual_seed(1)
    return dict(
        sample=torch.randn(1, 4, 8, 8, generator=g),
        timestep=499,
        encoder_hidden_states=torch.randn(1, 77, 64, generator=g),
        added_cond_kwargs=dict(text_embeds=torch.randn(1, 32, generator=g), time_ids=torch.randn(1, 6, generator=g)),
    )


@pytest.fixture(scope="module")
def trained_unet():
    """A tiny UNet with a rank-4 adapter whose B matrices are non-zero (as after training)."""
    unet = _unet()
    add_lora(unet, rank=4)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return unet


def test_paper_targets_cover_every_kind_and_nothing_else(trained_unet):
    names = lora_module_names(trained_unet)
    for target in PAPER_LORA_TARGETS:
        assert any(n == target or n.endswith("." + target) for n in names), f"no module matched {target}"
    assert not any(n.startswith(("conv_in", "conv_out", "time_embedding", "add_embedding")) for n in names)
    trainable = {n for n, p in trained_unet.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_save_writes_prefixed_keys_and_metadata(trained_unet, tmp_path):
    path = save_lora(trained_unet, tmp_path, extra_metadata={"base_model": "tiny"})
    keys = list(load_file(str(path)))
    assert keys and all(k.startswith("unet.") and ".lora_" in k for k in keys)
    _, info = read_lora_file(path)
    assert info["rank"] == 4 and info["alpha"] == 4 and info["base_model"] == "tiny"
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("prefix", ["unet.", ""], ids=["prefixed", "published-unprefixed"])
def test_round_trip_loads_every_tensor(trained_unet, tmp_path, prefix):
    state = load_file(str(save_lora(trained_unet, tmp_path / "ours")))
    file = tmp_path / "adapter.safetensors"
    save_file({prefix + k[len("unet."):]: v for k, v in state.items()}, str(file))  # published: no metadata

    fresh = _unet()
    info = load_lora(fresh, file)
    assert info["tensors"] == len(state) and info["rank"] == 4
    with torch.no_grad():
        expected = trained_unet(**_unet_inputs()).sample
        got = fresh(**_unet_inputs()).sample
        base = _unet()(**_unet_inputs()).sample
    assert torch.equal(got, expected)
    assert not torch.allclose(got, base)  # the adapter really changes the output


def test_legacy_down_up_names_load(trained_unet, tmp_path):
    state = load_file(str(save_lora(trained_unet, tmp_path)))
    legacy = {
        k.replace(".lora_A.weight", ".lora.down.weight").replace(".lora_B.weight", ".lora.up.weight"): v
        for k, v in state.items()
    }
    save_file(legacy, str(tmp_path / "legacy.safetensors"))
    fresh = _unet()
    assert load_lora(fresh, tmp_path / "legacy.safetensors")["tensors"] == len(state)


def test_folder_and_subfolder_resolution(trained_unet, tmp_path):
    save_lora(trained_unet, tmp_path / "small")
    assert load_lora(_unet(), tmp_path, subfolder="small")["tensors"] > 0
    with pytest.raises(FileNotFoundError, match="pytorch_lora_weights"):
        load_lora(_unet(), tmp_path / "nowhere")


def test_foreign_keys_are_an_error_not_ignored(trained_unet, tmp_path):
    state = load_file(str(save_lora(trained_unet, tmp_path)))
    state["text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight"] = torch.zeros(4, 32)
    save_file(state, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(WeightLoadingError, match="text_encoder.text_model"):
        load_lora(_unet(), tmp_path / "foreign.safetensors")


def test_lora_for_unknown_module_errors(trained_unet, tmp_path):
    state = load_file(str(save_lora(trained_unet, tmp_path)))
    state["unet.not_a_block.proj.lora_A.weight"] = torch.zeros(4, 8)
    state["unet.not_a_block.proj.lora_B.weight"] = torch.zeros(8, 4)
    save_file(state, str(tmp_path / "odd.safetensors"))
    with pytest.raises(WeightLoadingError, match="not_a_block.proj"):
        load_lora(_unet(), tmp_path / "odd.safetensors")


def test_missing_and_mismatched_tensors_into_existing_adapter(trained_unet, tmp_path):
    state = load_file(str(save_lora(trained_unet, tmp_path)))
    dropped = sorted(state)[0]
    partial = {k: v for k, v in state.items() if k != dropped}
    target = _unet()
    add_lora(target, rank=4)
    with pytest.raises(WeightLoadingError, match="missing") as err:
        load_lora(target, partial)
    assert dropped[len("unet."):] in str(err.value)

    other_rank = _unet()
    add_lora(other_rank, rank=2)
    with pytest.raises(WeightLoadingError, match="shape mismatch"):
        load_lora(other_rank, state)


def test_vae_trainable_selection_and_partial_round_trip(tmp_path):
    vae = build_tiny_sdxl()["vae"]
    params = set_vae_trainable(vae)
    names = {n for n, p in vae.named_parameters() if p.requires_grad}
    assert len(names) == len(params) > 0
    assert all(n.startswith(VAE_TRAINABLE_PREFIXES) for n in names)
    assert any(n.startswith("encoder.mid_block.") for n in names)
    assert not any(n.startswith(("decoder.", "encoder.down_blocks.")) for n in names)

    with torch.no_grad():
        for p in params:
            p.add_(0.01)
    path = save_vae_partial(vae, tmp_path)
    assert path.name == "vae.ckpt"
    fresh = build_tiny_sdxl()["vae"]
    info = load_vae_partial(fresh, tmp_path)
    assert info["tensors"] == len(params)
    for (n, a), (_, b) in zip(vae.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), n


def test_vae_partial_errors_list_keys(tmp_path):
    vae = build_tiny_sdxl()["vae"]
    state = torch.load(save_vae_partial(vae, tmp_path), weights_only=True)
    dropped = sorted(state)[0]
    with pytest.raises(WeightLoadingError, match="missing") as err:
        load_vae_partial(vae, {k: v for k, v in state.items() if k != dropped})
    assert dropped in str(err.value)
    with pytest.raises(WeightLoadingError, match="encoder.extra.weight"):
        load_vae_partial(vae, {**state, "encoder.extra.weight": torch.zeros(1)})
    # "vae." prefixed keys (some exports) are accepted
    assert load_vae_partial(vae, {"vae." + k: v for k, v in state.items()})["tensors"] == len(state)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_weight_files_get_the_umask_mode_not_0600(trained_unet, tmp_path, umask):
    """safetensors creates its file 0600; the published weights must be readable like every other output."""
    vae = build_tiny_sdxl()["vae"]
    set_vae_trainable(vae)
    old = os.umask(umask)
    try:
        paths = [save_lora(trained_unet, tmp_path), save_vae_partial(vae, tmp_path),
                 save_vae_partial(vae, tmp_path / "vae.safetensors")]
    finally:
        os.umask(old)
    assert [oct(stat.S_IMODE(p.stat().st_mode)) for p in paths] == [oct(0o666 & ~umask)] * 3
