"""The runnable training step shared by every measurement backend.

A step is: forward (loss computed inside the HF model from synthetic labels), backward,
optimizer step, zero_grad(set_to_none=True). The backend's observer is told when each phase
begins so it can attribute peaks. Memory does not depend on token values, so batches are
random token ids; the same ids serve as labels.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

PhaseHook = Callable[[str], None]


@dataclass
class Step:
    """Everything one training step needs; built by each method's `build`."""

    model: torch.nn.Module
    batch: dict[str, torch.Tensor]
    optimizers: list[Any] = field(default_factory=list)
    autocast: Callable[[], AbstractContextManager] = nullcontext
    # a method may replace the whole step (ZO methods do); default is forward/backward/step
    run: Callable[[Step, PhaseHook], float] | None = None
    info: dict[str, Any] = field(default_factory=dict)  # e.g. the attention kernel that ran

    def __call__(self, phase: PhaseHook) -> None:
        (self.run or run_fo_step)(self, phase)


def run_fo_step(step: Step, phase: PhaseHook) -> None:
    """One first-order step with phase marks; the model output is dropped right after `.loss`
    so the logits are freed unless autograd saved them (as a real training loop does)."""
    phase("forward")
    with step.autocast():
        loss = step.model(**step.batch).loss
    phase("backward")
    loss.backward()
    del loss
    phase("optimizer")
    for opt in step.optimizers:
        opt.step()
    for opt in step.optimizers:
        opt.zero_grad(set_to_none=True)
    phase("end")


def synthetic_batch(vocab_size: int, batch: int, seq: int, device: str) -> dict[str, torch.Tensor]:
    """Random token ids as inputs and labels (values do not change memory)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (batch, seq), generator=g)
    if device != "cpu":
        ids = ids.to(device)
    return {"input_ids": ids, "labels": ids}


def run_zo_step(step: Step, phase: PhaseHook) -> None:
    """One zeroth-order step: the optimizer perturbs, runs forwards and updates. The forwards
    run as MeZO's `zo_forward` does: `model.eval()` (no dropout) under inference mode."""
    step.model.eval()

    def loss_fn() -> float:
        with torch.inference_mode(), step.autocast():
            return float(step.model(**step.batch).loss)

    step.optimizers[0].step(loss_fn, phase)


def run_inference_step(step: Step, phase: PhaseHook) -> None:
    """One eval-mode forward under inference mode, the loss included (the floor ZO methods
    approach)."""
    step.model.eval()
    phase("forward")
    with torch.inference_mode(), step.autocast():
        loss = step.model(**step.batch).loss
    del loss
    phase("end")
