"""What each command computes, as report objects: the CLI parses, calls one function here (or
`memplan.measure.sweep.profile`), and renders the report; `--json` prints its `to_dict()`.

No torch here: `estimate_report` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from memplan.breakdown import Breakdown
from memplan.estimate import estimate
from memplan.gpus import Budget, Fit, get_gpu, gpu_names
from memplan.methods import methods
from memplan.models import ModelConfig, load_config, max_sequence, preset_names
from memplan.models.layout import layout
from memplan.plan import maximize, plan
from memplan.workload import Workload


def sequence_warnings(cfg: ModelConfig, seq: int) -> list[str]:
    """A rotary-position model (no learned positions, so no hard limit) asked for more tokens
    than it was trained on: the estimate holds, the model may not."""
    if max_sequence(cfg) is None and seq > cfg.max_position_embeddings:
        return [
            f"--seq {seq} exceeds {cfg.name}'s max_position_embeddings "
            f"({cfg.max_position_embeddings}): memory is estimated anyway, but the model was "
            "not trained on sequences this long"
        ]
    return []


@dataclass
class EstimateReport:
    """One step's estimate and its fit against a budget (a GPU, or the host for cpu)."""

    breakdown: Breakdown
    fit: Fit
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.breakdown.to_dict(),
            "gpu": self.fit.budget.name,
            "budget": self.fit.budget.to_dict(),
            "fit": self.fit.to_dict(),
            "warnings": self.warnings,
        }


def estimate_report(
    model: str | ModelConfig,
    method: str,
    workload: Workload,
    budget: Budget,
    gpu: str | None = None,
    **options: Any,
) -> EstimateReport:
    """Estimate one step (`gpu`: the preset whose runtime terms and context apply on cuda) and
    judge its fit with the budget's rule (memplan.gpus)."""
    cfg = load_config(model) if isinstance(model, str) else model
    bd = estimate(cfg, method, workload, gpu=gpu, **options)
    return EstimateReport(bd, budget.fit(bd.peak), sequence_warnings(cfg, workload.seq))


@dataclass
class PlanReport:
    """A plan (memplan.plan.Plan) with the warnings of its inputs."""

    plan: Any  # memplan.plan.Plan
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.plan.to_dict(), "warnings": self.warnings}


def plan_report(
    model: str | ModelConfig,
    workload: Workload,
    budget: Budget,
    hybrid: Any = None,
    zo: Any = None,
    gpu: str | None = None,
) -> PlanReport:
    cfg = load_config(model) if isinstance(model, str) else model
    p = plan(cfg, workload, budget, hybrid, zo, gpu)
    return PlanReport(p, sequence_warnings(cfg, workload.seq))


@dataclass
class MaximizeReport:
    """The largest --seq or --batch at which a method fits, and its estimate."""

    model: str
    method: str
    maximize: str
    best: int | None
    budget: Budget
    breakdown: Breakdown | None
    warnings: list[str] = field(default_factory=list)

    @property
    def fit(self) -> Fit | None:
        return None if self.breakdown is None else self.budget.fit(self.breakdown.peak)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "method": self.method,
            "maximize": self.maximize,
            "best": self.best,
            "budget": self.budget.to_dict(),
            "fit": self.fit.to_dict() if self.fit else None,
            "breakdown": self.breakdown.to_dict() if self.breakdown else None,
            "warnings": self.warnings,
        }


def maximize_report(
    model: str | ModelConfig,
    what: str,
    method: str,
    workload: Workload,
    budget: Budget,
    gpu: str | None = None,
    **options: Any,
) -> MaximizeReport:
    cfg = load_config(model) if isinstance(model, str) else model
    best, bd = maximize(cfg, what, method, workload, budget, gpu, **options)
    warnings = sequence_warnings(cfg, best) if what == "seq" and best else []
    name = bd.info.get("method", method) if bd else method
    return MaximizeReport(cfg.name, name, what, best, budget, bd, warnings)


# ---- listings -----------------------------------------------------------------------------------
def model_rows() -> list[dict[str, Any]]:
    """The bundled presets with their exact parameter counts."""
    rows = []
    for name in preset_names():
        cfg = load_config(name)
        rows.append(
            {
                "name": name,
                "family": cfg.family,
                "layers": cfg.num_layers,
                "hidden": cfg.hidden_size,
                "heads": cfg.num_heads,
                "kv_heads": cfg.num_kv_heads,
                "vocab": cfg.vocab_size,
                "params": layout(cfg).n_params,
            }
        )
    return rows


def gpu_rows() -> list[dict[str, Any]]:
    """The GPU presets: total memory and a typical CUDA context."""
    return [
        {
            "name": g.name,
            "total_bytes": g.total_bytes,
            "context_bytes": g.context_bytes,
            "note": g.note,
        }
        for g in (get_gpu(n) for n in gpu_names())
    ]


def method_rows() -> list[dict[str, Any]]:
    """Every registered training method with its kind, devices, aliases and knobs."""
    return [
        {
            "name": m.name,
            "kind": m.kind,
            "devices": list(m.devices),
            "aliases": list(m.aliases),
            "knobs": ["--" + k.replace("_", "-") for k in m.knobs],
            "summary": m.summary,
        }
        for m in methods()
    ]
