"""The Gemma family: parameter counts equal the published totals (and the HF model on meta:
tests/test_models.py checks every preset's layout), the estimate agrees with the cpu backend
on the tiny configs for every method kind, and with the meta simulation at full width."""

from __future__ import annotations

import pytest
from family_checks import CPU_METHODS, METHOD_IDS, METHODS, every_method_options, peak_agrees
from family_checks import phases_agree as _phases_agree

from memplan.errors import MemplanError
from memplan.estimate import estimate
from memplan.measure.run import measure
from memplan.methods.zo import ZOSettings
from memplan.models import config_from_dict, layout, load_config
from memplan.models.limits import buffer_bytes
from memplan.workload import Workload

pytest.importorskip("torch")

# totals as the model cards / safetensors indexes publish them
PUBLISHED = {
    "gemma-2b": 2_506_172_416,
    "gemma-7b": 8_537_680_896,
    "gemma-2-2b": 2_614_341_888,
    "gemma-2-9b": 9_241_705_984,
    "gemma-2-27b": 27_227_128_320,
}


@pytest.mark.parametrize("name,total", PUBLISHED.items(), ids=list(PUBLISHED))
def test_published_totals(name, total):
    assert layout(load_config(name)).n_params == total


# each tiny config with the attention implementation it runs
# (transformers runs Gemma-2 under eager attention only: it soft-caps the attention logits)
TINY = {"tiny-gemma": "sdpa", "tiny-gemma2": "eager"}


@pytest.mark.parametrize("tiny", TINY)
@pytest.mark.parametrize("method,opts", METHODS, ids=METHOD_IDS)
@pytest.mark.parametrize("seq", [64, 256])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_estimate_vs_cpu(tiny, method, opts, seq, dtype):
    """Each phase's peak within 2 %."""
    wl = Workload(batch=2, seq=seq, dtype=dtype, device="cpu", attn=TINY[tiny])
    _phases_agree(load_config(tiny), method, wl, opts, 0.02)


@pytest.mark.parametrize("tiny", TINY)
@pytest.mark.parametrize("method", CPU_METHODS)
def test_every_method(tiny, method):
    """Every method that runs on CPU (ZO, PEFT, GaLore, the hybrid split, forward-grad,
    inference): the peak within 1 %."""
    opts = every_method_options()
    wl = Workload(batch=2, seq=64, dtype="fp32", device="cpu", attn=TINY[tiny])
    peak_agrees(tiny, method, wl, opts)


def test_config_and_layout_details():
    cfg = load_config("tiny-gemma")
    assert (cfg.family, cfg.head_dim, cfg.num_kv_heads, cfg.tie_word_embeddings) == (
        "gemma",
        16,
        4,
        True,
    )
    # inv_freq + original_inv_freq (16 dims / 2, fp32) and the scalar embed_scale
    assert buffer_bytes(cfg) == 2 * 8 * 4 + 4
    # GemmaConfig's head_dim defaults to 256, not hidden / heads
    raw = {k: v for k, v in cfg.raw.items() if k != "head_dim"}
    assert config_from_dict(raw, source="no-head-dim").head_dim == 256


def test_gemma2_details():
    cfg = load_config("tiny-gemma2")
    assert (cfg.family, cfg.num_kv_heads, cfg.hidden_act) == ("gemma2", 2, "gelu_pytorch_tanh")
    assert (cfg.raw["attn_logit_softcapping"], cfg.raw["final_logit_softcapping"]) == (50.0, 30.0)
    names = [p.name for p in layout(cfg).params if p.name.startswith("model.layers.0.")]
    assert names[-4:] == [
        f"model.layers.0.{n}_layernorm.weight"
        for n in ("input", "post_attention", "pre_feedforward", "post_feedforward")
    ]
    # no SDPA path in transformers: refused, not estimated as another kernel
    wl = Workload(batch=2, seq=64, dtype="fp32", device="cpu")
    with pytest.raises(MemplanError, match="--attn eager"):
        estimate(cfg, "adamw", wl)
    with pytest.raises(MemplanError, match="--attn eager"):
        measure(cfg, "adamw", wl)


def test_final_logit_softcapping_is_modelled():
    """Soft-capping keeps a vocabulary-sized tanh output for backward and allocates two more
    in the forward: without it the estimate is lower by at least the saved one."""
    cfg = load_config("tiny-gemma2")
    off = config_from_dict({**cfg.raw, "final_logit_softcapping": None}, source="no-cap")
    wl = Workload(batch=2, seq=64, dtype="fp32", device="cpu", attn="eager")
    on_est, off_est = estimate(cfg, "adamw", wl), estimate(off, "adamw", wl)
    assert on_est.tensor_peak - off_est.tensor_peak >= 2 * 64 * cfg.vocab_size * 4
    on_meas, off_meas = measure(cfg, "adamw", wl), measure(off, "adamw", wl)
    assert on_meas.tensor_peak - off_meas.tensor_peak == on_est.tensor_peak - off_est.tensor_peak


def _shallow(model: str, layers: int):
    cfg = load_config(model)
    return config_from_dict({**cfg.raw, "num_hidden_layers": layers}, source=cfg.name)


FULL = {"gemma-7b": "sdpa", "gemma-2-9b": "eager"}


@pytest.mark.slow
@pytest.mark.parametrize("model", FULL)
def test_vs_meta_full_width(model):
    """adamw and zo-sgd at full width on two layers, seq 512: each phase within 1 %."""
    wl = Workload(batch=1, seq=512, dtype="bf16", device="meta", attn=FULL[model])
    cfg = _shallow(model, 2)
    _phases_agree(cfg, "adamw", wl, {}, 0.01)
    zs = {"zo": ZOSettings(impl="chunked", chunk_elems=1 << 24)}
    _phases_agree(cfg, "zo-sgd", wl, zs, 0.01)
