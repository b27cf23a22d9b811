"""The ``--renderer`` registry: builders ``(args, device) -> render`` configured from ``inference_hf.py``'s options.

``render(image, disparity, K, disp_focus)`` takes ``(1, 3, H, W)`` sRGB in [0, 1], ``(1, 1, H, W)`` disparity in
[0, 1] (1 = near), ``K`` (CoC radius in px per unit disparity at the working resolution) and the focal disparity,
and returns ``(1, 3, H, W)`` sRGB in [0, 1]. A builder loads its models once; ``render`` is called per image.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import kernels
from kernels.colour import DEFAULT_GAMMA, linear_to_srgb, srgb_to_linear
from models.tiling import TILE_OVERLAP, TILE_SIZE

RenderFn = Callable[[torch.Tensor, torch.Tensor, float, float], torch.Tensor]
# ``many(image, disparity, settings)``: renders of one input at ``settings`` = [(K, focus), ...], yielded as
# ``(start, stop, (stop - start, 3, H, W))`` batches in order (see :class:`BatchedRender`).
RenderManyFn = Callable[[torch.Tensor, torch.Tensor, Sequence[tuple[float, float]]],
                        Iterator[tuple[int, int, torch.Tensor]]]


@dataclass
class BatchedRender:
    """A renderer that also renders several (K, focus) settings of one input at once (``many``), sharing work
    between them (bokehdiff: one VAE encode per input, ``--batch_size`` renders per UNet call). ``batch_size``
    is how many consecutive settings ``many`` renders together; called directly it renders one setting."""

    one: RenderFn
    many: RenderManyFn
    batch_size: int = 1
    protocol: str | None = None  # bokehdiff: the resolved --protocol (published renders want published inputs)

    def __call__(self, image, disparity, K, disp_focus):
        return self.one(image, disparity, K, disp_focus)


def render_settings(render: RenderFn | BatchedRender, image: torch.Tensor, disparity: torch.Tensor,
                    settings: Sequence[tuple[float, float]]) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Renders of ``image`` ``(1, 3, H, W)`` at each ``(K, focus)`` of ``settings``, yielded as ``(start, stop,
    (stop - start, 3, H, W))`` in order: through ``render.many`` where the renderer has it, else one by one."""
    if isinstance(render, BatchedRender):
        yield from render.many(image, disparity, settings)
        return
    for index, (K, disp_focus) in enumerate(settings):
        yield index, index + 1, render(image, disparity, K, disp_focus)


def batch_size_of(render: RenderFn | BatchedRender) -> int:
    """Settings rendered together by ``render`` (1 for renderers without batching)."""
    return render.batch_size if isinstance(render, BatchedRender) else 1

# --gamma's default for the classical and gaussian renderers (linear light = srgb ** gamma).
CLASSICAL_GAMMA = DEFAULT_GAMMA


def classical_gamma(args: argparse.Namespace) -> float:
    """``--gamma``, or :data:`CLASSICAL_GAMMA` when not given (bokehdiff resolves its own default)."""
    return CLASSICAL_GAMMA if args.gamma is None else float(args.gamma)


# A render taking longer than this shows a second bar with its progress in image rows (a 4000 x 3000 render
# takes minutes on a CPU; the per-render bar alone would sit at 0 % meanwhile).
ROW_PROGRESS_DELAY_S = 2.0


def build_classical(args: argparse.Namespace, device: torch.device) -> RenderFn:
    """The classical scatter renderer (``kernels.render_classical``), configured from the CLI."""

    def render(image, disparity, K, disp_focus):
        with tqdm(total=image.shape[-2], unit="row", desc=f"  K={K:g} f={disp_focus:.2f}", leave=False,
                  delay=ROW_PROGRESS_DELAY_S) as rows:
            return kernels.render_classical(
                image, disparity, K, disp_focus, gamma=classical_gamma(args), impl=args.impl, blades=args.blades,
                rotation_deg=args.rotation_deg, highlight_threshold=args.highlight_threshold,
                highlight_gain=args.highlight_gain, progress=lambda done, total: rows.update(done - rows.n),
            )

    return render


