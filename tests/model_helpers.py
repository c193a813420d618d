"""Shared test helpers: a tiny random transformers Qwen2.5-VL, matching inputs, and transformers' extra arguments.

transformers is imported lazily (inside functions) so that importing this module stays cheap for tests that only
need the input builders. Sizes are tiny (hidden 64, 2 layers, vocab 544) but the geometry is real (patch 14, merge 2,
112 px windows), so vision grids behave like the processor's.
"""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE, VIDEO, V_START, V_END = 524, 525, 521, 522
VOCAB = 544
TEXT_IDS = 500  # random "text" ids are drawn below this, clear of the special tokens
PATCH_DIM = 3 * 2 * 14 * 14  # 1176

TINY_TEXT = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=32768, bos_token_id=512, eos_token_id=514,
    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
)
TINY_VISION = dict(
    depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, fullatt_block_indexes=[1],
    tokens_per_second=2, window_size=112, patch_size=14, temporal_patch_size=2, spatial_merge_size=2,
    in_channels=3,
)


def hf_config(tie: bool = True, **text_overrides):
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config={**TINY_TEXT, **text_overrides}, vision_config=dict(TINY_VISION), image_token_id=IMAGE,
        video_token_id=VIDEO, vision_start_token_id=V_START, vision_end_token_id=V_END, tie_word_embeddings=tie,
    )


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.15) -> torch.nn.Module:
    """Weights large enough that positions and features move the logits visibly (the default init is 0.02)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight") or "norm1" in name or "norm2" in name or "ln_q" in name \
                    or name.endswith("layernorm.weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif "embed_tokens" in name:
                p.copy_(0.3 * noise)  # tied to the head in the tiny config: keeps logits O(5)
            else:
                p.copy_(std * noise)
    return model


def make_hf_model(tie: bool = True, seed: int = 0, **text_overrides):
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(hf_config(tie, **text_overrides)).float().eval()
    return randomize_(model, seed)


def save_hf_model(model, folder: str | Path) -> Path:
    model.save_pretrained(str(folder))
    return Path(folder)


def mm_token_type_ids(input_ids: torch.Tensor) -> torch.Tensor:
    """transformers 5.24 builds 3-D M-RoPE ids only when given these (0 text, 1 image, 2 video)."""
    return (input_ids == IMAGE).long() + 2 * (input_ids == VIDEO).long()


def hf_forward(model, inputs: dict, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    extra = {"mm_token_type_ids": mm_token_type_ids(inputs["input_ids"])}
    if position_ids is not None:
        extra["position_ids"] = position_ids
    with torch.no_grad():
        return model(**inputs, **extra).logits


# --- inputs -----------------------------------------------------------------------------------------------------

def text_ids(n: int, gen: torch.Generator) -> list[int]:
    return torch.randint(0, TEXT_IDS, (n,), generator=gen).tolist()


def vision_block(grid: tuple[int, int, int], token: int) -> list[int]:
    t, h, w = grid
    return [V_START] + [token] * (t * h * w // 4) + [V_END]


def random_pixels(grids: list[tuple[int, int, int]], gen: torch.Generator) -> torch.Tensor:
    """(N, 1176) random patch rows for these grids, as the processor would hand them over."""
    n = sum(t * h * w for t, h, w in grids)
    return torch.randn(n, PATCH_DIM, generator=gen)


def build_prompt(parts: list, seed: int = 0) -> dict:
    """parts: ints (that many random text tokens), ("image", (t, h, w)) or ("video", (t, h, w), seconds_per_grid).

    Returns the HF-named inputs for one prompt (batch 1)."""
    gen = torch.Generator().manual_seed(seed)
    ids, images, videos, seconds = [], [], [], []
    for part in parts:
        if isinstance(part, int):
            ids += text_ids(part, gen)
        elif part[0] == "image":
            ids += vision_block(part[1], IMAGE)
            images.append(part[1])
        else:
            ids += vision_block(part[1], VIDEO)
            videos.append(part[1])
            seconds.append(part[2])
    out = {"input_ids": torch.tensor([ids])}
    if images:
        out["pixel_values"] = random_pixels(images, gen)
        out["image_grid_thw"] = torch.tensor(images)
    if videos:
        out["pixel_values_videos"] = random_pixels(videos, gen)
        out["video_grid_thw"] = torch.tensor(videos)
        out["second_per_grid_ts"] = torch.tensor(seconds)
    return out


def left_pad_batch(prompts: list[dict], pad_id: int = 512) -> dict:
    """Join single prompts into one left-padded batch; pixel inputs and grids concatenate in row order."""
    longest = max(p["input_ids"].shape[1] for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), longest, dtype=torch.long)
    for row, p in enumerate(prompts):
        n = p["input_ids"].shape[1]
        ids[row, longest - n :] = p["input_ids"][0]
        mask[row, longest - n :] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        parts = [p[key] for p in prompts if key in p]
        if parts:
            out[key] = torch.cat(parts)
    return out
