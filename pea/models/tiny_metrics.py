"""Tiny stand-ins for the evaluation's metric models, in their publishers' own formats, so that the metric
code loads them exactly as it loads the real ones: a transformers CLIP (language CLIPScore, PickScore), a
Chinese-CLIP (zh CLIPScore), an open_clip model (CLIPScore_en) and an ImageReward checkpoint (BLIP key names,
med_config.json, BERT vocab).
Random seeded weights: the numbers mean nothing, the code path is the real one.
"""

import contextlib
import json
import logging
import tempfile
from pathlib import Path

import torch

from pea.models.clip_vocab import write_clip_tokenizer_files

IMAGE = 32
OPENCLIP_NAME = "pea-tiny-openclip"


def save_tiny_clip(out: Path) -> None:
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig,
                              CLIPTokenizer, CLIPVisionConfig)

    torch.manual_seed(0)
    text = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          max_position_embeddings=77, projection_dim=32)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=IMAGE, patch_size=8, projection_dim=32)
    CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=32)).save_pretrained(
        out, safe_serialization=True)
    with tempfile.TemporaryDirectory() as vocab:
        write_clip_tokenizer_files(Path(vocab))
        tokenizer = CLIPTokenizer(f"{vocab}/vocab.json", f"{vocab}/merges.txt", model_max_length=77)
    images = CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(out)


@contextlib.contextmanager
def _quiet_random_init():
    """open_clip warns on the root logger that a model without pretrained weights is random: here that is the
    point (the stand-in is built from a seed, then loaded back with require_pretrained=True like a real one)."""

    def not_random_init(record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(not_random_init)
    try:
        yield
    finally:
        root.removeFilter(not_random_init)


def save_tiny_openclip(out: Path) -> None:
    import open_clip
    from safetensors.torch import save_file

    config = {"embed_dim": 32,
              "vision_cfg": {"image_size": IMAGE, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{OPENCLIP_NAME}.json"
    path.write_text(json.dumps(config, indent=2))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    with _quiet_random_init():
        model = open_clip.create_model(OPENCLIP_NAME)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")


def _vision_state(width: int, depth: int, patch: int, image: int, mlp: int) -> dict[str, torch.Tensor]:
    """A ViT state dict under BLIP's timm-style names (the names ImageReward.pt uses)."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    tokens = (image // patch) ** 2 + 1
    state = {"cls_token": rand(1, 1, width), "pos_embed": rand(1, tokens, width),
             "patch_embed.proj.weight": rand(width, 3, patch, patch), "patch_embed.proj.bias": rand(width),
             "norm.weight": torch.ones(width), "norm.bias": torch.zeros(width)}
    for i in range(depth):
        b = f"blocks.{i}."
        state |= {b + "norm1.weight": torch.ones(width), b + "norm1.bias": torch.zeros(width),
                  b + "attn.qkv.weight": rand(3 * width, width), b + "attn.qkv.bias": rand(3 * width),
                  b + "attn.proj.weight": rand(width, width), b + "attn.proj.bias": rand(width),
                  b + "norm2.weight": torch.ones(width), b + "norm2.bias": torch.zeros(width),
                  b + "mlp.fc1.weight": rand(mlp, width), b + "mlp.fc1.bias": rand(mlp),
                  b + "mlp.fc2.weight": rand(width, mlp), b + "mlp.fc2.bias": rand(width)}
    return state


def save_tiny_image_reward(out: Path) -> None:
    """ImageReward.pt + med_config.json + a BERT vocabulary, in the published layout."""
    from transformers import BertTokenizer, BlipTextConfig, BlipTextModel

    out.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789,.",
             *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]
    (out / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    BertTokenizer(str(out / "vocab.txt")).save_pretrained(out)
    med = {"architectures": ["BertModel"], "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
           "num_attention_heads": 2, "max_position_embeddings": 64, "vocab_size": len(words) + 2,
           "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 0, "type_vocab_size": 2,
           "add_cross_attention": True, "encoder_width": 48, "model_type": "bert"}
    (out / "med_config.json").write_text(json.dumps(med, indent=2))
    torch.manual_seed(0)
    text = BlipTextModel(BlipTextConfig(vocab_size=med["vocab_size"], hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
                                        encoder_hidden_size=48, is_decoder=True, bos_token_id=None, sep_token_id=None),
                         add_pooling_layer=False)
    state = {f"blip.visual_encoder.{k}": v for k, v in _vision_state(48, 2, 8, IMAGE, 96).items()}
    state |= {f"blip.text_encoder.{k}": v for k, v in text.state_dict().items()}
    # what upstream's BLIP saves beyond transformers' towers: BERT's position ids (a persistent buffer there)
    # and the contrastive projections to 256-d
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(64).unsqueeze(0)
    state |= {"blip.vision_proj.weight": torch.randn(256, 48) * 0.02, "blip.vision_proj.bias": torch.zeros(256),
              "blip.text_proj.weight": torch.randn(256, 32) * 0.02, "blip.text_proj.bias": torch.zeros(256)}
    dims = [32, 24, 16, 8, 4, 1]  # the published head is 768-1024-128-64-16-1 with dropouts at 1, 3, 5
    for index, (i, o) in zip((0, 2, 4, 6, 7), zip(dims, dims[1:])):
        state[f"mlp.layers.{index}.weight"] = torch.randn(o, i) * 0.1
        state[f"mlp.layers.{index}.bias"] = torch.zeros(o)
    torch.save(state, out / "ImageReward.pt")
