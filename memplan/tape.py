"""A pure-Python model of autograd's memory: tensors as byte counts with explicit lifetimes.

The estimator writes each model family's forward as a short program of primitive ops
(`memplan.activations`). Each op allocates its outputs and keeps the tensors its PyTorch
derivative formula saves (tools/autograd/derivatives.yaml); the program drops its own references
the way the Hugging Face code lets Python variables go. `Tape.backward` then walks the recorded
nodes in reverse creation order (autograd's CPU/CUDA engine runs ready nodes by descending
sequence number, which for these graphs is exactly reverse creation order), allocating each
node's input gradients and backward temporaries, handing parameter gradients to `.grad` and
releasing saved tensors as the real engine does. The live total is checked after every
allocation, so each phase's peak comes from the same event order the real run has.

No torch here: this runs in microseconds per op and keeps `memplan estimate` instant.

Known limitations: allocator effects (rounding, caching, fragmentation) are not modeled here
(see `memplan.estimate` for the named CUDA terms); gradient accumulation into an existing buffer
is taken to be in place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from memplan.breakdown import CATEGORIES, PhasePeak


class Tensor:
    """A tensor's bytes and lifetime. A view has `base` set and owns no storage."""

    __slots__ = (
        "numel",
        "elem",
        "cat",
        "refs",
        "requires_grad",
        "base",
        "name",
        "tape",
        "alive",
        "own_grad",
    )

    def __init__(
        self,
        tape: Tape | None,
        numel: int,
        elem: int,
        cat: str,
        requires_grad: bool,
        name: str = "",
        base: Tensor | None = None,
    ) -> None:
        self.tape = tape
        self.numel = int(numel)
        self.elem = int(elem)
        self.cat = cat
        self.refs = 1
        self.requires_grad = requires_grad
        self.base = base
        self.name = name
        self.alive = True
        self.own_grad = False  # a view with a gradient of its own (Tape.split's parts)

    @property
    def nbytes(self) -> int:
        return self.numel * self.elem

    def ref(self) -> Tensor:
        self.refs += 1
        return self

    def drop(self) -> None:
        """Release one reference; the storage is freed when none are left."""
        self.refs -= 1
        if self.refs == 0 and self.alive:
            self.alive = False
            if self.base is not None:
                self.base.drop()
            elif self.tape is not None:
                self.tape._release(self)

    def __repr__(self) -> str:
        return f"Tensor({self.name}, {self.nbytes} B, {self.cat}, refs={self.refs})"


def param(numel: int, elem: int, name: str = "", requires_grad: bool = True) -> Tensor:
    """A parameter: its bytes are counted in the constant base, not on the tape."""
    return Tensor(None, numel, elem, "weights", requires_grad, name)


@dataclass
class Node:
    name: str
    inputs: list[Tensor]  # inputs that require grad, in order
    outputs: list[Tensor]
    saved: list[Tensor]
    grad_bytes: list[int]  # bytes of the gradient allocated for each input (0: passes through)
    bwd_temp: int = 0  # transient bytes during this node's backward
    ckpt: Callable[[], Tensor] | None = None  # checkpointed segment: recompute function
    layer: int | None = None  # the model layer whose forward recorded it (None: outside layers)


