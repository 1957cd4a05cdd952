"""Model presets and config loading, without torch or transformers.

A model is named by a preset (a bundled Hugging Face ``config.json``), a path to a config.json,
a path to a model directory holding one, or a Hugging Face model id whose config.json is already
in the local Hugging Face cache. Nothing is ever downloaded.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from memplan.errors import MemplanError, unknown
from memplan.models.family import family_of_type, get_family, model_types

_KEY_HINT = {
    "hidden_size": "the model width",
    "num_hidden_layers": "the number of transformer layers",
    "num_attention_heads": "the number of attention heads",
    "intermediate_size": "the MLP width",
    "ffn_dim": "the FFN width",
    "vocab_size": "the vocabulary size",
    "n_embd": "the model width",
    "n_layer": "the number of transformer layers",
    "n_head": "the number of attention heads",
}


@dataclass(frozen=True)
class Preset:
    """A bundled config: `presets/<name>.json`, copied from the `source` checkpoint."""

    name: str
    source: str
    note: str = ""

    @property
    def filename(self) -> str:
        return f"{self.name}.json"


def _galore(size: str) -> Preset:
    return Preset(
        f"galore-llama-{size}",
        f"jiaweizzhao/GaLore configs/llama_{size}.json",
        "GaLore/ReLoRA pre-training config (verbatim; max_sequence_length, no "
        "max_position_embeddings key)",
    )


_TINY = "memplan test config (not a public checkpoint)"

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("roberta-base", "FacebookAI/roberta-base"),
        Preset("roberta-large", "FacebookAI/roberta-large"),
        Preset("opt-125m", "facebook/opt-125m"),
        Preset("opt-350m", "facebook/opt-350m", "post-LN, 512-wide embeddings, project_in/out"),
        Preset("opt-1.3b", "facebook/opt-1.3b"),
        Preset("opt-2.7b", "facebook/opt-2.7b"),
        Preset("opt-6.7b", "facebook/opt-6.7b"),
        Preset("opt-13b", "facebook/opt-13b"),
        Preset("opt-30b", "facebook/opt-30b"),
        Preset("opt-66b", "facebook/opt-66b"),
        Preset("llama-7b", "huggyllama/llama-7b"),
        Preset("llama-13b", "huggyllama/llama-13b"),
        Preset("llama-30b", "huggyllama/llama-30b"),
        Preset("llama-65b", "huggyllama/llama-65b"),
        Preset("llama-2-7b", "meta-llama/Llama-2-7b-hf"),
        Preset("llama-2-13b", "meta-llama/Llama-2-13b-hf"),
        Preset("llama-2-70b", "meta-llama/Llama-2-70b-hf", "GQA: 8 key/value heads"),
        Preset("vicuna-7b", "lmsys/vicuna-7b-v1.5"),
        Preset("vicuna-13b", "lmsys/vicuna-13b-v1.5"),
        Preset("mistral-7b", "mistralai/Mistral-7B-v0.1", "GQA: 8 key/value heads"),
        Preset("llama-3-8b", "meta-llama/Meta-Llama-3-8B", "GQA: 8 key/value heads"),
        Preset(
            "llama-3.1-8b", "meta-llama/Llama-3.1-8B", "GQA; llama3 rope scaling, 128k positions"
        ),
        Preset("llama-3.1-70b", "meta-llama/Llama-3.1-70B", "GQA; llama3 rope scaling"),
        Preset("llama-3.2-1b", "meta-llama/Llama-3.2-1B", "GQA; head tied to the embeddings"),
        Preset("llama-3.2-3b", "meta-llama/Llama-3.2-3B", "GQA; head tied to the embeddings"),
        Preset("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B", "q/k/v biases; head tied"),
        Preset("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B", "q/k/v biases; head tied"),
        Preset("qwen2.5-7b", "Qwen/Qwen2.5-7B", "q/k/v biases; 4 key/value heads"),
        Preset("qwen2.5-14b", "Qwen/Qwen2.5-14B", "q/k/v biases"),
        Preset("qwen2.5-32b", "Qwen/Qwen2.5-32B", "q/k/v biases"),
        Preset("qwen2.5-72b", "Qwen/Qwen2.5-72B", "q/k/v biases"),
        Preset("qwen3-0.6b", "Qwen/Qwen3-0.6B", "q/k head norms; head_dim 128; head tied"),
        Preset("qwen3-8b", "Qwen/Qwen3-8B", "q/k head norms; head_dim 128"),
        Preset("qwen3-32b", "Qwen/Qwen3-32B", "q/k head norms; head_dim 128 (64 heads x 128)"),
        Preset("pythia-160m", "EleutherAI/pythia-160m", "parallel residual; rotary on 25 %"),
        Preset("pythia-1.4b", "EleutherAI/pythia-1.4b", "parallel residual; rotary on 25 %"),
        Preset("pythia-6.9b", "EleutherAI/pythia-6.9b", "parallel residual; rotary on 25 %"),
        Preset("pythia-12b", "EleutherAI/pythia-12b", "parallel residual; rotary on 25 %"),
        Preset("gpt2", "openai-community/gpt2", "Conv1D linears; learned positions; head tied"),
        Preset("gpt2-medium", "openai-community/gpt2-medium"),
        Preset("gpt2-large", "openai-community/gpt2-large"),
        Preset("gpt2-xl", "openai-community/gpt2-xl"),
        Preset("phi-3-mini", "microsoft/Phi-3-mini-4k-instruct", "fused qkv_proj, gate_up_proj"),
        Preset("phi-3-medium", "microsoft/Phi-3-medium-4k-instruct", "fused; 10 key/value heads"),
        Preset("gemma-2b", "google/gemma-2b", "head_dim 256; 1 key/value head; GeGLU; head tied"),
        Preset("gemma-7b", "google/gemma-7b", "head_dim 256 (16 heads x 256); GeGLU; head tied"),
        Preset("gemma-2-2b", "google/gemma-2-2b", "4 norms/layer; soft-capping; eager attention"),
        Preset("gemma-2-9b", "google/gemma-2-9b", "4 norms/layer; soft-capping; eager attention"),
        Preset("gemma-2-27b", "google/gemma-2-27b", "head_dim 128; query_pre_attn_scalar 144"),
        Preset(
            "falcon-7b", "tiiuae/falcon-7b", "multi-query (1 key/value head); parallel attention"
        ),
        _galore("60m"),
        _galore("130m"),
        _galore("350m"),
        _galore("1b"),
        _galore("3b"),
        _galore("7b"),
        Preset("tiny-llama", _TINY),
        Preset("tiny-mistral", _TINY),
        Preset("tiny-opt", _TINY),
        Preset("tiny-roberta", _TINY),
        Preset("tiny-qwen2", _TINY),
        Preset("tiny-qwen3", _TINY),
        Preset("tiny-pythia", _TINY),
        Preset("tiny-gpt2", _TINY),
        Preset("tiny-phi3", _TINY),
        Preset("tiny-gemma", _TINY),
        Preset("tiny-gemma2", _TINY),
        Preset("tiny-falcon", _TINY),
    ]
}


def preset_names() -> list[str]:
    """All preset names, in registry order (families together, small to large)."""
    return list(PRESETS)


@dataclass(frozen=True)
class ModelConfig:
    """The sizes memplan needs, normalized across families; `raw` keeps the whole config.json."""

    name: str
    family: str  # a registered Family's name (memplan.models.families)
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # OPT: ffn_dim
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    hidden_act: str
    word_embed_proj_dim: int  # OPT; hidden_size elsewhere
    do_layer_norm_before: bool = True  # OPT; True elsewhere
    enable_bias: bool = True  # OPT
    type_vocab_size: int = 0  # RoBERTa; 0 elsewhere
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)
    source: str = ""

    def __post_init__(self) -> None:
        where = f"model '{self.name}'"
        if self.source and self.source != self.name:
            where += f" ({self.source})"
        fam = get_family(self.family)
        if fam is None:
            raise MemplanError(f"{where}: unknown family '{self.family}'")
        sizes = {
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "word_embed_proj_dim": self.word_embed_proj_dim,
        }
        if self.family == "roberta":
            sizes["type_vocab_size"] = self.type_vocab_size
        for key, value in sizes.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise MemplanError(
                    f"{where}: {key} must be a positive integer, got {value!r}; fix the config"
                )
        if self.hidden_size % self.num_heads:
            raise MemplanError(
                f"{where}: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_heads}; fix the config"
            )
        if self.num_heads % self.num_kv_heads:
            raise MemplanError(
                f"{where}: num_attention_heads {self.num_heads} is not divisible by "
                f"num_key_value_heads {self.num_kv_heads}; fix the config"
            )
        mha = (
            self.num_kv_heads == self.num_heads
            and self.head_dim * self.num_heads == self.hidden_size
        )
        if not fam.gqa and not mha:
            raise MemplanError(
                f"{where}: {self.family} has no grouped-query attention or custom head_dim; "
                f"set num_kv_heads = num_heads and head_dim = hidden_size / num_heads"
            )


def int_key(raw: dict, key: str, source: str) -> int:
    value = raw[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise MemplanError(f"{source}: '{key}' must be an integer, got {value!r}; fix the config")
    return value


def opt_int(raw: dict, key: str, default: int, source: str) -> int:
    if raw.get(key) is None:
        return default
    return int_key(raw, key, source)


# config keys that mark a model memplan does not train, whatever its model_type
_VISION_KEYS = ("vision_config", "image_size", "patch_size", "num_channels")


def _why_not(d: dict[str, Any]) -> str:
    """Why an unsupported config is out of scope, when its keys say: an encoder-decoder or a
    vision model (memplan trains decoder-only causal LMs and RoBERTa MLMs), and whether it
    names custom modeling code (`auto_map`), which memplan never runs (no trust_remote_code
    anywhere)."""
    why = []
    if d.get("is_encoder_decoder"):
        why.append("an encoder-decoder model: memplan trains decoder-only causal LMs and RoBERTa")
    elif any(k in d for k in _VISION_KEYS):
        why.append("a vision or multimodal model: memplan trains text models")
    if d.get("auto_map"):
        why.append("its auto_map names custom modeling code, which memplan never runs")
    return f" ({'; '.join(why)})" if why else ""


def config_from_dict(
    d: dict[str, Any], source: str = "<dict>", name: str | None = None, *, where: str | None = None
) -> ModelConfig:
    """Normalize a Hugging Face config dict (the contents of a config.json) to a ModelConfig.

    `source` is recorded on the config (preset name, path or HF id); `name` defaults to it;
    `where` names the config in error messages (default: "config <source>").
    """
    where = where or f"config {source}"
    if not isinstance(d, dict):
        raise MemplanError(f"{where} is not a JSON object; give the model's config.json")
    model_type = d.get("model_type")
    if model_type is None:
        raise MemplanError(
            f"{where} lacks 'model_type'; add it (one of {', '.join(model_types())}) or use a "
            "preset"
        )
    family = family_of_type(model_type)
    if family is None:
        raise MemplanError(
            f"{where}: model_type '{model_type}' is not supported{_why_not(d)}; supported "
            f"model types: {', '.join(model_types())}"
        )
    for key in family.required:
        if d.get(key) is None:
            hint = _KEY_HINT.get(key, "")
            raise MemplanError(
                f"{where} lacks '{key}'; add it ({hint}) or use a preset (`memplan models`)"
            )
    key = family.key  # the family's name for a common key (GPT-2: n_embd, n_layer, ...)
    max_pos = d.get(key("max_position_embeddings"))
    if max_pos is None:  # LLaMA-1 era configs (GaLore, ReLoRA) name it max_sequence_length
        max_pos = d.get("max_sequence_length", family.max_position_default[model_type])
    common = {
        "name": name or source,
        "family": family.name,
        "model_type": model_type,
        "hidden_size": int_key(d, key("hidden_size"), where),
        "num_layers": int_key(d, key("num_hidden_layers"), where),
        "num_heads": int_key(d, key("num_attention_heads"), where),
        "vocab_size": int_key(d, "vocab_size", where),
        "max_position_embeddings": max_pos,
        "tie_word_embeddings": bool(d.get("tie_word_embeddings", family.tie_default[model_type])),
        "raw": dict(d),
        "source": source,
    }
    return ModelConfig(**common, **family.config(d, where))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise MemplanError(f"cannot read {path}: {e.strerror or e}; check the path") from e
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise MemplanError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
            "fix the file or give another config.json"
        ) from e
    if not isinstance(d, dict):
        raise MemplanError(f"{path} holds a JSON {type(d).__name__}, not a config object")
    return d


def hf_cache_dirs() -> list[Path]:
    """Where a Hugging Face hub cache may live, in huggingface_hub's order of precedence."""
    env = os.environ
    dirs = []
    if env.get("HF_HUB_CACHE"):
        dirs.append(Path(env["HF_HUB_CACHE"]))
    if env.get("HUGGINGFACE_HUB_CACHE"):
        dirs.append(Path(env["HUGGINGFACE_HUB_CACHE"]))
    if env.get("HF_HOME"):
        dirs.append(Path(env["HF_HOME"]) / "hub")
    xdg = env.get("XDG_CACHE_HOME")
    dirs.append((Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub")
    seen, out = set(), []
    for d in dirs:
        d = d.expanduser()
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def find_in_hf_cache(model_id: str) -> Path | None:
    """The cached config.json of `model_id` (refs/main's snapshot first, else the newest)."""
    repo = "models--" + model_id.replace("/", "--")
    for root in hf_cache_dirs():
        base = root / repo
        if not base.is_dir():
            continue
        ref = base / "refs" / "main"
        if ref.is_file():
            commit = ref.read_text(encoding="utf-8").strip()
            candidate = base / "snapshots" / commit / "config.json"
            if candidate.is_file():
                return candidate
        snaps = sorted(
            (p for p in (base / "snapshots").glob("*/config.json") if p.is_file()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        if snaps:
            return snaps[0]
    return None


def _load_preset(name: str) -> ModelConfig:
    preset = PRESETS[name]
    ref = resources.files("memplan.models").joinpath("presets", preset.filename)
    try:
        text = ref.read_text(encoding="utf-8")
    except OSError as e:  # a broken install: package data not shipped
        raise MemplanError(
            f"preset '{name}' has no bundled {preset.filename}; reinstall memplan "
            "(package data presets/*.json)"
        ) from e
    return config_from_dict(
        json.loads(text), source=name, name=name, where=f"preset {name} ({preset.filename})"
    )


def load_config(spec: str | os.PathLike | ModelConfig) -> ModelConfig:
    """A ModelConfig from a preset name, a config.json path, a model directory or a cached HF id."""
    if isinstance(spec, ModelConfig):
        return spec
    text = os.fspath(spec).strip()
    if not text:
        raise MemplanError("empty model name; give a preset (`memplan models`) or a config path")
    lowered = {n.lower(): n for n in PRESETS}
    if text.lower() in lowered:
        return _load_preset(lowered[text.lower()])
    path = Path(text).expanduser()
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise MemplanError(
                f"directory {path} has no config.json; point at the model's config.json or the "
                "directory that holds it"
            )
        return config_from_dict(
            _read_json(cfg_file),
            source=str(path),
            name=path.resolve().name,
            where=f"config.json at {cfg_file}",
        )
    if path.is_file():
        name = path.parent.resolve().name if path.name == "config.json" else path.stem
        return config_from_dict(
            _read_json(path), source=str(path), name=name, where=f"{path.name} at {path}"
        )
    looks_like_path = text.endswith(".json") or text.startswith((".", "~", os.sep))
    if looks_like_path or not _HF_ID.match(text):
        raise MemplanError(
            f"no such file or directory: {text}; give a config.json path or a preset name"
        )
    cached = find_in_hf_cache(text)
    if cached is not None:
        return config_from_dict(
            _read_json(cached), source=text, name=text, where=f"config.json of {text} at {cached}"
        )
    if "/" in text:
        where = ", ".join(str(d) for d in hf_cache_dirs())
        raise MemplanError(
            f"model '{text}' is not a preset, a local path or in the local Hugging Face cache "
            f"(looked in {where}); memplan never downloads: fetch its config.json elsewhere "
            "and pass the path"
        )
    err = unknown("model", text, preset_names(), "memplan models")
    raise MemplanError(f"{err}; or give a config.json path, a model directory or a cached HF id")
