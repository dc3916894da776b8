"""Outputs keyed by what made them (pea.layout.key): another config or a new harvest writes new outputs beside
the old ones and the manifests name them; the same inputs find their own outputs again."""

import pyarrow.parquet as pq
import pytest
import test_data
from data_helpers import make_folder

from pea.data import shards
from pea.data.harvest import harvest
from pea.data.index import indexed_shards
from pea.data.shards import bucket
from pea.data.sources import SourceSpec
from pea.data.translate import translate
from pea.errors import PeaError
from pea.languages import get_language
from pea.layout import features_dir
from pea.profiles import Profile
from pea.stages import ensure_harvested
from pea.storage import Storage
from pea.train.run import _data

OTHER_SIDE = test_data.SMALL.model_copy(update={"side": 24})


def _translated(tmp_path, folder) -> Storage:
    storage = Storage(str(tmp_path / "root"))
    harvest(storage, "ko", SourceSpec(name="local", kind="folder", uri=str(folder)))
    translate(storage, "ko", "kor_Hang", "none", lambda: None)
    return storage


def test_another_bucket_config_writes_new_shards_and_the_first_config_finds_its_own_again(tmp_path, monkeypatch):
    storage = _translated(tmp_path, make_folder(tmp_path / "imgs", n=8))
    first = bucket(storage, "ko", test_data.SMALL)
    other = bucket(storage, "ko", OTHER_SIDE)
    assert other["key"] != first["key"] and other["config"]["side"] == 24
    assert all(s["path"].startswith(f"{other['key']}/") for s in indexed_shards(storage, ("ko", "shards"), other))
    assert storage.read_json("ko", "shards", "manifest.json") == other  # the manifest names the last one
    kept = indexed_shards(storage, ("ko", "shards"), first)  # its index too is kept beside, in its own folder
    assert kept and all(storage.exists("ko", "shards", *s["path"].split("/")) for s in kept)
    decoded = []
    monkeypatch.setattr(shards, "_bucket_one", lambda *a: decoded.append(a))
    assert bucket(storage, "ko", test_data.SMALL) == first and decoded == []  # found again, nothing redone


def test_a_source_harvested_again_under_its_name_gets_its_own_captions(tmp_path):
    storage = _translated(tmp_path, make_folder(tmp_path / "a", n=4))
    again = make_folder(tmp_path / "b", n=4)
    for path in again.glob("img*[0-9].txt"):  # the native captions; the English ones end in .en.txt
        path.write_text(f"다시 {path.stem}", encoding="utf-8")
    harvest(storage, "ko", SourceSpec(name="local", kind="folder", uri=str(again)))
    captions = translate(storage, "ko", "kor_Hang", "none", lambda: None)
    assert len(captions["tables"]) == 1  # the new harvest's table, not the old one's beside it
    rows = pq.read_table(storage.path(captions["tables"][0])).to_pylist()
    assert sorted(r["native"] for r in rows) == [f"다시 img{i:03d}" for i in range(4)]


def test_training_refuses_features_cached_from_other_shards(tmp_path):
    storage = _translated(tmp_path, make_folder(tmp_path / "imgs", n=8))
    first = bucket(storage, "ko", test_data.SMALL)
    storage.write_json({"source_digest": first["digest"]}, *features_dir("ko", "tiny-sdxl"),
                       "manifest.json")
    profile = Profile(name="test", data_dir=tmp_path, storage_root=storage.root, mlflow_tracking_uri="-")
    assert _data(profile, get_language("ko"), "tiny-sdxl")[1] is True
    bucket(storage, "ko", OTHER_SIDE)
    with pytest.raises(PeaError, match="other shards") as e:
        _data(profile, get_language("ko"), "tiny-sdxl")
    assert "pea cache --lang ko" in e.value.fix


def test_a_source_of_the_same_name_from_elsewhere_is_harvested_again(tmp_path):
    profile = Profile(name="test", data_dir=tmp_path, storage_root=str(tmp_path / "root"), mlflow_tracking_uri="-")
    ko = get_language("ko")
    first = ensure_harvested(profile, ko, SourceSpec(name="toy", kind="folder", uri=str(make_folder(tmp_path / "a", n=4))))
    assert ensure_harvested(profile, ko, SourceSpec(name="toy", kind="folder", uri=str(tmp_path / "a"))) == first
    second = ensure_harvested(profile, ko, SourceSpec(name="toy", kind="folder", uri=str(make_folder(tmp_path / "b", n=6))))
    assert second["counts"]["success"] == 6 and first["counts"]["success"] == 4
