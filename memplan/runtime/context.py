"""`RunContext`: what a method's runnable-step builder (`MethodSpec.build`) gets.

No torch at import (the methods that use it are imported by the torch-free estimator); every
helper imports torch when it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memplan.models import ModelConfig
from memplan.models.hf import build_model
from memplan.programs import attention_kernel
from memplan.workload import Workload

if TYPE_CHECKING:  # hints only: no torch at import
    from memplan.runtime.step import Step


@dataclass
class RunContext:
    """Config, method, workload, options, and helpers that build the model (with the
    workload's dtype, attention and checkpointing), the synthetic batch and the autocast
    context. `spec` is the method's `MethodSpec`."""

    cfg: ModelConfig
    spec: Any
    wl: Workload
    options: dict[str, Any]

    @property
    def torch_dtype(self):
        import torch

        return {
            "fp32": torch.float32,
            "bf16": torch.bfloat16,
            "fp16": torch.float16,
            "amp": torch.float32,
        }[self.wl.dtype]

    def model(self, trainable: Callable[[str], bool] | None = None):
        """The HF training model on the workload's device; parameters whose name fails
        `trainable` get requires_grad=False."""
        from memplan.runtime.emulation import emulation_modes

        wl = self.wl
        model = build_model(
            self.cfg, device=wl.device, dtype=self.torch_dtype, attn_implementation=wl.attn
        )
        model.train()
        if trainable is not None:
            for name, p in model.named_parameters():
                p.requires_grad_(trainable(name))
        if wl.checkpointing:
            kwargs: dict = {"use_reentrant": False}
            if wl.device != "cuda":
                # `loss.backward()` runs inside the function modes' own handlers, where they
                # are disabled: the recomputation in backward gets them back through context_fn
                kwargs["context_fn"] = lambda: (nullcontext(), emulation_modes(wl))
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        return model

    def batch(self) -> dict:
        from memplan.runtime.step import synthetic_batch

        return synthetic_batch(self.cfg.vocab_size, self.wl.batch, self.wl.seq, self.wl.device)

    def autocast(self) -> Callable[[], AbstractContextManager]:
        """The autocast context of the workload (CUDA autocast, or its emulation off CUDA)."""
        if self.wl.dtype != "amp":
            return nullcontext
        import torch

        from memplan.runtime.emulation import CudaAutocastEmulation

        if self.wl.device == "cuda":
            return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
        return lambda: CudaAutocastEmulation(torch.bfloat16)

    def step(
        self, model, optimizers: list, run=None, batch: dict | None = None, training: bool = True
    ) -> Step:
        """The Step; `training` False: the method runs its forwards in eval() mode."""
        from memplan.runtime.step import Step

        return Step(
            model,
            batch if batch is not None else self.batch(),
            optimizers,
            autocast=self.autocast(),
            run=run,
            info={"attention_kernel": attention_kernel(self.cfg, self.wl, training)},
        )
