"""Tiny stand-ins for the real languages' student encoders, saved in each hub repo's own layout, so that
`load_text_encoder` loads them through exactly the calls a GPU run makes on the real ids:

- tiny-chinese-clip, for OFA-Sys/chinese-clip-vit-huge-patch14: a dual `ChineseCLIPModel` in
  `pytorch_model.bin` (the real main branch has no safetensors) and a BERT `vocab.txt` with no
  tokenizer_config.json (so no model_max_length: pea's 52-token window is the only limit).
- tiny-altclip, for BAAI/AltCLIP-m18: a dual `AltCLIPModel` in `pytorch_model.bin` and an XLM-R unigram
  tokenizer saved by `XLMRobertaTokenizer` (tokenizer.json, model_max_length 512).
- tiny-clip-ko, for Bingsu/clip-vit-large-patch14-ko: a dual `CLIPModel` with `CLIPTokenizer` (77 tokens).

The .bin files hold the published key names (save_pretrained's original format, e.g. AltCLIP's `encoder.layer.N`
where transformers 5 says `layers`) plus the `position_ids` buffers that checkpoints of their era stored
(persistent before transformers 4.31), so the strict load meets what such files make transformers report.
The tiny AltCLIP's project_dim (24) differs from its XLM-R width (32) on purpose: a width read from the wrong
field fails the tests. Weights are random but seeded; each function returns the model it saved, so that tests
can compare the loaded weights with it.
"""

import json
import tempfile
from pathlib import Path

import torch

from pea.models.clip_vocab import write_clip_tokenizer_files

IMAGE = 28
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=IMAGE,
               patch_size=14)
_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
# Chinese-CLIP's BERT vocabulary: special tokens, then single CJK characters (BERT splits CJK per character)
_CJK = "一个红色的圆蓝绿黄白黑大小方形三角星月山水火木人猫狗鸟鱼花树天空海上下在有和是图画片背景"
_CJK_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(_CJK), *"abcdefghijklmnopqrstuvwxyz0123456789"]
# a few sentences in AltCLIP-m18's languages, to train the tiny unigram model on
_SENTENCES = ["a red circle on a blue background", "un cerchio rosso su sfondo blu", "красный круг на синем фоне",
              "赤い丸の絵", "一个红色的圆", "빨간 원이 있는 그림", "ein roter Kreis auf blauem Grund",
              "un cercle rouge sur fond bleu", "un círculo rojo sobre fondo azul", "a green triangle and a star"]


def _save_bin(model, out: Path) -> None:
    """save_pretrained (published key names), then the weights as pytorch_model.bin with the legacy position_ids."""
    from safetensors.torch import load_file

    model.save_pretrained(out)
    state = load_file(out / "model.safetensors")
    state |= {k: v for k, v in model.named_buffers() if k.endswith("position_ids")}
    torch.save(state, out / "pytorch_model.bin")
    (out / "model.safetensors").unlink()


def _save_image_processor(processor_cls, out: Path) -> None:
    """preprocessor_config.json, as every one of these repos ships it (CLIPScore reads images through it)."""
    processor_cls(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}).save_pretrained(out)


def save_tiny_chinese_clip(out: Path):
    from transformers import ChineseCLIPConfig, ChineseCLIPImageProcessor, ChineseCLIPModel

    torch.manual_seed(0)
    text = dict(_TEXT, vocab_size=len(_CJK_VOCAB), max_position_embeddings=512, pad_token_id=0)
    model = ChineseCLIPModel(ChineseCLIPConfig(text_config=text, vision_config=_VISION, projection_dim=16))
    _save_bin(model, out)
    (out / "vocab.txt").write_text("\n".join(_CJK_VOCAB) + "\n", encoding="utf-8")
    _save_image_processor(ChineseCLIPImageProcessor, out)
    return model


def _xlmr_tokenizer():
    """A unigram model trained here, wrapped as XLM-R wraps its sentencepiece: <s> <pad> </s> <unk> first
    (XLMRobertaTokenizer fixes unk_id 3), <mask> last, as in the real 250002-piece vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import XLMRobertaTokenizer

    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    unigram.train_from_iterator(_SENTENCES, trainer)
    vocab = [tuple(piece) for piece in json.loads(unigram.to_str())["model"]["vocab"]] + [("<mask>", 0.0)]
    return XLMRobertaTokenizer(vocab=vocab, model_max_length=512)


def save_tiny_altclip(out: Path):
    from transformers import AltCLIPConfig, AltCLIPModel, CLIPImageProcessor

    tokenizer = _xlmr_tokenizer()
    torch.manual_seed(0)
    text = dict(_TEXT, vocab_size=len(tokenizer), project_dim=24, max_position_embeddings=514, pad_token_id=1,
                type_vocab_size=1, layer_norm_eps=1e-5)
    model = AltCLIPModel(AltCLIPConfig(text_config=text, vision_config=_VISION, projection_dim=16))
    _save_bin(model, out)
    tokenizer.save_pretrained(out)
    _save_image_processor(CLIPImageProcessor, out)
    return model


def save_tiny_clip_ko(out: Path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    torch.manual_seed(0)
    text = dict(_TEXT, max_position_embeddings=77)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=_VISION, projection_dim=16))
    model.save_pretrained(out)
    with tempfile.TemporaryDirectory() as vocab:
        write_clip_tokenizer_files(Path(vocab))
        CLIPTokenizer(f"{vocab}/vocab.json", f"{vocab}/merges.txt", model_max_length=77).save_pretrained(out)
    _save_image_processor(CLIPImageProcessor, out)
    return model


ENCODER_STANDINS = {"tiny-chinese-clip": save_tiny_chinese_clip, "tiny-altclip": save_tiny_altclip,
                    "tiny-clip-ko": save_tiny_clip_ko}
