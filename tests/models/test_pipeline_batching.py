"""Several renders of one image (issue 20, batching): one VAE encode, ``batch_size`` renders per UNet call, equal
to one-by-one renders (bit for bit at batch 1, to float rounding above), deterministic; and the full-frame
render that runs out of memory falls back to tiles (issue 21)."""

import logging

import pytest
import torch

from models.pipeline import BokehDiffPipeline
from models.pipeline_devices import is_out_of_memory
from models.tiny import build_tiny_sdxl

pytestmark = pytest.mark.usefixtures("one_thread")

_FAST_PISA = dict(n_segments=3, n_supersamples=2)
# 2 K x 3 focus planes, K major (inference_hf.py's order).
SETTINGS = [(K, focus) for K in (10.0, 30.0) for focus in (0.2, 0.5, 0.8)]
# Measured on the tiny stack (CPU, float32): batched renders differ from one-by-one ones by <= 1e-4 in sRGB
# [0, 1] (BLAS kernels chosen by batch size; the VAE decoder amplifies the UNet's last-bit differences).
BATCHED_ATOL = 5e-4


@pytest.fixture(scope="module")
def pipes():
    return {protocol: BokehDiffPipeline.from_components(**build_tiny_sdxl(seed=0), pisa=_FAST_PISA, protocol=protocol,
                                                        tile_size=64, tile_overlap=32)
            for protocol in ("corrected", "published")}


def _inputs(h=64, w=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g), torch.rand(1, 1, h, w, generator=g)


def _one_by_one(pipe, image, disparity, mode):
    return torch.cat([pipe(image, disparity, K=K, disp_focus=focus, mode=mode) for K, focus in SETTINGS])


def _variants(pipe, image, disparity, mode, batch_size):
    return pipe.render_variants(image, disparity, K=[K for K, _ in SETTINGS],
                                disp_focus=[focus for _, focus in SETTINGS], batch_size=batch_size, mode=mode)


class _Counter:
    """Counts calls of ``obj.name`` (and the batch sizes it saw), delegating to the original."""

    def __init__(self, monkeypatch, obj, name):
        self.calls = []
        original = getattr(obj, name)

        def counted(x, *args, **kwargs):
            self.calls.append(x.shape[0])
            return original(x, *args, **kwargs)

        monkeypatch.setattr(obj, name, counted)


@pytest.mark.parametrize("protocol, mode", [("corrected", "full"), ("corrected", "tiled"), ("published", "full"),
                                            ("published", "tiled")])
def test_batch_one_is_bit_identical_to_one_by_one_renders(pipes, protocol, mode):
    pipe = pipes[protocol]
    image, disparity = _inputs()
    reference = _one_by_one(pipe, image, disparity, mode)
    assert pipe.last_plan.mode == mode
    assert torch.equal(_variants(pipe, image, disparity, mode, 1), reference)


@pytest.mark.parametrize("protocol, mode", [("corrected", "full"), ("corrected", "tiled"), ("published", "full")])
@pytest.mark.parametrize("batch_size", [2, 6])
def test_batched_renders_agree_to_float_rounding_and_are_deterministic(pipes, protocol, mode, batch_size):
    pipe = pipes[protocol]
    image, disparity = _inputs(seed=1)
    reference = _one_by_one(pipe, image, disparity, mode)
    batched = _variants(pipe, image, disparity, mode, batch_size)
    assert batched.shape == reference.shape == (len(SETTINGS), 3, 64, 96)
    assert (batched - reference).abs().max() < BATCHED_ATOL
    assert torch.equal(_variants(pipe, image, disparity, mode, batch_size), batched)


@pytest.mark.parametrize("protocol, mode", [("corrected", "full"), ("corrected", "tiled"), ("published", "tiled")])
def test_each_render_of_a_batch_gets_its_own_coc_and_comes_back_in_order(pipes, monkeypatch, protocol, mode):
    """The random tiny UNet barely reacts to the CoC, so a UNet that shifts its output by each item's mean CoC
    stands in: a setting mixed up inside a batch would then be far off."""
    pipe = pipes[protocol]
    original = pipe.model.predict_noise

    def coc_sensitive(z, disparity=None, coc_px=None, **kwargs):
        return original(z, disparity, coc_px, **kwargs) + 0.05 * coc_px.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)

    monkeypatch.setattr(pipe.model, "predict_noise", coc_sensitive)
    image, disparity = _inputs(seed=2)
    reference = _one_by_one(pipe, image, disparity, mode)
    batched = _variants(pipe, image, disparity, mode, 4)
    distance = (batched[:, None] - reference[None]).abs().flatten(2).amax(-1)  # (batched i, reference j)
    assert (distance.diagonal() < BATCHED_ATOL).all()
    off_diagonal = distance + torch.eye(len(SETTINGS)) * 1e9
    assert off_diagonal.min() > 20 * BATCHED_ATOL


