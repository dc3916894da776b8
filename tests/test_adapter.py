import pytest
import torch

from pea.adapter import CONFIG, WEIGHTS, AdapterConfig, PEAAdapter, load_adapter
from pea.errors import PeaError


def test_real_presets_get_the_official_adapter_sizes():
    # OPPO-Mente-Lab/PEA-Diffusion class MLP: SDXL with Chinese-CLIP MLP(1024, 1280, 1024, 2048) = 6,033,408;
    # SD1.5 MLP(1024, 768, 2048) = 7,866,368 parameters
    from pea.presets import get_preset

    def size(preset):
        p = get_preset(preset)
        cfg = AdapterConfig(input_dim=1024, context_dim=p.context_dim, pooled_dim=p.pooled_dim, hidden_dims=p.adapter_hidden)
        return PEAAdapter(cfg).num_parameters()

    assert size("sdxl") == size("ssd-1b") == 6_033_408
    assert size("sd15") == 7_866_368
    assert get_preset("sdxl").train.lr == 1e-5 and get_preset("sdxl").train.weight_decay == 0.1
    assert get_preset("sdxl").train.warmup_steps == 100


def test_the_layers_are_the_official_ones():
    adapter = PEAAdapter(AdapterConfig(input_dim=16, context_dim=24, pooled_dim=8, hidden_dims=(32, 32)))
    linears = [m for m in adapter.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias) for m in linears] == [(16, 32, None), (32, 32, None), (32, 8, None)]
    assert isinstance(adapter.mlp[0], torch.nn.LayerNorm)
    head = adapter.context_head[1]
    assert (head.in_features, head.out_features) == (8, 24) and head.bias is not None
    # pooled = the token mean of the pooled-width states; the context is GELU then the head over the same states
    states, mask = torch.randn(1, 3, 16), torch.ones(1, 3)
    tokens = adapter.mlp(states)
    out = adapter(states, mask)
    assert torch.allclose(out.pooled, tokens.mean(1)) and torch.allclose(out.context, head(torch.nn.functional.gelu(tokens)))


def test_shapes_and_the_pooled_embedding_ignores_padding():
    adapter = PEAAdapter(AdapterConfig(input_dim=16, context_dim=24, pooled_dim=8, hidden_dims=(32,)))
    states = torch.randn(2, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = adapter(states, mask)
    assert out.context.shape == (2, 5, 24) and out.pooled.shape == (2, 8)
    changed = states.clone()
    changed[0, 3:] = 100.0  # padding positions of sample 0
    assert torch.allclose(adapter(changed, mask).pooled[0], out.pooled[0])


def test_sd15_adapter_has_no_pooled_head():
    out = PEAAdapter(AdapterConfig(input_dim=16, context_dim=24))(torch.randn(1, 3, 16), torch.ones(1, 3))
    assert out.pooled is None


def _saved(tmp_path, **kw):
    cfg = AdapterConfig(input_dim=16, context_dim=24, pooled_dim=8, hidden_dims=(32,), language="ko", **kw)
    torch.manual_seed(0)
    return PEAAdapter(cfg).save(tmp_path / "a"), PEAAdapter


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    adapter = PEAAdapter(AdapterConfig(input_dim=16, context_dim=24, pooled_dim=8, hidden_dims=(32,)))
    folder = adapter.save(tmp_path / "a")
    loaded = load_adapter(folder, input_dim=16, context_dim=24, pooled_dim=8)
    for (k, v), (k2, v2) in zip(adapter.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG, WEIGHTS]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(input_dim=1024), ["input width is 16", "1024", "student encoder"]),
        (dict(context_dim=2048), ["context width is 24", "2048"]),
        (dict(pooled_dim=None, context_dim=24, input_dim=16, language="zh"), ["trained for 'ko', not 'zh'"]),
    ],
)
def test_mismatches_are_refused_with_a_clear_message(tmp_path, kwargs, words):
    folder, _ = _saved(tmp_path)
    with pytest.raises(PeaError) as e:
        load_adapter(folder, **kwargs)
    for w in words:
        assert w in str(e.value)


def test_truncated_weights_are_refused(tmp_path):
    folder, _ = _saved(tmp_path)
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(PeaError, match="not a readable safetensors file"):
        load_adapter(folder)


def test_a_pickle_is_never_loaded(tmp_path):
    folder, _ = _saved(tmp_path)
    torch.save({"x": torch.zeros(1)}, folder / WEIGHTS)
    with pytest.raises(PeaError, match="not a readable safetensors file"):
        load_adapter(folder)


def test_a_folder_without_an_adapter(tmp_path):
    with pytest.raises(PeaError, match="holds no adapter"):
        load_adapter(tmp_path)
