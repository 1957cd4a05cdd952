"""memplan's command line: typer parses, one library function computes a report, rich renders.

Each command parses its options, calls one function that returns a report object
(memplan.report, memplan.measure.sweep, memplan.plot) and renders it; `--json` prints the same
report's `to_dict()`. Every user error (MemplanError, and every typer/click usage error) is
one line on stderr, `error: ...`, and exit code 2, never a traceback; Ctrl-C exits 130.
`memplan estimate` imports neither torch nor transformers.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from memplan.breakdown import CATEGORIES, PHASES, Breakdown, fmt_bytes, parse_unit, pick_unit
from memplan.errors import MemplanError, check_writable
from memplan.gpus import budget_for, get_gpu, host_budget, make_budget
from memplan.knobs import Knob
from memplan.measure.sweep import profile as run_profile
from memplan.methods import (
    check_knobs,
    default_options,
    get_method,
    load_plugins,
    method_knobs,
    settings_groups,
    workload_knobs,
)
from memplan.models import load_config
from memplan.planfile import read_plan
from memplan.plot import check_output, is_rows_file, make_plot
from memplan.report import (
    estimate_report,
    gpu_rows,
    maximize_report,
    method_rows,
    model_rows,
    plan_report,
    sequence_warnings,
)
from memplan.workload import WORKLOAD_FIELDS, Workload, parse_seq, parse_seqs

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,  # bare `memplan` is a one-line usage error (see `run`)
    pretty_exceptions_enable=False,
    help="How much GPU memory will this training run need, and what must change so it fits?",
)

# ---- common options -----------------------------------------------------------------------------
Model = Annotated[str, typer.Argument(help="preset name, config.json path or cached HF id")]
Method = Annotated[str, typer.Option("--method", "-m", help="training method (memplan methods)")]
OneSeq = Annotated[str, typer.Option(metavar="<int>", help="sequence length (tokens); one value")]
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


# ==== knobs from the registry ===================================================================
# The workload's knobs (memplan.workload.WORKLOAD_KNOBS) and every settings group's knobs
# (memplan.methods, plugins included) are declared once, as data. `@takes_knobs(...)` turns the
# ones a command takes into typer options, generated into the command's signature (`run` does it
# again after loading plugins); the command receives their values in `**knobs` and builds its
# Workload (`_workload`) and method settings (`_method_options`) from them.
_TAKES: dict[str, tuple[inspect.Signature, tuple[str, ...], bool, dict[str, tuple[Any, str]]]] = {}


def takes_knobs(
    workload: tuple[str, ...] = (), methods: bool = True, **overrides: tuple[Any, str]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The command takes the named workload knobs and (`methods`) every method knob;
    `overrides`: knob name -> (default, help) where this command differs from the declaration
    (profile's --device defaults to meta)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _TAKES[fn.__name__] = (inspect.signature(fn, eval_str=True), workload, methods, overrides)
        _attach(fn)
        return fn

    return deco


def _knobs_of(workload: tuple[str, ...], methods: bool) -> list[Knob]:
    wk = workload_knobs()
    out = [wk[n] for n in workload]
    if methods:
        out += [k for k in method_knobs().values() if k.name not in wk]
    return out


def _option(k: Knob, default: Any, help: str) -> Any:
    typ = k.type if default is not None else k.type | None
    names = (f"{k.flag}/--no-{k.flag[2:]}",) if k.type is bool else (k.flag,)
    return Annotated[typ, typer.Option(*names, *k.aliases, help=help)]


def _attach(fn: Callable[..., Any]) -> None:
    """Set `fn`'s signature: its own parameters, with the generated knob options before its
    output options (--unit, --json) and in place of `**knobs`."""
    sig, workload, methods, overrides = _TAKES[fn.__name__]
    own = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in sig.parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    names = {p.name for p in own}
    gen = []
    for k in _knobs_of(workload, methods):
        if k.name in names:
            raise RuntimeError(f"knob {k.name} collides with a parameter of `{fn.__name__}`")
        default, help = overrides.get(k.name, (k.default, k.help))
        ann = _option(k, default, help)
        gen.append(
            inspect.Parameter(
                k.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann
            )
        )
    cut = next((i for i, p in enumerate(own) if p.name in ("unit", "as_json")), len(own))
    fn.__signature__ = sig.replace(parameters=own[:cut] + gen + own[cut:])


def _attach_all() -> None:
    """Regenerate every command's knob options (after plugins registered their groups)."""
    for c in app.registered_commands:
        if c.callback is not None and c.callback.__name__ in _TAKES:
            _attach(c.callback)


