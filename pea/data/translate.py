"""Translate: fill the missing side of each caption pair and mark each sample parallel or culture.

A parallel sample (both captions) is KD data; a culture sample (native only, or from a culture source such as
WuKong) is SD-loss data (paper Sec. 3.4). Translations go through a transformers seq2seq model, batched, on
the GPU when there is one, and are cached by a digest of (model, direction, text) under the storage root,
so a re-run translates nothing twice. Output: <lang>/captions/<source>/<key>/<shard>.parquet, one per raw
shard, keyed by the source's harvest manifest and the model (pea.layout.key).
A raw sample whose .json cannot be read (`bad_json`) or that a cut-off shard lost (`truncated`) gets no row; it is
counted in its table's metadata, and the manifest's `dropped` sums those counts over every table.
"""

import functools
import hashlib
import io
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from pea.data.harvest import sample_meta
from pea.data.parallel import Mapper, in_process
from pea.data.tars import BadSample, count, iter_samples
from pea.errors import PeaError
from pea.layout import captions_dir, key, raw_dir, translation_cache
from pea.progress import Progress, quiet
from pea.storage import Storage

ENGLISH_CODE = "eng_Latn"  # NLLB's code; tokenizers without language codes ignore it
CAPTIONS = pa.schema([("key", pa.string()), ("native", pa.string()), ("english", pa.string()),
                      ("kind", pa.string()), ("translated", pa.string())])


class TranslateConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_size: int = 32
    max_new_tokens: int = 128


class Translator:
    """A seq2seq translation model (NLLB, Marian, ...) loaded with transformers."""

    def __init__(self, source: str, cfg: TranslateConfig = TranslateConfig()):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from pea.models.precision import default_device, frozen_dtype

        self.device = default_device()
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        # half precision on a GPU, as pea's other frozen models (pea.models.precision says why)
        dtype = frozen_dtype(self.device, self.device == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False))
        self.model = AutoModelForSeq2SeqLM.from_pretrained(source, dtype=dtype).to(self.device).eval()
        self.cfg = cfg

    def __call__(self, texts: list[str], src_code: str, tgt_code: str) -> list[str]:
        import torch

        if hasattr(self.tokenizer, "src_lang"):
            self.tokenizer.src_lang = src_code
        vocab = self.tokenizer.get_vocab()
        extra = {"forced_bos_token_id": vocab[tgt_code]} if tgt_code in vocab else {}
        out: list[str] = []
        for start in range(0, len(texts), self.cfg.batch_size):
            batch = self.tokenizer(texts[start : start + self.cfg.batch_size], return_tensors="pt",
                                   padding=True, truncation=True).to(self.device)
            with torch.no_grad():
                ids = self.model.generate(**batch, max_new_tokens=self.cfg.max_new_tokens, **extra)
            out += self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return out


class TranslationCache:
    """digest(model, direction, text) -> translation, as JSON parts under <root>/cache/translation/."""

    def __init__(self, storage: Storage, model_id: str):
        self.storage, self.model_id = storage, model_id
        self.entries: dict[str, str] = {}
        for part in storage.glob(*translation_cache("*.json")):
            self.entries.update(json.loads(storage.read_bytes(part)))

    def digest(self, text: str, src: str, tgt: str) -> str:
        return hashlib.sha256(f"{self.model_id}\0{src}\0{tgt}\0{text}".encode()).hexdigest()

    def add(self, new: dict[str, str]) -> None:
        if new:
            self.entries.update(new)
            self.storage.write_json(new, *translation_cache(f"part-{uuid.uuid4().hex}.json"))


def translate(
    storage: Storage,
    lang: str,
    lang_code: str,
    model_id: str,
    load_translator: Callable[[], Callable[[list[str], str, str], list[str]]],
    progress: Progress = quiet,
    mapper: Mapper = in_process,
) -> dict:
    """Caption tables for every raw shard of `lang` not done yet (one unit of work each, run by `mapper`: here
    or on Ray Data's actors); `load_translator` runs only on a cache miss, once per worker."""
    todo = []  # every raw shard not done yet: the progress fraction counts these
    raw_manifests = storage.glob(*raw_dir(lang, "*", "manifest.json"))
    if not raw_manifests:
        raise PeaError(f"no harvested data for {lang!r} under {storage.root}",
                       f"run `pea harvest --lang {lang} ...` first (or give the flow `sources`)")
    tables = []  # this harvest's: a source harvested again gets new tables, never the old one's captions
    for raw_manifest in raw_manifests:
        source, harvested = raw_manifest.split("/")[-2], json.loads(storage.read_bytes(raw_manifest))
        made = key(harvested, model_id)
        for shard in harvested["shards"]:
            out = captions_dir(lang, source, made, shard.replace(".tar", ".parquet"))
            tables.append("/".join(out))
            if not storage.exists(*out):
                todo.append({"raw": list(raw_dir(lang, source, shard)), "out": list(out)})
    totals = {"translated": 0, "cached": 0, "copied": 0}
    unit = TranslateUnit(storage, lang_code, model_id, load_translator)
    for done, result in enumerate(mapper(unit, todo), 1):
        for outcome, n in result["counts"].items():
            totals[outcome] += n
        progress(f"translated {result['out']}", done / len(todo))
    counts, dropped = _table_counts(storage, tables)
    manifest = {"model": model_id, "tables": tables, "counts": counts, "dropped": dropped, "this_run": totals}
    storage.write_json(manifest, *captions_dir(lang, "manifest.json"))
    return manifest