@dataclass
class Tape:
    """Live bytes by category, with each phase's peak snapshot."""

    dual = False  # forward-mode AD (memplan.methods.forward_grad.DualTape)

    base: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    live: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    phase: str = "forward"
    peaks: dict[str, PhasePeak] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    grad_enabled: bool = True
    param_grads: dict[int, Tensor] = field(default_factory=dict)
    round_to: int = 1  # allocation granularity (512 on CUDA's caching allocator)
    grad_seen: bool = False  # an op saw an input that requires grad (even under no_grad)
    leaves: list[Tensor] = field(default_factory=list)  # non-weight leaves that require grad
    debug: bool = False  # keep the live tensors and each phase's live set at its peak
    _live: dict[int, Tensor] = field(default_factory=dict)
    peak_sets: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)
    _uses: dict[int, int] = field(default_factory=dict)  # pending grad contributions per weight
    layer: int | None = None  # the layer the program is in (set by Program.shallow)
    # layer_tags: backward peaks are kept per position (the planner's depth extrapolation):
    # "backward#head" before the first layer's nodes, "#top", "#top-1", "#mid", "#bottom+1",
    # "#bottom" by the node's layer among the layers in the graph, "#tail" after them
    layer_tags: bool = False
    _peak_total: dict[str, int] = field(default_factory=dict)  # each peaks[phase]'s total
    # per-layer updates (GaLore --layerwise): `grad_hook(weight, grad)` runs once a weight's
    # gradient is complete, right after the node that produced it released its inputs and saved
    # tensors (torch runs AccumulateGrad, then `register_post_accumulate_grad_hook` hooks, before
    # any other ready node: its sequence number is UINT64_MAX); the hook frees the gradient
    grad_hook: Callable[[Tensor, Tensor], None] | None = None
    _ready: list[tuple[Tensor, Tensor]] = field(default_factory=list)

    def size(self, nbytes: int) -> int:
        """Bytes an allocation of `nbytes` occupies."""
        return -(-nbytes // self.round_to) * self.round_to

    # ---- accounting ------------------------------------------------------------------------
    @property
    def total(self) -> int:
        return sum(self.base.values()) + sum(self.live.values())

    def check(self) -> None:
        total = self.total
        phase = self.phase
        if phase not in self.peaks or total > self._peak_total[phase]:
            base, live = self.base, self.live
            self.peaks[phase] = PhasePeak({c: base[c] + live[c] for c in CATEGORIES})
            self._peak_total[phase] = total
            if self.debug:
                self.peak_sets[self.phase] = sorted(
                    ((t.nbytes, t.name, t.cat) for t in self._live.values()), reverse=True
                )

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.check()

    def alloc(
        self,
        numel: int,
        elem: int = 1,
        requires_grad: bool = False,
        name: str = "",
        cat: str | None = None,
    ) -> Tensor:
        if cat is None:
            cat = "activations" if self.phase in ("forward", "zo-forward") else "temporaries"
        t = Tensor(self, numel, elem, cat, requires_grad and self.grad_enabled, name)
        n = t.numel * t.elem
        if self.round_to != 1:
            n = -(-n // self.round_to) * self.round_to
        self.live[cat] += n
        if self.debug:
            self._live[id(t)] = t
        self.check()
        return t

    def transient(self, nbytes: int, cat: str | None = None) -> None:
        """A tensor allocated and freed at once (only its peak contribution matters)."""
        if nbytes > 0:
            self.alloc(nbytes, cat=cat).drop()

    def leaf(self, t: Tensor) -> Tensor:
        """Make a tensor that needs no grad a leaf that requires it (`requires_grad_(True)` on
        an output, as transformers' `enable_input_require_grads` does to the input embeddings):
        it gets a .grad, and both live until the end of backward."""
        if not t.requires_grad and self.grad_enabled:
            t.requires_grad = True
            self.leaves.append(t.ref())
        return t

    def view(self, t: Tensor, name: str = "") -> Tensor:
        """An alias of `t` (transpose/reshape): owns no storage, keeps `t` alive, and its
        gradient is `t`'s gradient."""
        return Tensor(self, t.numel, t.elem, t.cat, t.requires_grad, name or t.name, base=t.ref())

    def split(self, t: Tensor, numels: Sequence[int], name: str = "split") -> list[Tensor]:
        """`t.split(...)`: views of parts of `t` (no storage; each keeps all of `t` alive), each
        with a gradient of its own; backward concatenates them into one of `t`'s size."""
        req = self.grad_enabled and t.requires_grad
        parts = [Tensor(self, n, t.elem, t.cat, req, name, base=t.ref()) for n in numels]
        for p in parts:
            p.own_grad = True
        if req:
            self.nodes.append(Node(name, [t], list(parts), [], [t.nbytes], layer=self.layer))
        return parts

    def _release(self, t: Tensor) -> None:
        n = self.size(t.numel * t.elem)
        self.live[t.cat] -= n
        if self.debug:
            self._live.pop(id(t), None)

    @contextmanager
    def no_grad(self):
        prev, self.grad_enabled = self.grad_enabled, False
        try:
            yield
        finally:
            self.grad_enabled = prev

    # ---- graph -----------------------------------------------------------------------------
    def op(
        self,
        name: str,
        inputs: Sequence[Tensor],
        outs_spec: Sequence[tuple[int, int]],
        saved: Sequence[Tensor] = (),
        grad_bytes: Sequence[int] | None = None,
        bwd_temp: int = 0,
        fwd_temp: int = 0,
        out_grad: Sequence[bool] | None = None,
    ) -> list[Tensor]:
        """Run one op: allocate outputs (and a forward transient), record what it saves.

        `inputs` are all tensor inputs; those that require grad get a gradient of
        `grad_bytes[i]` bytes (default: the input's own size) in backward.
        """
        self.transient(fwd_temp)
        wants = any(t.requires_grad for t in inputs)
        self.grad_seen = self.grad_seen or wants
        req = self.grad_enabled and wants
        outs = [
            self.alloc(
                n, e, requires_grad=req if out_grad is None else req and out_grad[i], name=name
            )
            for i, (n, e) in enumerate(outs_spec)
        ]
        if req:
            gb = list(grad_bytes) if grad_bytes is not None else [t.nbytes for t in inputs]
            node_inputs = [t for t in inputs if t.requires_grad]
            node_grad = [g for t, g in zip(inputs, gb) if t.requires_grad]
            self.nodes.append(
                Node(
                    name,
                    node_inputs,
                    [o for o in outs if o.requires_grad],
                    [s.ref() for s in saved],
                    node_grad,
                    bwd_temp,
                    layer=self.layer,
                )
            )
        return outs

    def op1(self, name: str, inputs: Sequence[Tensor], numel: int, elem: int, **kw) -> Tensor:
        return self.op(name, inputs, [(numel, elem)], **kw)[0]

    def checkpoint(self, fn: Callable[[], Tensor], inputs: Sequence[Tensor]) -> Tensor:
        """Non-reentrant activation checkpointing of `fn`: run it without saving anything but
        its inputs; recompute it in backward when its output's gradient arrives."""
        if not self.grad_enabled:  # under no_grad there is nothing to checkpoint
            return fn()
        seen, self.grad_seen = self.grad_seen, False
        with self.no_grad():
            out = fn()
        touched, self.grad_seen = self.grad_seen, seen or self.grad_seen
        if not touched:  # no input and no weight of the segment requires grad: no graph
            return out
        out.requires_grad = True
        self.nodes.append(
            Node(
                "checkpoint",
                [t for t in inputs if t.requires_grad],
                [out],
                [t.ref() for t in inputs],
                [],
                0,
                ckpt=fn,
                layer=self.layer,
            )
        )
        return out

    # ---- backward --------------------------------------------------------------------------
    def backward(
        self, loss: Tensor, nodes: list[Node] | None = None, grads: dict[int, Tensor] | None = None
    ) -> None:
        nodes = self.nodes if nodes is None else nodes
        for node in nodes:  # a weight used twice (tied) gets one AccumulateGrad at the end
            for t in node.inputs:
                if t.cat == "weights":
                    self._uses[id(t)] = self._uses.get(id(t), 0) + 1
        top = grads is None
        if grads is None:
            grads = {id(loss): self.alloc(1, 4, name="grad_loss")}  # ones_like(loss)
            loss.drop()
        tags = _layer_tags(nodes) if top and self.layer_tags else None
        seen_layer = False
        for node in reversed(nodes):
            if tags is not None:
                seen_layer = seen_layer or node.layer is not None
                where = tags.get(node.layer, "tail" if seen_layer else "head")
                self.set_phase("backward#" + where)
            outs = [grads.pop(id(o), None) for o in node.outputs]
            if not any(g is not None for g in outs):
                for s in node.saved:
                    s.drop()
                continue
            if node.ckpt is not None:
                self._backward_checkpoint(node, outs, grads)
                continue
            new: list[Tensor] = []
            for t, gb in zip(node.inputs, node.grad_bytes):
                if t.cat == "weights":
                    new.append(self._param_grad(t, gb))
                elif gb == 0:  # the incoming gradient passes through unchanged (add, view)
                    g = next(g for g in outs if g is not None).ref()
                    new.append(g)
                else:
                    new.append(self.alloc(gb, name=f"grad_{node.name}"))
            self.transient(node.bwd_temp)
            for g in outs:
                if g is not None:
                    g.drop()
            for s in node.saved:
                s.drop()
            for t, g in zip(node.inputs, new):
                if t.cat == "weights":
                    continue
                self._accumulate(t, g, grads)
            while self._ready:  # post-accumulate-grad hooks (grad_hook)
                self.grad_hook(*self._ready.pop(0))
        if top:  # leaves: their AccumulateGrad node keeps them (and their .grad) alive until
            # the graph is freed when the step drops the loss, right after backward
            for leaf in self.leaves:
                g = grads.pop(id(leaf), None)
                if g is not None:
                    g.drop()
                leaf.drop()
            self.leaves.clear()

    def _accumulate(self, t: Tensor, g: Tensor, grads: dict[int, Tensor]) -> None:
        target = t.base if t.base is not None and not t.own_grad else t
        prev = grads.get(id(target))
        if prev is None:
            grads[id(target)] = g
        else:  # InputBuffer adds into the first buffer (in place when it can)
            g.drop()

    def _param_grad(self, p: Tensor, nbytes: int) -> Tensor:
        """A weight's gradient. Contributions to a weight used twice (tied embeddings) wait in
        its AccumulateGrad node's input buffer (a temporary) until the last one arrives; the
        engine adds them out of place (measured: `aten.add.Tensor` on the full weight), then the
        sum is stolen as `.grad`. A single-use weight's gradient goes straight to `.grad`."""
        key = id(p)
        self._uses[key] = self._uses.get(key, 1) - 1
        prev = self.param_grads.get(key)
        if prev is None:
            cat = "gradients" if self._uses[key] <= 0 else "temporaries"
            g = self.alloc(nbytes, name=f"grad_{p.name}", cat=cat)
            self.param_grads[key] = g
        else:  # the buffer is summed out of place (aten.add, not add_): old, new and sum
            new = self.alloc(nbytes, name=f"grad_{p.name}")
            g = self.alloc(nbytes, name=f"grad_{p.name}", cat=prev.cat)
            new.drop()
            prev.drop()
            self.param_grads[key] = g
        if self._uses[key] <= 0 and g.cat != "gradients":
            self.live[g.cat] -= self.size(g.nbytes)
            g.cat = "gradients"
            self.live[g.cat] += self.size(g.nbytes)
        if self._uses[key] <= 0 and self.grad_hook is not None:
            self._ready.append((p, g))
        return g

    def _backward_checkpoint(
        self, node: Node, outs: list[Tensor | None], grads: dict[int, Tensor]
    ) -> None:
        start = len(self.nodes)
        prev, self.layer = self.layer, node.layer
        out = node.ckpt()  # recompute with grad: saves the segment's tensors again
        self.layer = prev
        seg = self.nodes[start:]
        del self.nodes[start:]
        sub = {id(out): outs[0]}
        out.drop()
        self.backward(out, seg, sub)
        for s in node.saved:
            s.drop()
        for t in node.inputs:
            key = id(t.base if t.base is not None else t)
            g = sub.pop(key, None)
            if g is not None:
                self._accumulate(t, g, grads)
        for g in sub.values():
            g.drop()

    def free_param_grads(self) -> None:
        for g in self.param_grads.values():
            g.drop()
        self.param_grads.clear()


def _layer_tags(nodes: list[Node]) -> dict[int | None, str]:
    """Position tags of the layers in a graph, walked from the top layer down (see
    `Tape.layer_tags`): every layer strictly between "top-1" and "bottom+1" is "mid"."""
    layers = sorted({n.layer for n in nodes if n.layer is not None}, reverse=True)
    tags: dict[int | None, str] = dict.fromkeys(layers, "mid")
    named = [(1, "top-1"), (len(layers) - 2, "bottom+1"), (0, "top"), (len(layers) - 1, "bottom")]
    for pos, name in named:
        if 0 <= pos < len(layers):
            tags[layers[pos]] = name
    return tags