def test_one_encode_per_image_and_batch_size_renders_per_unet_call(pipes, monkeypatch):
    pipe = pipes["corrected"]
    image, disparity = _inputs()
    encodes = _Counter(monkeypatch, pipe.model.vae, "encode")
    unet = _Counter(monkeypatch, pipe.model, "predict_noise")
    decodes = _Counter(monkeypatch, pipe.model.vae, "decode")
    chunks = list(pipe.iter_variants(image, disparity, K=[K for K, _ in SETTINGS],
                                     disp_focus=[f for _, f in SETTINGS], batch_size=4, mode="full"))
    assert encodes.calls == [1]
    assert unet.calls == [4, 2]
    assert decodes.calls == [1] * 6  # the decoder takes one render at a time (its rounding does not depend on b)
    assert [(start, stop) for start, stop, _ in chunks] == [(0, 4), (4, 6)]
    assert pipe.last_plan.timings["encode_s"] > 0 and pipe.last_plan.timings["unet_s"] > 0


def test_one_value_broadcasts_and_bad_arguments_are_refused(pipes):
    pipe = pipes["corrected"]
    image, disparity = _inputs()
    out = pipe.render_variants(image, disparity, K=20, disp_focus=[0.3, 0.6], mode="full")
    assert torch.equal(out[1:], pipe(image, disparity, K=20, disp_focus=0.6, mode="full"))
    pil = pipe.render_variants(image, disparity, K=[10, 20], focus_xy=(5, 7), mode="full", output_type="pil")
    assert len(pil) == 2 and pil[0].size == (96, 64)
    with pytest.raises(ValueError, match="one value per render"):
        pipe.render_variants(image, disparity, K=[10, 20, 30], disp_focus=[0.3, 0.6])
    with pytest.raises(ValueError, match="batch_size"):
        pipe.render_variants(image, disparity, K=10, disp_focus=0.5, batch_size=0)
    with pytest.raises(ValueError, match="one image"):
        pipe.render_variants(image.expand(2, -1, -1, -1), disparity, K=10, disp_focus=0.5)
    with pytest.raises(ValueError, match="focus"):
        pipe.render_variants(image, disparity, K=10)


def _fail_full_frame(monkeypatch, pipe, error):
    """The UNet raises ``error`` on the full (un-tiled) latent only: a wrong memory estimate, injected."""
    original = pipe.model.predict_x0
    full_latent = []

    def predict_x0(z, *args, **kwargs):
        if full_latent and z.shape[-2:] == full_latent[0]:
            raise error
        return original(z, *args, **kwargs)

    monkeypatch.setattr(pipe.model, "predict_x0", predict_x0)
    return full_latent


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                                                "allocate memory: you tried to allocate 21474836480 bytes.")])
def test_auto_mode_falls_back_to_tiles_when_the_full_frame_runs_out_of_memory(pipes, monkeypatch, caplog, error):
    pipe = pipes["corrected"]
    image, disparity = _inputs()
    tiled = pipe(image, disparity, K=20, disp_focus=0.5, mode="tiled")
    full_latent = _fail_full_frame(monkeypatch, pipe, error)
    full_latent.append((8, 12))
    with caplog.at_level(logging.WARNING, logger="models.pipeline"):
        out = pipe(image, disparity, K=20, disp_focus=0.5, mode="auto")
    assert torch.equal(out, tiled)
    assert pipe.last_plan.mode == "tiled" and "ran out of memory" in pipe.last_plan.reason
    warnings = [r for r in caplog.records if "ran out of memory" in r.getMessage()]
    assert len(warnings) == 1 and "2 tiles" in warnings[0].getMessage()
    # every batch of a multi-render call after the failure keeps the tiles; still one message per call
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="models.pipeline"):
        out = pipe.render_variants(image, disparity, K=20, disp_focus=[0.5, 0.5], batch_size=1, mode="auto")
    assert torch.equal(out[1:], tiled)
    assert len([r for r in caplog.records if "ran out of memory" in r.getMessage()]) == 1
    # an explicit full-frame request is not second-guessed
    with pytest.raises(type(error)):
        pipe(image, disparity, K=20, disp_focus=0.5, mode="full")


def test_other_errors_and_images_of_one_tile_are_not_retried(pipes, monkeypatch):
    pipe = pipes["corrected"]
    image, disparity = _inputs()
    full_latent = _fail_full_frame(monkeypatch, pipe, ValueError("a bug, not memory"))
    full_latent.append((8, 12))
    with pytest.raises(ValueError, match="a bug"):
        pipe(image, disparity, K=20, disp_focus=0.5, mode="auto")
    small_image, small_disparity = _inputs(32, 32)
    monkeypatch.undo()
    full_latent = _fail_full_frame(monkeypatch, pipe, torch.OutOfMemoryError("out of memory"))
    full_latent.append((4, 4))
    with pytest.raises(torch.OutOfMemoryError):  # one tile would be the same pass: the error stands
        pipe(small_image, small_disparity, K=20, disp_focus=0.5, mode="auto")


def test_out_of_memory_is_recognised_by_type_or_allocator_message():
    assert is_out_of_memory(torch.OutOfMemoryError("x"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only allocator errors, not any message


def test_the_memory_plan_scales_with_the_batch(pipes, monkeypatch):
    pipe = pipes["corrected"]
    budget = 2.5 * pipe.estimate_bytes(512, 512)[0] / 0.8  # room for two full-frame renders, not three
    monkeypatch.setattr("models.tiling.available_bytes", lambda device: budget)
    assert pipe.plan(512, 512, batch=1).mode == "full"
    assert pipe.plan(512, 512, batch=2).mode == "full"
    assert pipe.plan(512, 512, batch=3).mode == "tiled"
