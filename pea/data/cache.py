"""Cache features: run the frozen VAE encoder and text encoders once per sample and store the results
beside it (safetensors, fp16 by default), so training never runs them. Output mirrors the bucketed
shards under <lang>/features/<preset>/; a shard's file appears whole or not at all, so a re-run skips
the ones that exist. At scale the same per-shard function is a Ray Data map over the shard list."""

import hashlib

import torch
from safetensors.torch import save

from pea.data.records import image_batch
from pea.data.tars import iter_samples, write_shard
from pea.errors import PeaError
from pea.features import FeatureExtractor
from pea.layout import features_dir, shards_dir
from pea.progress import Progress, quiet
from pea.storage import Storage


def cache_features(
    storage: Storage,
    lang: str,
    preset: str,
    extractor: FeatureExtractor,
    batch_size: int = 32,
    dtype: torch.dtype = torch.float16,
    progress: Progress = quiet,
) -> dict:
    shards_manifest = bucketed(storage, lang)
    out = features_dir(lang, preset)
    null = extractor.null()
    storage.write_bytes(save({
        "teacher_context": null.teacher_context.contiguous(), "student_states": null.student_states.contiguous(),
        "student_mask": null.student_mask.contiguous(),
    }), *out, "null.safetensors")
    todo = [s["path"] for s in shards_manifest["shards"] if not storage.exists(*out, *s["path"].split("/"))]
    hashes = {}  # of the shards written now, taken before the upload (never read back)
    for done, path in enumerate(todo, 1):
        data = _cache_shard(storage, lang, path, extractor, batch_size, dtype)
        hashes[path] = hashlib.sha256(data).hexdigest()
        storage.write_bytes(data, *out, *path.split("/"))
        progress(f"cached {path}", done / len(todo))
    written = [{**s, "sha256": hashes.get(s["path"]) or _sha256(storage, *out, *s["path"].split("/"))}
               for s in shards_manifest["shards"]]
    manifest = {"preset": preset, "dtype": str(dtype).removeprefix("torch."), "shards": written,
                "source_digest": shards_manifest["digest"],
                "digest": hashlib.sha256("".join(s["sha256"] for s in written).encode()).hexdigest()}
    storage.write_json(manifest, *out, "manifest.json")
    return manifest


def _sha256(storage: Storage, *parts: str) -> str:
    """A shard an earlier, interrupted run wrote: read back once to hash it."""
    return hashlib.sha256(storage.read_bytes(*parts)).hexdigest()


def bucketed(storage: Storage, lang: str) -> dict:
    """The bucket stage's manifest, or one line saying to run that stage (checked before any model loads)."""
    if not storage.exists(*shards_dir(lang), "manifest.json"):
        raise PeaError(f"no bucketed shards for {lang!r} under {storage.root}", f"run `pea bucket --lang {lang}` first")
    return storage.read_json(*shards_dir(lang), "manifest.json")


def _cache_shard(storage, lang, path, extractor, batch_size, dtype) -> bytes:
    with storage.open(*shards_dir(lang), *path.split("/")) as f:
        samples = list(iter_samples(f, storage.uri(*shards_dir(lang), path)))
    out = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        inputs = image_batch(chunk)
        batch = extractor(inputs["images"], inputs["english"], inputs["native"], inputs["culture"],
                          time_ids=inputs["time_ids"], keys=inputs["keys"],
                          generator=torch.Generator().manual_seed(start))
        for i, sample in enumerate(chunk):
            tensors = {"latents": batch.latents[i], "teacher_context": batch.teacher_context[i],
                       "student_states": batch.student_states[i], "student_mask": batch.student_mask[i]}
            if batch.teacher_pooled is not None:
                tensors["teacher_pooled"] = batch.teacher_pooled[i]
            if batch.time_ids is not None:
                tensors["time_ids"] = batch.time_ids[i]
            tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().cpu() for k, v in tensors.items()}
            out.append({"__key__": sample["__key__"], "safetensors": save(tensors), "json": sample["json"]})
    return write_shard(out)


def load_null(storage: Storage, lang: str, preset: str):
    from safetensors.torch import load

    from pea.kd_types import NullConditioning

    t = load(storage.read_bytes(*features_dir(lang, preset), "null.safetensors"))
    if "zeros" in t:
        raise PeaError(f"the {lang}/{preset} features were cached by an older pea (null conditioning as zeros on SDXL)",
                       f"delete {storage.uri(*features_dir(lang, preset))} and run pea cache --lang {lang} again")
    return NullConditioning(teacher_context=t["teacher_context"].float(), student_states=t["student_states"].float(),
                            student_mask=t["student_mask"])
