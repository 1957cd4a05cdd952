"""memplan's command line: typer parses, one library function computes a report, rich renders.

Each command parses its options, calls one function that returns a report object
(memplan.report, memplan.measure.sweep, memplan.plot) and renders it; `--json` prints the same
report's `to_dict()`. Every user error (MemplanError, and every typer/click usage error) is
one line on stderr, `error: ...`, and exit code 2, never a traceback; Ctrl-C exits 130.
`memplan estimate` imports neither torch nor transformers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from memplan.breakdown import CATEGORIES, PHASES, Breakdown, fmt_bytes, parse_unit, pick_unit
from memplan.errors import MemplanError, check_writable
from memplan.gpus import budget_for, get_gpu, host_budget, make_budget
from memplan.measure.sweep import profile as run_profile
from memplan.methods import check_knobs, default_options, get_method, load_plugins
from memplan.methods.galore import GaLoreSettings
from memplan.methods.hybrid import HybridSettings
from memplan.methods.peft import PEFTSettings, parse_targets
from memplan.methods.zo import ZOSettings
from memplan.models import load_config
from memplan.planfile import read_plan
from memplan.plot import check_output, make_plot
from memplan.report import (
    estimate_report,
    gpu_rows,
    maximize_report,
    method_rows,
    model_rows,
    plan_report,
    sequence_warnings,
)
from memplan.workload import Workload, parse_seq, parse_seqs

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,  # bare `memplan` is a one-line usage error (see `run`)
    pretty_exceptions_enable=False,
    help="How much GPU memory will this training run need, and what must change so it fits?",
)

# ---- common options -----------------------------------------------------------------------------
Model = Annotated[str, typer.Argument(help="preset name, config.json path or cached HF id")]
Method = Annotated[str, typer.Option("--method", "-m", help="training method (memplan methods)")]
Batch = Annotated[int, typer.Option(help="micro-batch size")]
OneSeq = Annotated[str, typer.Option(metavar="<int>", help="sequence length (tokens); one value")]
Dtype = Annotated[str, typer.Option(help="fp32 | bf16 | fp16 | amp (fp32 weights, bf16 autocast)")]
Attn = Annotated[str, typer.Option(help="eager | sdpa")]
Ckpt = Annotated[bool, typer.Option(help="gradient (activation) checkpointing")]
Impl = Annotated[
    str, typer.Option("--optimizer-impl", help="foreach | fused | forloop (torch optimizers)")
]
Json = Annotated[bool, typer.Option("--json", help="print the result as JSON")]
Unit = Annotated[
    str,
    typer.Option(
        help="size unit: auto (MiB below 1 GiB, GiB below 1 TiB, else TiB) | B | KiB | MiB | "
        "GiB | TiB | KB | MB | GB | TB"
    ),
]
BudgetOpt = Annotated[
    str | None,
    typer.Option(
        "--budget",
        help="the card's memory instead of the preset's (e.g. 24GB); with --device cpu the "
        "host's instead of its available memory",
    ),
]
MarginOpt = Annotated[
    str | None, typer.Option(help="kept free: a fraction (0.02, 2%) or a size (1GB); default 2%")
]


# ==== method knobs ===============================================================================
# The options of the method families and the settings objects built from them. This section is
# replaced by knobs generated from the method registry; keep it self-contained.
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


def _zo(**kw):
    return ZOSettings(**kw)


def _hybrid(**kw):
    return HybridSettings(**kw)


def _peft(optimizer: str, rank: int | None, alpha: float, dropout: float, targets, tokens):
    return PEFTSettings(
        r=8 if rank is None else rank,
        alpha=alpha,
        dropout=dropout,
        target_modules=parse_targets(targets) if targets is not None else None,
        num_virtual_tokens=tokens,
        optimizer=optimizer,
    )


def _galore(**kw):
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


# ==== end of method knobs ========================================================================


def _workload(**kw: Any):
    return Workload(**kw)


def _console(stderr: bool = False) -> Console:
    """A console for this call: a terminal's own width (columns fold, never cut), or, when
    the output is piped, a width no table reaches (every character kept, nothing wrapped)."""
    stream = sys.stderr if stderr else sys.stdout
    is_tty = hasattr(stream, "isatty") and stream.isatty()
    return Console(stderr=stderr, width=None if is_tty else 10_000)


def _warn(messages: list[str]) -> None:
    for m in messages:
        print(f"warning: {m}", file=sys.stderr)


def _dump(obj: dict | list) -> None:
    print(json.dumps(obj, indent=2))


# parameter name in the commands -> knob name in the registry (where they differ)
_KNOB_OF = {"zo_method": "zo"}


def _check_flags(ctx: typer.Context, method: str, opts: dict) -> None:
    """A method knob the user typed that does not apply to the method is an error naming the
    flag and the methods it applies to (memplan.methods.check_knobs)."""
    given = []
    for p in ctx.command.params:
        source = ctx.get_parameter_source(p.name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            given.append(_KNOB_OF.get(p.name, p.name))
    check_knobs(get_method(method), given, default_options(opts))


def _typed(ctx: typer.Context, names: tuple[str, ...]) -> list[str]:
    """The options among `names` the user typed (click's parameter source), as flags."""
    flags = []
    for p in ctx.command.params:
        if p.name not in names:
            continue
        source = ctx.get_parameter_source(p.name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            flags.append(_flag(p))
    return flags


def _flag(param: Any) -> str:
    opts = list(getattr(param, "opts", []) or [])
    long = [o for o in opts if o.startswith("--")]
    if long:
        return long[0]
    if opts and getattr(param, "param_type_name", "") != "argument":
        return opts[0]
    return str(getattr(param, "human_readable_name", None) or getattr(param, "name", "?")).upper()


def _table(title: str, columns: list[tuple[str, str]]) -> Table:
    """A table whose cells fold in a narrow terminal instead of being cut."""
    t = Table(title=title, title_justify="left")
    for name, justify in columns:
        t.add_column(name, justify=justify, overflow="fold")
    return t


# ---- estimate -----------------------------------------------------------------------------------
@app.command()
def estimate(
    ctx: typer.Context,
    model: Model,
    method: Method = "adamw",
    batch: Batch = 1,
    seq: OneSeq = "512",
    dtype: Dtype = "bf16",
    attn: Attn = "sdpa",
    checkpointing: Ckpt = False,
    optimizer_impl: Impl = "foreach",
    device: Annotated[
        str, typer.Option(help="where the run happens: cuda | cpu (fit: the host's memory) | meta")
    ] = "cuda",
    gpu: Annotated[str, typer.Option(help="GPU preset to check the fit against")] = "rtx4090",
    budget: BudgetOpt = None,
    margin: MarginOpt = None,
    unit: Unit = "auto",
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
    """Estimate one training step's peak memory, by category and phase, and whether it fits
    (the planner's rule: peak + CUDA context <= card - margin)."""
    shown = parse_unit(unit)
    if device == "cpu" and _typed(ctx, ("gpu",)):
        raise MemplanError(
            "--gpu is for --device cuda: with --device cpu the fit is judged against the host's "
            "available memory (set it with --budget); drop --gpu or use --device cuda"
        )
    wl = _workload(
        batch=batch,
        seq=parse_seq(seq, "estimate"),
        dtype=dtype,
        attn=attn,
        checkpointing=checkpointing,
        optimizer_impl=optimizer_impl,
        device=device,
    )
    bud = budget_for(device, gpu, budget, margin)
    gpu_name = None if device == "cpu" else get_gpu(gpu).name
    opts = _method_options(locals())
    _check_flags(ctx, method, opts)
    rep = estimate_report(model, method, wl, bud, gpu_name, **opts)
    _warn(rep.warnings)
    if as_json:
        _dump(rep.to_dict())
        return
    con = _console()
    bd = rep.breakdown
    render_breakdown(con, bd, f"{bd.info['model']} · {bd.info['method']} · estimate", shown)
    render_fit(con, rep.fit, shown)


def render_fit(con: Console, fit: Any, unit: str | None = None) -> None:
    """'rtx4090 25.76 GB (23.99 GiB), margin ...: needs X: fits, headroom +Y'."""
    b = fit.budget
    need = "peak + CUDA context" if b.context_bytes else "peak"
    verdict = "[green]fits[/green]" if fit.fits else "[red]does not fit[/red]"
    con.print(
        f"{b.describe(unit)}: needs {fmt_bytes(fit.need_bytes, unit)} ({need}): {verdict}, "
        f"headroom {_signed(fit.headroom_bytes, unit)} after the margin"
    )


def _both(n: int, unit: str | None) -> str:
    """`n` in the forced unit, or in the readable binary and decimal units side by side."""
    if unit:
        return fmt_bytes(n, unit)
    return f"{fmt_bytes(n)} ({fmt_bytes(n, pick_unit(n, decimal=True))})"


def _signed(n: int, unit: str | None) -> str:
    return ("+" if n >= 0 else "-") + fmt_bytes(abs(n), unit or pick_unit(n))


def render_breakdown(con: Console, bd: Breakdown, title: str, unit: str | None = None) -> None:
    phases = [p for p in PHASES if p in bd.phases]
    u = unit or pick_unit(bd.peak)
    t = _table(
        title,
        [("category", "left"), *((f"{ph} peak", "right") for ph in phases), ("at peak", "right")],
    )
    for cat in CATEGORIES:
        row = [fmt_bytes(bd.phases[p].categories[cat], u) for p in phases]
        t.add_row(cat, *row, fmt_bytes(bd.categories[cat], u))
    t.add_row(
        "[bold]live tensors",
        *[f"[bold]{fmt_bytes(bd.phases[p].total, u)}" for p in phases],
        f"[bold]{fmt_bytes(bd.tensor_peak, u)}",
    )
    con.print(t)
    info = bd.info
    con.print(
        f"batch {info.get('batch')} × seq {info.get('seq')}, {info.get('dtype')}, "
        f"attention {info.get('attention_kernel')}, checkpointing {info.get('checkpointing')}, "
        f"optimizer impl {info.get('optimizer_impl')}, device {info.get('device')}"
    )
    spec = get_method(info["method"]) if info.get("method") else None
    for line in spec.describe(info) if spec is not None and spec.describe else ():
        con.print(line)
    con.print(
        f"peak phase: [bold]{bd.peak_phase}[/bold], live tensors {fmt_bytes(bd.tensor_peak, unit)}"
    )
    for name, n in bd.runtime.items():
        con.print(f"  + {name}: {fmt_bytes(n, unit)}")
    con.print(f"peak (allocator): {_both(bd.peak, unit)}")
    if bd.context_bytes:
        con.print(f"  + CUDA context (outside the allocator): {fmt_bytes(bd.context_bytes, unit)}")
        con.print(f"total (as nvidia-smi shows): {_both(bd.total_bytes, unit)}")


# ---- profile ------------------------------------------------------------------------------------
# what a plan file sets: typing one of these beside --plan is a conflict
_PLAN_SETS = (
    "method",
    "seq",
    "batch",
    "dtype",
    "attn",
    "checkpointing",
    "optimizer_impl",
    "zo_layers",
    "fo",
    "zo_method",
)


@app.command()
def profile(
    ctx: typer.Context,
    model: Model,
    method: Method = "adamw",
    device: Annotated[str, typer.Option(help="cuda | cpu | meta")] = "meta",
    seq: Annotated[str, typer.Option(help="sequence lengths, comma separated")] = "512",
    batch: Batch = 1,
    dtype: Dtype = "bf16",
    attn: Attn = "sdpa",
    checkpointing: Ckpt = False,
    optimizer_impl: Impl = "foreach",
    out_path: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="append one JSON line per point as soon as it is measured; a rerun skips the "
            "points already there",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="cpu: run even if the estimate exceeds the host memory")
    ] = False,
    unit: Unit = "auto",
    impl: ZoImpl = "chunked",
    q: Queries = 1,
    sparsity: Sparsity = 0.8,
    chunk: Chunk = 1 << 20,
    zo_layers: ZoLayers = None,
    fo: Fo = "adamw",
    zo_method: Zo = "zo-sgd",
    plan_path: Annotated[
        Path | None,
        typer.Option(
            "--plan",
            help="a `memplan plan --json` file: run its recommended split (it sets --method, "
            "--seq, --batch, ...)",
        ),
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
    """Run the real training step at each --seq and print measured beside estimated, per
    category. Ctrl-C stops the sweep (exit 130) and keeps every finished point."""
    shown = parse_unit(unit)
    cfg = load_config(model)
    if plan_path is not None:
        typed = _typed(ctx, _PLAN_SETS)
        if typed:
            raise MemplanError(
                f"--plan sets {', '.join(typed)} from the plan file: drop "
                f"{' and '.join(typed)}, or drop --plan and give every setting yourself"
            )
        choice = read_plan(plan_path)
        if cfg.name != choice.model:
            raise MemplanError(
                f"{plan_path} is a plan for {choice.model}, not {model}: "
                f"run memplan profile {choice.model} --plan {plan_path}"
            )
        method, zo_layers, fo, zo_method = "hybrid", choice.zo_layers, choice.fo, choice.zo
        wls = [choice.to_workload(device)]
    else:
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
            for s in parse_seqs(seq)
        ]
    if out_path is not None:
        check_writable(out_path, "--out")
    opts = _method_options(locals())
    if plan_path is None:
        _check_flags(ctx, method, opts)
    host = host_budget() if device == "cpu" and not force else None
    _warn(sequence_warnings(cfg, max(w.seq for w in wls)))

    with _LazyProgress(f"profiling {cfg.name} on {device}", enabled=not as_json) as bar:
        rep = run_profile(cfg, method, wls, opts, out=out_path, host=host, progress=bar.update)
    if rep.skipped:
        print(
            f"{rep.skipped} of {rep.total} point(s) already in {out_path}: skipped (delete "
            "their lines to measure them again)",
            file=sys.stderr,
        )
    if as_json:  # the rows the table shows (skipped/interrupted are said on stderr)
        _dump(rep.rows)
    else:
        render_profile(_console(), rep.rows, shown)
    if rep.interrupted:
        kept = f", saved in {out_path}" if out_path else ""
        print(f"interrupted: {len(rep.rows)} point(s) finished{kept}", file=sys.stderr)
        raise typer.Exit(130)


class _LazyProgress:
    """A rich progress bar on stderr that appears with the first measured point (checks that
    fail before it print their one line alone), only on a terminal."""

    def __init__(self, label: str, enabled: bool = True) -> None:
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self._bar = None
        self._task = None

    def __enter__(self) -> _LazyProgress:
        return self

    def update(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from rich.progress import Progress

            self._bar = Progress(console=_console(stderr=True), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=total)
        self._bar.update(self._task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def render_profile(con: Console, rows: list[dict], unit: str | None = None) -> None:
    for row in rows:
        if "error" in row:
            est = row["estimate"]
            con.print(
                f"seq {row['seq']}: [red]{row['error']}[/red] (estimated peak "
                f"{fmt_bytes(est['peak_bytes'], unit)})"
            )
            continue
        est, meas = row["estimate"], row["measured"]
        u = unit or pick_unit(max(est["tensor_peak_bytes"], meas["tensor_peak_bytes"]))
        t = _table(
            f"{meas['info']['model']} · {meas['info']['method']} · seq {row['seq']} · "
            f"{meas['source']} ({meas['info'].get('attention_kernel')})",
            [("category", "left"), ("estimated", "right"), ("measured", "right")]
            + [("rel. error", "right")],
        )
        for cat in CATEGORIES:
            t.add_row(
                cat,
                fmt_bytes(est["categories"][cat], u),
                fmt_bytes(meas["categories"][cat], u),
                _pct(row["rel_error"][cat]),
            )
        t.add_row(
            "[bold]peak",
            f"[bold]{fmt_bytes(est['tensor_peak_bytes'], u)}",
            f"[bold]{fmt_bytes(meas['tensor_peak_bytes'], u)}",
            f"[bold]{_pct(row['rel_error']['peak'])}",
        )
        con.print(t)
        con.print(f"peak phase: estimated {est['peak_phase']}, measured {meas['peak_phase']}")
        if "galore_step" in meas["info"]:
            con.print(f"GaLore step measured: {meas['info']['galore_step']}")


def _pct(x: float) -> str:
    return "n/a" if x == float("inf") else f"{x * 100:+.2f} %"


# ---- plot ---------------------------------------------------------------------------------------
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
    as_json: Json = False,
) -> None:
    """Plot peak memory against sequence length: a profile sweep (estimate vs measured) or
    estimates of several methods for one model."""
    check_output(output)
    methods = [m.strip() for m in method.split(",") if m.strip()]
    if not methods:
        raise MemplanError("--method needs at least one method (e.g. --method adamw,zo-sgd)")
    seqs = parse_seqs(seq)
    _workload(batch=batch, dtype=dtype, checkpointing=checkpointing)  # validated before drawing
    capacity = None
    if gpu:
        g = get_gpu(gpu)
        capacity = (f"{g.name} usable", g.total_bytes - g.context_bytes)
    rep = make_plot(
        source,
        output,
        methods,
        seqs,
        capacity=capacity,
        batch=batch,
        dtype=dtype,
        checkpointing=checkpointing,
    )
    _warn(rep.warnings)
    if as_json:
        _dump(rep.to_dict())
        return
    _console().print(f"wrote {output} ({len(rep.curves)} curve(s); sizes in GiB = 2^30 bytes)")


# ---- plan ---------------------------------------------------------------------------------------
@app.command()
def plan(
    model: Model,
    gpu: Annotated[str, typer.Option(help="GPU preset: its memory and CUDA context")] = "rtx4090",
    budget: BudgetOpt = None,
    margin: MarginOpt = None,
    seq: OneSeq = "512",
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
    unit: Unit = "auto",
    as_json: Json = False,
) -> None:
    """Which layers go ZO and which FO so the step fits the GPU; what else fits; what would."""
    shown = parse_unit(unit)
    bud = make_budget(gpu, budget, margin)
    wl = _workload(
        batch=batch,
        seq=parse_seq(seq, "plan"),
        dtype=dtype,
        attn=attn,
        checkpointing=checkpointing,
        optimizer_impl=optimizer_impl,
        device="cuda",
    )
    hs = HybridSettings(zo_layers=zo_layers, fo=fo, zo=zo)
    zs = ZOSettings(impl=impl)
    if maximize is not None:
        if method is None:
            raise MemplanError("--maximize needs --method (e.g. --method adamw)")
        opts = {"hybrid": hs} if method == "hybrid" else {}
        rep = maximize_report(model, maximize, method, wl, bud, gpu, zo=zs, **opts)
        _warn(rep.warnings)
        if as_json:
            _dump(rep.to_dict())
            return
        con = _console()
        if rep.best is None:
            con.print(f"{rep.method} does not fit {bud.name} even at --{maximize} 1")
            return
        con.print(f"largest --{maximize} for {rep.method} on {bud.name}: [bold]{rep.best}[/bold]")
        render_fit(con, rep.fit, shown)
        return
    rep = plan_report(model, wl, bud, hs, zs, gpu)
    _warn(rep.warnings)
    if as_json:
        _dump(rep.to_dict())
        return
    render_plan(_console(), rep.plan, shown)


def render_plan(con: Console, p: Any, unit: str | None = None) -> None:
    b = p.budget
    u = unit or pick_unit(b.total_bytes)
    con.print(
        f"[bold]{p.model}[/bold] on {b.name}: {fmt_bytes(b.total_bytes, 'GB')} "
        f"({fmt_bytes(b.total_bytes, 'GiB')}) - CUDA context {fmt_bytes(b.context_bytes, unit)} - "
        f"margin {fmt_bytes(b.margin_bytes, unit)} = {fmt_bytes(b.usable_bytes, u)} for the "
        f"step; batch {p.workload.batch} × seq {p.workload.seq}, {p.workload.dtype}"
    )
    if p.split is None:
        con.print("[red]no split fits[/red]: even plain zeroth-order training exceeds the budget")
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
        con.print(f"recommended split: [bold]--method hybrid --zo-layers {k}[/bold] ({what})")
        render_breakdown(con, r.breakdown, f"{p.model} · hybrid K={k} · estimate", unit)
        con.print(
            f"needs {fmt_bytes(r.need_bytes, u)} with the context: headroom "
            f"{_signed(r.headroom_bytes, unit)} after the margin"
        )
        if p.next_row is not None:
            con.print(
                f"one more FO layer (--zo-layers {k - 1}) would need "
                f"{fmt_bytes(p.next_row.need_bytes, u)}: over by "
                f"{fmt_bytes(-p.next_row.headroom_bytes, unit)}"
            )
    t = _table(
        f"what fits, best-quality tier first (sizes in {u}, CUDA context included)",
        [
            ("#", "right"),
            ("configuration", "left"),
            ("tier", "left"),
            ("needs", "right"),
            ("headroom", "right"),
            ("trade-off", "left"),
        ],
    )
    fitting = [r for r in p.rows if r.fits]
    for i, r in enumerate(fitting, 1):
        t.add_row(
            str(i),
            r.option.label,
            r.option.tier,
            fmt_bytes(r.need_bytes, u),
            _signed(r.headroom_bytes, u),
            r.option.note,
        )
    con.print(t)
    left = [r.option.label for r in p.rows if not r.fits]
    if left:
        con.print(f"do not fit ({len(left)}): " + ", ".join(left))
    for s in p.suggestions:
        con.print(f"[yellow]would fit:[/yellow] {s}")
    con.print("run it: memplan plan ... --json > plan.json; memplan profile MODEL --plan plan.json")


# ---- listings -----------------------------------------------------------------------------------
@app.command()
def models(as_json: Json = False) -> None:
    """List the bundled model presets with their exact parameter counts."""
    rows = model_rows()
    if as_json:
        _dump(rows)
        return
    t = _table(
        "model presets (bundled config.json, no download)",
        [
            ("name", "left"),
            ("family", "left"),
            ("layers", "right"),
            ("hidden", "right"),
            ("heads/kv", "right"),
            ("vocab", "right"),
            ("parameters", "right"),
        ],
    )
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
    _console().print(t)


@app.command()
def gpus(as_json: Json = False) -> None:
    """List the GPU presets: total memory and a typical CUDA context."""
    rows = gpu_rows()
    if as_json:
        _dump(rows)
        return
    t = _table(
        "GPU presets",
        [
            ("name", "left"),
            ("total (GB)", "right"),
            ("total (GiB)", "right"),
            ("CUDA context", "right"),
            ("note", "left"),
        ],
    )
    for g in rows:
        t.add_row(
            g["name"],
            fmt_bytes(g["total_bytes"], "GB"),
            fmt_bytes(g["total_bytes"], "GiB"),
            fmt_bytes(g["context_bytes"], "MiB", 0),
            g["note"],
        )
    _console().print(t)


@app.command()
def methods(as_json: Json = False) -> None:
    """List the training methods and their knobs."""
    rows = method_rows()
    if as_json:
        _dump(rows)
        return
    t = _table(
        "methods",
        [(c, "left") for c in ("name", "kind", "devices", "aliases", "knobs", "what it keeps")],
    )
    for m in rows:
        t.add_row(
            m["name"],
            m["kind"],
            ", ".join(m["devices"]),
            ", ".join(m["aliases"]),
            ", ".join(m["knobs"]),
            m["summary"],
        )
    _console().print(t)


# ---- entry point --------------------------------------------------------------------------------
# what typer's pydantic coercion says, as the type the option expects
_EXPECTED = {
    "int_parsing": "an integer",
    "int_from_float": "an integer (no fraction)",
    "int_type": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
}


def _usage_classes() -> tuple[type, ...]:
    """Usage-error classes of typer's bundled click (typer >= 0.29) and of click itself."""
    classes: list[type] = []
    try:
        from typer._click.exceptions import ClickException
    except ImportError:  # typer < 0.29 uses click
        pass
    else:
        classes.append(ClickException)
    click = sys.modules.get("click")
    if click is not None:
        classes.append(click.exceptions.ClickException)
    return tuple(classes)


def _commands() -> list[str]:
    return [c.name or c.callback.__name__ for c in app.registered_commands]


def _no_command() -> str:
    return (
        f"no command given: memplan {' | '.join(_commands())} ... (`memplan --help` describes them)"
    )


def usage_line(e: BaseException, argv: list[str] | None = None) -> str | None:
    """One line for a typer/click usage error (None: not one): what is wrong and what to do."""
    if not isinstance(e, _usage_classes()):
        return None
    ctx = getattr(e, "ctx", None)
    cmd = getattr(ctx, "command_path", None)
    if not cmd:  # raised by the parser before the context exists: name the command typed
        first = next((a for a in argv or [] if not a.startswith("-")), None)
        cmd = f"memplan {first}" if first in _commands() else "memplan"
    see = f"see `{cmd} --help`"
    name = type(e).__name__
    param = getattr(e, "param", None)
    if name == "NoArgsIsHelpError" or (
        name == "UsageError" and "missing command" in str(e).lower()
    ):
        if ctx is None or getattr(ctx, "parent", None) is None:
            return _no_command()
        return f"{cmd} needs arguments; {see}"
    if name == "MissingParameter" and param is not None:
        what = _flag(param)
        hint = getattr(param, "help", None)
        return f"{cmd} needs {what}" + (f" ({hint})" if hint else "") + f"; {see}"
    if name == "BadParameter" and param is not None:
        cause = e.__cause__
        errors = cause.errors() if hasattr(cause, "errors") else []
        first = errors[0] if errors else {}
        expected = _EXPECTED.get(first.get("type", ""))
        if expected is not None:
            got = f"; got '{first['input']}'" if "input" in first else ""
            return f"{_flag(param)} takes {expected}{got}; {see}"
    msg = " ".join(str(e.format_message()).split())
    if msg and msg[0].isupper() and not msg[1:2].isupper():
        msg = msg[0].lower() + msg[1:]
    return f"{msg.rstrip('.')}; {see}"


def _error(message: str) -> None:
    line = " ".join(str(message).split()) or "unknown error"
    print(f"error: {line}", file=sys.stderr)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0, 2 for any user error, 130 on Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        _error(_no_command())
        return 2
    try:
        load_plugins()  # third-party methods (MEMPLAN_PLUGINS, entry points memplan.methods)
        rv = app(args=argv, prog_name="memplan", standalone_mode=False)
    except MemplanError as e:
        _error(str(e))
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        line = usage_line(e, argv)
        if line is None:
            raise
        _error(line)
        return 2
    return rv if isinstance(rv, int) else 0


def main() -> None:
    try:
        code = run()
        sys.stdout.flush()
    except BrokenPipeError:  # `memplan models | head`: the reader left, nothing to report
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
