"""What only SDXL's full shape shows, checked on a tiny stand-in that has its structure.

The tiny stack has one transformer layer of 2 heads of 16 where PISA goes; SDXL's ``down_blocks.1.attentions.0``
has 2 layers of 10 heads of 64 (640 channels) and ``down_blocks.2`` more layers still. ``STRUCTURE`` keeps the tiny
UNet and gives ``down_blocks.1`` exactly SDXL's width, heads and depth (``down_blocks.2``: 2 layers), so these
tests see what a single-layer stand-in cannot: PISA on *every* self-attention of that block and on no
cross-attention, a published-layout adapter covering the extra layers loaded with every tensor verified, and
PISA's token geometry with 10 heads of 64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.lora import PAPER_LORA_TARGETS, add_lora, load_lora, lora_module_names, lora_state_dict
from models.pipeline import BokehDiffPipeline
from models.pisa import PassthroughAttnProcessor, PISAAttnProcessor, install_pisa_processors, pisa_attention
from models.sdxl import SDXL_UNET_CONFIG
from models.tiny import TINY_UNET_CONFIG, TINY_VAE_CONFIG, build_random_stack
from tests.tiny_weights import write_published_adapter

STRUCTURE = dict(TINY_UNET_CONFIG, block_out_channels=(32, 640, 64), attention_head_dim=(1, 10, 2),
                 transformer_layers_per_block=(1, 2, 2), norm_num_groups=32)
PISA_BLOCK = "down_blocks.1.attentions.0"
SELF_ATTN = [f"{PISA_BLOCK}.transformer_blocks.{i}.attn1" for i in range(2)]


def test_the_stand_in_has_sdxl_s_pisa_block():
    """down_blocks.1 of the stand-in is SDXL's: 640 channels, 10 heads (of 64), 2 transformer layers."""
    for key in ("block_out_channels", "attention_head_dim", "transformer_layers_per_block"):
        assert STRUCTURE[key][1] == SDXL_UNET_CONFIG[key][1], key
    assert SDXL_UNET_CONFIG["block_out_channels"][1] // SDXL_UNET_CONFIG["attention_head_dim"][1] == 64


@pytest.fixture(scope="module")
def stack():
    return build_random_stack(STRUCTURE, TINY_VAE_CONFIG, seed=0)


def _inputs(image_px=(128, 192), seed=3):
    g = torch.Generator().manual_seed(seed)
    h, w = image_px
    disp = torch.rand(1, 1, h, w, generator=g)
    return dict(sample=torch.randn(1, 4, h // 8, w // 8, generator=g), timestep=499,
                encoder_hidden_states=torch.randn(1, 77, STRUCTURE["cross_attention_dim"], generator=g),
                added_cond_kwargs=dict(text_embeds=torch.randn(1, 32, generator=g),
                                       time_ids=torch.randn(1, 6, generator=g))), torch.cat([disp, 20 * (disp - 0.5)], 1)


@pytest.mark.parametrize("protocol", ["corrected", "published"])
def test_pisa_on_every_self_attention_of_the_block_and_no_cross_attention(stack, protocol):
    pipe = BokehDiffPipeline(**stack, protocol=protocol)
    processors = pipe.model.unet.attn_processors
    pisa = sorted(name[: -len(".processor")] for name, p in processors.items() if isinstance(p, PISAAttnProcessor))
    assert pisa == SELF_ATTN
    others = [p for name, p in processors.items() if name[: -len(".processor")] not in SELF_ATTN]
    assert len(others) == len(processors) - 2 and all(isinstance(p, PassthroughAttnProcessor) for p in others)
    assert not any(name.endswith("attn2.processor") and isinstance(p, PISAAttnProcessor)
                   for name, p in processors.items())


def test_published_layout_adapter_for_the_structure_loads_every_tensor(stack, tmp_path):
    source = build_random_stack(STRUCTURE, TINY_VAE_CONFIG, seed=0)
    modules = add_lora(source["unet"], rank=4)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in source["unet"].named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    # The second transformer layer of the PISA block (absent from the tiny stack) is covered too.
    assert any(m.startswith(f"{PISA_BLOCK}.transformer_blocks.1.attn1.") for m in modules)
    assert all(any(m == t or m.endswith("." + t) for t in PAPER_LORA_TARGETS) for m in modules)
    root = write_published_adapter(source, tmp_path / "published")

    target = build_random_stack(STRUCTURE, TINY_VAE_CONFIG, seed=0)["unet"]
    info = load_lora(target, root)
    assert info["modules"] == len(modules) and info["tensors"] == 2 * len(modules)
    assert lora_module_names(target) == modules
    want, got = lora_state_dict(source["unet"]), lora_state_dict(target)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    inputs, _ = _inputs()
    with torch.no_grad():
        assert torch.equal(source["unet"](**inputs).sample, target(**inputs).sample)


def test_token_geometry_with_ten_heads_of_64(stack):
    """The processor on SDXL's attention module (10 heads of 64, 640 channels) at a non-square token grid:
    disparity and CoC area-resized to the grid, px_per_token = image px / tokens, heads split as (10, 64)."""
    attn = dict(stack["unet"].named_modules())[SELF_ATTN[1]]
    assert attn.heads == 10 and attn.to_q.out_features // attn.heads == 64
    h, w = 4, 6  # tokens; the image is 16x as large (down_blocks.1 of SDXL: 1/16 of the image)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, h * w, 640, generator=g)
    disp = torch.rand(1, 1, 16 * h, 16 * w, generator=g)
    disp_coc = torch.cat([disp, 30 * (disp - 0.4)], dim=1)
    proc = PISAAttnProcessor(hardness=50.0, occlusion=True, impl="reference")
    with torch.no_grad():
        out = proc(attn, hidden, disp_coc=disp_coc)
        q, k, v = (f(hidden).view(1, h * w, 10, 64).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
        tok = F.interpolate(disp_coc, size=(h, w), mode="area")
        lookup = F.interpolate(disp, size=(3 * h, 3 * w), mode="area")[:, 0]
        expected = pisa_attention(q, k, v, tok[:, 0], tok[:, 1], hardness=50.0, px_per_token=16.0,
                                  occlusion_disparity=lookup, impl="chunked", block_size=5)
        expected = attn.to_out[0](expected.transpose(1, 2).reshape(1, h * w, 640))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_pisa_implementations_agree_through_the_full_block(stack):
    """The whole UNet with PISA on both layers of the block: reference (dense), chunked and sparse agree."""
    unet = stack["unet"]
    inputs, disp_coc = _inputs()
    outs = {}
    for impl in ("reference", "chunked", "sparse"):
        names = install_pisa_processors(unet, hardness=1e7, impl=impl, block_size=16)
        assert names == SELF_ATTN
        with torch.no_grad():
            outs[impl] = unet(**inputs, cross_attention_kwargs={"disp_coc": disp_coc}).sample
        proc = unet.attn_processors[SELF_ATTN[0] + ".processor"]
        assert proc.impl_counts[impl] == 2  # one call per layer of the block
    torch.testing.assert_close(outs["chunked"], outs["reference"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs["sparse"], outs["reference"], rtol=1e-5, atol=1e-5)
    unet.set_attn_processor(PassthroughAttnProcessor())
    with torch.no_grad():
        stock = unet(**inputs).sample
    assert not torch.allclose(outs["reference"], stock, atol=1e-4)  # PISA changed the result
