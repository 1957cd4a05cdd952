"""Hybrid ZO/FO split: it trains, its ends are plain FO and plain ZO, and its memory is what the
estimator says (issue 5: runnable step, estimator for any split and FO/ZO pair)."""

from __future__ import annotations

import itertools

import pytest

from memplan.errors import MemplanError
from memplan.estimate import estimate
from memplan.measure.run import build_step, measure
from memplan.methods.galore import GaLoreSettings
from memplan.methods.hybrid import HybridSettings, zo_part
from memplan.methods.zo import ZOSettings
from memplan.models import config_from_dict, load_config
from memplan.workload import Workload

TOLERANCE = 0.01  # measured worst case 0.08 % (tiny-roberta fp32, K = 0)
TINY = ["tiny-llama", "tiny-opt", "tiny-roberta"]
SETTINGS = [("bf16", "sdpa", False), ("fp32", "eager", True), ("amp", "sdpa", False)]
ZS = ZOSettings(impl="chunked", chunk_elems=4096)

CASES = list(itertools.product(TINY, SETTINGS, [0, 1, 2]))


@pytest.mark.parametrize(
    "model,setting,k", CASES, ids=[f"{m}-{'-'.join(map(str, s))}-K{k}" for m, s, k in CASES]
)
def test_estimate_vs_cpu(model, setting, k):
    dtype, attn, ckpt = setting
    wl = Workload(batch=2, seq=64, dtype=dtype, attn=attn, checkpointing=ckpt, device="cpu")
    hs = HybridSettings(zo_layers=k)
    meas = measure(model, "hybrid", wl, zo=ZS, hybrid=hs)
    est = estimate(model, "hybrid", wl, zo=ZS, hybrid=hs)
    assert set(est.phases) == set(meas.phases)
    for phase in meas.phases:
        err = est.phases[phase].total / meas.phases[phase].total - 1
        assert abs(err) <= TOLERANCE, (phase, est.phases[phase].total, meas.phases[phase].total)


@pytest.mark.parametrize("fo,zo", [("fo-sgd", "zo-adam"), ("adafactor", "zo-sgd-mmt")])
def test_other_pairs_estimate_vs_cpu(fo, zo):
    wl = Workload(batch=2, seq=64, dtype="bf16", device="cpu", optimizer_impl="forloop")
    hs = HybridSettings(zo_layers=1, fo=fo, zo=zo)
    meas = measure("tiny-llama", "hybrid", wl, zo=ZS, hybrid=hs)
    est = estimate("tiny-llama", "hybrid", wl, zo=ZS, hybrid=hs)
    assert abs(est.tensor_peak / meas.tensor_peak - 1) <= TOLERANCE


@pytest.mark.parametrize("model", TINY)
def test_ends_are_plain_fo_and_plain_zo(model):
    """K = 0 measures exactly as plain AdamW, K = L exactly as plain ZO-SGD."""
    wl = Workload(batch=2, seq=64, dtype="bf16", device="cpu")
    n = load_config(model).num_layers
    fo = measure(model, "adamw", wl)
    zo = measure(model, "zo-sgd", wl, zo=ZS)
    k0 = measure(model, "hybrid", wl, zo=ZS, hybrid=HybridSettings(zo_layers=0))
    kl = measure(model, "hybrid", wl, zo=ZS, hybrid=HybridSettings(zo_layers=n))
    assert k0.tensor_peak == fo.tensor_peak
    assert kl.tensor_peak == zo.tensor_peak
    mid = measure(model, "hybrid", wl, zo=ZS, hybrid=HybridSettings(zo_layers=1))
    assert zo.tensor_peak < mid.tensor_peak < fo.tensor_peak


