"""The data stages as Prefect tasks. Harvest touches the network (image URLs, S3), so it retries with
backoff; every stage is cached on its inputs, which include the upstream stage's manifest, so a re-run skips
finished stages and redoes the ones whose input changed."""

from datetime import timedelta

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from pea import stages
from pea.data.sources import SourceSpec
from pea.errors import PeaError
from pea.languages import Language
from pea.presets import Preset
from pea.profiles import Profile

CACHE = dict(cache_policy=INPUTS + TASK_SOURCE, cache_expiration=timedelta(days=6), persist_result=True,
             result_serializer="json")


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


@task(name="harvest", retries=3, retry_delay_seconds=[10, 60, 300], retry_condition_fn=retry_unless_bad_input,
      task_run_name="harvest-{source.name}", **CACHE)
def harvest_source(profile: Profile, language: Language, source: SourceSpec) -> dict:
    return stages.ensure_harvested(profile, language, source)


@task(name="translate", retries=2, retry_delay_seconds=[30, 120], retry_condition_fn=retry_unless_bad_input, **CACHE)
def translate_captions(profile: Profile, language: Language, preset: Preset, harvested: list[dict]) -> dict:
    return stages.translate_stage(profile, language, preset)


@task(name="bucket", **CACHE)
def bucket_shards(profile: Profile, language: Language, preset: Preset, captions: dict) -> dict:
    return stages.bucket_stage(profile, language, preset)


@task(name="cache", **CACHE)
def cache_features(profile: Profile, language: Language, preset: Preset, batch_size: int, shards: dict) -> dict:
    return stages.cache_stage(profile, language, preset, batch_size)
