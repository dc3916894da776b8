"""Cache features: run the frozen VAE encoder once per sample and store its latent distribution beside it
(safetensors, fp16 by default; the text encoders' outputs too when asked), so training never runs the VAE
(pea.features says why the text is encoded online by default). Output mirrors the bucketed
shards under <lang>/features/<preset>/<key>/, the key of the shards and the cache's options; a shard's file appears whole or not at all, so a re-run skips
the ones that exist. At scale the same per-shard function is a Ray Data map over the bucket stage's index
(pea.data.index); the cache writes its own index of the feature shards beside them."""

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from safetensors.torch import save

from pea.data.index import digest, indexed_shards, write_index
from pea.data.parallel import Mapper, in_process
from pea.data.records import image_batch
from pea.data.tars import iter_samples, write_shard
from pea.errors import PeaError
from pea.features import TextFeatures, latent_distribution
from pea.layout import features_dir, key, shards_dir
from pea.progress import Progress, quiet
from pea.storage import Storage


FORMAT = 2  # 1: one sampled latent and the text embeddings per sample; 2: the latent distribution, text optional


@dataclass(frozen=True)
class Encoders:
    """What the cache stage runs: the VAE always; the text encoders only when their outputs are cached too;
    `batch_size` samples at a time (on a GPU at most what fits)."""

    vae: object
    text: TextFeatures | None = None
    batch_size: int = 32


def cache_features(
    storage: Storage,
    lang: str,
    preset: str,
    load: Callable[[], Encoders],
    text: bool = False,
    dtype: torch.dtype = torch.float16,
    progress: Progress = quiet,
    mapper: Mapper = in_process,
) -> dict:
    """Cache every bucketed shard not cached yet (one unit of work each, run by `mapper`: here, or on Ray Data's
    actors, each loading the models once with `load`), then write the index of all of them and the manifest."""
    shards_manifest = bucketed(storage, lang)
    made = key(shards_manifest["digest"], FORMAT, text, str(dtype))  # other shards or options: other features
    out = features_dir(lang, preset, made)
    source = indexed_shards(storage, shards_dir(lang), shards_manifest)
    present = storage.listing(*out)  # one listing, not a request per shard: what earlier runs wrote
    todo = [{"path": s["path"]} for s in source if s["path"] not in present]
    written = {}  # hash and size of the shards written now, taken before the upload (never read back)
    for done, result in enumerate(mapper(CacheUnit(storage, lang, preset, made, load, str(dtype)), todo), 1):
        written[result["path"]] = {"sha256": result["sha256"], "bytes": result["bytes"]}
        progress(f"cached {result['path']}", done / len(todo))
    shards = [{**s, "path": f"{made}/{s['path']}", **(written.get(s["path"]) or _measured(storage, *out, *s["path"].split("/")))}
              for s in source]
    manifest = {"format": FORMAT, "key": made, "preset": preset, "dtype": str(dtype).removeprefix("torch."),
                "text_embeddings": text,
                "bytes_per_sample": round(sum(s["bytes"] for s in shards) / max(1, sum(s["samples"] for s in shards))),
                "source_digest": shards_manifest["digest"], "digest": digest(shards),
                "index": write_index(storage, features_dir(lang, preset), made, shards)}
    storage.write_json(manifest, *features_dir(lang, preset), "manifest.json")
    return manifest


@dataclass(frozen=True)
class CacheUnit:
    """Makes the unit of work that caches one bucketed shard (see pea.data.parallel): loads the models once."""

    storage: Storage
    lang: str
    preset: str
    made: str  # the outputs' folder under features/<preset>/ (pea.layout.key)
    load: Callable[[], Encoders]
    dtype: str

    def __call__(self) -> Callable[[dict], dict]:
        encoders = self.load()
        if encoders.text is not None:  # training encodes the empty prompt itself when it encodes the captions
            null = encoders.text.null()
            self.storage.write_bytes(save({
                "teacher_context": null.teacher_context.contiguous(), "student_states": null.student_states.contiguous(),
                "student_mask": null.student_mask.contiguous(),
            }), *features_dir(self.lang, self.preset, self.made), "null.safetensors")
        dtype = getattr(torch, self.dtype.removeprefix("torch."))
        out = features_dir(self.lang, self.preset, self.made)
        return functools.partial(_cache_input, self.storage, self.lang, out, encoders, dtype)


def _cache_input(storage: Storage, lang: str, out: tuple[str, ...], encoders: Encoders, dtype, item: dict) -> dict:
    data = _cache_shard(storage, lang, item["path"], encoders, encoders.batch_size, dtype)
    storage.write_bytes(data, *out, *item["path"].split("/"))
    return {"path": item["path"], "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _measured(storage: Storage, *parts: str) -> dict:
    """A shard an earlier, interrupted run wrote: read back once to hash it."""
    data = storage.read_bytes(*parts)
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def bucketed(storage: Storage, lang: str) -> dict:
    """The bucket stage's manifest, or one line saying to run that stage (checked before any model loads)."""
    if not storage.exists(*shards_dir(lang), "manifest.json"):
        raise PeaError(f"no bucketed shards for {lang!r} under {storage.root}", f"run `pea bucket --lang {lang}` first")
    return storage.read_json(*shards_dir(lang), "manifest.json")


def _cache_shard(storage, lang, path, encoders: Encoders, batch_size, dtype) -> bytes:
    """One bucketed shard -> its feature shard: per sample the latent distribution (and the text embeddings
    when cached) in `dtype`, the sample's JSON unchanged."""
    with storage.open(*shards_dir(lang), *path.split("/")) as f:
        samples = list(iter_samples(f, storage.uri(*shards_dir(lang), path)))
    out = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        inputs = image_batch(chunk)
        latents = latent_distribution(encoders.vae, inputs["images"])
        text = encoders.text(inputs["english"], inputs["native"]) if encoders.text is not None else {}
        for i, sample in enumerate(chunk):
            tensors = {"latent_mean": latents.mean[i], "latent_std": latents.std[i]}
            tensors |= {k: v[i] for k, v in text.items() if v is not None}
            tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().cpu() for k, v in tensors.items()}
            out.append({"__key__": sample["__key__"], "safetensors": save(tensors), "json": sample["json"]})
    return write_shard(out)


def load_null(storage: Storage, lang: str, preset: str):
    from safetensors.torch import load

    from pea.kd_types import NullConditioning

    made = storage.read_json(*features_dir(lang, preset), "manifest.json")["key"]
    t = load(storage.read_bytes(*features_dir(lang, preset, made), "null.safetensors"))
    return NullConditioning(teacher_context=t["teacher_context"].float(), student_states=t["student_states"].float(),
                            student_mask=t["student_mask"])
