"""memplan's command line: typer parses, a pure function computes, rich renders.

Every user error (MemplanError) is one line on stderr and exit code 2, never a traceback.
`memplan estimate` imports neither torch nor transformers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from memplan.breakdown import CATEGORIES, GB, PHASES, Breakdown, fmt_bytes, relative_error
from memplan.errors import MemplanError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="How much GPU memory will this training run need, and what must change so it fits?",
)
out = Console()
err = Console(stderr=True)

Method = Annotated[str, typer.Option("--method", "-m", help="training method (memplan methods)")]
Batch = Annotated[int, typer.Option(help="micro-batch size")]
Dtype = Annotated[str, typer.Option(help="fp32 | bf16 | fp16 | amp (fp32 weights, bf16 autocast)")]
Attn = Annotated[str, typer.Option(help="eager | sdpa")]
Ckpt = Annotated[bool, typer.Option(help="gradient (activation) checkpointing")]
Impl = Annotated[
    str, typer.Option("--optimizer-impl", help="foreach | fused | forloop (torch optimizers)")
]
Json = Annotated[bool, typer.Option("--json", help="print the result as JSON")]
ZoImpl = Annotated[
    str, typer.Option("--impl", help="ZO perturbation: fused (Triton) | chunked | reference")
]
Queries = Annotated[int, typer.Option("--q", help="ZO queries averaged per step")]
Sparsity = Annotated[float, typer.Option(help="zo-sparse: fraction left unperturbed")]
Chunk = Annotated[int, typer.Option("--chunk", help="chunked impl: elements per chunk")]
ZoLayers = Annotated[
    int | None,
    typer.Option("--zo-layers", "--split", help="hybrid: embeddings + layers < K trained ZO"),
]
Fo = Annotated[
    str,
    typer.Option(help="hybrid: first-order optimizer of the deep part (GaLore: with --rank etc.)"),
]
Zo = Annotated[str, typer.Option("--zo", help="hybrid: zeroth-order method of the shallow part")]
PeftOptimizer = Annotated[
    str, typer.Option("--optimizer", help="lora/prefix/prompt: the FO or ZO method driving them")
]
Alpha = Annotated[float, typer.Option("--alpha", help="lora: scaling alpha (scale = alpha / r)")]
LoraDropout = Annotated[float, typer.Option("--lora-dropout", help="lora: dropout on A's input")]
Targets = Annotated[
    str | None,
    typer.Option("--target-modules", help="lora: linears to adapt, e.g. q_proj,v_proj"),
]
Tokens = Annotated[
    int | None, typer.Option("--virtual-tokens", help="prefix/prompt: virtual tokens (5 / 10)")
]
Rank = Annotated[
    int | None,
    typer.Option(
        help="lora: rank r of A (r x in) and B (out x r), default 8; GaLore: projection rank "
        "(default: the preset's GaLore rank, else 128)"
    ),
]
ProjGap = Annotated[
    int | None, typer.Option(help="GaLore: refresh the projector every T steps (default 200)")
]
Scale = Annotated[float, typer.Option(help="GaLore: scale of the projected-back update")]
ProjType = Annotated[str, typer.Option(help="GaLore: std | reverse_std | left | right")]
Layerwise = Annotated[
    bool, typer.Option(help="GaLore: per-parameter optimizer steps inside backward")
]
GaloreStep = Annotated[
    str,
    typer.Option(help="GaLore step to report: ordinary | refresh (SVD) | both (the worse)"),
]


def _workload(**kw):
    from memplan.workload import Workload

    return Workload(**kw)


def _zo(**kw):
    from memplan.methods.zo import ZOSettings

    return ZOSettings(**kw)


def _hybrid(**kw):
    from memplan.methods.hybrid import HybridSettings

    return HybridSettings(**kw)


def _peft(optimizer: str, rank: int | None, alpha: float, dropout: float, targets, tokens):
    from memplan.methods.peft import PEFTSettings, parse_targets

    return PEFTSettings(
        r=8 if rank is None else rank,
        alpha=alpha,
        dropout=dropout,
        target_modules=parse_targets(targets) if targets is not None else None,
        num_virtual_tokens=tokens,
        optimizer=optimizer,
    )


def _galore(**kw):
    from memplan.methods.galore import GaLoreSettings

    return GaLoreSettings(**kw)


def _method_options(a: dict) -> dict:
    """The method-family settings `estimate` and `profile` pass on (by family name), from the
    command's own option values (its locals)."""
    return {
        "zo": _zo(impl=a["impl"], q=a["q"], sparsity=a["sparsity"], chunk_elems=a["chunk"]),
        "hybrid": _hybrid(zo_layers=a["zo_layers"], fo=a["fo"], zo=a["zo_method"]),
        "peft": _peft(
            a["optimizer"],
            a["rank"],
            a["alpha"],
            a["lora_dropout"],
            a["target_modules"],
            a["virtual_tokens"],
        ),
        "galore": _galore(
            rank=a["rank"],
            update_proj_gap=a["update_proj_gap"],
            scale=a["scale"],
            proj_type=a["proj_type"],
            layerwise=a["layerwise"],
            step_kind=a["galore_step"],
        ),
    }


