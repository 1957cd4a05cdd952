"""Live tensor-storage tracker for the cpu and meta backends (and categories on cuda).

Every storage created by an aten op inside the tracker is recorded with its byte size and the
phase it was created in; a `weakref.finalize` on the storage object removes it when the storage
dies (torch keeps one Python object per storage alive as long as the C++ storage lives, so the
finalizer fires exactly at the free). Storages that existed before tracking (parameters,
buffers, inputs) are registered explicitly. The live total is checked after every op; whenever a
phase reaches a new peak its live set is split into categories:

- weights: parameter and buffer storages
- gradients: storages held by `param.grad`
- optimizer_state: storages held in `optimizer.state`
- activations: anything else created during the forward phase (saved tensors, logits, loss)
- temporaries: anything else (backward intermediates, optimizer step temporaries, inputs)

Known limitations: bytes are storage `nbytes()` as created (a later `resize_` is not seen);
tensors created outside the tracker and never registered are invisible; allocator effects
(CUDA 512-byte rounding, caching, fragmentation) are not modeled here; the CUDA backend adds
them from the allocator's own counters.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from memplan.breakdown import CATEGORIES, PhasePeak

_LOCAL_SCALAR = torch.ops.aten._local_scalar_dense.default

_COMPOSITE: dict[tuple[object, str], bool] = {}
_BACKEND_KEY = {"cpu": "CPU", "meta": "Meta", "cuda": "CUDA"}


def _composite(func, args) -> bool:  # noqa: ANN001
    """Whether `func` reached this mode whole although it only runs as a decomposition: it has a
    CompositeImplicitAutograd kernel and no kernel of its own for the tensors' backend (an op
    like silu_backward has both; its CPU kernel is what runs). Cached per (overload, device)."""
    dev = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
    hit = _COMPOSITE.get((func, dev))
    if hit is None:
        name = func.name()
        has = torch._C._dispatch_has_kernel_for_dispatch_key
        hit = has(name, "CompositeImplicitAutograd") and not any(
            has(name, k) for k in (_BACKEND_KEY.get(dev, "CPU"), "CompositeExplicitAutograd")
        )
        _COMPOSITE[(func, dev)] = hit
    return hit


# callback returning {category: [tensors]} for the special categories at snapshot time
Classifier = Callable[[], dict[str, Iterable[torch.Tensor]]]


class StorageTracker(TorchDispatchMode):
    """Track live storage bytes, per phase peak, split into categories at each peak."""

    def __init__(self, classifier: Classifier | None = None, debug: bool = False) -> None:
        super().__init__()
        self.debug = debug
        self.origin: dict[int, str] = {}  # id(storage) -> "op shape dtype" when debug
        self.classifier = classifier
        self.live: dict[int, tuple[int, str]] = {}  # id(storage) -> (nbytes, creation tag)
        self._finalizers: dict[int, weakref.finalize] = {}
        self.by_tag: dict[str, int] = {}
        self.total = 0
        self.phase = "setup"
        self.peaks: dict[str, PhasePeak] = {}
        self._peak_total: dict[str, int] = {}
        self.n_ops = 0
        self._real_meta = False  # the tracked run is on meta tensors (registered ones are)

    # ---- bookkeeping -------------------------------------------------------------------------
    def _add(self, storage: Any, tag: str) -> None:
        key = id(storage)
        if key in self.live:
            return
        nbytes = int(storage.nbytes())
        self.live[key] = (nbytes, tag)
        self.by_tag[tag] = self.by_tag.get(tag, 0) + nbytes
        self.total += nbytes
        self._finalizers[key] = weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        entry = self.live.pop(key, None)
        self._finalizers.pop(key, None)
        self.origin.pop(key, None)
        if entry is None:
            return
        nbytes, tag = entry
        self.by_tag[tag] -= nbytes
        self.total -= nbytes

    def register(self, tensors: Iterable[torch.Tensor], tag: str = "pre") -> None:
        """Record storages that existed before tracking began (parameters, inputs)."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._real_meta = self._real_meta or t.is_meta
                self._add(t.untyped_storage(), tag)

    def _phantom(self, t: torch.Tensor) -> bool:
        """Outputs that report a size but hold no memory: an efficient zero tensor (forward
        AD's stand-in for an undefined tangent; ZeroTensorAllocator hands out a null pointer),
        and, in a run on real tensors, the meta tensors that ATen's zero-tensor kernels
        (`add_zerotensor`, `mul_zerotensor`) create to work out broadcasting and dtypes."""
        return t._is_zerotensor() or (t.is_meta and not self._real_meta)

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self._check_peak()

    def reset_peaks(self) -> None:
        self.peaks.clear()
        self._peak_total.clear()

    # ---- dispatch ----------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func is _LOCAL_SCALAR and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            # a meta tensor has no values; control flow that reads one (transformers' "is the
            # mask all ones?", Adafactor's update norm) gets 1: the no-padding, unit-scale case.
            return args[0].dtype is torch.bool or 1
        if _composite(func, args):
            # Under torch.inference_mode the dispatcher skips the autograd keys, where
            # CompositeImplicitAutograd ops are normally decomposed, so a composite such as
            # cross_entropy_loss reaches this mode whole and its internal tensors (the
            # log-softmax output) would run untracked. Decompose it with the mode active, as
            # torch's proxy tracing mode does; the real run executes the same kernels.
            with self:
                out = func.decompose(*args, **(kwargs or {}))
            if out is not NotImplemented:
                return out
        out = func(*args, **(kwargs or {}))
        self.n_ops += 1
        flat, _ = tree_flatten(out)
        for t in flat:
            if isinstance(t, torch.Tensor) and not self._phantom(t):
                try:
                    st = t.untyped_storage()
                except (RuntimeError, NotImplementedError):  # sparse / nested: no plain storage
                    continue
                self._add(st, self.phase)
                if self.debug and id(st) not in self.origin:
                    self.origin[id(st)] = f"{func} {tuple(t.shape)} {t.dtype}"
        self._check_peak()
        return out

    def _check_peak(self) -> None:
        if self.total > self._peak_total.get(self.phase, -1):
            self._peak_total[self.phase] = self.total
            self.peaks[self.phase] = PhasePeak(self.snapshot())

    def snapshot(self) -> dict[str, int]:
        """Split the current live set into the five categories."""
        cats = dict.fromkeys(CATEGORIES, 0)
        remaining = dict(self.by_tag)
        seen: set[int] = set()
        special = self.classifier() if self.classifier else {}
        for cat in ("weights", "gradients", "optimizer_state"):
            for t in special.get(cat, ()):
                if not isinstance(t, torch.Tensor):
                    continue
                try:
                    key = id(t.untyped_storage())
                except (RuntimeError, NotImplementedError):  # a functorch wrapper
                    continue
                if key in seen or key not in self.live:
                    continue
                seen.add(key)
                nbytes, tag = self.live[key]
                cats[cat] += nbytes
                remaining[tag] -= nbytes
        for tag, nbytes in remaining.items():
            cats["activations" if tag == "forward" else "temporaries"] += nbytes
        return cats


def model_classifier(
    model: torch.nn.Module, optimizers: Callable[[], Iterable[Any]] = lambda: ()
) -> Classifier:
    """Classifier for a model and the optimizers that step it (looked up lazily). The
    parameter objects are taken now: `torch.func.functional_call` swaps wrapped tensors into
    the module while it runs, and those have no storage of their own."""
    params = list(model.parameters())
    buffers = list(model.buffers())

    def classify() -> dict[str, list[torch.Tensor]]:
        weights = params + buffers
        grads = [p.grad for p in params if p.grad is not None]
        state: list[torch.Tensor] = []
        for opt in optimizers():
            for s in opt.state.values():
                for v in s.values():
                    if isinstance(v, torch.Tensor):
                        state.append(v)
                    else:  # an object in the state that holds tensors is state too (e.g.
                        # galore_torch's GaLoreProjector and its ortho_matrix)
                        attrs = getattr(v, "__dict__", {}).values()
                        state.extend(a for a in attrs if isinstance(a, torch.Tensor))
        return {"weights": weights, "gradients": grads, "optimizer_state": state}

    return classify
