"""The planner: which layers go ZO and which FO to fit a GPU, and what else fits.

`plan(model, workload, budget)` answers "I have this card, this model, this sequence length:
what do I run?":

1. the hybrid split with the most first-order layers whose estimated peak fits the budget
   (`memplan.methods.hybrid`: embeddings + layers < K zeroth-order, the rest first-order), the
   breakdown of that split, its headroom and by how much the next split (one more FO layer)
   would exceed the budget;
2. a ranked table of every method and configuration memplan models at these settings (full
   first-order optimizers with and without checkpointing, GaLore, PEFT, the split, each
   zeroth-order method), with peak, headroom and a one-line trade-off note;
3. when nothing fits, what would: the largest sequence length and batch that fit with the
   leanest method, checkpointing, or the minimum memory the weights alone need.

The fit test is `memplan.gpus`' (`Budget`, `make_budget`, shared with `memplan estimate`):
estimated allocator peak (live tensors + the named CUDA runtime terms) + the GPU's CUDA context
<= the card's memory - the safety margin (default 2 % of the card; see memplan.gpus).

Speed: a plan needs tens of estimates; each full estimate of a 70B model replays tens of
thousands of tape events. `DepthEstimator` replays reduced-depth copies of the model instead
and extrapolates linearly in the number of layers (and, for a split, in the ZO and FO layer
counts): every phase's peak is an affine function of the layer counts once they pass the
first few layers, because every layer of a model allocates, saves and frees the same tensors
(docs/planner.md derives it; tests/test_plan.py checks it equals the full estimate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from memplan.breakdown import CATEGORIES, GB, Breakdown, PhasePeak
from memplan.errors import MemplanError
from memplan.estimate import estimate
from memplan.gpus import Budget, Fit, make_budget  # the budget and the fit rule live there
from memplan.methods import get_method, methods
from memplan.methods.base import TIERS
from memplan.methods.hybrid import HybridSettings
from memplan.methods.zo import ZOSettings
from memplan.models import ModelConfig, check_sequence, layout, load_config, max_sequence
from memplan.workload import WORKLOAD_FIELDS, Workload

# layer counts above an anchor + 1 are extrapolated from the anchor and anchor + 1: layers in
# the autograd graph from 4 (so the backward's top, top-1, bottom+1 and bottom layers are
# distinct), ZO layers of a split from 1
ANCHOR_FO = 4
ANCHOR_ZO = 1
MAX_SEQ_SEARCH = 1 << 20  # rotary models have no hard limit: search up to 1M tokens
MAX_BATCH_SEARCH = 1 << 16


# ---- fast estimates -----------------------------------------------------------------------------
def reduced(cfg: ModelConfig, layers: int) -> ModelConfig:
    """`cfg` with `layers` decoder/encoder layers, everything else (the name too: methods
    look their per-preset defaults up by it, e.g. GaLore's rank) the same."""
    return replace(cfg, num_layers=layers)


class DepthEstimator:
    """Estimates of one model at reduced depth, extrapolated to its real depth (exact where
    the layer counts are small; see the module docstring). Results are cached per setting."""

    def __init__(self, cfg: ModelConfig, gpu: str | None = None) -> None:
        self.cfg = cfg
        self.gpu = gpu
        self._cache: dict[tuple, Breakdown] = {}
        self.n_tapes = 0

    def _tape(self, layers: int, method: str, wl: Workload, opts: dict[str, Any]) -> Breakdown:
        key = (layers, method, wl, tuple(sorted((k, repr(v)) for k, v in opts.items())))
        hit = self._cache.get(key)
        if hit is None:
            cfg = self.cfg if layers == self.cfg.num_layers else reduced(self.cfg, layers)
            hit = self._cache[key] = estimate(cfg, method, wl, gpu=self.gpu, **opts)
            self.n_tapes += 1
        return hit

    def estimate(self, method: str, wl: Workload, **opts: Any) -> Breakdown:
        spec = get_method(method)
        # steps of several kinds (GaLore's ordinary and refresh, plain or as the split's FO
        # part) are extrapolated one by one: which kind peaks can change with depth
        kinds = spec.step_kinds(opts) if spec.step_kinds is not None else None
        if kinds is not None:
            return self._worse_kind(method, wl, *kinds)
        hs: HybridSettings | None = opts.get("hybrid")
        split = spec.kind == "hybrid" and hs is not None
        n = self.cfg.num_layers
        tagged = {**opts, "phase_tags": True}
        if split and 0 < (hs.zo_layers or 0) < n:
            k, f = hs.zo_layers, n - hs.zo_layers

            def at(kk: int, ff: int) -> Breakdown:
                return self._tape(
                    kk + ff, method, wl, {**tagged, "hybrid": replace(hs, zo_layers=kk)}
                )

            ka, fa = _anchor(k, ANCHOR_ZO), _anchor(f, ANCHOR_FO)
            b0 = at(ka, fa)
            terms = []
            if k != ka:
                terms.append((k - ka, at(ka + 1, fa)))
            if f != fa:
                terms.append((f - fa, at(ka, fa + 1)))
        else:
            la = _anchor(n, ANCHOR_FO)

            def at_depth(layers: int) -> Breakdown:
                o = dict(tagged)
                if split and hs.zo_layers:  # K = L: all ZO
                    o["hybrid"] = replace(hs, zo_layers=layers)
                return self._tape(layers, method, wl, o)

            b0 = at_depth(la)
            terms = [(n - la, at_depth(la + 1))] if n != la else []
        bd = _merge_tagged(_extrapolate(_drop_mid(b0), [(s, _drop_mid(b)) for s, b in terms]))
        bd.info.update(model=self.cfg.name, params=_n_params(self.cfg))
        return bd

    def _worse_kind(self, method: str, wl: Workload, prefix: str, variants: dict) -> Breakdown:
        """Each kind of step extrapolated alone, then the worse, reported as the method's own
        estimate reports it (`<prefix>_step`, `<prefix>_steps` in the info)."""
        runs: dict[str, Breakdown] = {}
        for kind, opts in variants.items():
            try:
                runs[kind] = self.estimate(method, wl, **opts)
            except MemplanError:  # e.g. --update-proj-gap 1: every step refreshes
                continue
        if not runs:
            raise MemplanError(f"no {prefix} step kind can be estimated for {self.cfg.name}")
        totals = {k: b.tensor_peak for k, b in runs.items()}
        worst = max(totals, key=lambda k: totals[k])
        bd = runs[worst]
        bd.info.update({f"{prefix}_step": worst, f"{prefix}_steps": totals})
        return bd


def _anchor(x: int, anchor: int) -> int:
    return x if x <= anchor + 1 else anchor


def _drop_mid(bd: Breakdown) -> Breakdown:
    """Without the backward's "mid" layers: in a model of identical layers each of their peaks
    is an affine function of the layer's position, so the ends of that run (top-1, bottom+1)
    bound them; at the anchors' depths they may exist in one anchor and not the other."""
    return replace(bd, phases={p: v for p, v in bd.phases.items() if not p.endswith("#mid")})


def _n_params(cfg: ModelConfig) -> int:
    return layout(cfg).n_params


def _extrapolate(b0: Breakdown, terms: list[tuple[int, Breakdown]]) -> Breakdown:
    """b0 + sum(steps * (b1 - b0)) per phase, category and runtime term."""
    phases = {}
    for ph, pk in b0.phases.items():
        cats = dict(pk.categories)
        for steps, b1 in terms:
            for c in CATEGORIES:
                cats[c] += steps * (b1.phases[ph].categories[c] - pk.categories[c])
        phases[ph] = PhasePeak(cats)
    runtime = dict(b0.runtime)
    for steps, b1 in terms:
        for name in runtime:
            runtime[name] += steps * (b1.runtime[name] - b0.runtime[name])
    return Breakdown(
        source="estimate",
        phases=phases,
        runtime=runtime,
        context_bytes=b0.context_bytes,
        info=dict(b0.info),
    )


def _merge_tagged(bd: Breakdown) -> Breakdown:
    """Tagged phases ('zo-<phase>': the split's ZO part; '<phase>#<where>': a backward
    position) folded into their phase: the largest of their peaks is the phase's peak."""
    merged: dict[str, PhasePeak] = {}
    for ph, pk in bd.phases.items():
        base = ph.removeprefix("zo-").split("#")[0]
        if base not in merged or pk.total > merged[base].total:
            merged[base] = pk
    bd.phases = merged
    return bd


# ---- candidates ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One configuration the planner can rank: a method, its settings and workload changes."""

    label: str
    method: str
    tier: str
    note: str
    options: dict[str, Any] = field(default_factory=dict)
    checkpointing: bool | None = None  # None: the workload's own setting

    def workload(self, wl: Workload) -> Workload:
        return wl if self.checkpointing is None else replace(wl, checkpointing=self.checkpointing)


def candidates(wl: Workload, hs: HybridSettings, k: int | None, n_layers: int) -> list[Option]:
    """Every configuration to rank, best-quality tier first: each registered method's planner
    rows (`MethodSpec.candidates`), and the split at K."""
    ranked: list[tuple[tuple[int, int, int], Option]] = []
    variants = (False, True) if not wl.checkpointing else (None,)
    for spec in methods():
        for c in spec.candidates:
            tier = TIERS.index(c.tier)
            for ckpt in variants if c.checkpointing_variants else (None,):
                label = c.label + (" + checkpointing" if ckpt else "")
                extra = "; recomputes each layer in backward (~1/3 more compute)" if ckpt else ""
                opt = Option(label, spec.name, c.tier, c.note + extra, c.options(), ckpt)
                ranked.append(((tier, bool(ckpt), c.order), opt))
    if k is not None and 0 < k < n_layers:
        opt = Option(
            f"hybrid K={k} ({hs.zo} + {hs.fo})",
            "hybrid",
            "hybrid ZO/FO",
            f"embeddings + layers 0..{k - 1} zeroth-order, {n_layers - k} layers + head "
            "first-order",
            {"hybrid": replace(hs, zo_layers=k)},
        )
        ranked.append(((TIERS.index("hybrid ZO/FO"), False, 0), opt))
    return [o for _, o in sorted(ranked, key=lambda r: r[0])]


# ---- the plan -----------------------------------------------------------------------------------
@dataclass
class Row:
    """One ranked configuration: its estimate against the budget."""

    option: Option
    breakdown: Breakdown
    need_bytes: int  # allocator peak + CUDA context
    budget: Budget

    @property
    def headroom_bytes(self) -> int:
        return Fit(self.budget, self.need_bytes).headroom_bytes

    @property
    def fits(self) -> bool:
        return Fit(self.budget, self.need_bytes).fits

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.option.label,
            "method": self.option.method,
            "tier": self.option.tier,
            "note": self.option.note,
            "settings": {k: _settings_dict(v) for k, v in self.option.options.items()},
            "checkpointing": self.breakdown.info.get("checkpointing"),
            "peak_bytes": self.breakdown.peak,
            "need_bytes": self.need_bytes,
            "headroom_bytes": self.headroom_bytes,
            "fits": self.fits,
            "peak_phase": self.breakdown.peak_phase,
        }