def _parse_seqs(seq: str) -> list[int]:
    try:
        vals = [int(s) for s in seq.split(",") if s.strip()]
    except ValueError as e:
        raise MemplanError(
            f"--seq takes integers separated by commas (e.g. 128,256); got '{seq}'"
        ) from e
    if not vals:
        raise MemplanError("--seq needs at least one sequence length")
    return vals


# ---- estimate ---------------------------------------------------------------------------------
def _given(ctx: typer.Context, names) -> list[str]:
    """The options the user typed (not defaults), by parameter name."""
    out = []
    for n in names:
        src = ctx.get_parameter_source(n)
        if src is not None and src.name in ("COMMANDLINE", "ENVIRONMENT"):
            out.append(n)
    return out


# parameter name in the commands -> knob name in the registry (where they differ)
_KNOB_OF = {"zo_method": "zo"}


def _check_flags(ctx: typer.Context, method: str, opts: dict) -> None:
    """A method knob the user typed that does not apply to the method is an error."""
    from memplan.methods import check_knobs, default_options, get_method

    given = [_KNOB_OF.get(n, n) for n in _given(ctx, ctx.params)]
    check_knobs(get_method(method), given, default_options(opts))


@app.command()
def estimate(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="preset name, config.json path or cached HF id")],
    method: Method = "adamw",
    batch: Batch = 1,
    seq: Annotated[int, typer.Option(help="sequence length (tokens)")] = 512,
    dtype: Dtype = "bf16",
    attn: Attn = "sdpa",
    checkpointing: Ckpt = False,
    optimizer_impl: Impl = "foreach",
    device: Annotated[str, typer.Option(help="where the run happens: cuda | cpu | meta")] = "cuda",
    gpu: Annotated[str, typer.Option(help="GPU preset to check the fit against")] = "rtx4090",
    impl: ZoImpl = "chunked",
    q: Queries = 1,
    sparsity: Sparsity = 0.8,
    chunk: Chunk = 1 << 20,
    zo_layers: ZoLayers = None,
    fo: Fo = "adamw",
    zo_method: Zo = "zo-sgd",
    optimizer: PeftOptimizer = "adamw",
    alpha: Alpha = 16.0,
    lora_dropout: LoraDropout = 0.0,
    target_modules: Targets = None,
    virtual_tokens: Tokens = None,
    rank: Rank = None,
    update_proj_gap: ProjGap = None,
    scale: Scale = 0.25,
    proj_type: ProjType = "std",
    layerwise: Layerwise = False,
    galore_step: GaloreStep = "both",
    as_json: Json = False,
) -> None:
    """Estimate one training step's peak memory, by category and phase, and whether it fits."""
    from memplan.estimate import estimate as run_estimate
    from memplan.gpus import get_gpu

    g = get_gpu(gpu)
    wl = _workload(
        batch=batch,
        seq=seq,
        dtype=dtype,
        attn=attn,
        checkpointing=checkpointing,
        optimizer_impl=optimizer_impl,
        device=device,
    )
    opts = _method_options(locals())
    _check_flags(ctx, method, opts)
    bd = run_estimate(model, method, wl, gpu=g.name, **opts)
    fit = fit_report(bd, g.total_bytes, g.context_bytes)
    if as_json:
        print(json.dumps({**bd.to_dict(), "gpu": g.name, "fit": fit}, indent=2))
        return
    render_breakdown(bd, title=f"{bd.info['model']} · {bd.info['method']} · estimate")
    verdict = "[green]fits[/green]" if fit["fits"] else "[red]does not fit[/red]"
    out.print(
        f"{g.name} ({fmt_bytes(g.total_bytes, 'GB')} = {fmt_bytes(g.total_bytes)}): {verdict}, "
        f"headroom {fit['headroom_bytes'] / GB:+.2f} GB ({fit['headroom_bytes'] / 2**30:+.2f} GiB)"
    )


