"""Our adapters in other libraries: diffusers' ``load_lora_weights`` and peft's ``PeftModel.from_pretrained`` give
the UNet output of ``models.lora.load_lora`` (also when alpha != rank), and the VAE part is stored as
safetensors while the released ``vae.ckpt`` still loads."""

import json

import pytest
import torch
from safetensors import safe_open

from models.adapter import TRAINING_FORMAT, AdapterInfo
from models.lora import (VAE_SAFETENSORS_NAME, add_lora, load_lora, load_vae_partial, read_lora_file, save_lora,
                         save_vae_partial, set_vae_trainable, write_peft_adapter)
from models.lora_formats import DIFFUSERS_METADATA_KEY, PEFT_CONFIG_NAME, PEFT_WEIGHT_NAME
from models.tiny import build_tiny_sdxl, save_tiny_sdxl
from models.weights import adapter_files

RANK, ALPHA = 4, 16.0  # scale alpha / rank = 4: a loader that assumes alpha = rank is off by 4x


def _inputs():
    g = torch.Generator().manual_seed(1)
    return dict(sample=torch.randn(1, 4, 8, 8, generator=g), timestep=499,
                encoder_hidden_states=torch.randn(1, 77, 64, generator=g),
                added_cond_kwargs=dict(text_embeds=torch.randn(1, 32, generator=g), time_ids=torch.randn(1, 6, generator=g)))


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A saved rank-4 / alpha-16 adapter with non-zero B, and the tiny SDXL folder it belongs to."""
    root = tmp_path_factory.mktemp("formats")
    unet = build_tiny_sdxl(seed=0)["unet"]
    add_lora(unet, rank=RANK, alpha=ALPHA)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    save_lora(unet, root / "adapter")
    write_peft_adapter(root / "adapter")
    return root / "adapter", save_tiny_sdxl(root / "sdxl")


@torch.no_grad()
def _output(unet):
    return unet(**_inputs()).sample


def _ours(adapter_dir):
    unet = build_tiny_sdxl(seed=0)["unet"]
    info = load_lora(unet, adapter_dir)
    assert info["alpha"] == ALPHA and info["rank"] == RANK
    return _output(unet)


def test_diffusers_metadata_records_rank_alpha_and_modules(adapter):
    folder, _ = adapter
    with safe_open(str(folder / "pytorch_lora_weights.safetensors"), framework="pt") as handle:
        metadata = json.loads(handle.metadata()[DIFFUSERS_METADATA_KEY])
        keys = {k[len("unet."):].rsplit(".lora_", 1)[0] for k in handle.keys()}
    assert metadata["unet.r"] == RANK and metadata["unet.lora_alpha"] == ALPHA
    assert set(metadata["unet.target_modules"]) == keys  # exactly the adapted modules


def test_diffusers_load_lora_weights_scales_like_our_loader(adapter):
    from diffusers import StableDiffusionXLPipeline

    folder, sdxl = adapter
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl)
    base = _output(pipe.unet)
    pipe.load_lora_weights(str(folder))
    ours = _ours(folder)
    theirs = _output(pipe.unet)
    assert not torch.allclose(ours, base, atol=1e-3)
    # Bitwise equal here (max |diff| 0); without the metadata diffusers scales by 1, not 4 (max |diff| 1.22).
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_peft_model_from_pretrained_scales_like_our_loader(adapter):
    from peft import PeftModel

    folder, _ = adapter
    assert (folder / PEFT_CONFIG_NAME).is_file() and (folder / PEFT_WEIGHT_NAME).is_file()
    assert json.loads((folder / PEFT_CONFIG_NAME).read_text())["lora_alpha"] == ALPHA
    model = PeftModel.from_pretrained(build_tiny_sdxl(seed=0)["unet"], str(folder))
    torch.testing.assert_close(_output(model.get_base_model()), _ours(folder), rtol=1e-5, atol=1e-5)


def test_save_lora_marks_our_format_unless_told_otherwise(adapter, tmp_path):
    folder, _ = adapter
    _, info = read_lora_file(folder)
    assert info["format"] == TRAINING_FORMAT
    described = AdapterInfo.from_metadata(info)
    assert described.trained_here and described.protocol == "corrected" and described.model_gamma is None
    unet = build_tiny_sdxl(seed=0)["unet"]
    load_lora(unet, folder)
    _, foreign = read_lora_file(save_lora(unet, tmp_path, extra_metadata={"format": None}))
    assert "format" not in foreign and AdapterInfo.from_metadata(foreign).protocol == "published"


def test_vae_safetensors_is_preferred_and_the_pickle_still_loads(adapter, tmp_path):
    folder, _ = adapter
    vae = build_tiny_sdxl(seed=0)["vae"]
    with torch.no_grad():
        for p in set_vae_trainable(vae):
            p.add_(0.01)
    new = save_vae_partial(vae, tmp_path / VAE_SAFETENSORS_NAME)
    with torch.no_grad():
        for p in set_vae_trainable(vae):
            p.add_(0.01)
    old = save_vae_partial(vae, tmp_path)  # vae.ckpt: other values, so the test sees which file is read
    assert old.name == "vae.ckpt"
    assert load_vae_partial(build_tiny_sdxl(seed=0)["vae"], tmp_path)["file"] == str(new)
    assert load_vae_partial(build_tiny_sdxl(seed=0)["vae"], old)["tensors"] > 0
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes((folder / "pytorch_lora_weights.safetensors").read_bytes())
    assert adapter_files(tmp_path, None, None)[1] == new
    assert adapter_files(tmp_path / "pytorch_lora_weights.safetensors", None, None)[1] == new
    new.unlink()
    assert adapter_files(tmp_path, None, None)[1] == old  # runs written before vae.safetensors
    (tmp_path / "small").mkdir()
    old.rename(tmp_path / "small" / "vae.ckpt")  # the published layout
    assert adapter_files(tmp_path, "small", None)[1] == tmp_path / "small" / "vae.ckpt"
    # A folder without a VAE file never mistakes the LoRA's safetensors for one.
    with pytest.raises(FileNotFoundError, match="vae.safetensors"):
        load_vae_partial(build_tiny_sdxl(seed=0)["vae"], tmp_path)


def test_auto_protocol_reason_says_which_and_why():
    assert AdapterInfo().protocol_reason.startswith("protocol auto -> corrected: no adapter")
    ours = AdapterInfo.from_metadata({"format": TRAINING_FORMAT})
    assert ours.protocol_reason.startswith("protocol auto -> corrected") and "not recorded: 2.2" in ours.protocol_reason
    assert "model gamma 1," in AdapterInfo.from_metadata({"format": TRAINING_FORMAT, "model_gamma": 1.0}).protocol_reason
    released = AdapterInfo.from_metadata({"rank": 8}).protocol_reason
    assert released.startswith("protocol auto -> published") and "--protocol corrected" in released
    assert "\n" not in released
