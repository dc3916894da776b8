"""Tiny stand-ins for the real languages' student encoders, saved in each hub repo's own layout, so that
`load_text_encoder` loads them through exactly the calls a GPU run makes on the real ids:

- tiny-chinese-clip, for OFA-Sys/chinese-clip-vit-huge-patch14: a dual `ChineseCLIPModel` in
  `pytorch_model.bin` (the real main branch has no safetensors) and a BERT `vocab.txt` with no
  tokenizer_config.json (so no model_max_length: pea's 52-token window is the only limit).
- tiny-altclip, for BAAI/AltCLIP-m18: a dual `AltCLIPModel` in `pytorch_model.bin` and an XLM-R unigram
  tokenizer saved by `XLMRobertaTokenizer` (tokenizer.json, model_max_length 512).
- tiny-clip-ko, for Bingsu/clip-vit-large-patch14-ko: a dual `CLIPModel` with `CLIPTokenizer` (77 tokens).

And for the encoder variants of languages.yaml (paper Table 1 "Ours w/ Multilingual-CLIP", "Ours w/ MulT5"), built by
`ensure_variant_standin` (see there why not by pea.models.tiny):

- tiny-xlmr-clip, for laion/CLIP-ViT-H-14-frozen-xlm-roberta-large-laion5B-s13B-b90k (open_clip
  `xlm-roberta-large-ViT-H-14`, pretrained tag `frozen_laion5b_s13b_b90k`): the whole CLIP state dict in
  `open_clip_pytorch_model.bin` as the repo's main branch holds it (a pickle, with the `position_ids` buffer of its
  transformers era), the XLM-R `tokenizer.json` alone (no tokenizer_config.json) and preprocessor_config.json; plus
  the one file pea reads and the real repo lacks, `open_clip_model.safetensors`, the same state dict converted (what
  a user must add to the real repo's files: pea loads no pickle). The architecture JSON open_clip ships for the real
  model is `pea-tiny-xlmr-ViT.json` here, registered by the loader; its text tower names tiny-xlm-roberta.
- tiny-xlm-roberta, for FacebookAI/xlm-roberta-large, where open_clip reads the text tower's config: config.json
  (`XLMRobertaForMaskedLM`), model.safetensors and the tokenizer; not its alternative formats of the same weights
  and vocabulary (pytorch_model.bin, TF, Flax, ONNX, sentencepiece.bpe.model), which nothing reads next to these.
- tiny-mt5, for google/mt5-xl (the official code's `mt5-xl`): a whole `MT5ForConditionalGeneration` (decoder and
  untied lm_head too) in `pytorch_model.bin` under the key names of its era (shared and both embed_tokens), a
  sentencepiece `spiece.model` with special_tokens_map.json and tokenizer_config.json (extra_ids 0, no
  model_max_length), generation_config.json, and a vocab_size padded past the pieces, as mT5's 250112 > 250100.

The .bin files hold the published key names (save_pretrained's original format, e.g. AltCLIP's `encoder.layer.N`
where transformers 5 says `layers`) plus the `position_ids` buffers that checkpoints of their era stored
(persistent before transformers 4.31), so the strict load meets what such files make transformers report.
The tiny AltCLIP's project_dim (24) differs from its XLM-R width (32) on purpose: a width read from the wrong
field fails the tests. Weights are random but seeded; each function returns the model it saved, so that tests
can compare the loaded weights with it.
"""

import hashlib
import io
import json
import tempfile
from pathlib import Path

import torch

from pea.models.build_once import build_once
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


# --- encoder variants ----------------------------------------------------------------------------------------

XLMR_CLIP_ARCH = "pea-tiny-xlmr-ViT"
# the real xlm-roberta-large-ViT-H-14 config's text_cfg (open_clip 3.3 model_configs/), its text model a tiny build;
# embed_dim 24 differs from XLM-R's width 32 on purpose: a width read from the projected output fails the tests
_XLMR_CLIP = {"embed_dim": 24, "vision_cfg": {"image_size": IMAGE, "layers": 1, "width": 32, "head_width": 16,
                                              "patch_size": 14},
              "text_cfg": {"hf_model_name": "tiny-xlm-roberta", "hf_tokenizer_name": "tiny-xlm-roberta",
                           "hf_pooler_type": "mean_pooler"}}


