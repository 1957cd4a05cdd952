"""What a training run looks like, apart from the model and the method: the estimator's and
every backend's common input. Validated with exceptions (MemplanError), never asserts."""

from __future__ import annotations

from dataclasses import dataclass

from memplan.errors import MemplanError
from memplan.knobs import Knob

DTYPES = ("fp32", "bf16", "fp16", "amp")
ATTN = ("eager", "sdpa")
IMPLS = ("foreach", "fused", "forloop")
DEVICES = ("cuda", "cpu", "meta")
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
WORKLOAD_FIELDS = ("batch", "seq", "dtype", "attn", "checkpointing", "optimizer_impl", "device")
# the workload's command-line knobs, declared once (the CLI builds its options from these;
# commands may override a default, e.g. profile runs on meta and sweeps --seq)
WORKLOAD_KNOBS = (
    Knob("batch", int, 1, "micro-batch size"),
    Knob("seq", int, 512, "sequence length (tokens)"),
    Knob("dtype", str, "bf16", "fp32 | bf16 | fp16 | amp (fp32 weights, bf16 autocast)"),
    Knob("attn", str, "sdpa", "eager | sdpa"),
    Knob("checkpointing", bool, False, "gradient (activation) checkpointing"),
    Knob(
        "optimizer_impl", str, "foreach", "foreach | fused | forloop (torch first-order optimizers)"
    ),
    Knob("device", str, "cuda", "where the run happens: cuda | cpu | meta"),
)


@dataclass(frozen=True)
class Workload:
    """One training step's shape and settings.

    dtype: fp32, pure bf16/fp16 (weights, grads, states in that dtype) or amp (fp32 weights,
    grads and states; bf16 autocast activations). device: where the step runs, which decides the
    attention kernel SDPA picks and the dropout mask dtype (see memplan.activations).
    """

    batch: int = 1
    seq: int = 512
    dtype: str = "bf16"
    attn: str = "sdpa"
    checkpointing: bool = False
    optimizer_impl: str = "foreach"
    device: str = "cuda"

    def __post_init__(self) -> None:
        if not isinstance(self.batch, int) or self.batch <= 0:
            raise MemplanError(f"--batch must be a positive integer, got {self.batch}")
        if not isinstance(self.seq, int) or self.seq <= 0:
            raise MemplanError(f"--seq must be a positive integer, got {self.seq}")
        for name, value, allowed in (
            ("--dtype", self.dtype, DTYPES),
            ("--attn", self.attn, ATTN),
            ("--optimizer-impl", self.optimizer_impl, IMPLS),
            ("--device", self.device, DEVICES),
        ):
            if value not in allowed:
                raise MemplanError(f"{name} must be one of {', '.join(allowed)}; got '{value}'")

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    @property
    def param_bytes(self) -> int:
        """Bytes per parameter element (and per gradient and optimizer-state element)."""
        return 4 if self.dtype in ("fp32", "amp") else DTYPE_BYTES[self.dtype]

    @property
    def act_bytes(self) -> int:
        """Bytes per element of matmul outputs (autocast lowers them to bf16 under amp)."""
        return 2 if self.dtype == "amp" else DTYPE_BYTES[self.dtype]


def parse_seqs(text: str, flag: str = "--seq") -> list[int]:
    """'128,256,512' -> [128, 256, 512]: positive integers, comma separated, none empty or
    repeated (a sweep measures each point once)."""
    items = [s.strip() for s in str(text).split(",")]
    if not any(items):
        raise MemplanError(f"{flag} needs at least one sequence length (e.g. {flag} 512)")
    vals = []
    for item in items:
        if not item:
            raise MemplanError(
                f"{flag} '{text}' has an empty item; give integers separated by single commas "
                "(e.g. 128,256)"
            )
        try:
            v = int(item)
        except ValueError as e:
            raise MemplanError(
                f"{flag} takes integers separated by commas (e.g. 128,256); got '{item}' in "
                f"'{text}'"
            ) from e
        if v <= 0:
            raise MemplanError(f"{flag} must be a positive integer, got {v}")
        if v in vals:
            raise MemplanError(f"{flag} lists {v} twice; give each sequence length once")
        vals.append(v)
    return vals


def parse_seq(text: str, command: str = "estimate") -> int:
    """One sequence length; a list is refused with the command that sweeps."""
    if "," in str(text):
        raise MemplanError(
            f"memplan {command} takes one --seq; to sweep {text} use "
            f"`memplan profile MODEL --seq {text}` (or `memplan plot MODEL --seq {text}`)"
        )
    try:
        v = int(str(text).strip())
    except ValueError as e:
        raise MemplanError(
            f"--seq takes an integer number of tokens (e.g. --seq 512); got '{text}'"
        ) from e
    if v <= 0:
        raise MemplanError(f"--seq must be a positive integer, got {v}")
    return v
