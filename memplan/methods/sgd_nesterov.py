"""`fo-sgd-nesterov`: torch SGD with Nesterov momentum (`torch.optim.SGD(momentum=0.9,
nesterov=True)`), the worked example of docs/contributing.md: a first-order optimizer added
through the registry alone (this module and its import in memplan/methods/__init__.py).

Memory (torch/optim/sgd.py, torch 2.13):
- state: `momentum_buffer`, one tensor per parameter in its dtype (`grad.detach().clone()` at
  the first step), so P elements;
- step temporaries: foreach (`_multi_tensor_sgd`) updates the gradients in place
  (`torch._foreach_add_(device_grads, bufs, alpha=momentum)`): none; fused (`_fused_sgd`): none;
  for-loop (`_single_tensor_sgd`) computes `grad = grad.add(buf, alpha=momentum)` per
  parameter, a temporary the size of that parameter that dies when the next iteration rebinds
  `grad = grads[i]`: the largest trainable tensor.
Checked against the cpu backend on every tiny preset and implementation
(tests/test_sgd_nesterov.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

from memplan.methods.base import register
from memplan.methods.fo import IMPL_FLAGS, FirstOrder, first_order
from memplan.methods.replay import OptimizerMemory

MOMENTUM = 0.9
LR = 1e-3


def memory(shapes: Sequence[tuple[int, ...]], elem: int, impl: str) -> OptimizerMemory:
    numels = [prod(s) for s in shapes]
    temp = max(numels, default=0) if impl == "forloop" else 0
    return OptimizerMemory(sum(numels) * elem, temp * elem)


def make(params, impl: str):
    import torch

    return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, nesterov=True, **IMPL_FLAGS[impl])


SPEC = register(
    first_order(
        "fo-sgd-nesterov",
        "SGD with Nesterov momentum: one buffer per parameter",
        FirstOrder(memory, make),
        aliases=("nesterov",),
        # not ranked by the planner (it would sit beside fo-sgd-mmt at the same memory); a
        # method that should be: candidate=(order, "one-line trade-off")
    )
)