def _train_moves(step, steps: int = 20) -> dict[str, bool]:
    """Run `steps` steps; the eval-mode loss must fall by 0.05. Which weights moved, by name."""
    import torch

    before_w = {n: p.detach().clone() for n, p in step.model.named_parameters()}

    def loss() -> float:
        step.model.eval()
        with torch.no_grad():
            return float(step.model(**step.batch).loss)

    before = loss()
    for _ in range(steps):
        step(lambda _phase: None)
    after = loss()
    assert after < before - 0.05, (before, after)
    return {n: not torch.equal(p, before_w[n]) for n, p in step.model.named_parameters()}


def test_loss_falls_and_both_parts_train():
    import torch

    torch.manual_seed(0)
    cfg = load_config("tiny-llama")
    wl = Workload(batch=4, seq=32, dtype="fp32", device="cpu")
    zs = ZOSettings(lr=3e-3, eps=1e-3, impl="chunked")
    step = build_step(cfg, "hybrid", wl, zs, hybrid=HybridSettings(zo_layers=1))
    shallow = zo_part(cfg, 1)
    moved = _train_moves(step)
    assert moved["model.layers.0.self_attn.q_proj.weight"] and shallow(
        "model.layers.0.self_attn.q_proj.weight"
    )
    assert moved["model.layers.1.mlp.down_proj.weight"]
    assert moved["lm_head.weight"] and not shallow("lm_head.weight")


def test_fo_pass_builds_no_graph_below_k():
    """Back-propagation stops at layer K: no shallow parameter gets a gradient, and the
    tied OPT embedding (the head) does."""
    import torch

    cfg = load_config("tiny-opt")
    wl = Workload(batch=2, seq=16, dtype="fp32", device="cpu")
    step = build_step(cfg, "hybrid", wl, ZS, hybrid=HybridSettings(zo_layers=1))
    step.model.train()
    loss = step.model(**step.batch).loss
    loss.backward()
    grads = {n: p.grad for n, p in step.model.named_parameters()}
    assert grads["model.decoder.layers.0.fc1.weight"] is None
    assert grads["model.decoder.embed_positions.weight"] is None
    assert grads["model.decoder.layers.1.fc1.weight"] is not None
    assert grads["model.decoder.embed_tokens.weight"] is not None  # tied: the head
    assert torch.is_grad_enabled()


@pytest.mark.slow
@pytest.mark.parametrize("model,layers,k", [("llama-7b", None, 16), ("opt-13b", 8, 6)])
def test_full_size_meta(model, layers, k):
    """llama-7b whole; opt-13b at full width with 8 of its 40 layers (6 ZO, 2 FO; the whole
    model took 130 s on the CI machine; the estimate's depth extrapolation is exact:
    tests/test_plan.py)."""
    cfg = load_config(model)
    if layers is not None:
        cfg = config_from_dict({**cfg.raw, "num_hidden_layers": layers}, source=cfg.name)
    wl = Workload(batch=1, seq=512, dtype="bf16", device="meta")
    hs = HybridSettings(zo_layers=k)
    zs = ZOSettings(impl="chunked", chunk_elems=1 << 24)  # few chunks: a fast meta step
    meas = measure(cfg, "hybrid", wl, zo=zs, hybrid=hs)
    est = estimate(cfg, "hybrid", wl, zo=zs, hybrid=hs)
    assert abs(est.tensor_peak / meas.tensor_peak - 1) <= 0.02
    assert est.peak_phase == meas.peak_phase


def test_bad_input():
    wl = Workload(device="cpu")
    with pytest.raises(MemplanError, match="more than the model's 2 layers"):
        estimate("tiny-llama", "hybrid", wl, hybrid=HybridSettings(zo_layers=3))
    with pytest.raises(MemplanError, match="needs the split"):
        estimate("tiny-llama", "hybrid", wl)
    with pytest.raises(MemplanError, match="--fo must be a first-order"):
        HybridSettings(zo_layers=1, fo="zo-sgd")
    with pytest.raises(MemplanError, match="--zo must be a zeroth-order"):
        HybridSettings(zo_layers=1, zo="adamw")
    with pytest.raises(MemplanError, match="0 or more"):
        HybridSettings(zo_layers=-1)