def build_bokehdiff(args: argparse.Namespace, device: torch.device) -> BatchedRender:
    """The BokehDiff one-step pipeline: base model + adapter loaded and verified once, then rendered per call."""
    from models.weights import adapter_files, is_local

    if args.allow_tf32 and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    adapter = args.resume_from_checkpoint or args.adapter
    if adapter is not None and str(adapter).lower() == "none":
        adapter = None
    if adapter is not None and not is_local(adapter):
        # A hub adapter is found (or found missing, offline) before diffusers is imported: an uncached adapter on
        # a machine without network is one error in ~4 s instead of ~12 s. The pipeline then reads it from the cache.
        adapter_files(adapter, args.variant, None)
    # PISA overrides (an empty dict means the published inference settings); compat "auto" lets the
    # pipeline pick the discretisation the adapter was trained with.
    pisa = {} if args.pisa_hardness is None else {"hardness": args.pisa_hardness}
    if args.pisa_compat != "auto":
        pisa["compat"] = args.pisa_compat == "on"
    if args.pisa_segments is not None:
        pisa["n_segments"] = args.pisa_segments
    if args.pisa_supersamples is not None:
        pisa["n_supersamples"] = args.pisa_supersamples
    from models.pipeline import BokehDiffPipeline

    start = time.perf_counter()
    pipe = BokehDiffPipeline.from_pretrained(
        args.pretrained_model_name_or_path, adapter=adapter, adapter_variant=args.variant,
        vae_weights=args.vae_weights, revision=args.revision, timestep=args.train_T, gamma=args.gamma,
        pisa=pisa if not args.no_pisa else False, seed=args.seed, tile_size=args.tile_size,
        tile_overlap=args.tile_overlap, protocol=args.protocol,
    ).to(device, dtype=args.mixed_precision)
    args.protocol_resolved = pipe.protocol
    if not pipe.tiler.uses_tile_size and (args.tile_size, args.tile_overlap) != (TILE_SIZE, TILE_OVERLAP):
        print(f"note: --tile_size / --tile_overlap are not used by the {pipe.protocol} protocol (its own tiles)")
    print(f"bokehdiff: --protocol {args.protocol} -> {pipe.protocol} (gamma {pipe.model.gamma:g}"
          f"{' from --gamma' if args.gamma is not None else ''}, x0 clamp "
          f"{pipe.model.x0_clip}, PISA {pipe.pisa_settings})")
    if "protocol_reason" in pipe.info:  # --protocol auto: which and why, as the API logs it
        print(f"bokehdiff: {pipe.info['protocol_reason']}")
    for note in ("pisa_off_reason", "vae_note"):
        if note in pipe.info:
            print(f"bokehdiff: {pipe.info[note]}")
    if not args.no_pisa and "pisa_compat" in pipe.info:
        print(f"bokehdiff: PISA with the {'published' if pipe.info['pisa_compat'] else 'corrected'} occlusion "
              f"discretisation (--pisa_compat {args.pisa_compat})")
    lora, vae = pipe.info.get("lora"), pipe.info.get("vae")
    weights = ([f"LoRA rank {lora['rank']}: {lora['tensors']} tensors"] if lora else []) + (
        [f"VAE {vae['tensors']} tensors"] if vae else [])
    print(f"bokehdiff: base '{args.pretrained_model_name_or_path}', "
          + (f"adapter '{adapter}' ({', '.join(weights)}, all verified)" if weights
             else "no adapter (base UNet: the renders are not bokeh)")
          + f" loaded in {time.perf_counter() - start:.1f} s on {device}, UNet {pipe.model.unet.dtype}")
    vae_tiling = {"auto": "auto", "on": True, "off": False}[args.vae_tiling]

    reported = set()

    def report(image):
        key = (tuple(image.shape[-2:]), pipe.last_plan.mode)
        if key not in reported:  # full frame vs tiles changes the output: say which ran, once per size
            reported.add(key)
            tqdm.write(f"bokehdiff: {image.shape[-1]}x{image.shape[-2]} rendered {pipe.last_plan.reason}")

    def render(image, disparity, K, disp_focus):
        out = pipe(image, disparity, K=K, disp_focus=disp_focus, mode=args.tile_mode, vae_tiling=vae_tiling,
                   tile_batch_size=args.tile_batch_size)
        report(image)
        return out

    def many(image, disparity, settings):
        for chunk in pipe.iter_variants(image, disparity, K=[K for K, _ in settings],
                                        disp_focus=[focus for _, focus in settings], batch_size=args.batch_size,
                                        mode=args.tile_mode, vae_tiling=vae_tiling,
                                        tile_batch_size=args.tile_batch_size):
            report(image)
            yield chunk

    return BatchedRender(render, many, args.batch_size, protocol=pipe.protocol)


def build_gaussian(args: argparse.Namespace, device: torch.device) -> RenderFn:
    """Baseline: depth-dependent Gaussian blur, sigma = |coc| / 2 (``kernels.render_gaussian``), in linear light."""

    def render(image, disparity, K, disp_focus):
        coc = K * (disparity - disp_focus)
        gamma = classical_gamma(args)
        return linear_to_srgb(kernels.render_gaussian(srgb_to_linear(image, gamma), coc), gamma)

    return render


def build_identity(args: argparse.Namespace, device: torch.device) -> RenderFn:
    """Baseline: the all-in-focus input returned unchanged (the floor every renderer must beat)."""
    return lambda image, disparity, K, disp_focus: image.clone()


def with_upsample(render: RenderFn | BatchedRender, factor: float) -> RenderFn | BatchedRender:
    """Render at ``factor`` x the input size (published ``--upsample``): the image is resized (bicubic), the
    disparity bilinearly, K is scaled by ``factor`` (CoC radii are pixels of the working resolution), and the
    render is resized back to the input size (antialiased). A :class:`BatchedRender` stays one."""
    if factor == 1:
        return render

    def enlarge(image, disparity):
        height, width = image.shape[-2:]
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        big = F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=factor < 1)
        disp = F.interpolate(disparity, size=size, mode="bilinear", align_corners=False, antialias=factor < 1)
        # Bicubic overshoot is clipped to the input's range, [0, 1] or above it (published BLB: HDR, raw 1 / depth).
        top = (max(1.0, float(image.max())), max(1.0, float(disparity.max())))
        return big.clamp(0, top[0]), disp.clamp(0, top[1])

    def shrink(out, like):
        return F.interpolate(out, size=tuple(like.shape[-2:]), mode="bicubic", align_corners=False,
                             antialias=factor > 1).clamp(0, 1)

    def wrapped(image, disparity, K, disp_focus):
        big, disp = enlarge(image, disparity)
        return shrink(render(big, disp, K * factor, disp_focus), image)

    if not isinstance(render, BatchedRender):
        return wrapped

    def many(image, disparity, settings):
        big, disp = enlarge(image, disparity)
        for start, stop, out in render.many(big, disp, [(K * factor, focus) for K, focus in settings]):
            yield start, stop, shrink(out, image)

    return BatchedRender(wrapped, many, render.batch_size)


RENDERERS: dict[str, Callable[[argparse.Namespace, torch.device], RenderFn]] = {
    "classical": build_classical,
    "bokehdiff": build_bokehdiff,
    "gaussian": build_gaussian,
    "identity": build_identity,
}
DEFAULT_RENDERER = "bokehdiff"