@dataclass(frozen=True)
class TranslateUnit:
    """Makes the unit of work that writes one raw shard's caption table (see pea.data.parallel): the worker
    reads the translation cache once and loads the model at its first miss."""

    storage: Storage
    lang_code: str
    model_id: str
    load_translator: Callable[[], Callable[[list[str], str, str], list[str]]]

    def __call__(self) -> Callable[[dict], dict]:
        cache = TranslationCache(self.storage, self.model_id)
        return functools.partial(_translate_input, self.storage, self.lang_code, cache,
                                 functools.cache(self.load_translator))


def _translate_input(storage: Storage, lang_code: str, cache: TranslationCache, get_translator, item: dict) -> dict:
    """A raw shard's captions, the missing side filled -> its caption table (written whole)."""
    rows, dropped = _read_captions(storage, tuple(item["raw"]))
    counts = _fill(rows, lang_code, cache, get_translator)
    for r in rows:
        r["kind"] = "culture" if r["culture"] or not r["english"] else "parallel"
    table = pa.Table.from_pylist([{k: r.get(k) or "" for k in CAPTIONS.names} for r in rows],
                                 schema=CAPTIONS.with_metadata({"dropped": json.dumps(dropped)}))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(buf.getvalue(), *item["out"])
    return {"out": "/".join(item["out"]), "counts": counts}


def _table_counts(storage: Storage, tables: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Samples of each kind over every caption table, and the raw samples they dropped, by reason."""
    kinds, dropped = [], {}
    for path in tables:
        table = pq.read_table(io.BytesIO(storage.read_bytes(path)))
        kinds += table["kind"].to_pylist()
        for reason, n in json.loads((table.schema.metadata or {}).get(b"dropped", b"{}")).items():
            dropped[reason] = dropped.get(reason, 0) + n
    return {"parallel": kinds.count("parallel"), "culture": kinds.count("culture")}, dropped


def _fill(rows: list[dict], lang_code: str, cache: TranslationCache, get_translator: Callable) -> dict[str, int]:
    """Fill the missing side of each non-culture row in place; returns how many were translated, cached, copied.

    A language whose own code is English (the multilingual adapter, trained on English-only data, paper
    Sec. 3.4) has the English caption as its native side: it is copied, never run through the model."""
    wanted = [(i, side) for i, r in enumerate(rows) for side in ("english", "native")
              if not r[side] and r["native" if side == "english" else "english"] and not r["culture"]]
    if lang_code == ENGLISH_CODE:
        for i, side in wanted:
            rows[i][side] = rows[i]["native" if side == "english" else "english"]
        return {"copied": len(wanted)}
    texts = {}
    for i, side in wanted:
        src, tgt = (lang_code, ENGLISH_CODE) if side == "english" else (ENGLISH_CODE, lang_code)
        other = rows[i]["native" if side == "english" else "english"]
        texts[(i, side)] = (other, src, tgt, cache.digest(other, src, tgt))
    misses = {k: v for k, v in texts.items() if v[3] not in cache.entries}
    new = {}
    for (src, tgt) in sorted({(v[1], v[2]) for v in misses.values()}):
        group = [v for v in misses.values() if (v[1], v[2]) == (src, tgt)]
        new |= {v[3]: r for v, r in zip(group, get_translator()([v[0] for v in group], src, tgt))}
    cache.add(new)
    for (i, side), (_, _, _, digest) in texts.items():
        rows[i][side] = cache.entries[digest]
        rows[i]["translated"] = side
    return {"translated": len(misses), "cached": len(texts) - len(misses)}


def _read_captions(storage: Storage, parts: tuple[str, ...]) -> tuple[list[dict], dict[str, int]]:
    """The caption rows of a raw shard, and the samples dropped from it, by reason: from img2dataset's table of
    the shard where there is one (a few MB, never the images), else from the shard's samples."""
    table = (*parts[:-1], parts[-1].removesuffix(".tar") + ".parquet")
    if storage.exists(*table):
        return _table_captions(storage, table), {}
    rows, dropped = [], {}
    with storage.open(*parts) as f:
        for sample in iter_samples(f, storage.uri(*parts), dropped):
            try:
                meta = sample_meta(sample)
            except BadSample as e:
                count(dropped, e.reason)
                continue
            rows.append({"key": sample["__key__"], "native": meta.get("native") or "",
                         "english": meta.get("english") or "", "culture": bool(meta.get("culture"))})
    return rows, dropped


def _table_captions(storage: Storage, parts: tuple[str, ...]) -> list[dict]:
    """The rows img2dataset wrote a sample for (status success), with the caption columns harvest kept."""
    table = pq.read_table(io.BytesIO(storage.read_bytes(*parts)))
    present = [c for c in ("native", "english", "culture") if c in table.column_names]
    rows = table.select(["key", "status", *present]).to_pylist()
    return [{"key": r["key"], "native": r.get("native") or "", "english": r.get("english") or "",
             "culture": bool(r.get("culture"))} for r in rows if r["status"] == "success"]