def fit_report(bd: Breakdown, total: int, context: int) -> dict:
    """Peak + CUDA context against a GPU's total memory."""
    need = bd.peak + (bd.context_bytes or context)
    return {
        "need_bytes": need,
        "gpu_bytes": total,
        "headroom_bytes": total - need,
        "fits": need <= total,
    }


def render_breakdown(bd: Breakdown, title: str) -> None:
    t = Table(title=title, title_justify="left")
    phases = [p for p in PHASES if p in bd.phases]
    t.add_column("category", no_wrap=True)
    for ph in phases:
        t.add_column(f"{ph} peak", justify="right")
    t.add_column("at peak (GB)", justify="right")
    for cat in CATEGORIES:
        row = [fmt_bytes(bd.phases[p].categories[cat]) for p in phases]
        t.add_row(cat, *row, f"{bd.categories[cat] / GB:.2f}")
    t.add_row(
        "[bold]live tensors",
        *[f"[bold]{fmt_bytes(bd.phases[p].total)}" for p in phases],
        f"{bd.tensor_peak / GB:.2f}",
    )
    out.print(t)
    info = bd.info
    out.print(
        f"batch {info.get('batch')} × seq {info.get('seq')}, {info.get('dtype')}, "
        f"attention {info.get('attention_kernel')}, checkpointing {info.get('checkpointing')}, "
        f"optimizer impl {info.get('optimizer_impl')}, device {info.get('device')}"
    )
    from memplan.methods import get_method

    spec = get_method(info["method"]) if info.get("method") else None
    for line in spec.describe(info) if spec is not None and spec.describe else ():
        out.print(line)
    out.print(
        f"peak phase: [bold]{bd.peak_phase}[/bold], live tensors "
        f"{fmt_bytes(bd.tensor_peak)} ({bd.tensor_peak / GB:.2f} GB)"
    )
    for name, n in bd.runtime.items():
        out.print(f"  + {name}: {fmt_bytes(n, 'MiB')}")
    out.print(f"peak (allocator): {fmt_bytes(bd.peak)} ({bd.peak / GB:.2f} GB)")
    if bd.context_bytes:
        out.print(f"  + CUDA context (outside the allocator): {fmt_bytes(bd.context_bytes, 'MiB')}")
        out.print(
            f"total (as nvidia-smi shows): {fmt_bytes(bd.total_bytes)} "
            f"({bd.total_bytes / GB:.2f} GB)"
        )