def _settings_dict(v: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    return asdict(v) if is_dataclass(v) else v


@dataclass
class Plan:
    model: str
    workload: Workload
    budget: Budget
    hybrid: HybridSettings
    n_layers: int
    split: int | None  # K, or None when even plain ZO does not fit
    split_row: Row | None
    next_row: Row | None  # the split with one more FO layer (K - 1), None at K = 0
    rows: list[Row]
    suggestions: list[str]
    n_estimates: int = 0

    def to_dict(self) -> dict[str, Any]:
        wl = {k: getattr(self.workload, k) for k in WORKLOAD_FIELDS}
        rec = None
        if self.split is not None:
            rec = {
                "method": "hybrid",
                "zo_layers": self.split,
                "fo": self.hybrid.fo,
                "zo": self.hybrid.zo,
                "workload": wl,
                "breakdown": self.split_row.breakdown.to_dict() if self.split_row else None,
                "need_bytes": self.split_row.need_bytes if self.split_row else None,
                "headroom_bytes": self.split_row.headroom_bytes if self.split_row else None,
            }
        return {
            "model": self.model,
            "layers": self.n_layers,
            "workload": wl,
            "budget": self.budget.to_dict(),
            "recommended": rec,
            "next_split": None
            if self.next_row is None
            else {
                "zo_layers": self.split - 1 if self.split is not None else None,
                "need_bytes": self.next_row.need_bytes,
                "exceeds_by_bytes": -self.next_row.headroom_bytes,
            },
            "ranked": [r.to_dict() for r in self.rows],
            "suggestions": self.suggestions,
            "tape_runs": self.n_estimates,
        }


def plan(
    model: str | ModelConfig,
    workload: Workload | None = None,
    budget: Budget | None = None,
    hybrid: HybridSettings | None = None,
    zo: ZOSettings | None = None,
    gpu: str | None = None,
) -> Plan:
    """The split with the most FO layers that fits, the ranked table, and suggestions."""
    cfg = load_config(model) if isinstance(model, str) else model
    wl = workload or Workload()
    bud = budget or make_budget(gpu)
    hs = hybrid or HybridSettings()
    zs = zo or ZOSettings()
    check_sequence(cfg, wl.seq)
    est = DepthEstimator(cfg, gpu)
    n = cfg.num_layers

    def row(opt: Option, w: Workload | None = None) -> Row:
        bd = est.estimate(opt.method, opt.workload(w or wl), zo=zs, **opt.options)
        return Row(opt, bd, bd.peak + bud.context_bytes, bud)

    def split_row(k: int) -> Row:
        o = Option(
            f"hybrid K={k}", "hybrid", "hybrid ZO/FO", "", {"hybrid": replace(hs, zo_layers=k)}
        )
        return row(o)

    _check_weights_fit(cfg, wl, bud)
    # memory falls as K grows (each ZO layer drops its gradients, states and saved tensors):
    # the smallest K that fits, by bisection over 0..L
    lo, hi = 0, n
    rows_k: dict[int, Row] = {}
    rows_k[n] = split_row(n)
    if not rows_k[n].fits:
        k = None
    else:
        while lo < hi:
            mid = (lo + hi) // 2
            rows_k[mid] = split_row(mid)
            if rows_k[mid].fits:
                hi = mid
            else:
                lo = mid + 1
        k = lo
    split = rows_k[k] if k is not None else None
    nxt = None
    if k is not None and k > 0:
        nxt = rows_k.get(k - 1) or split_row(k - 1)
    ranked: list[Row] = []
    for opt in candidates(wl, hs, k, n):
        try:
            ranked.append(row(opt))
        except MemplanError:
            continue  # not modeled for this model/workload (e.g. a scheme the family lacks)
    suggestions = (
        [] if any(r.fits for r in ranked) or k is not None else _suggest(est, wl, bud, zs, hs)
    )
    return Plan(cfg.name, wl, bud, hs, n, k, split, nxt, ranked, suggestions, est.n_tapes)


def _check_weights_fit(cfg: ModelConfig, wl: Workload, bud: Budget) -> None:
    """A budget below the weights alone cannot be planned for: say the minimum."""
    weights = layout(cfg).n_params * wl.param_bytes
    if weights + bud.context_bytes + bud.margin_bytes > bud.total_bytes:
        need = weights + bud.context_bytes + bud.margin_bytes
        raise MemplanError(
            f"{bud.name} ({bud.total_bytes / GB:.2f} GB) is smaller than {cfg.name}'s weights "
            "alone: "
            f"{weights / GB:.2f} GB in {wl.dtype} + {bud.context_bytes / GB:.2f} GB CUDA context "
            f"+ {bud.margin_bytes / GB:.2f} GB margin = {need / GB:.2f} GB at the very least "
            "(before any activation); use a card with more memory or a lower precision"
        )


def _suggest(
    est: DepthEstimator, wl: Workload, bud: Budget, zs: ZOSettings, hs: HybridSettings
) -> list[str]:
    """Nothing fits: what would, with the leanest method (zero-order, the split's ZO method)."""
    out: list[str] = []

    def fits(method: str, w: Workload) -> bool:
        bd = est.estimate(method, w, zo=zs)
        return Fit(bud, bd.peak + bud.context_bytes).fits

    lean = hs.zo
    s = largest(lambda v: fits(lean, replace(wl, seq=v)), 1, wl.seq)
    if s:
        out.append(f"{lean} fits at --seq {s} (batch {wl.batch})")
    if wl.batch > 1:
        b = largest(lambda v: fits(lean, replace(wl, batch=v)), 1, wl.batch)
        if b:
            out.append(f"{lean} fits at --batch {b} (seq {wl.seq})")
    if not out:
        out.append(
            f"not even {lean} at batch 1 and seq 1 fits: the weights and the leanest step "
            "need more than the budget; use a larger card or a lower precision"
        )
    return out


def largest(ok: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """The largest v in [lo, hi] with ok(v) (ok monotone: true then false), None if none."""
    if not ok(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def maximize(
    model: str | ModelConfig,
    what: str,
    method: str,
    workload: Workload | None = None,
    budget: Budget | None = None,
    gpu: str | None = None,
    **options: Any,
) -> tuple[int | None, Breakdown | None]:
    """The largest --seq or --batch at which `method` fits the budget, and its estimate."""
    if what not in ("seq", "batch"):
        raise MemplanError(f"--maximize takes seq or batch; got '{what}'")
    cfg = load_config(model) if isinstance(model, str) else model
    wl = workload or Workload()
    bud = budget or make_budget(gpu)
    est = DepthEstimator(cfg, gpu)
    _check_weights_fit(cfg, wl, bud)
    cap = (max_sequence(cfg) or MAX_SEQ_SEARCH) if what == "seq" else MAX_BATCH_SEARCH

    def at(v: int) -> Breakdown:
        return est.estimate(method, replace(wl, **{what: v}), **options)

    def ok(v: int) -> bool:
        return Fit(bud, at(v).peak + bud.context_bytes).fits

    # grow by doubling, then bisect between the last value that fit and the first that did not
    if not ok(1):
        return None, None
    lo = 1
    while lo < cap and ok(min(2 * lo, cap)):
        lo = min(2 * lo, cap)
    best = lo if lo == cap else largest(ok, lo, min(2 * lo, cap) - 1)
    return best, at(best)