# ---- GaLore as the FO part ------------------------------------------------------------------
GALORE_CASES = list(
    itertools.product(
        ["tiny-llama", "tiny-opt"], ["galore", "galore-adafactor"], ["ordinary", "refresh"]
    )
)
GALORE_CASES = [(*c, lw) for c in GALORE_CASES for lw in (False, True)]
RANK = 8  # tiny configs: the smallest projected dimension is 32


def _gid(case) -> str:  # noqa: ANN001
    return "-".join("layerwise" if c is True else "full" if c is False else c for c in case)


@pytest.mark.parametrize("model,fo,kind,layerwise", GALORE_CASES, ids=map(_gid, GALORE_CASES))
def test_galore_fo_estimate_vs_cpu(model, fo, kind, layerwise):
    """K = 1 with a GaLore FO part: every phase within 1 % of the cpu backend (measured worst
    case 0.001 %); the optimizer state (the ZO part's and galore_torch's, projectors included,
    read from the real optimizers) to the byte, and the step's temporaries at the optimizer's
    peak within 1 %."""
    wl = Workload(batch=2, seq=64, dtype="bf16", device="cpu")
    hs = HybridSettings(zo_layers=1, fo=fo)
    gs = GaLoreSettings(rank=RANK, step_kind=kind, layerwise=layerwise)
    meas = measure(model, "hybrid", wl, zo=ZS, hybrid=hs, galore=gs)
    est = estimate(model, "hybrid", wl, zo=ZS, hybrid=hs, galore=gs)
    assert set(est.phases) == set(meas.phases)
    for phase in meas.phases:
        err = est.phases[phase].total / meas.phases[phase].total - 1
        assert abs(err) <= TOLERANCE, (phase, est.phases[phase].total, meas.phases[phase].total)
    e, m = (bd.phases["optimizer"].categories for bd in (est, meas))
    assert e["optimizer_state"] == m["optimizer_state"]
    assert abs(e["temporaries"] - m["temporaries"]) <= TOLERANCE * m["temporaries"], (e, m)
    assert est.info["galore_step"] == meas.info["galore_step"] == kind


def test_galore_fo_state_is_the_deep_part_only():
    """The GaLore optimizer holds the deep parameters only, and projects the deep attention/MLP
    weights only; its state after a step is smaller than plain GaLore's (measured)."""
    import torch

    cfg = load_config("tiny-llama")
    wl = Workload(batch=2, seq=16, dtype="fp32", device="cpu")
    gs = GaLoreSettings(rank=RANK, step_kind="ordinary")
    step = build_step(
        cfg, "hybrid", wl, ZS, hybrid=HybridSettings(zo_layers=1, fo="galore"), galore=gs
    )
    step(lambda _phase: None)
    shallow = zo_part(cfg, 1)
    names = {id(p): n for n, p in step.model.named_parameters()}
    fo_opt = step.optimizers[-1]
    held = {names[id(p)] for g in fo_opt.param_groups for p in g["params"]}
    projected = {names[id(p)] for g in fo_opt.param_groups if "rank" in g for p in g["params"]}
    assert held == {n for n in names.values() if not shallow(n)}
    assert projected and all(".layers.1." in n for n in projected)
    assert all(isinstance(p, torch.Tensor) for p in fo_opt.state)

    def state_bytes(opts) -> int:  # noqa: ANN001
        total = 0
        for opt in opts:
            for st in opt.state.values():
                for v in st.values():
                    t = getattr(v, "ortho_matrix", v)
                    if isinstance(t, torch.Tensor):
                        total += t.numel() * t.element_size()
        return total

    plain = build_step(cfg, "galore", wl, galore=gs)
    plain(lambda _phase: None)
    assert 0 < state_bytes([fo_opt]) < state_bytes(plain.optimizers)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-opt"])