# ---- profile ----------------------------------------------------------------------------------
@app.command()
def profile(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="preset name, config.json path or cached HF id")],
    method: Method = "adamw",
    device: Annotated[str, typer.Option(help="cuda | cpu | meta")] = "meta",
    seq: Annotated[str, typer.Option(help="sequence lengths, comma separated")] = "512",
    batch: Batch = 1,
    dtype: Dtype = "bf16",
    attn: Attn = "sdpa",
    checkpointing: Ckpt = False,
    optimizer_impl: Impl = "foreach",
    out_path: Annotated[
        Path | None, typer.Option("--out", help="append one JSON line per run (written at once)")
    ] = None,
    impl: ZoImpl = "chunked",
    q: Queries = 1,
    sparsity: Sparsity = 0.8,
    chunk: Chunk = 1 << 20,
    zo_layers: ZoLayers = None,
    fo: Fo = "adamw",
    zo_method: Zo = "zo-sgd",
    plan_path: Annotated[
        Path | None,
        typer.Option("--plan", help="a `memplan plan --json` file: run its recommended split"),
    ] = None,
    optimizer: PeftOptimizer = "adamw",
    alpha: Alpha = 16.0,
    lora_dropout: LoraDropout = 0.0,
    target_modules: Targets = None,
    virtual_tokens: Tokens = None,
    rank: Rank = None,
    update_proj_gap: ProjGap = None,
    scale: Scale = 0.25,
    proj_type: ProjType = "std",
    layerwise: Layerwise = False,
    galore_step: GaloreStep = "both",
    as_json: Json = False,
) -> None:
    """Run the real training step and print measured beside estimated, per category."""
    from rich.progress import Progress

    from memplan.estimate import estimate as run_estimate
    from memplan.models import load_config

    if plan_path is not None:
        rec = read_plan(plan_path)
        w = rec["workload"]
        method, zo_layers, fo, zo_method = "hybrid", rec["zo_layers"], rec["fo"], rec["zo"]
        seq, batch, dtype, attn = str(w["seq"]), w["batch"], w["dtype"], w["attn"]
        checkpointing, optimizer_impl = w["checkpointing"], w["optimizer_impl"]
        if load_config(model).name != rec["model"]:
            raise MemplanError(
                f"{plan_path} is a plan for {rec['model']}, not {model}: "
                f"run memplan profile {rec['model']} --plan {plan_path}"
            )
    seqs = _parse_seqs(seq)
    opts = _method_options(locals())
    if plan_path is None:
        _check_flags(ctx, method, opts)
    cfg = load_config(model)
    wls = [
        _workload(
            batch=batch,
            seq=s,
            dtype=dtype,
            attn=attn,
            checkpointing=checkpointing,
            optimizer_impl=optimizer_impl,
            device=device,
        )
        for s in seqs
    ]
    from memplan.measure.run import measure

    rows = []
    sink = out_path.open("a") if out_path else None
    try:
        with Progress(console=err, transient=True, disable=as_json) as progress:
            task = progress.add_task(f"profiling {cfg.name} on {device}", total=len(wls))
            for wl in wls:
                est = run_estimate(cfg, method, wl, **opts)
                try:
                    # steps of several kinds (GaLore "both"): measure the one that peaks
                    meas = measure(cfg, method, wl, **measured_options(method, opts, est))
                    row = profile_row(est, meas)
                except MemplanError:
                    raise
                except RuntimeError as e:  # OOM on a real device: keep going, record it
                    if "out of memory" not in str(e).lower():
                        raise
                    row = {"seq": wl.seq, "error": "out of memory", "estimate": est.to_dict()}
                rows.append(row)
                if sink:
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
                progress.advance(task)
    except KeyboardInterrupt:
        err.print(f"interrupted: {len(rows)} run(s) kept" + (f" in {out_path}" if out_path else ""))
        raise typer.Exit(130) from None
    finally:
        if sink:
            sink.close()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    render_profile(rows)


def measured_options(method: str, opts: dict, est: Breakdown) -> dict:
    """The options a measurement runs with: a method whose estimate weighs several kinds of
    step (`MethodSpec.step_kinds`) is measured at the kind its estimate says peaks."""
    from memplan.methods import default_options, get_method

    spec = get_method(method)
    full = default_options(opts)
    kinds = spec.step_kinds(full) if spec.step_kinds is not None else None
    if kinds is None:
        return opts
    prefix, variants = kinds
    return variants.get(est.info.get(f"{prefix}_step"), variants[list(variants)[-1]])