def _workload(knobs: dict[str, Any], **given: Any) -> Workload:
    """The Workload from the workload knobs among `knobs`, and `given` (seq, device)."""
    kw = {n: knobs[n] for n in WORKLOAD_FIELDS if n in knobs}
    return Workload(**{**kw, **given})


def _method_options(knobs: dict[str, Any]) -> dict[str, Any]:
    """Every settings group's object (by group key) from the method knobs among `knobs`."""
    return {g.key: g.build(knobs) for g in settings_groups()}


# ==== end of the knobs ===========================================================================


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


def _check_flags(ctx: typer.Context, method: str, opts: dict) -> None:
    """A method knob the user typed that does not apply to the method is an error naming the
    flag and the methods it applies to (memplan.methods.check_knobs)."""
    check_knobs(get_method(method), _given(ctx), default_options(opts))


def _check_flags_any(ctx: typer.Context, methods: list[str], opts: dict) -> None:
    """Several methods (plot): a typed knob must apply to at least one of them."""
    errors = []
    for m in methods:
        try:
            _check_flags(ctx, m, opts)
            return
        except MemplanError as e:
            errors.append(e)
    raise errors[0]


def _given(ctx: typer.Context) -> list[str]:
    """Names of the parameters the user typed (click's parameter source)."""
    given = []
    for p in ctx.command.params:
        source = ctx.get_parameter_source(p.name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            given.append(p.name)
    return given


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
@takes_knobs(
    ("batch", "dtype", "attn", "checkpointing", "optimizer_impl", "device"),
    device=("cuda", "where the run happens: cuda | cpu (fit: the host's memory) | meta"),
)
def estimate(
    ctx: typer.Context,
    model: Model,
    method: Method = "adamw",
    seq: OneSeq = "512",
    gpu: Annotated[str, typer.Option(help="GPU preset to check the fit against")] = "rtx4090",
    budget: BudgetOpt = None,
    margin: MarginOpt = None,
    unit: Unit = "auto",
    as_json: Json = False,
    **knobs: Any,
) -> None:
    """Estimate one training step's peak memory, by category and phase, and whether it fits
    (the planner's rule: peak + CUDA context <= card - margin)."""
    shown = parse_unit(unit)
    device = knobs["device"]
    if device == "cpu" and _typed(ctx, ("gpu",)):
        raise MemplanError(
            "--gpu is for --device cuda: with --device cpu the fit is judged against the host's "
            "available memory (set it with --budget); drop --gpu or use --device cuda"
        )
    wl = _workload(knobs, seq=parse_seq(seq, "estimate"))
    bud = budget_for(device, gpu, budget, margin)
    gpu_name = None if device == "cpu" else get_gpu(gpu).name
    opts = _method_options(knobs)
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
    "zo",
)


