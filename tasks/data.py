"""The data stages as Prefect tasks. Harvest touches the network (image URLs, S3), so it retries with
backoff; every stage is cached on its inputs, which include the upstream stage's manifest, so a re-run skips
finished stages and redoes the ones whose input changed, and a stage whose output was deleted runs again.

A task's result is its stage's manifest, which Prefect stores and passes on: bucket's and cache's are summaries
that name their shard index (pea.data.index) and its sha256, so they stay a few hundred bytes at any shard count
and still change whenever the shards do."""

import functools
import inspect
from collections.abc import Callable
from datetime import timedelta

from prefect import Task, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from pea import stages
from pea.data.sources import SourceSpec
from pea.errors import PeaError
from pea.languages import Language
from pea.layout import captions_dir, features_dir, raw_dir, shards_dir
from pea.presets import Preset
from pea.profiles import Profile
from tasks.progress import reporter

CACHE = dict(cache_policy=INPUTS + TASK_SOURCE, cache_expiration=timedelta(days=6), persist_result=True,
             result_serializer="json")


def cached_while_output_exists(done_mark: Callable[..., tuple[str, ...]]) -> Callable[[Task], Callable]:
    """A cached task whose cached result counts only while its stage's done-mark (the file the stage writes
    last, `done_mark` of the task's arguments) is in the profile's storage.

    Prefect keeps its cache records apart from the data (~/.prefect/storage): after the data is deleted, a
    cached task would return its manifest of files that are gone. A cache key cannot see this (it is computed
    before the run, when the first run's output does not exist yet), so the check is made at each call: when
    the mark is gone, the task runs with `refresh_cache`, and its new result replaces the stale record."""

    def wrap(cached: Task) -> Callable:
        parameters = inspect.signature(cached.fn)

        @functools.wraps(cached.fn)
        def call(*args, **kwargs):
            given = parameters.bind(*args, **kwargs).arguments
            if given["profile"].storage().exists(*done_mark(**given)):
                return cached(*args, **kwargs)
            return cached.with_options(refresh_cache=True)(*args, **kwargs)

        return call

    return wrap


def retry_unless_bad_input(task, task_run, state) -> bool:
    """Retry what may pass on a second try (an image server, S3); a PeaError names bad input (a missing
    folder, a wrong column), which no retry fixes, so the flow fails at once with its message."""
    try:
        state.result()
    except PeaError:
        return False
    except Exception:  # noqa: BLE001 -- anything else may be transient
        return True
    return True


@cached_while_output_exists(lambda language, source, **_: raw_dir(language.code, source.name, "manifest.json"))
@task(name="harvest", retries=3, retry_delay_seconds=[10, 60, 300], retry_condition_fn=retry_unless_bad_input,
      task_run_name="harvest-{source.name}", **CACHE)
def harvest_source(profile: Profile, language: Language, source: SourceSpec) -> dict:
    return stages.ensure_harvested(profile, language, source)


@cached_while_output_exists(lambda language, **_: captions_dir(language.code, "manifest.json"))
@task(name="translate", retries=2, retry_delay_seconds=[30, 120], retry_condition_fn=retry_unless_bad_input, **CACHE)
def translate_captions(profile: Profile, language: Language, preset: Preset, harvested: list[dict]) -> dict:
    return stages.translate_stage(profile, language, preset, progress=reporter())


@cached_while_output_exists(lambda language, **_: shards_dir(language.code, "manifest.json"))
@task(name="bucket", **CACHE)
def bucket_shards(profile: Profile, language: Language, preset: Preset, captions: dict) -> dict:
    return stages.bucket_stage(profile, language, preset, progress=reporter())


@cached_while_output_exists(lambda language, preset, **_: features_dir(language.code, preset.name, "manifest.json"))
@task(name="cache", **CACHE)
def cache_features(profile: Profile, language: Language, preset: Preset, batch_size: int, text: bool,
                   shards: dict) -> dict:
    return stages.cache_stage(profile, language, preset, batch_size, text, progress=reporter())