def read_plan(path: Path) -> dict:
    """The recommended split of a `memplan plan --json` file, with its model."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise MemplanError(f"no plan file {path}: write one with memplan plan ... --json") from e
    except (OSError, json.JSONDecodeError) as e:
        raise MemplanError(f"{path} is not a memplan plan (JSON): {e}") from e
    rec = data.get("recommended") if isinstance(data, dict) else None
    if not isinstance(rec, dict) or "zo_layers" not in rec or "workload" not in rec:
        raise MemplanError(
            f"{path} has no recommended split (nothing fit, or not a `memplan plan --json` file)"
        )
    return {**rec, "model": data.get("model")}


def profile_row(est: Breakdown, meas: Breakdown) -> dict:
    """One sweep point: both breakdowns and the relative error per category and at the peak."""
    errors = {c: relative_error(est.categories[c], meas.categories[c]) for c in CATEGORIES}
    errors["peak"] = relative_error(est.tensor_peak, meas.tensor_peak)
    return {
        "seq": est.info["seq"],
        "estimate": est.to_dict(),
        "measured": meas.to_dict(),
        "rel_error": errors,
    }


def render_profile(rows: list[dict]) -> None:
    for row in rows:
        if "error" in row:
            out.print(f"seq {row['seq']}: [red]{row['error']}[/red]")
            continue
        est, meas = row["estimate"], row["measured"]
        t = Table(
            title=f"{meas['info']['model']} · {meas['info']['method']} · seq {row['seq']} · "
            f"{meas['source']} ({meas['info'].get('attention_kernel')})",
            title_justify="left",
        )
        for col in ("category", "estimated", "measured", "rel. error"):
            t.add_column(col, justify="left" if col == "category" else "right")
        for cat in CATEGORIES:
            t.add_row(
                cat,
                fmt_bytes(est["categories"][cat]),
                fmt_bytes(meas["categories"][cat]),
                _pct(row["rel_error"][cat]),
            )
        t.add_row(
            "[bold]peak",
            f"[bold]{fmt_bytes(est['tensor_peak_bytes'])}",
            f"[bold]{fmt_bytes(meas['tensor_peak_bytes'])}",
            f"[bold]{_pct(row['rel_error']['peak'])}",
        )
        out.print(t)
        out.print(f"peak phase: estimated {est['peak_phase']}, measured {meas['peak_phase']}")
        if "galore_step" in meas["info"]:
            out.print(f"GaLore step measured: {meas['info']['galore_step']}")


def _pct(x: float) -> str:
    return "n/a" if x == float("inf") else f"{x * 100:+.2f} %"


# ---- plot -------------------------------------------------------------------------------------
@app.command()
def plot(
    source: Annotated[
        str, typer.Argument(help="a `memplan profile --out` JSONL file, or a model to estimate")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="image file (.png/.svg/.pdf)")] = (
        Path("memplan.png")
    ),
    method: Annotated[
        str, typer.Option("--method", "-m", help="methods, comma separated (model source)")
    ] = "adamw",
    seq: Annotated[str, typer.Option(help="sequence lengths (model source)")] = (
        "256,512,1024,2048,4096"
    ),
    batch: Batch = 1,
    dtype: Dtype = "bf16",
    checkpointing: Ckpt = False,
    gpu: Annotated[
        str | None, typer.Option(help="draw this GPU's usable memory (total - CUDA context)")
    ] = None,
) -> None:
    """Plot peak memory against sequence length: a profile sweep (estimate vs measured) or
    estimates of several methods for one model."""
    from memplan.plot import curves_from_estimates, curves_from_rows, load_rows, render

    path = Path(source)
    if path.suffix in (".jsonl", ".json") or path.is_file():
        curves = curves_from_rows(load_rows(path))
        title = f"{path.name}: estimate vs measured"
    else:
        methods = [m.strip() for m in method.split(",") if m.strip()]
        curves = curves_from_estimates(
            source, methods, _parse_seqs(seq), batch=batch, dtype=dtype, checkpointing=checkpointing
        )
        title = f"{source}: estimated peak (batch {batch}, {dtype})"
    capacity = None
    if gpu:
        from memplan.gpus import get_gpu

        g = get_gpu(gpu)
        capacity = (f"{g.name} usable", g.total_bytes - g.context_bytes)
    render(curves, output, title=title, capacity=capacity)
    out.print(f"wrote {output} ({len(curves)} curve(s); sizes in GiB = 2^30 bytes)")


# ---- plan -------------------------------------------------------------------------------------
@app.command()
def plan(
    model: Annotated[str, typer.Argument(help="preset name, config.json path or cached HF id")],
    gpu: Annotated[str, typer.Option(help="GPU preset: its memory and CUDA context")] = "rtx4090",
    budget: Annotated[
        str | None, typer.Option(help="the card's memory instead of the preset's (e.g. 24GB)")
    ] = None,
    margin: Annotated[
        str | None, typer.Option(help="kept free: a fraction (0.02, 2%) or a size (1GB)")
    ] = None,
    seq: Annotated[int, typer.Option(help="sequence length (tokens)")] = 512,
    batch: Batch = 1,
    dtype: Dtype = "bf16",
    attn: Attn = "sdpa",
    checkpointing: Ckpt = False,
    optimizer_impl: Impl = "foreach",
    fo: Annotated[str, typer.Option(help="first-order optimizer of the split's deep part")] = (
        "adamw"
    ),
    zo: Annotated[str, typer.Option(help="zeroth-order method of the split's shallow part")] = (
        "zo-sgd"
    ),
    impl: ZoImpl = "auto",
    maximize: Annotated[
        str | None, typer.Option(help="seq | batch: the largest value that fits for --method")
    ] = None,
    method: Annotated[
        str | None, typer.Option("--method", "-m", help="the method --maximize is for")
    ] = None,
    zo_layers: Annotated[
        int | None, typer.Option("--zo-layers", help="with --method hybrid --maximize: the split")
    ] = None,
    as_json: Json = False,
) -> None:
    """Which layers go ZO and which FO so the step fits the GPU; what else fits; what would."""
    from memplan.methods.hybrid import HybridSettings
    from memplan.plan import make_budget
    from memplan.plan import maximize as run_maximize
    from memplan.plan import plan as run_plan

    bud = make_budget(gpu, budget, margin)
    wl = _workload(
        batch=batch,
        seq=seq,
        dtype=dtype,
        attn=attn,
        checkpointing=checkpointing,
        optimizer_impl=optimizer_impl,
        device="cuda",
    )
    hs = HybridSettings(zo_layers=zo_layers, fo=fo, zo=zo)
    zs = _zo(impl=impl)
    if maximize is not None:
        if method is None:
            raise MemplanError("--maximize needs --method (e.g. --method adamw)")
        opts = {"hybrid": hs} if method == "hybrid" else {}
        best, bd = run_maximize(model, maximize, method, wl, bud, gpu, zo=zs, **opts)
        res = {
            "model": model,
            "method": method,
            "maximize": maximize,
            "best": best,
            "budget": bud.to_dict(),
            "breakdown": bd.to_dict() if bd else None,
        }
        if as_json:
            print(json.dumps(res, indent=2))
            return
        if best is None:
            out.print(f"{method} does not fit {bud.name} even at --{maximize} 1")
            return
        need = bd.peak + bud.context_bytes
        out.print(
            f"largest --{maximize} for {method} on {bud.name}: [bold]{best}[/bold] "
            f"(needs {need / GB:.2f} GB of {bud.total_bytes / GB:.2f} GB, margin "
            f"{bud.margin_bytes / GB:.2f} GB)"
        )
        return
    p = run_plan(model, wl, bud, hs, zs, gpu)
    if as_json:
        print(json.dumps(p.to_dict(), indent=2))
        return
    render_plan(p)


def render_plan(p) -> None:  # noqa: ANN001
    b = p.budget
    out.print(
        f"[bold]{p.model}[/bold] on {b.name}: {b.total_bytes / GB:.2f} GB "
        f"({b.total_bytes / 2**30:.2f} GiB) - CUDA context {b.context_bytes / GB:.2f} GB - "
        f"margin {b.margin_bytes / GB:.2f} GB = {b.usable_bytes / GB:.2f} GB for the step; "
        f"batch {p.workload.batch} × seq {p.workload.seq}, {p.workload.dtype}"
    )
    if p.split is None:
        out.print("[red]no split fits[/red]: even plain zeroth-order training exceeds the budget")
    else:
        r = p.split_row
        n = p.n_layers
        k = p.split
        what = (
            f"plain first-order ({p.hybrid.fo}): every layer fits"
            if k == 0
            else f"plain zeroth-order ({p.hybrid.zo})"
            if k == n
            else f"embeddings + layers 0..{k - 1} {p.hybrid.zo}, layers {k}..{n - 1} + head "
            f"{p.hybrid.fo}"
        )
        out.print(f"recommended split: [bold]--method hybrid --zo-layers {k}[/bold] ({what})")
        render_breakdown(r.breakdown, title=f"{p.model} · hybrid K={k} · estimate")
        out.print(
            f"needs {r.need_bytes / GB:.2f} GB with the context: headroom "
            f"{r.headroom_bytes / GB:+.2f} GB ({r.headroom_bytes / 2**30:+.2f} GiB) "
            "after the margin"
        )
        if p.next_row is not None:
            out.print(
                f"one more FO layer (--zo-layers {k - 1}) would need "
                f"{p.next_row.need_bytes / GB:.2f} GB: over by "
                f"{-p.next_row.headroom_bytes / GB:.2f} GB"
            )
    t = Table(
        title="what fits, best-quality tier first (GB = 10^9 bytes, context included)",
        title_justify="left",
    )
    t.add_column("#", justify="right")
    t.add_column("configuration", no_wrap=True)
    t.add_column("tier", no_wrap=True)
    t.add_column("needs GB", justify="right")
    t.add_column("headroom GB", justify="right")
    t.add_column("trade-off", overflow="fold", min_width=24)
    fitting = [r for r in p.rows if r.fits]
    for i, r in enumerate(fitting, 1):
        t.add_row(
            str(i),
            r.option.label,
            r.option.tier,
            f"{r.need_bytes / GB:.2f}",
            f"{r.headroom_bytes / GB:+.2f}",
            r.option.note,
        )
    out.print(t)
    left = [r.option.label for r in p.rows if not r.fits]
    if left:
        out.print(f"do not fit ({len(left)}): " + ", ".join(left))
    for s in p.suggestions:
        out.print(f"[yellow]would fit:[/yellow] {s}")
    out.print("run it: memplan plan ... --json > plan.json; memplan profile --plan plan.json")


# ---- listings ---------------------------------------------------------------------------------
@app.command()
def models(as_json: Json = False) -> None:
    """List the bundled model presets with their exact parameter counts."""
    from memplan.models import load_config, preset_names
    from memplan.models.layout import layout

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
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(title="model presets (bundled config.json, no download)", title_justify="left")
    for col in ("name", "family", "layers", "hidden", "heads/kv", "vocab", "parameters"):
        t.add_column(col, justify="left" if col in ("name", "family") else "right")
    for r in rows:
        t.add_row(
            r["name"],
            r["family"],
            str(r["layers"]),
            str(r["hidden"]),
            f"{r['heads']}/{r['kv_heads']}",
            str(r["vocab"]),
            f"{r['params']:,}",
        )
    out.print(t)


@app.command()
def gpus(as_json: Json = False) -> None:
    """List the GPU presets: total memory and a typical CUDA context."""
    from memplan.gpus import get_gpu, gpu_names

    rows = [get_gpu(n) for n in gpu_names()]
    if as_json:
        print(
            json.dumps(
                [
                    {"name": g.name, "total_bytes": g.total_bytes, "context_bytes": g.context_bytes}
                    for g in rows
                ],
                indent=2,
            )
        )
        return
    t = Table(title="GPU presets", title_justify="left")
    for col in ("name", "total (GB)", "total (GiB)", "CUDA context (MiB)", "note"):
        t.add_column(col, justify="left" if col in ("name", "note") else "right")
    for g in rows:
        t.add_row(
            g.name,
            f"{g.total_bytes / GB:.2f}",
            f"{g.total_bytes / 2**30:.2f}",
            f"{g.context_bytes / 2**20:.0f}",
            g.note,
        )
    out.print(t)


@app.command()
def methods(as_json: Json = False) -> None:
    """List the training methods and their knobs."""
    from memplan.methods import methods as registered

    rows = [
        {
            "name": m.name,
            "kind": m.kind,
            "devices": list(m.devices),
            "aliases": list(m.aliases),
            "knobs": ["--" + k.replace("_", "-") for k in m.knobs],
            "summary": m.summary,
        }
        for m in registered()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(title="methods", title_justify="left")
    for col in ("name", "kind", "devices", "aliases", "knobs", "what it keeps"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(
            r["name"],
            r["kind"],
            ", ".join(r["devices"]),
            ", ".join(r["aliases"]),
            ", ".join(r["knobs"]),
            r["summary"],
        )
    out.print(t)


def _usage_line(e: Exception) -> str:
    """One line from a click/typer usage error (typer >= 0.29 bundles its own click, so the
    exception is matched by what it offers, not by class)."""
    msg = e.format_message() if hasattr(e, "format_message") else str(e)
    msg = " ".join(str(msg).split())
    param = getattr(e, "param", None)
    hint = getattr(param, "opts", None) if param is not None else None
    if hint and hint[0] not in msg:
        msg = f"{hint[0]}: {msg}"
    cmd = getattr(getattr(e, "ctx", None), "command_path", None) or "memplan"
    return f"error: {msg} (see `{cmd} --help`)"


def main() -> None:
    from memplan.methods import load_plugins

    try:
        load_plugins()
        if len(sys.argv) == 1:
            raise MemplanError(
                "no command given; one of: estimate, profile, plan, plot, models, gpus, methods "
                "(memplan --help)"
            )
        rc = app(standalone_mode=False)
    except MemplanError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        sys.exit(code if isinstance(code, int) else 0)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as e:  # click usage errors (typer's bundled click or click itself)
        if hasattr(e, "exit_code") and hasattr(e, "format_message"):
            print(_usage_line(e), file=sys.stderr)
            sys.exit(2)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
