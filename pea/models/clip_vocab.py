"""CLIP tokenizer files made from the BPE merges that open_clip ships.

transformers' CLIPTokenizer needs vocab.json + merges.txt, which normally come from the hub. open_clip
carries the same BPE (bpe_simple_vocab_16e6.txt.gz), so the tiny presets get the real CLIP tokenizer
without a download. The vocabulary order below is CLIP's own: 256 byte symbols, the same with '</w>',
then one token per merge, then the two special tokens (49408 in all).
"""

import gzip
import json
from pathlib import Path

import open_clip.tokenizer as oct

N_MERGES = 49152 - 256 - 2


def write_clip_tokenizer_files(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with gzip.open(oct.default_bpe(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : N_MERGES + 1]
    symbols = list(oct.bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
