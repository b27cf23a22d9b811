"""Tiny, seeded, SDXL-shaped model stack for offline tests and CPU benchmarks.

The stack keeps every structural property of SDXL that our code depends on, with tiny widths:

- UNet: ``down_block_types = (DownBlock2D, CrossAttnDownBlock2D, CrossAttnDownBlock2D)``, mirrored up blocks,
  ``addition_embed_type="text_time"`` (SDXL micro-conditioning: 6 time ids + pooled text embedding), a
  cross-attention dimension equal to the two text encoders' hidden sizes concatenated, and two
  downsamplers, so ``down_blocks.1.attentions.0`` runs at 1/2 of the latent resolution, i.e. **1/16 of the
  image resolution**, exactly as in SDXL (where PISA is applied).
- VAE: ``AutoencoderKL`` with 4 blocks (3 downsamplers, 8x), 4 latent channels, SDXL's scaling factor.
- Text: ``CLIPTextModel`` + ``CLIPTextModelWithProjection`` and two ``CLIPTokenizer`` built from a tiny
  byte-level BPE vocabulary written to disk (``vocab.json`` + ``merges.txt``); any text tokenises.
- Scheduler: ``EulerDiscreteScheduler`` with SDXL's beta schedule (``scaled_linear``, 0.00085..0.012,
  1000 training steps), epsilon prediction.

Everything is built from configs with ``torch.manual_seed(seed)`` in a fixed order, so two calls with the
same seed give bit-identical weights. Nothing touches the network.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

__all__ = ["build_random_stack", "build_tiny_sdxl", "save_tiny_sdxl", "TINY_UNET_CONFIG", "TINY_VAE_CONFIG"]

# Hidden sizes of the two text encoders. SDXL concatenates their penultimate hidden states along the
# feature axis for cross-attention (768 + 1280 = 2048 there), and adds encoder 2's projected pooled output
# to the time embedding ("text_time").
_TEXT1_DIM = 32
_TEXT2_DIM = 32
_TEXT2_PROJ_DIM = 32
_TIME_ID_DIM = 8  # SDXL: addition_time_embed_dim = 256
_MAX_TOKENS = 77  # CLIP context length, as in SDXL

TINY_UNET_CONFIG = dict(
    sample_size=16,  # 128 px image / 8 (informational; the UNet is fully convolutional)
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(16, 32, 32),
    layers_per_block=1,
    # diffusers' historical naming: for SDXL `attention_head_dim` is the number of heads (5, 10, 20).
    # Here: 2 heads of width 16 in down_blocks.1 (SDXL: 10 heads of width 64).
    attention_head_dim=(1, 2, 2),
    transformer_layers_per_block=(1, 1, 1),
    norm_num_groups=8,
    cross_attention_dim=_TEXT1_DIM + _TEXT2_DIM,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=_TIME_ID_DIM,
    projection_class_embeddings_input_dim=6 * _TIME_ID_DIM + _TEXT2_PROJ_DIM,
    upcast_attention=False,
)

TINY_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 16, 16),
    layers_per_block=1,
    norm_num_groups=4,
    latent_channels=4,
    sample_size=128,
    scaling_factor=0.13025,  # SDXL's VAE
    force_upcast=False,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    timestep_spacing="leading",
    steps_offset=1,
)


def _bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable unicode character table of byte-level BPE (GPT-2/CLIP convention).

    Printable Latin-1 bytes map to themselves; the remaining bytes are shifted above 255 so every byte has
    a visible, whitespace-free character (the BPE files cannot contain raw control bytes).
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, shift = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return table


# A few whole words so the fixed BokehDiff prompt gets multi-character tokens (exercises real merges).
_WORDS = ("an", "excellent", "photo", "with", "a", "large", "aperture")


def _tiny_bpe_files() -> tuple[dict[str, int], list[str]]:
    """Vocabulary and merge list of a tiny CLIP BPE: all 256 byte symbols (plain and word-final `</w>`),
    the merges that spell `_WORDS`, and the two special tokens. Any text tokenises without unknowns."""
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in _WORDS:
        # Left-to-right merges: "e x" -> "ex", "ex c" -> "exc", ..., last one ends the word with </w>.
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for nxt in pieces[1:]:
            rule = f"{current} {nxt}"
            if rule not in merges:
                merges.append(rule)
            current = current + nxt
            if current not in vocab_list:
                vocab_list.append(current)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def _write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    vocab, merges = _tiny_bpe_files()
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def _build_tokenizers():
    from transformers import CLIPTokenizer

    # Load through `from_pretrained` on the written vocab.json + merges.txt: the same route a saved
    # pipeline takes, whichever tokenizer backend transformers uses.
    with tempfile.TemporaryDirectory() as tmp:
        _write_tokenizer_files(Path(tmp))
        tok = CLIPTokenizer.from_pretrained(tmp, model_max_length=_MAX_TOKENS, pad_token="<|endoftext|>")
        # SDXL's second tokenizer pads with "!" instead of the end token; keep that difference.
        tok2 = CLIPTokenizer.from_pretrained(tmp, model_max_length=_MAX_TOKENS, pad_token="!")
    return tok, tok2


def build_tiny_sdxl(seed: int = 0) -> dict:
    """Build the tiny SDXL stack in memory.

    Args:
        seed: seeds weight initialisation (each component seeded in a fixed order, so the result does not
            depend on the caller's RNG state, which is restored afterwards).

    Returns:
        dict with keys ``unet`` (UNet2DConditionModel), ``vae`` (AutoencoderKL), ``text_encoder``
        (CLIPTextModel), ``text_encoder_2`` (CLIPTextModelWithProjection), ``tokenizer``, ``tokenizer_2``
        (CLIPTokenizer) and ``scheduler`` (EulerDiscreteScheduler): exactly the keyword arguments of
        ``StableDiffusionXLPipeline(**components)``. All modules are float32, on CPU, in eval mode.
    """
    return build_random_stack(TINY_UNET_CONFIG, TINY_VAE_CONFIG, seed=seed)


def build_random_stack(unet_config: dict, vae_config: dict, *, text_widths: tuple[int, int] = (_TEXT1_DIM, _TEXT2_DIM),
                       pooled_width: int = _TEXT2_PROJ_DIM, text_layers: int = 2, text_heads: int = 2,
                       text_intermediate: int = 64, seed: int = 0) -> dict:
    """An SDXL-layout stack with *random* weights from the given UNet / VAE configs (the tiny ones, or SDXL's
    published ones, :data:`models.sdxl.SDXL_UNET_CONFIG`, to measure the real architecture's time and memory).

    The text encoders are small CLIPs of widths ``text_widths`` (SDXL: 768 + 1280, whose concatenation must be
    the UNet's ``cross_attention_dim``) and pooled projection ``pooled_width`` (SDXL: 1280), ``text_layers``
    deep, with the tiny BPE tokenizers: they compute the fixed prompt's embeddings once, so their depth does
    not change a render. Seeding and return value as :func:`build_tiny_sdxl`. This is not a trained model:
    its renders are noise-like, only its shapes, time and memory are SDXL's.
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if sum(text_widths) != unet_config["cross_attention_dim"]:
        raise ValueError(f"text widths {text_widths} must sum to the UNet's cross_attention_dim "
                         f"({unet_config['cross_attention_dim']}).")
    tok, tok2 = _build_tokenizers()
    vocab_size = len(tok.get_vocab())
    ids = dict(
        bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>"),
        eos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
    )
    text_common = dict(
        vocab_size=vocab_size,
        intermediate_size=text_intermediate,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        max_position_embeddings=_MAX_TOKENS,
        hidden_act="gelu",
        **ids,
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**vae_config)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=text_widths[0], projection_dim=text_widths[0],
                                                    **text_common))
        torch.manual_seed(seed + 3)
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(hidden_size=text_widths[1], projection_dim=pooled_width, **text_common)
        )
    scheduler = EulerDiscreteScheduler(**SCHEDULER_CONFIG)
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.eval()
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tok,
        tokenizer_2=tok2,
        scheduler=scheduler,
    )


def save_tiny_sdxl(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write the tiny stack as a diffusers-format SDXL folder and return its path.

    The folder holds ``model_index.json`` (``StableDiffusionXLPipeline``) and the subfolders ``unet/``,
    ``vae/``, ``text_encoder/``, ``text_encoder_2/``, ``tokenizer/``, ``tokenizer_2/`` (with ``vocab.json``
    and ``merges.txt``) and ``scheduler/``. It loads offline with
    ``StableDiffusionXLPipeline.from_pretrained(path)`` or per component, e.g.
    ``UNet2DConditionModel.from_pretrained(path, subfolder="unet")``.
    """
    from diffusers import StableDiffusionXLPipeline

    path = Path(path)
    pipe = StableDiffusionXLPipeline(**build_tiny_sdxl(seed))
    pipe.save_pretrained(path, safe_serialization=True)
    # Make sure the raw BPE files are present whatever the tokenizer backend chose to serialise.
    for sub in ("tokenizer", "tokenizer_2"):
        folder = path / sub
        if not (folder / "vocab.json").exists() or not (folder / "merges.txt").exists():
            _write_tokenizer_files(folder)
    return path