@pytest.mark.parametrize("kind", ["ordinary", "refresh"])
def test_galore_fo_k0_is_plain_galore(model, kind):
    wl = Workload(batch=2, seq=64, dtype="bf16", device="cpu")
    gs = GaLoreSettings(rank=RANK, step_kind=kind)
    plain = measure(model, "galore", wl, galore=gs)
    k0 = measure(
        model, "hybrid", wl, zo=ZS, hybrid=HybridSettings(zo_layers=0, fo="galore"), galore=gs
    )
    assert k0.tensor_peak == plain.tensor_peak
    for phase, pk in plain.phases.items():
        assert k0.phases[phase].total == pk.total, phase


@pytest.mark.parametrize("layerwise", [False, True], ids=["full", "layerwise"])
def test_galore_fo_loss_falls(layerwise):
    import torch

    torch.manual_seed(0)
    cfg = load_config("tiny-llama")
    wl = Workload(batch=4, seq=32, dtype="fp32", device="cpu")
    zs = ZOSettings(lr=3e-3, eps=1e-3, impl="chunked")
    gs = GaLoreSettings(
        rank=RANK, update_proj_gap=5, layerwise=layerwise, step_kind="ordinary", lr=1e-2
    )
    step = build_step(
        cfg, "hybrid", wl, zs, hybrid=HybridSettings(zo_layers=1, fo="galore"), galore=gs
    )
    moved = _train_moves(step)
    assert moved["model.layers.0.self_attn.q_proj.weight"]  # ZO
    assert moved["model.layers.1.self_attn.q_proj.weight"]  # GaLore, projected
    assert moved["lm_head.weight"]  # GaLore, regular


@pytest.mark.slow
def test_galore_fo_full_size_meta():
    """llama-7b at full width with 8 of its 32 layers (4 ZO, 4 GaLore; the whole model took
    90 s on the CI machine; the estimate's depth extrapolation is exact: tests/test_plan.py)."""
    cfg = load_config("llama-7b")
    cfg = config_from_dict({**cfg.raw, "num_hidden_layers": 8}, source=cfg.name)
    wl = Workload(batch=1, seq=512, dtype="bf16", device="meta")
    hs = HybridSettings(zo_layers=4, fo="galore")
    zs = ZOSettings(impl="chunked", chunk_elems=1 << 24)  # few chunks: a fast meta step
    for kind in ("ordinary", "refresh"):
        gs = GaLoreSettings(step_kind=kind)
        meas = measure(cfg, "hybrid", wl, zo=zs, hybrid=hs, galore=gs)
        est = estimate(cfg, "hybrid", wl, zo=zs, hybrid=hs, galore=gs)
        assert abs(est.tensor_peak / meas.tensor_peak - 1) <= 0.02, (
            kind,
            est.tensor_peak,
            meas.tensor_peak,
        )
        assert est.peak_phase == meas.peak_phase


def test_galore_fo_bad_input():
    wl = Workload(device="cpu")
    one = GaLoreSettings(rank=RANK, step_kind="ordinary")
    with pytest.raises(MemplanError, match="galore8bit runs bitsandbytes CUDA kernels") as exc:
        measure(
            "tiny-llama",
            "hybrid",
            wl,
            zo=ZS,
            hybrid=HybridSettings(zo_layers=1, fo="galore8bit"),
            galore=one,
        )
    assert "\n" not in str(exc.value)
    with pytest.raises(MemplanError, match="one kind of GaLore step"):
        measure(
            "tiny-llama",
            "hybrid",
            wl,
            zo=ZS,
            hybrid=HybridSettings(zo_layers=1, fo="galore"),
            galore=GaLoreSettings(rank=RANK),
        )
    with pytest.raises(MemplanError, match="--rank 64 exceeds"):
        estimate(
            "tiny-llama",
            "hybrid",
            wl,
            hybrid=HybridSettings(zo_layers=1, fo="galore"),
            galore=GaLoreSettings(rank=64),
        )
    # estimated off CUDA, as plain galore8bit is
    assert (
        estimate(
            "tiny-llama",
            "hybrid",
            wl,
            hybrid=HybridSettings(zo_layers=1, fo="galore8bit"),
            galore=one,
        ).tensor_peak
        > 0
    )
