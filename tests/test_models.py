"""Model registry, config loading and the exact parameter layout vs the real HF model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from memplan.errors import MemplanError
from memplan.models import (
    PRESETS,
    ModelConfig,
    config_from_dict,
    layout,
    load_config,
    preset_names,
)
from memplan.models.family import get_family

torch = pytest.importorskip("torch")
hf = pytest.importorskip("memplan.models.hf")

PRESET_DIR = Path(__file__).resolve().parents[1] / "memplan" / "models" / "presets"


def _hf_params(model) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]


def _layout_params(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    return [(p.name, p.shape) for p in layout(cfg).params]


def _assert_layout_matches(cfg: ModelConfig) -> None:
    attn = "sdpa" if get_family(cfg.family).sdpa else "eager"
    model = hf.build_model(cfg, device="meta", attn_implementation=attn)
    got, want = _layout_params(cfg), _hf_params(model)
    assert dict(got) == dict(want)
    assert [n for n, _ in got] == [n for n, _ in want]  # same order as named_parameters()
    assert layout(cfg).n_params == sum(p.numel() for p in model.parameters())
    assert type(model).__name__ == hf.model_class_name(cfg)


# ---- (a) every preset: layout == the meta-device HF model ------------------------------------
@pytest.mark.parametrize("name", preset_names(), ids=preset_names())
def test_layout_equals_hf_meta_model(name):
    _assert_layout_matches(load_config(name))


LLAMA_TINY = json.loads((PRESET_DIR / "tiny-llama.json").read_text())
OPT_TINY = json.loads((PRESET_DIR / "tiny-opt.json").read_text())
ROBERTA_TINY = json.loads((PRESET_DIR / "tiny-roberta.json").read_text())

VARIANTS = {
    "llama-tied-biases-head_dim": {
        **LLAMA_TINY,
        "tie_word_embeddings": True,
        "attention_bias": True,
        "mlp_bias": True,
        "head_dim": 32,
    },
    "llama-mha-no-kv-key": {k: v for k, v in LLAMA_TINY.items() if k != "num_key_value_heads"},
    "mistral-biases-ignored-head_dim": {
        **LLAMA_TINY,
        "model_type": "mistral",
        "attention_bias": True,
        "mlp_bias": True,
        "head_dim": 8,
        "num_key_value_heads": 1,
    },
    "opt-untied-proj-post-ln": {
        **OPT_TINY,
        "tie_word_embeddings": False,
        "word_embed_proj_dim": 32,
        "do_layer_norm_before": False,
    },
    "opt-no-bias-no-affine": {
        **OPT_TINY,
        "enable_bias": False,
        "layer_norm_elementwise_affine": False,
    },
    "opt-removed-final-ln": {**OPT_TINY, "_remove_final_layer_norm": True},
    "roberta-untied-type-vocab-2": {
        **ROBERTA_TINY,
        "tie_word_embeddings": False,
        "type_vocab_size": 2,
    },
}


@pytest.mark.parametrize("name", VARIANTS, ids=list(VARIANTS))
def test_layout_equals_hf_meta_model_variants(name):
    _assert_layout_matches(config_from_dict(VARIANTS[name], source=name))


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-mistral", "tiny-opt", "tiny-roberta"])
def test_cpu_build_is_random_tied_and_trainable(name):
    cfg = load_config(name)
    model = hf.build_model(cfg, device="cpu", dtype=torch.bfloat16, attn_implementation="eager")
    assert _hf_params(model) == _layout_params(cfg)
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in model.parameters())
    assert model.training and model.config.use_cache is False
    assert model.config._attn_implementation == "eager"
    if cfg.tie_word_embeddings:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    emb = model.get_input_embeddings().weight.float()
    assert torch.isfinite(emb).all() and 0.01 < emb.std() < 0.03
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_meta_build_uses_requested_dtype_not_config_dtype():
    cfg = load_config("llama-7b")  # its config.json says torch_dtype float16
    assert cfg.raw["torch_dtype"] == "float16"
    model = hf.build_model(cfg, device="meta")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {p.device.type for p in model.parameters()} == {"meta"}
    model = hf.build_model(cfg, device="meta", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_hf_config_is_local_and_for_training():
    conf = hf.hf_config(load_config("galore-llama-60m"), "sdpa")
    assert conf.use_cache is False
    assert conf.max_position_embeddings == 1024  # from GaLore's max_sequence_length
    assert conf._attn_implementation == "sdpa"
    assert hf.model_class_name(load_config("opt-1.3b")) == "OPTForCausalLM"
    assert hf.model_class_name(load_config("roberta-base")) == "RobertaForMaskedLM"
    assert hf.model_class_name(load_config("mistral-7b")) == "MistralForCausalLM"


# ---- (c) known totals ----------------------------------------------------------------------
KNOWN = {
    "llama-7b": 6_738_415_616,
    "llama-2-70b": 68_976_648_192,
    "mistral-7b": 7_241_732_096,
    "llama-3-8b": 8_030_261_248,
    "opt-125m": 125_239_296,
    "opt-350m": 331_196_416,
    "opt-13b": 12_853_473_280,
    "roberta-base": 124_697_433,  # RobertaForMaskedLM: no pooler, lm_head dense + norm + bias
    "roberta-large": 355_412_057,
    "galore-llama-60m": 58_073_600,
    "galore-llama-1b": 1_339_082_752,
}


@pytest.mark.parametrize("name,total", KNOWN.items(), ids=list(KNOWN))
def test_known_totals(name, total):
    assert layout(load_config(name)).n_params == total


def test_galore_and_tiny_sizes():
    dims = {
        "60m": (512, 1376, 8, 8, 1024),
        "130m": (768, 2048, 12, 12, 1024),
        "350m": (1024, 2736, 24, 16, 1024),
        "1b": (2048, 5461, 24, 32, 1024),
        "3b": (2560, 6848, 32, 32, 1024),
        "7b": (4096, 11008, 32, 32, 2048),  # GaLore's llama_7b.json says max_sequence_length 2048
    }
    for size, want in dims.items():
        c = load_config(f"galore-llama-{size}")
        got = (c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads)
        assert got + (c.max_position_embeddings,) == want
        assert c.vocab_size == 32000 and not c.tie_word_embeddings
    t = load_config("tiny-llama")
    assert (t.hidden_size, t.intermediate_size, t.num_layers, t.num_heads, t.num_kv_heads) == (
        64,
        176,
        2,
        4,
        2,
    )
    assert load_config("tiny-mistral").raw["sliding_window"] == 4096
    o = load_config("tiny-opt")
    assert (o.intermediate_size, o.word_embed_proj_dim, o.max_position_embeddings) == (256, 64, 512)
    r = load_config("tiny-roberta")
    assert (r.type_vocab_size, r.max_position_embeddings, r.vocab_size) == (1, 514, 256)


def test_normalized_fields():
    c = load_config("opt-350m")
    assert (c.family, c.word_embed_proj_dim, c.do_layer_norm_before) == ("opt", 512, False)
    assert c.tie_word_embeddings and c.enable_bias and c.hidden_act == "relu"
    m = load_config("mistral-7b")
    assert (m.family, m.model_type, m.num_kv_heads, m.head_dim) == ("llama", "mistral", 8, 128)
    r = load_config("roberta-large")
    assert (r.family, r.type_vocab_size, r.hidden_act) == ("roberta", 1, "gelu")
    assert load_config("llama-7b").num_kv_heads == 32
    assert load_config("LLaMA-7B") == load_config("llama-7b")  # case-insensitive


def test_layout_helpers():
    lay = layout(load_config("llama-2-70b"))
    assert (
        sum(lay.layer_numel(i) for i in range(80)) + sum(p.numel for p in lay.non_layer_params())
        == lay.n_params
    )
    layer = lay.layer_params(3)
    assert [p.role for p in layer].count("attn") == 4
    assert sum(p.is_matrix_2d_linear for p in layer) == 7
    k = next(p for p in layer if p.name.endswith("k_proj.weight"))
    assert k.shape == (1024, 8192)  # 8 kv heads x 128
    assert lay.largest().name == "model.embed_tokens.weight"
    assert {p.role for p in lay.non_layer_params()} == {"embed", "norm", "head"}
    assert not any(p.is_matrix_2d_linear for p in lay.non_layer_params())
    with pytest.raises(MemplanError, match="layers 0..79"):
        lay.layer_params(80)
    opt = layout(load_config("opt-350m"))
    roles = {p.name: p.role for p in opt.params}
    assert roles["model.decoder.project_in.weight"] == "head"
    assert roles["model.decoder.embed_positions.weight"] == "pos_embed"
    assert opt.params[1].shape == (2050, 1024)  # learned positions, offset 2
    rob = layout(load_config("roberta-base"))
    roles = {p.name: p.role for p in rob.params}
    assert roles["roberta.embeddings.token_type_embeddings.weight"] == "type_embed"
    assert roles["lm_head.layer_norm.weight"] == "norm"
    assert roles["lm_head.dense.weight"] == "head"
    assert sum(rob.numel_by_role().values()) == rob.n_params


def test_presets_are_shipped_and_sourced():
    files = {p.stem for p in PRESET_DIR.glob("*.json")}
    assert files == set(PRESETS)
    assert all(p.source for p in PRESETS.values())
    assert PRESETS["llama-2-70b"].source == "meta-llama/Llama-2-70b-hf"


def test_registry_and_layout_do_not_import_torch():
    code = (
        "import sys; from memplan.models import load_config, layout, preset_names;"
        "[layout(load_config(n)) for n in preset_names()];"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- (b) loading by path / directory / HF cache, and errors -----------------------------------
def _write_config(path: Path, d: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d))
    return path


def test_load_by_json_path_and_directory(tmp_path):
    f = _write_config(tmp_path / "my-llama" / "config.json", LLAMA_TINY)
    by_file = load_config(str(f))
    by_dir = load_config(tmp_path / "my-llama")
    assert by_file.name == by_dir.name == "my-llama" and by_file.family == "llama"
    assert _layout_params(by_file) == _layout_params(by_dir)
    assert by_file.source == str(f) and by_dir.source == str(tmp_path / "my-llama")
    other = _write_config(tmp_path / "opt-small.json", OPT_TINY)
    c = load_config(str(other))
    assert (c.name, c.family) == ("opt-small", "opt")
    assert c.raw == OPT_TINY


def test_load_from_fake_hf_cache(tmp_path, monkeypatch):
    repo = tmp_path / "hub" / "models--acme--tiny-chat"
    _write_config(repo / "snapshots" / "aaa" / "config.json", {**LLAMA_TINY, "hidden_size": 32})
    _write_config(repo / "snapshots" / "bbb" / "config.json", LLAMA_TINY)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("bbb")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    c = load_config("acme/tiny-chat")
    assert (c.name, c.source, c.hidden_size) == ("acme/tiny-chat", "acme/tiny-chat", 64)
    _assert_layout_matches(c)
    # without refs/main the newest snapshot wins; HF_HOME/hub is searched too
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    (repo / "refs" / "main").unlink()
    assert load_config("acme/tiny-chat").hidden_size in (32, 64)
    with pytest.raises(MemplanError, match="never downloads"):
        load_config("acme/not-cached")


def test_unknown_name_suggests_close_preset():
    with pytest.raises(MemplanError, match=r"unknown model 'llama7b'.*Did you mean: llama-7b"):
        load_config("llama7b")
    with pytest.raises(MemplanError, match="memplan models"):
        load_config("no-such-model-at-all")


def test_missing_key_names_key_and_file(tmp_path):
    d = {k: v for k, v in LLAMA_TINY.items() if k != "num_attention_heads"}
    f = _write_config(tmp_path / "m" / "config.json", d)
    with pytest.raises(MemplanError, match=r"config.json at .*m/config.json lacks 'num_attention"):
        load_config(str(f))
    with pytest.raises(MemplanError, match="lacks 'ffn_dim'"):
        config_from_dict({k: v for k, v in OPT_TINY.items() if k != "ffn_dim"})
    with pytest.raises(MemplanError, match="lacks 'model_type'"):
        config_from_dict({k: v for k, v in OPT_TINY.items() if k != "model_type"})


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"model_type": "llama",}')
    with pytest.raises(MemplanError, match="not valid JSON"):
        load_config(str(bad))
    arr = tmp_path / "arr.json"
    arr.write_text("[1, 2]")
    with pytest.raises(MemplanError, match="not a config object"):
        load_config(str(arr))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MemplanError, match="has no config.json"):
        load_config(str(tmp_path / "empty"))
    with pytest.raises(MemplanError, match="no such file"):
        load_config(str(tmp_path / "missing.json"))
    with pytest.raises(MemplanError, match="supported model types: llama, mistral, opt, roberta"):
        config_from_dict({**LLAMA_TINY, "model_type": "bloom"})


@pytest.mark.parametrize(
    "change,match",
    [
        ({"hidden_size": 66}, "not divisible by num_attention_heads"),
        ({"num_key_value_heads": 3}, "not divisible by num_key_value_heads"),
        ({"num_hidden_layers": 0}, "num_layers must be a positive integer"),
        ({"vocab_size": -5}, "vocab_size must be a positive integer"),
        ({"intermediate_size": 17.5}, "'intermediate_size' must be an integer"),
        ({"max_position_embeddings": "long"}, "max_position_embeddings must be a positive"),
    ],
)
def test_config_validation(change, match):
    with pytest.raises(MemplanError, match=match):
        config_from_dict({**LLAMA_TINY, **change}, source="x")


def test_family_specific_validation():
    with pytest.raises(MemplanError, match="is_decoder"):
        config_from_dict({**ROBERTA_TINY, "is_decoder": True})
    with pytest.raises(MemplanError, match="type_vocab_size must be a positive"):
        config_from_dict({**ROBERTA_TINY, "type_vocab_size": 0})
    with pytest.raises(MemplanError, match="no grouped-query attention"):
        ModelConfig(
            **{
                **{
                    f: getattr(load_config("tiny-opt"), f) for f in ModelConfig.__dataclass_fields__
                },
                "num_kv_heads": 2,
            }
        )


def test_config_equality_ignores_raw():
    a = load_config("tiny-llama")
    b = config_from_dict({**a.raw, "rope_theta": 1.0}, source="tiny-llama", name="tiny-llama")
    assert a == b and hash(a) == hash(b)
    assert "raw" not in repr(a)


def _closed_form(c: ModelConfig) -> int:
    """The parameter-count formulas of docs/models.md."""
    v, h, n_l, n_h, n_kv, d = (
        c.vocab_size,
        c.hidden_size,
        c.num_layers,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
    )
    inter, s, t, p = c.intermediate_size, c.max_position_embeddings, c.type_vocab_size, 0
    tied = int(c.tie_word_embeddings)
    if c.family == "phi3":  # fused qkv_proj, gate_up_proj; no biases
        layer = h * (n_h + 2 * n_kv) * d + n_h * d * h + 3 * h * inter + 2 * h
        return v * h * (2 - tied) + h + n_l * layer
    if c.family in ("gemma", "gemma2"):  # no biases (attention_bias off in every preset)
        norms = 2 if c.family == "gemma" else 4
        layer = 2 * h * n_h * d + 2 * h * n_kv * d + 3 * h * inter + norms * h
        return v * h * (2 - tied) + h + n_l * layer
    if c.family == "falcon":  # fused qkv (n_kv = 1: multi-query), no biases, 1 or 2 LayerNorms
        n_ln = (
            1
            if c.raw.get("parallel_attn", True) and not c.raw.get("new_decoder_architecture")
            else 2
        )
        layer = h * (n_h + 2 * n_kv) * d + h * h + 2 * h * inter + 2 * h * n_ln
        return v * h * (2 - tied) + 2 * h + n_l * layer
    if c.family in ("llama", "qwen2", "qwen3"):
        layer = 2 * h * n_h * d + 2 * h * n_kv * d + 3 * h * inter + 2 * h
        if c.family == "qwen2":  # q/k/v biases
            layer += n_h * d + 2 * n_kv * d
        if c.family == "qwen3":  # q/k head norms (attention_bias off in every preset)
            layer += 2 * d
        return v * h * (2 - tied) + h + n_l * layer
    if c.family == "gpt_neox":  # fused qkv and dense with biases (attention_bias), GELU MLP
        layer = 4 * h * h + 4 * h + 2 * h * inter + inter + h + 4 * h
        return v * h * (2 - tied) + 2 * h + n_l * layer
    if c.family == "gpt2":  # Conv1D linears with biases, q/k/v fused
        return (
            v * h * (2 - tied) + s * h + 2 * h + n_l * (4 * h * h + 2 * h * inter + inter + 9 * h)
        )
    per_layer = 4 * h * h + 4 * h + 2 * h * inter + inter + h + 4 * h
    if c.family == "opt":
        p = c.word_embed_proj_dim
        extra = (p != h) * 2 * h * p + c.do_layer_norm_before * 2 * h
        return v * p * (2 - tied) + (s + 2) * h + extra + n_l * per_layer
    return v * h + t * h + 2 * h + s * h + n_l * per_layer + v + h * h + h + 2 * h


@pytest.mark.parametrize("name", preset_names(), ids=preset_names())
def test_documented_formula(name):
    cfg = load_config(name)
    assert _closed_form(cfg) == layout(cfg).n_params
