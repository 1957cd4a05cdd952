"""Forward programs per model family, written against `memplan.tape`.

- `ops`: the op library (`Program`), the primitives every family program composes;
- `kernels`: the device kernel policy (`Kernels`) and element sizes;
- one module per family: llama (LLaMA, Mistral), opt, roberta, qwen (Qwen2, Qwen3),
  gpt_neox (GPT-NeoX, Pythia), gpt2, phi3 (Phi-3), gemma (Gemma, Gemma-2), falcon.

`PROGRAMS` maps a config's `family` to its program class; `program_for(cfg)` looks it up with
an error that lists the families modeled. A new family is one module with a `Program` subclass
(its `layer`/`forward`, and `dropout_probs` when its config names dropout otherwise) and one line
here.
"""

from __future__ import annotations

from memplan.errors import MemplanError
from memplan.programs.falcon import FalconProgram
from memplan.programs.gemma import Gemma2Program, GemmaProgram
from memplan.programs.gpt2 import GPT2Program
from memplan.programs.gpt_neox import GPTNeoXProgram
from memplan.programs.kernels import BOOL, F32, I64, Kernels
from memplan.programs.llama import LlamaProgram
from memplan.programs.ops import Program
from memplan.programs.opt import OPTProgram
from memplan.programs.phi3 import Phi3Program
from memplan.programs.qwen import Qwen2Program, Qwen3Program
from memplan.programs.roberta import RobertaProgram
from memplan.workload import Workload

PROGRAMS: dict[str, type[Program]] = {
    "llama": LlamaProgram,
    "opt": OPTProgram,
    "roberta": RobertaProgram,
    "qwen2": Qwen2Program,
    "qwen3": Qwen3Program,
    "gpt_neox": GPTNeoXProgram,
    "gpt2": GPT2Program,
    "phi3": Phi3Program,
    "gemma": GemmaProgram,
    "gemma2": Gemma2Program,
    "falcon": FalconProgram,
}

__all__ = [
    "BOOL",
    "F32",
    "I64",
    "PROGRAMS",
    "Kernels",
    "Program",
    "attention_kernel",
    "dropout_probs",
    "program_for",
]


def program_for(cfg) -> type[Program]:
    """The program class of `cfg`'s family."""
    try:
        return PROGRAMS[cfg.family]
    except KeyError:
        raise MemplanError(
            f"no activation model for family '{cfg.family}' yet; supported: {', '.join(PROGRAMS)}"
        ) from None


def dropout_probs(cfg) -> tuple[float, float]:
    """(attention-probability dropout, hidden dropout) the HF model applies in training."""
    return program_for(cfg).dropout_probs(cfg)


def attention_kernel(cfg, wl: Workload, training: bool = True) -> str:
    """The attention kernel that runs for this model and workload (see Kernels.resolve)."""
    return Kernels.resolve(wl, dropout_probs(cfg)[0] if training else 0.0).attention
