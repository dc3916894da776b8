"""`benchmarks/toy_quality.py --baselines` (issue 17, item 5) without training: which adapters it trains, in
which language each is asked, and the shape of its table and JSON line, with pea.toy.quality.measure stubbed.
The measured run is in the README's toy world section."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from pea.toy.quality import ToyScores, asked_language

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench():
    spec = importlib.util.spec_from_file_location("toy_quality_bench", ROOT / "benchmarks" / "toy_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(bench, monkeypatch, tmp_path, *argv):
    calls = []

    def fake_measure(profile, lang, config, untrained=True, asked_in=None):
        calls.append((lang, config.train.method, asked_in, untrained))
        score = 0.5 + 0.1 * len(calls)
        return ToyScores(teacher_heldout=0.8, heldout=score, seen=score - 0.05, culture=score - 0.1,
                         culture_translate=0.4, untrained=None, heads={"shape": 1.0, "color": 1.0, "background": 1.0},
                         minutes=1.5)

    monkeypatch.setattr(bench, "measure", fake_measure)
    monkeypatch.setattr(sys, "argv", ["toy_quality.py", *argv, "--model-cache", str(tmp_path / "models")])
    monkeypatch.chdir(tmp_path)
    bench.main()
    return calls


def test_baselines_train_pea_wkwv_lora_and_the_multilingual_adapter_asked_in_the_language(
        bench, monkeypatch, tmp_path, capsys):
    calls = run(bench, monkeypatch, tmp_path, "--baselines", "--lang", "ja")
    assert calls == [("ja", "pea", None, False), ("ja", "wkwv", None, False), ("ja", "lora", None, False),
                     ("multilingual", "pea", "ja", False)]
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| method | held-out (x teacher) | seen | culture | minutes |"
    assert [line.split(" | ")[0] for line in lines[2:-1]] == ["| pea", "| wkwv", "| lora", "| multilingual"]
    out = json.loads(lines[-1])
    assert list(out) == ["methods"] and list(out["methods"]) == ["pea", "wkwv", "lora", "multilingual"]
    for row in out["methods"].values():
        assert {"heldout", "culture", "seen", "teacher_heldout", "minutes"} <= set(row)
        assert row["asked_in"] == "ja"
    assert out["methods"]["multilingual"]["adapter"] == "multilingual"
    assert out["methods"]["pea"]["heldout"] == 0.6 and out["methods"]["multilingual"]["culture"] == 0.8


def test_baselines_refuse_the_multilingual_entry_as_the_language(bench, monkeypatch, tmp_path):
    with pytest.raises(SystemExit):
        run(bench, monkeypatch, tmp_path, "--baselines", "--lang", "multilingual")


def test_only_the_multilingual_adapter_is_asked_in_another_language():
    assert asked_language("multilingual", "ko").code == "ko"
    assert asked_language("ko", None).code == asked_language("ko", "ko").code == "ko"
    assert asked_language("multilingual", None).code == "multilingual"
    for lang, asked in (("ko", "ja"), ("multilingual", "multilingual2"), ("multilingual", "en")):
        with pytest.raises(ValueError, match="only the multilingual adapter"):
            asked_language(lang, asked)