def save_tiny_xlm_roberta(out: Path):
    """XLM-R in FacebookAI/xlm-roberta-large's layout (its config.json: XLMRobertaForMaskedLM, 514 positions,
    pad 1, one token type, layer_norm_eps 1e-5)."""
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    tokenizer = _xlmr_tokenizer()
    torch.manual_seed(0)
    config = XLMRobertaConfig(**_TEXT, vocab_size=len(tokenizer), max_position_embeddings=514, pad_token_id=1,
                              bos_token_id=0, eos_token_id=2, type_vocab_size=1, layer_norm_eps=1e-5)
    model = XLMRobertaForMaskedLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model


def save_tiny_xlmr_clip(out: Path):
    """The open_clip CLIP, built as open_clip builds the real one (its text tower's config read from
    tiny-xlm-roberta's files, saved to a scratch folder here), saved as the laion repo holds it plus the
    safetensors conversion."""
    import open_clip
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    from pea.models.tiny_metrics import _quiet_random_init

    out.mkdir(parents=True)
    arch = out / f"{XLMR_CLIP_ARCH}.json"
    arch.write_text(json.dumps(_XLMR_CLIP, indent=2))
    open_clip.add_model_config(arch)
    with tempfile.TemporaryDirectory() as xlmr:
        save_tiny_xlm_roberta(Path(xlmr))
        torch.manual_seed(0)
        text_cfg = dict(_XLMR_CLIP["text_cfg"], hf_model_name=xlmr, hf_model_pretrained=False)
        with _quiet_random_init():
            model = open_clip.create_model(XLMR_CLIP_ARCH, pretrained_text=False, text_cfg=text_cfg)
    state = model.state_dict()
    # open_clip trained it under transformers < 4.31, whose position_ids buffer was persistent, so it is saved
    state["text.transformer.embeddings.position_ids"] = model.text.transformer.embeddings.position_ids
    torch.save(state, out / "open_clip_pytorch_model.bin")
    save_file({k: v.contiguous() for k, v in state.items()}, out / "open_clip_model.safetensors")
    (out / "tokenizer.json").write_text(_xlmr_tokenizer().backend_tokenizer.to_str(), encoding="utf-8")
    CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}).to_json_file(
        out / "preprocessor_config.json")
    return model


def _spiece_model() -> bytes:
    """A sentencepiece unigram model laid out as mT5's: <pad> 0, </s> 1, <unk> 2, no <s>."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_SENTENCES), model_writer=model, model_type="unigram", vocab_size=120,
        hard_vocab_limit=False, character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    return model.getvalue()


def save_tiny_mt5(out: Path):
    from transformers import MT5Config, MT5ForConditionalGeneration, T5Tokenizer

    out.mkdir(parents=True)
    (out / "spiece.model").write_bytes(_spiece_model())
    special = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special))
    tokenizer_config = special | {"extra_ids": 0, "additional_special_tokens": None}
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    pieces = len(T5Tokenizer.from_pretrained(out))
    torch.manual_seed(0)
    config = MT5Config(vocab_size=pieces + 12, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=2,
                       num_heads=4, feed_forward_proj="gated-gelu", tokenizer_class="T5Tokenizer")
    model = MT5ForConditionalGeneration(config)
    model.save_pretrained(out)  # for the config files; the weights go to the .bin below
    (out / "model.safetensors").unlink()
    # transformers 5 ties mT5's lm_head to the embeddings whatever the config says; the published config says
    # false and the published checkpoint holds its own lm_head
    saved = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(saved | {"tie_word_embeddings": False}, indent=2))
    state = model.state_dict()  # shared.weight and both embed_tokens.weight, one tensor, as torch.save kept them
    state["lm_head.weight"] = torch.randn_like(state["shared.weight"])
    torch.save(state, out / "pytorch_model.bin")
    return model


VARIANT_STANDINS = {"tiny-xlmr-clip": save_tiny_xlmr_clip, "tiny-xlm-roberta": save_tiny_xlm_roberta,
                    "tiny-mt5": save_tiny_mt5}


def ensure_variant_standin(name: str, model_cache: Path) -> Path:
    """Build `name` under `model_cache` once, as pea.models.tiny.ensure_built builds the other stand-ins (under a
    temporary name, then renamed). Kept apart from it because that module's source is part of the toy world's
    digest: registering these there would rebuild the toy world. The marker is this module's digest, so a
    changed stand-in is rebuilt."""
    return build_once(Path(model_cache) / name, hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
                      VARIANT_STANDINS[name])
