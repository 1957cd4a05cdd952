"""The estimator's op library: the primitives the family programs are written with.

Each primitive mirrors what a PyTorch op allocates in the Hugging Face forwards memplan runs:
its outputs, what its derivative saves for backward (tools/autograd/derivatives.yaml) and what
its backward allocates, recorded on a `memplan.tape.Tape`. A family program (one module per
family in memplan.programs) composes them op by op in the order of the HF modeling file and drops
Python references where the HF code lets its variables go. docs/estimator.md derives the
per-layer totals the programs add up to.

Device-dependent rules (the attention kernel SDPA picks, the dropout mask's dtype) come from
`memplan.programs.kernels.Kernels`, so one program serves CUDA, CPU and meta runs.

Known limitations: attention masks for padded batches are not modeled (memplan's batches have
no padding); sliding-window attention is taken as full attention (exact while seq <=
sliding_window); backward-internal workspaces of fused attention kernels are approximated by
their gradient outputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from memplan.programs.kernels import BOOL, F32, I64, Kernels
from memplan.tape import Tape, Tensor
from memplan.workload import Workload


class Program:
    """Primitives shared by the family programs."""

    def __init__(
        self,
        tape: Tape,
        cfg,
        wl: Workload,
        params: dict[str, Tensor],
        training: bool = True,
        grad_from: int = 0,
    ) -> None:
        """`training`: the model's train() mode (dropout on); ZO methods run their forwards in
        eval() mode as MeZO does ("Dropout is turned off too"), which also changes the
        attention kernel SDPA picks on CPU. `grad_from` > 0: the embeddings and the layers
        below it run under no_grad (the hybrid ZO/FO split's first-order pass, whose
        back-propagation stops at that layer: memplan.methods.hybrid)."""
        self.tp = tape
        self.cfg = cfg
        self.wl = wl
        self.P = params
        self.b, self.s, self.T = wl.batch, wl.seq, wl.tokens
        self.amp = wl.dtype == "amp"
        self.a = wl.act_bytes  # element bytes of matmul outputs (bf16 under AMP)
        self.w = wl.param_bytes  # element bytes of weights
        self.training = training
        self.attn_dropout, self.hidden_dropout = self.dropout_probs(cfg) if training else (0.0, 0.0)
        self.kern = Kernels.resolve(wl, self.attn_dropout)
        self._amp_cache: dict[int, Tensor] = {}
        # transformers' activation_checkpointing_enable() calls enable_input_require_grads()
        # for input_ids models: the input embeddings' output requires grad even when the
        # embedding is frozen (PEFT), so back-propagation reaches the first layer's input
        self.input_grads = wl.checkpointing
        self.grad_from = grad_from
        # prefix tuning (memplan.methods.peft): key/value tokens a cache holds before the
        # sequence, so attention runs over prefix + s keys; 0 for every other method
        self.prefix = 0

    @staticmethod
    def dropout_probs(cfg) -> tuple[float, float]:
        """(attention-probability dropout, hidden dropout) the HF model applies in training;
        a family whose config names them otherwise overrides this. Default: LLaMA's
        `attention_dropout` and no hidden dropout."""
        return float(cfg.raw.get("attention_dropout", 0.0) or 0.0), 0.0

    @contextmanager
    def shallow(self, i: int) -> Iterator[None]:
        """Around the embeddings (i = -1) and each layer i's forward: the tape's current layer
        (stamped on the nodes recorded), and no_grad when i < `grad_from`."""
        prev, self.tp.layer = self.tp.layer, (i if i >= 0 else None)
        try:
            with self.tp.no_grad() if self.grad_from > 0 and i < self.grad_from else nullcontext():
                yield
        finally:
            self.tp.layer = prev

    # ---- primitives ------------------------------------------------------------------------
    def alloc(self, numel: int, elem: int) -> Tensor:
        return self.tp.alloc(numel, elem)

    def to(self, x: Tensor, elem: int) -> Tensor:
        """A dtype cast: allocates the copy, saves nothing; backward casts the grad back."""
        if x.elem == elem:
            return x.ref()
        return self.tp.op1("to_copy", [x], x.numel, elem)

    def lowp(self, x: Tensor) -> Tensor:
        """Autocast's input cast for a lower-precision op (AMP only; fp32 inputs only)."""
        return self.to(x, 2) if self.amp and x.elem == F32 else x.ref()

    def weight(self, name: str) -> Tensor:
        """A weight as a matmul sees it (a reference the caller drops). Under AMP: autocast's
        bf16 copy. Autocast caches the copy of a leaf that requires grad (alive until the
        autocast region ends; aten/src/ATen/autocast_mode.cpp, `cached_cast`); a frozen
        weight is cast anew at every use and its copy dies with the op unless saved."""
        w = self.P[name]
        if not self.amp:
            return w.ref()
        if not w.requires_grad:
            return self.tp.op1("to_copy", [w], w.numel, 2)
        hit = self._amp_cache.get(id(w))
        if hit is None:
            hit = self._amp_cache[id(w)] = self.tp.op1("to_copy", [w], w.numel, 2)
        return hit.ref()

    @staticmethod
    def pair_saved(a: Tensor, b: Tensor) -> list[Tensor]:
        """What a bilinear op (mm, bmm, mul) saves: b for a's gradient if a requires grad and
        a for b's gradient if b does (autograd's codegen saves only what the formulas of the
        inputs that require grad use: a frozen weight's linear keeps no input)."""
        return ([b] if a.requires_grad else []) + ([a] if b.requires_grad else [])

    def causal_mask(self, act: int) -> Tensor | None:
        """HF's create_causal_mask (masking_utils) for an unpadded batch: eager gets a (b, 1, s,
        kv) additive float mask; SDPA none (it runs is_causal), unless a cached prefix makes
        keys outnumber queries: then a bool (1, 1, s, kv) mask expanded over the batch."""
        b, s = self.b, self.s
        kv = s + self.prefix
        if self.kern.attention == "eager":
            return self.alloc(b * s * kv, act)
        return self.alloc(s * kv, BOOL) if self.prefix else None

    def kv_cache(self, i: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Layer `i`'s keys and values after `cache.update` (no cache: unchanged). Prefix
        tuning (memplan.methods.peft) overrides this."""
        return k, v

    def checkpoint(self, fn, inputs: list[Tensor]) -> Tensor:
        """Activation checkpointing of `fn`. Under AMP the forward's casts of the weights stay
        in autocast's cache until the forward ends; each recomputation in backward runs in a
        fresh autocast context (torch.utils.checkpoint restores the autocast state) whose
        cache is released when the recomputation returns."""

        def run() -> Tensor:
            if not (self.amp and self.tp.grad_enabled):
                return fn()
            outer, self._amp_cache = self._amp_cache, {}
            try:
                return fn()
            finally:
                self.end_autocast()
                self._amp_cache = outer

        return self.tp.checkpoint(run, inputs)

    def end_autocast(self) -> None:
        for t in self._amp_cache.values():
            t.drop()
        self._amp_cache.clear()

    def embedding(self, w: Tensor, numel: int, elem: int) -> Tensor:
        """Embedding lookup: saves only the indices; backward allocates the dense weight grad."""
        return self.tp.op1("embedding", [w], numel, elem)

    def input_embedding(self, w: Tensor, numel: int, elem: int) -> Tensor:
        """The model's input embeddings (`get_input_embeddings()`), with transformers'
        input-require-grads hook under checkpointing (see `input_grads`)."""
        e = self.embedding(w, numel, elem)
        return self.tp.leaf(e) if self.input_grads else e

    def linear(self, x: Tensor, w: str, in_f: int, out_f: int, bias: str | None = None) -> Tensor:
        """y = x W^T (+ b): saves x (for dW) and W (for dx); dW and db become param grads."""
        xin = self.lowp(x)
        W = self.weight(w)
        ins = [xin, W] + ([self.weight(bias)] if bias else [])
        saved = self.pair_saved(xin, W)
        y = self.tp.op1("linear", ins, xin.numel // in_f * out_f, self.a, saved=saved)
        for t in ins:
            t.drop()
        return y

    def mul(
        self,
        a: Tensor,
        b: Tensor,
        elem: int,
        save: tuple[bool, bool] = (True, True),
        bwd_temp: int = 0,
    ) -> Tensor:
        """a * b: saves b (for grad a) if a requires grad and a (for grad b) if b does."""
        saved = []
        if a.requires_grad and save[1]:
            saved.append(b)
        if b.requires_grad and save[0]:
            saved.append(a)
        numel = max(a.numel, b.numel)
        return self.tp.op1("mul", [a, b], numel, elem, saved=saved, bwd_temp=bwd_temp)

    def scale(self, x: Tensor) -> Tensor:
        """x * python scalar: saves nothing."""
        return self.tp.op1("mul_scalar", [x], x.numel, x.elem)

    def add(self, a: Tensor, b: Tensor, elem: int) -> Tensor:
        """a + b: saves nothing; the incoming grad passes to both inputs."""
        return self.tp.op1("add", [a, b], max(a.numel, b.numel), elem, grad_bytes=[0, 0])

    def unary(
        self, name: str, x: Tensor, save_in: bool, save_out: bool = False, bwd_temp: int = 0
    ) -> Tensor:
        saved = [x] if save_in else []
        y = self.tp.op1(name, [x], x.numel, x.elem, saved=saved, bwd_temp=bwd_temp)
        if save_out and y.requires_grad:
            self.tp.nodes[-1].saved.append(y.ref())
        return y

    def dropout(self, x: Tensor, p: float) -> Tensor:
        """F.dropout in training mode; p == 0 returns the input (ATen short-cuts it)."""
        if p <= 0:
            return x.ref()
        mask = self.alloc(x.numel, self.kern.dropout_mask_elem or x.elem)
        y = self.tp.op1("dropout", [x], x.numel, x.elem, saved=[mask])
        mask.drop()
        return y

    def layer_norm(self, x: Tensor, name: str, h: int) -> Tensor:
        """F.layer_norm (autocast fp32 op under AMP): saves input, mean and rstd (fp32 per
        row); backward allocates dx plus the weight/bias grads and an fp32 row buffer."""
        xin = self.to(x, F32) if self.amp else x.ref()
        rows = xin.numel // h
        tp = self.tp
        # mean and rstd: fp32 on CUDA (and in torch's meta kernel), the input dtype on CPU
        stat = xin.elem if self.wl.device == "cpu" else F32
        y, mean, rstd = tp.op(
            "layer_norm",
            [xin, self.P[name + ".weight"], self.P[name + ".bias"]],
            [(xin.numel, xin.elem), (rows, stat), (rows, stat)],
            saved=[xin],
            out_grad=[True, False, False],
            bwd_temp=xin.numel * xin.elem,
        )
        if y.requires_grad:
            tp.nodes[-1].saved += [mean.ref(), rstd.ref()]
        mean.drop()
        rstd.drop()
        xin.drop()
        return y

    def cross_entropy(
        self, logits: Tensor, rows: int, vocab: int, labels_copy: bool, upcast: bool = True
    ) -> Tensor:
        """HF loss: logits.float() (a copy unless already fp32), labels shifted by a padded copy
        (causal LM), F.cross_entropy = log_softmax (saves its fp32 output) + nll_loss (saves
        the target and a total-weight scalar). Backward: nll grad (rows x V fp32) and the
        log_softmax grad of the same size, then the cast back to the logits' dtype."""
        tp = self.tp
        l32 = self.to(logits, F32) if upcast else logits.ref()
        ce = l32.elem
        labels = pad = None
        if labels_copy:  # F.pad(labels, (0, 1)) then [..., 1:].contiguous(); both stay bound
            pad = self.alloc(self.b * (self.s + 1), I64)
            labels = self.alloc(self.T, I64)
        lsm = tp.op1("log_softmax", [l32], rows * vocab, ce)
        if lsm.requires_grad:
            tp.nodes[-1].saved.append(lsm.ref())
        l32.drop()
        loss, total_w = tp.op("nll_loss", [lsm], [(1, ce), (1, ce)], out_grad=[True, False])
        if loss.requires_grad:
            tp.nodes[-1].saved.append(total_w.ref())
            if labels is not None:
                tp.nodes[-1].saved.append(labels.ref())
        total_w.drop()
        lsm.drop()
        for t in (labels, pad):
            if t is not None:
                t.drop()
        return loss

    def eager_attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        H: int,
        d: int,
        mask: Tensor | None,
        softmax_fp32: bool,
        copy_q: bool,
        copy_k: bool = False,
        copy_v: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """HF `eager_attention_forward`: scores = q k^T (the batched matmul copies an operand
        that is a transposed view to contiguous memory: a temporary it saves for backward),
        * scale (+ mask), softmax (LLaMA/OPT: in fp32 then cast back to the query's dtype;
        RoBERTa: as is), dropout, probs @ v, and the output transposed back by a copy. Under
        AMP every matmul operand is cast to bf16 first and a bf16 + fp32 sum promotes to fp32.
        Returns (output, probabilities): HF returns `attn_weights` too, and the decoder layer
        keeps it bound (`hidden_states, _ = self.self_attn(...)`) until the layer returns."""
        tp, b, s = self.tp, self.b, self.s
        qd = q.elem
        qc = tp.op1("contiguous", [q], q.numel, q.elem) if copy_q else q.ref()
        kc = tp.op1("contiguous", [k], k.numel, k.elem) if copy_k else k.ref()
        qi, ki = self.lowp(qc), self.lowp(kc)
        out = 2 if self.amp else qd
        kv = s + self.prefix  # keys: the sequence and any cached prefix
        qk = tp.op1("matmul", [qi, ki], b * H * s * kv, out, saved=self.pair_saved(qi, ki))
        for t in (qi, ki, qc, kc):
            t.drop()
        sc = self.scale(qk)
        qk.drop()
        sc = self.cap_scores(sc)
        if mask is not None:
            sm = self.add(sc, mask, max(sc.elem, mask.elem))
            sc.drop()
            sc = sm
        # F.softmax(dtype=fp32) or autocast's fp32 list: the cast input is a temporary of the
        # call; the scores stay bound until `attn_weights` rebinds after .to(query.dtype)
        s32 = self.to(sc, F32) if softmax_fp32 or self.amp else sc.ref()
        p = self.unary("softmax", s32, save_in=False, save_out=True)
        s32.drop()
        if softmax_fp32:
            p2 = self.to(p, qd)  # .to(query.dtype)
            p.drop()
            p = p2
        sc.drop()
        pd = self.dropout(p, self.attn_dropout)
        p.drop()
        vc = tp.op1("contiguous", [v], v.numel, v.elem) if copy_v else v.ref()
        pi, vi = self.lowp(pd), self.lowp(vc)
        o = tp.op1("matmul", [pi, vi], b * H * s * d, out, saved=self.pair_saved(pi, vi))
        for t in (pi, vi, vc):
            t.drop()
        oc = tp.op1("contiguous", [o], o.numel, o.elem)  # transpose(1, 2).contiguous()
        o.drop()
        return oc, pd

    def cap_scores(self, sc: Tensor) -> Tensor:
        """Eager attention's scaled scores before the mask: unchanged (Gemma-2 soft-caps
        them)."""
        return sc

    def transposed_attention(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, softmax_fp32: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Attention over (b, s, H, d) projections viewed as (b, H, s, d) (OPT, RoBERTa): the
        kernel the workload runs; eager's batched matmuls copy q, k^T and v to contiguous
        memory. Returns (output, probabilities or None)."""
        c = self.cfg
        H, d = c.num_heads, c.head_dim
        kv = self.prefix > 0  # cached keys/values come out of torch.cat contiguous: no copies
        if self.kern.attention == "flash":
            return self.flash_attention(q, k, v, H), None
        if self.kern.attention == "math":
            causal = c.family != "roberta"  # HF passes is_causal=True to SDPA for decoders
            return self.math_attention(q, k, v, H, d, transposed=True, causal=causal), None
        return self.eager_attention(
            q, k, v, H, d, mask, softmax_fp32, copy_q=True, copy_k=not kv, copy_v=not kv
        )

    def flash_attention(self, q: Tensor, k: Tensor, v: Tensor, H: int) -> Tensor:
        """SDPA flash kernel: saves q, k, v, the output and an fp32 logsumexp (b, H, s); the
        output is laid out (b, s, H, d), so HF's transpose(1, 2).contiguous() is free."""
        tp = self.tp
        qin, kin, vin = self.lowp(q), self.lowp(k), self.lowp(v)
        o, lse = tp.op(
            "sdpa_flash",
            [qin, kin, vin],
            [(qin.numel, qin.elem), (self.b * H * self.s, F32)],
            saved=[qin, kin, vin],
            out_grad=[True, False],
        )
        if o.requires_grad:
            tp.nodes[-1].saved += [o.ref(), lse.ref()]
        lse.drop()
        for t in (qin, kin, vin):
            t.drop()
        return o

    def math_attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        H: int,
        d: int,
        transposed: bool = False,
        causal: bool = False,
        copy_v: bool = False,
    ) -> Tensor:
        """SDPA math path (ATen `_scaled_dot_product_attention_math`, attention.cpp), with its
        C++ lifetimes: q, k, v in half precision upcast to fp32 (`query_acc`...: the condition
        is `!allowFP16BF16ReductionMathSDP()`, on every device; measured on cpu and meta), the
        scaled query (a local); if `causal`, the mask `ones(s, s, bool).tril()` converted to a
        float mask by `where` (a local); under GQA k and v repeated to every head
        (`pre_process_group_query_attention_input`, locals); the scaled k^T (a temporary of
        the matmul expression), the operands the batched matmul copies to contiguous memory,
        scores (+ mask: in place, or out of place for tensor subclasses such as forward AD's
        dual wrappers), `_safe_softmax` (saves its output), dropout, and the return statement,
        which casts the probabilities back to the input dtype first (an output SDPA discards;
        GCC evaluates the tuple's arguments right to left, measured) and then probs @ v and its
        cast, while the fp32 locals still exist. HF then transposes the output back by a copy.
        `transposed`: q, k, v are permuted views (OPT/RoBERTa `view(b, s, H, d).transpose`,
        LLaMA after rotary), which the casts and the scaling keep, so the matmuls copy them
        when folding (b, H) into one batch dimension needs it: b > 1 (measured). `copy_v`:
        the value alone is such a view (GPT-NeoX's chunk of the fused projection)."""
        tp, b, s = self.tp, self.b, self.s
        out_elem = q.elem
        upcast = q.elem == 2
        qa, ka, va = (self.to(t, F32) if upcast else t.ref() for t in (q, k, v))
        a = qa.elem
        qs = tp.op1("sdpa_scale", [qa], qa.numel, a)
        mask = None
        if causal:
            ones = self.alloc(s * s, BOOL)
            tri = self.alloc(s * s, BOOL)
            ones.drop()
            mask = self.alloc(s * s, a)
            tri.drop()
        rep = ka.numel != qa.numel  # GQA: k and v repeated to the query heads
        copy = transposed and b > 1
        if rep:
            kr = tp.op1("repeat_kv", [ka], qa.numel, a)
            vr = tp.op1("repeat_kv", [va], qa.numel, a)
        else:
            kr, vr = ka.ref(), va.ref()
        ks = tp.op1("sdpa_scale", [kr], kr.numel, a)
        qc = tp.op1("contiguous", [qs], qs.numel, a) if copy else qs.ref()
        kt = tp.op1("contiguous", [ks], ks.numel, a) if copy and not rep else ks.ref()
        qk = tp.op1("matmul", [qc, kt], b * H * s * s, a, saved=self.pair_saved(qc, kt))
        for t in (kt, qc, ks):
            t.drop()
        if mask is not None and tp.dual:  # `attn = attn.add(mask)`: out of place
            qm = self.add(qk, mask, a)
            qk.drop()
            qk = qm
        p = self.unary("softmax", qk, save_in=False, save_out=True)
        qk.drop()
        pd = self.dropout(p, self.attn_dropout)
        p.drop()
        pl = self.to(pd, out_elem) if upcast else None  # the discarded second output
        copy_vr = (copy and not rep) or copy_v
        vc = tp.op1("contiguous", [vr], vr.numel, a) if copy_vr else vr.ref()
        o = tp.op1("matmul", [pd, vc], b * H * s * d, a, saved=self.pair_saved(pd, vc))
        vc.drop()
        ol = self.to(o, out_elem)
        for t in (o, pl, qs, qa, ka, va, kr, vr, pd, mask):  # the return statement ends
            if t is not None:
                t.drop()
        oc = tp.op1("contiguous", [ol], ol.numel, out_elem)
        ol.drop()
        return oc