@app.command()
@takes_knobs(
    ("batch", "dtype", "attn", "checkpointing", "optimizer_impl", "device"),
    device=("meta", "cuda | cpu | meta"),
)
def profile(
    ctx: typer.Context,
    model: Model,
    method: Method = "adamw",
    seq: Annotated[str, typer.Option(help="sequence lengths, comma separated")] = "512",
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
    plan_path: Annotated[
        Path | None,
        typer.Option(
            "--plan",
            help="a `memplan plan --json` file: run its recommended split (it sets --method, "
            "--seq, --batch, ...)",
        ),
    ] = None,
    unit: Unit = "auto",
    as_json: Json = False,
    **knobs: Any,
) -> None:
    """Run the real training step at each --seq and print measured beside estimated, per
    category. Ctrl-C stops the sweep (exit 130) and keeps every finished point."""
    shown = parse_unit(unit)
    cfg = load_config(model)
    device = knobs["device"]
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
        method = "hybrid"
        knobs.update(zo_layers=choice.zo_layers, fo=choice.fo, zo=choice.zo)
        wls = [choice.to_workload(device)]
    else:
        wls = [_workload(knobs, seq=s) for s in parse_seqs(seq)]
    if out_path is not None:
        check_writable(out_path, "--out")
    opts = _method_options(knobs)
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
@takes_knobs(("batch", "dtype", "attn", "checkpointing", "optimizer_impl"))
def plot(
    ctx: typer.Context,
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
    gpu: Annotated[
        str | None, typer.Option(help="draw this GPU's usable memory (total - CUDA context)")
    ] = None,
    as_json: Json = False,
    **knobs: Any,
) -> None:
    """Plot peak memory against sequence length: a profile sweep (estimate vs measured) or
    estimates of several methods for one model (the workload and method options apply to
    those estimates)."""
    check_output(output)
    if is_rows_file(source):
        typed = [n for n in _given(ctx) if n in knobs or n in ("method", "seq")]
        if typed:
            flags = _typed(ctx, tuple(typed))
            raise MemplanError(
                f"{', '.join(flags)}: for a model source; {source} is a profile file whose rows "
                "carry their own settings (drop them)"
            )
    methods = [m.strip() for m in method.split(",") if m.strip()]
    if not methods:
        raise MemplanError("--method needs at least one method (e.g. --method adamw,zo-sgd)")
    seqs = parse_seqs(seq)
    wl = _workload(knobs)  # validated before drawing
    opts = _method_options(knobs)
    _check_flags_any(ctx, methods, opts)
    capacity = None
    if gpu:
        g = get_gpu(gpu)
        capacity = (f"{g.name} usable", g.total_bytes - g.context_bytes)
    workload = {f: getattr(wl, f) for f in WORKLOAD_FIELDS if f in knobs}
    rep = make_plot(source, output, methods, seqs, capacity=capacity, options=opts, **workload)
    _warn(rep.warnings)
    if as_json:
        _dump(rep.to_dict())
        return
    _console().print(f"wrote {output} ({len(rep.curves)} curve(s); sizes in GiB = 2^30 bytes)")


# ---- plan ---------------------------------------------------------------------------------------
# the method knobs the ranking itself uses: the split's optimizers and the ZO settings every ZO
# row runs with; the others (and --zo-layers) are for --maximize with a method that takes them
_RANKING_KNOBS = ("fo", "zo", "impl", "q", "sparsity", "chunk")


@app.command()
@takes_knobs(("batch", "dtype", "attn", "checkpointing", "optimizer_impl"))
def plan(
    ctx: typer.Context,
    model: Model,
    gpu: Annotated[str, typer.Option(help="GPU preset: its memory and CUDA context")] = "rtx4090",
    budget: BudgetOpt = None,
    margin: MarginOpt = None,
    seq: OneSeq = "512",
    maximize: Annotated[
        str | None, typer.Option(help="seq | batch: the largest value that fits for --method")
    ] = None,
    method: Annotated[
        str | None, typer.Option("--method", "-m", help="the method --maximize is for")
    ] = None,
    unit: Unit = "auto",
    as_json: Json = False,
    **knobs: Any,
) -> None:
    """Which layers go ZO and which FO so the step fits the GPU; what else fits; what would."""
    shown = parse_unit(unit)
    bud = make_budget(gpu, budget, margin)
    wl = _workload(knobs, seq=parse_seq(seq, "plan"), device="cuda")
    opts = _method_options(knobs)
    if maximize is not None:
        if method is None:
            raise MemplanError("--maximize needs --method (e.g. --method adamw)")
        _check_flags(ctx, method, opts)
        rep = maximize_report(model, maximize, method, wl, bud, gpu, **opts)
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
    if method is not None:
        raise MemplanError("--method is for --maximize (e.g. --maximize seq --method adamw)")
    stray = [n for n in _given(ctx) if n in method_knobs() and n not in _RANKING_KNOBS]
    if stray:
        flags = ", ".join(_typed(ctx, tuple(stray)))
        raise MemplanError(
            f"{flags}: the ranking runs each row with its own settings; use them with "
            f"--maximize seq --method <m> (or memplan estimate)"
        )
    rep = plan_report(model, wl, bud, opts["hybrid"], opts["zo"], gpu)
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
        _attach_all()  # their settings groups' knobs become options too
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
