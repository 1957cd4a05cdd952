"""Memory against sequence length: estimate curves, measured points, a GPU's capacity.

Two sources of curves, one figure:
- a profile sweep (`memplan profile ... --out run.jsonl`): each (model, method, device, dtype)
  group becomes an estimated line and measured markers, with the relative error below;
- estimates only (`memplan plot llama-7b --method adamw,galore8bit,zo-sgd --seq 256,...`): one
  line per method, no torch needed.

Pure functions build `Curve` objects (tested without drawing); `render` draws them with
matplotlib's Agg backend (no display needed). Sizes are plotted in GiB (2^30 bytes); a GPU's
capacity line is its total memory minus its CUDA context, the room the allocator can use.

Known limitations: one x axis (sequence length); rows with an error (an OOM in a CUDA sweep)
are drawn as a cross at the estimate and listed in the legend text, not measured.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memplan.breakdown import GiB
from memplan.errors import MemplanError, check_writable
from memplan.estimate import estimate
from memplan.models import PRESETS, ModelConfig, load_config
from memplan.report import sequence_warnings
from memplan.rows import read_rows, validate_row
from memplan.workload import Workload

# what `-o` may end with (matplotlib's Agg backend writes these)
IMAGE_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff")


@dataclass
class Curve:
    """One line of the figure: estimated (and, from a sweep, measured) peaks by sequence."""

    label: str
    seq: list[int] = field(default_factory=list)
    estimated: list[int] = field(default_factory=list)  # tensor peak + runtime terms, bytes
    measured: list[int | None] = field(default_factory=list)  # None: not measured (OOM)
    source: str = "estimate"  # "estimate" or the measuring backend

    @property
    def errors(self) -> list[float | None]:
        """(estimate - measured) / measured per point, None where nothing was measured."""
        return [
            None if m in (None, 0) else e / m - 1 for e, m in zip(self.estimated, self.measured)
        ]


def load_rows(path: Path) -> list[dict]:
    """Rows of a `memplan profile --out` JSONL file, validated (memplan.rows.read_rows; a
    truncated last line is skipped: a sweep interrupted mid-write keeps everything before it)."""
    return read_rows(path)


def curves_from_rows(rows: Iterable[dict]) -> list[Curve]:
    """Group sweep rows by (model, method, device, dtype, batch) into curves sorted by seq."""
    groups: dict[tuple, Curve] = {}
    for r in rows:
        validate_row(r)
        est = r["estimate"]
        meas = r.get("measured")
        info = (meas or est)["info"]
        key = (
            info.get("model"),
            info.get("method"),
            (meas or {}).get("source", est.get("info", {}).get("device")),
            info.get("dtype"),
            info.get("batch"),
        )
        curve = groups.get(key)
        if curve is None:
            label = f"{key[0]} · {key[1]} · {key[3]} · batch {key[4]} · {key[2]}"
            curve = groups[key] = Curve(label, source=str(key[2]))
        curve.seq.append(int(r["seq"]))
        curve.estimated.append(int(est["peak_bytes"]))
        curve.measured.append(int(meas["peak_bytes"]) if meas else None)
    for c in groups.values():
        order = sorted(range(len(c.seq)), key=c.seq.__getitem__)
        c.seq = [c.seq[i] for i in order]
        c.estimated = [c.estimated[i] for i in order]
        c.measured = [c.measured[i] for i in order]
    return list(groups.values())


def curves_from_estimates(
    model: str | ModelConfig,
    methods: Sequence[str],
    seqs: Sequence[int],
    options: dict[str, Any] | None = None,
    **workload,
) -> list[Curve]:
    """One estimated curve per method (no torch import); `options`: the methods' settings by
    group key, as memplan.estimate.estimate takes them."""
    cfg = load_config(model) if isinstance(model, str) else model
    curves = []
    for method in methods:
        c = Curve(f"{cfg.name} · {method}")
        for s in sorted(seqs):
            bd = estimate(cfg, method, Workload(seq=s, **workload), **(options or {}))
            c.seq.append(s)
            c.estimated.append(bd.peak)
            c.measured.append(None)
        curves.append(c)
    return curves


def render(
    curves: Sequence[Curve],
    out: Path,
    title: str = "",
    capacity: tuple[str, int] | None = None,
) -> Path:
    """Draw the curves to `out` (PNG, SVG or PDF by suffix). `capacity`: (label, bytes) of a
    horizontal budget line. A second panel shows relative errors when anything was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = any(m is not None for c in curves for m in c.measured)
    fig, axes = plt.subplots(
        2 if measured else 1,
        1,
        figsize=(11, 6.5 if measured else 4.5),
        sharex=True,
        gridspec_kw={"height_ratios": [3, 1]} if measured else None,
        squeeze=False,
    )
    ax = axes[0][0]
    styles = ["-", "--", ":", "-."]
    for i, c in enumerate(curves):
        color, ls = f"C{i % 10}", styles[(i // 10) % len(styles)]
        ax.plot(c.seq, [b / GiB for b in c.estimated], ls, color=color, label=c.label)
        pts = [(s, m / GiB) for s, m in zip(c.seq, c.measured) if m is not None]
        if pts:
            ax.plot(*zip(*pts), "o", color=color)
    if capacity:
        ax.axhline(capacity[1] / GiB, color="k", ls="--", lw=1, label=capacity[0])
    ax.set_xscale("log", base=2)
    ax.set_ylabel("peak memory (GiB)")
    ax.set_title(title or "peak memory vs sequence length", fontsize=10)
    ax.grid(True, alpha=0.3)
    note = "lines: estimate, dots: measured" if measured else "estimates"
    ax.legend(fontsize=7, title=note, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    if measured:
        ex = axes[1][0]
        for i, c in enumerate(curves):
            pts = [(s, e * 100) for s, e in zip(c.seq, c.errors) if e is not None]
            if pts:
                ex.plot(*zip(*pts), "o-", color=f"C{i % 10}")
        ex.axhline(0, color="k", lw=0.8)
        ex.set_ylabel("est. error (%)")
        ex.grid(True, alpha=0.3)
    axes[-1][0].set_xlabel("sequence length (tokens)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, dpi=120)
    except OSError as e:
        raise MemplanError(f"cannot write {out}: {e.strerror or e}; write elsewhere") from e
    finally:
        plt.close(fig)
    return out


def check_output(output: Path) -> Path:
    """`-o`: an image suffix matplotlib writes, in a folder that exists and is writable."""
    if output.suffix.lower() not in IMAGE_SUFFIXES:
        raise MemplanError(
            f"-o {output}: cannot write a '{output.suffix or 'suffix-less'}' image; end the name "
            f"with one of {', '.join(IMAGE_SUFFIXES)} (e.g. -o curves.png)"
        )
    return check_writable(output, "-o")


@dataclass
class PlotReport:
    """What `memplan plot` drew: the image, its title and curves."""

    output: Path
    title: str
    curves: list[Curve]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "output": str(self.output),
            "title": self.title,
            "curves": [
                {
                    "label": c.label,
                    "source": c.source,
                    "seq": c.seq,
                    "estimated_bytes": c.estimated,
                    "measured_bytes": c.measured,
                }
                for c in self.curves
            ],
            "warnings": self.warnings,
        }


def is_rows_file(source: str) -> bool:
    """A plot source that names a sweep file (else it names a model to estimate)."""
    path = Path(source)
    if path.suffix in (".jsonl", ".json"):
        return True
    if not path.is_file():
        return False
    return source not in PRESETS


def make_plot(
    source: str,
    output: Path,
    methods: Sequence[str] = ("adamw",),
    seqs: Sequence[int] = (256, 512, 1024, 2048, 4096),
    capacity: tuple[str, int] | None = None,
    options: dict[str, Any] | None = None,
    **workload,
) -> PlotReport:
    """The figure of a sweep file (estimate vs measured) or of a model's estimates (one curve
    per method), written to `output`."""
    check_output(output)
    warnings: list[str] = []
    if is_rows_file(source):
        path = Path(source)
        curves = curves_from_rows(load_rows(path))
        title = f"{path.name}: estimate vs measured"
    else:
        cfg = load_config(source)
        warnings = sequence_warnings(cfg, max(seqs))
        curves = curves_from_estimates(cfg, methods, seqs, options, **workload)
        title = (
            f"{source}: estimated peak (batch {workload.get('batch', 1)}, "
            f"{workload.get('dtype', 'bf16')})"
        )
    render(curves, output, title=title, capacity=capacity)
    return PlotReport(output, title, curves, warnings)
