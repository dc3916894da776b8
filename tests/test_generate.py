import pytest
import torch
from PIL import Image

from pea.adapter import AdapterConfig, PEAAdapter
from pea.languages import get_language
from pea.presets import get_preset


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    preset = get_preset("tiny-sdxl")
    spec = preset.student_for(get_language("ko"))
    torch.manual_seed(0)
    cfg = AdapterConfig(input_dim=spec.hidden_size, context_dim=preset.context_dim, pooled_dim=preset.pooled_dim,
                        language="ko", student_encoder=spec.id)
    return PEAAdapter(cfg).save(tmp_path_factory.mktemp("adapter"))


@pytest.mark.slow
def test_generate_writes_a_png(adapter_dir, tmp_path, pea_cli):
    out = tmp_path / "out.png"
    result = pea_cli("generate", "빨간 원", "--lang", "ko", "--adapter", str(adapter_dir), "--out", str(out),
                     "--steps", "2", "--preset", "tiny-sdxl", env={"PEA_DATA_DIR": str(tmp_path)})
    assert result.code == 0, result.err
    assert f"wrote {out}" in result.out
    assert Image.open(out).size == (32, 32)
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize(
    "args, words",
    [
        (["", "--lang", "ko"], ["empty prompt"]),
        (["빨간 원", "--lang", "zh"], ["trained for 'ko', not 'zh'", "--lang ko"]),
        (["빨간 원", "--lang", "ko", "--out", "x.jpg"], [".png"]),
    ],
)
def test_generate_bad_input(adapter_dir, tmp_path, args, words, pea_cli):
    env = {"PEA_DATA_DIR": str(tmp_path)}
    result = pea_cli("generate", *args, "--adapter", str(adapter_dir), "--preset", "tiny-sdxl", env=env, cwd=tmp_path)
    assert result.code == 2 and "Traceback" not in result.err
    for w in words:
        assert w in result.err
    assert not (tmp_path / "x.jpg").exists()
    assert not (tmp_path / "models").exists()  # refused before any model was built or loaded
