"""Forward programs per model family, written against `memplan.tape`.

Each program mirrors the Hugging Face forward that memplan runs (transformers' modeling files
for LLaMA/Mistral, OPT and RoBERTa-MLM) op by op wherever an op allocates something: what each
op allocates, what its derivative saves for backward (tools/autograd/derivatives.yaml) and what
its backward allocates. Python references are dropped where the HF code lets its variables go.
docs/estimator.md derives the per-layer totals these programs add up to.

Device-dependent rules (the attention kernel SDPA picks, the dropout mask's dtype) come from
`Kernels`, so one program serves CUDA, CPU and meta runs.

Known limitations: only the families above; attention masks for padded batches are not modeled
(memplan's batches have no padding); sliding-window attention is taken as full attention
(exact while seq <= sliding_window); backward-internal workspaces of fused attention kernels
are approximated by their gradient outputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

from memplan.tape import Tape, Tensor
from memplan.workload import Workload

F32 = 4
BOOL = 1
I64 = 8


@dataclass(frozen=True)
class Kernels:
    """Which kernels a device runs, as far as memory is concerned."""

    attention: str  # "eager" | "flash" | "math"
    dropout_mask_elem: int  # bytes per element of a saved dropout mask; 0: the input's dtype

    @staticmethod
    def resolve(wl: Workload, attn_dropout: float) -> Kernels:
        """SDPA's kernel by device: CUDA runs flash (dropout supported; an RNG seed is kept,
        not a mask); the CPU flash kernel refuses dropout > 0 so SDPA takes the math path; the
        meta backend routes SDPA to the flash kernel's meta implementation
        (memplan.measure.emulation). Dropout: CUDA's fused kernel keeps a bool mask; on CPU and
        meta ATen's `_dropout_impl` keeps a noise tensor in the input's dtype."""
        if wl.attn == "eager":
            att = "eager"
        elif wl.device == "cpu" and attn_dropout > 0:
            att = "math"
        else:
            att = "flash"
        return Kernels(att, BOOL if wl.device == "cuda" else 0)


def dropout_probs(cfg) -> tuple[float, float]:
    """(attention-probability dropout, hidden dropout) the HF model applies in training."""
    raw = cfg.raw
    if cfg.family == "opt":
        return float(raw.get("attention_dropout", 0.0) or 0.0), float(raw.get("dropout", 0.1))
    if cfg.family == "roberta":
        return (
            float(raw.get("attention_probs_dropout_prob", 0.1)),
            float(raw.get("hidden_dropout_prob", 0.1)),
        )
    return float(raw.get("attention_dropout", 0.0) or 0.0), 0.0


def attention_kernel(cfg, wl: Workload, training: bool = True) -> str:
    """The attention kernel that runs for this model and workload (see Kernels.resolve)."""
    return Kernels.resolve(wl, dropout_probs(cfg)[0] if training else 0.0).attention


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
        self.attn_dropout, self.hidden_dropout = dropout_probs(cfg) if training else (0.0, 0.0)
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
        when folding (b, H) into one batch dimension needs it: b > 1 (measured)."""
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
        vc = tp.op1("contiguous", [vr], vr.numel, a) if copy and not rep else vr.ref()
        o = tp.op1("matmul", [pd, vc], b * H * s * d, a, saved=self.pair_saved(pd, vc))
        vc.drop()
        ol = self.to(o, out_elem)
        for t in (o, pl, qs, qa, ka, va, kr, vr, pd, mask):  # the return statement ends
            if t is not None:
                t.drop()
        oc = tp.op1("contiguous", [ol], ol.numel, out_elem)
        ol.drop()
        return oc


class LlamaProgram(Program):
    """LlamaForCausalLM / MistralForCausalLM (transformers modeling_llama.py)."""

    def rmsnorm(self, x: Tensor, name: str) -> Tensor:
        """LlamaRMSNorm: x.to(fp32); pow(2) saves x32; mean; +eps; rsqrt saves its output;
        x32 * rsqrt saves both; .to(input dtype); weight * that saves it. Backward of pow(2)
        holds x^1 and 2*x^1 (two fp32 temporaries) besides its result."""
        tp = self.tp
        x32 = self.to(x, F32)
        rows = x32.numel // self.cfg.hidden_size
        sq = tp.op1("pow", [x32], x32.numel, F32, saved=[x32], bwd_temp=2 * x32.numel * F32)
        var = tp.op1("mean", [sq], rows, F32)
        sq.drop()
        ve = tp.op1("add_eps", [var], rows, F32, grad_bytes=[0])
        var.drop()
        r = self.unary("rsqrt", ve, save_in=False, save_out=True)
        ve.drop()
        n32 = self.mul(x32, r, F32, bwd_temp=x32.numel * F32)
        r.drop()
        x32.drop()
        nb = self.to(n32, x.elem)
        n32.drop()
        y = self.mul(self.P[name], nb, x.elem, bwd_temp=nb.nbytes)
        nb.drop()
        return y

    def rope(self, q: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """q*cos + rotate_half(q)*sin, rotate_half = cat(-x2, x1). Under AMP, cos/sin are fp32
        so the products promote to fp32. Backward: slice_backward allocates a zero tensor of
        q's full size for each half."""
        tp = self.tp
        elem = max(q.elem, cos.elem)
        m1 = self.mul(q, cos, elem)
        half = q.numel // 2
        x2 = tp.op1("slice", [q], 0, q.elem, grad_bytes=[q.nbytes])
        n = tp.op1("neg", [x2], half, q.elem, grad_bytes=[half * q.elem])
        x2.drop()
        x1 = tp.op1("slice", [q], 0, q.elem, grad_bytes=[q.nbytes])
        c = tp.op1("cat", [n, x1], q.numel, q.elem, grad_bytes=[0, 0])
        n.drop()
        x1.drop()
        m2 = self.mul(c, sin, elem)
        c.drop()
        y = self.add(m1, m2, elem)
        m1.drop()
        m2.drop()
        return y

    def layer(self, i: int, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        c = self.cfg
        h, H, Hkv, d, inter = (
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.intermediate_size,
        )
        pre = f"model.layers.{i}."
        bias = bool(c.raw.get("attention_bias", False))
        mlp_bias = bool(c.raw.get("mlp_bias", False))
        # LlamaDecoderLayer.forward; the comments name the HF variable that keeps a tensor
        hn = self.rmsnorm(x, pre + "input_layernorm.weight")
        q = self.linear(
            hn,
            pre + "self_attn.q_proj.weight",
            h,
            H * d,
            pre + "self_attn.q_proj.bias" if bias else None,
        )
        k = self.linear(
            hn,
            pre + "self_attn.k_proj.weight",
            h,
            Hkv * d,
            pre + "self_attn.k_proj.bias" if bias else None,
        )
        v = self.linear(
            hn,
            pre + "self_attn.v_proj.weight",
            h,
            Hkv * d,
            pre + "self_attn.v_proj.bias" if bias else None,
        )
        qe = self.rope(q, cos, sin)  # apply_rotary_pos_emb returns both before the old die
        ke = self.rope(k, cos, sin)
        q.drop()
        k.drop()
        ke, v = self.kv_cache(i, ke, v)  # `cache.update(key_states, value_states, ...)`
        probs = None
        if self.kern.attention == "flash":
            o = self.flash_attention(qe, ke, v, H)
        elif self.kern.attention == "math":
            o = self.math_attention(qe, ke, v, H, d, transposed=True, causal=True)
        else:  # repeat_kv copies k and v to every head under GQA (locals of the eager
            # function); without GQA the batched matmul copies the transposed-view v
            gqa, kv = Hkv != H, self.prefix > 0
            if gqa:
                k2 = self.tp.op1("repeat_kv", [ke], ke.numel * H // Hkv, ke.elem)
                v2 = self.tp.op1("repeat_kv", [v], v.numel * H // Hkv, v.elem)
            else:
                k2, v2 = ke.ref(), v.ref()
            o, probs = self.eager_attention(
                qe, k2, v2, H, d, mask, softmax_fp32=True, copy_q=False, copy_v=not (gqa or kv)
            )
            k2.drop()
            v2.drop()
        ao = self.linear(
            o,
            pre + "self_attn.o_proj.weight",
            H * d,
            h,
            pre + "self_attn.o_proj.bias" if bias else None,
        )
        for t in (o, qe, ke, v, hn):  # LlamaAttention.forward returns; hidden_states rebinds
            t.drop()
        x2 = self.add(x, ao, max(x.elem, ao.elem))
        ao.drop()
        hn2 = self.rmsnorm(x2, pre + "post_attention_layernorm.weight")
        mb = (lambda n: pre + f"mlp.{n}.bias") if mlp_bias else (lambda n: None)
        g = self.linear(hn2, pre + "mlp.gate_proj.weight", h, inter, mb("gate_proj"))
        sg = self.unary("silu", g, save_in=True)
        g.drop()
        u = self.linear(hn2, pre + "mlp.up_proj.weight", h, inter, mb("up_proj"))
        m = self.mul(sg, u, sg.elem)
        sg.drop()
        u.drop()
        dn = self.linear(m, pre + "mlp.down_proj.weight", inter, h, mb("down_proj"))
        m.drop()
        hn2.drop()  # the MLP's input, bound until mlp() returns
        x3 = self.add(x2, dn, max(x2.elem, dn.elem))
        dn.drop()
        x2.drop()
        if probs is not None:  # `_`, bound until the layer returns
            probs.drop()
        return x3

    def forward(self) -> Tensor:
        c = self.cfg
        s, T = self.s, self.T
        h, d = c.hidden_size, c.head_dim
        act = F32 if self.amp else self.a  # embedding output keeps the weight dtype
        with self.shallow(-1):
            emb = self.input_embedding(self.P["model.embed_tokens.weight"], T * h, act)
        # rotary: position ids (1, s) int64; cos/sin (1, s, d) in the hidden dtype
        pos = self.alloc(s, I64)
        cos = self.alloc(s * d, act)
        sin = self.alloc(s * d, act)
        mask = self.causal_mask(act)
        x = emb.ref()  # LlamaModel.forward keeps `inputs_embeds` bound until it returns
        for i in range(c.num_layers):
            with self.shallow(i):
                if self.wl.checkpointing:
                    x = self._ckpt_layer(i, x, cos, sin, mask)
                else:
                    nx = self.layer(i, x, cos, sin, mask)
                    x.drop()
                    x = nx
        hf = self.rmsnorm(x, "model.norm.weight")
        x.drop()
        for t in (emb, cos, sin, pos) + ((mask,) if mask is not None else ()):
            t.drop()  # LlamaModel.forward's locals
        head = "model.embed_tokens.weight" if c.tie_word_embeddings else "lm_head.weight"
        logits = self.linear(hf, head, h, c.vocab_size)
        # the model output keeps the last hidden state and the logits bound until the loss
        # (computed inside the HF forward) returns
        loss = self.cross_entropy(logits, T, c.vocab_size, labels_copy=True)
        logits.drop()
        hf.drop()
        self.end_autocast()
        return loss

    def _ckpt_layer(
        self, i: int, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None
    ) -> Tensor:
        ins = [x, cos, sin] + ([mask] if mask is not None else [])
        y = self.checkpoint(lambda: self.layer(i, x, cos, sin, mask), ins)
        x.drop()
        return y


PROGRAMS = {"llama": LlamaProgram}


class OPTProgram(Program):
    """OPTForCausalLM (transformers modeling_opt.py): learned positions (+2 offset), pre- or
    post-LayerNorm, ReLU FFN, biases, dropout after attention and after fc2, tied LM head."""

    def layer(self, i: int, x: Tensor, mask: Tensor | None) -> Tensor:
        """OPTDecoderLayer.forward; the comments name the HF variable that keeps a tensor."""
        c = self.cfg
        h, ffn = c.hidden_size, c.intermediate_size
        pre = f"model.decoder.layers.{i}."
        bias = (lambda n: pre + n + ".bias") if c.enable_bias else (lambda n: None)
        p_hidden = self.hidden_dropout
        hn = (
            self.layer_norm(x, pre + "self_attn_layer_norm", h)
            if c.do_layer_norm_before
            else x.ref()
        )
        q = self.linear(hn, pre + "self_attn.q_proj.weight", h, h, bias("self_attn.q_proj"))
        qs = self.scale(q)  # q_proj(h) * scaling: the unscaled product is a temporary
        q.drop()
        k = self.linear(hn, pre + "self_attn.k_proj.weight", h, h, bias("self_attn.k_proj"))
        v = self.linear(hn, pre + "self_attn.v_proj.weight", h, h, bias("self_attn.v_proj"))
        k, v = self.kv_cache(i, k, v)  # `cache.update(key_states, value_states, ...)`
        o, probs = self.transposed_attention(qs, k, v, mask, softmax_fp32=True)
        ao = self.linear(o, pre + "self_attn.out_proj.weight", h, h, bias("self_attn.out_proj"))
        for t in (o, qs, k, v, hn):  # OPTAttention.forward returns; hidden_states rebinds
            t.drop()
        ad = self.dropout(ao, p_hidden)
        ao.drop()
        x2 = self.add(x, ad, max(x.elem, ad.elem))
        ad.drop()
        if not c.do_layer_norm_before:
            x2n = self.layer_norm(x2, pre + "self_attn_layer_norm", h)
            x2.drop()
            x2 = x2n
        hn2 = (
            self.layer_norm(x2, pre + "final_layer_norm", h) if c.do_layer_norm_before else x2.ref()
        )
        f1 = self.linear(hn2, pre + "fc1.weight", h, ffn, bias("fc1"))
        hn2.drop()
        r = self.unary("relu", f1, save_in=False, save_out=True)
        f1.drop()
        f2 = self.linear(r, pre + "fc2.weight", ffn, h, bias("fc2"))
        r.drop()
        fd = self.dropout(f2, p_hidden)
        f2.drop()
        x3 = self.add(x2, fd, max(x2.elem, fd.elem))
        fd.drop()
        x2.drop()
        if not c.do_layer_norm_before:
            x3n = self.layer_norm(x3, pre + "final_layer_norm", h)
            x3.drop()
            x3 = x3n
        if probs is not None:  # `_`, bound until the layer returns
            probs.drop()
        return x3

    def forward(self) -> Tensor:
        c = self.cfg
        b, s, T = self.b, self.s, self.T
        h, wp = c.hidden_size, c.word_embed_proj_dim
        act = F32 if self.amp else self.a
        with self.shallow(-1):
            emb = self.input_embedding(self.P["model.decoder.embed_tokens.weight"], T * wp, act)
            kv = s + self.prefix  # past_seen_tokens + s (prefix tuning's cache)
            ones = self.alloc(b * kv, F32)  # position_attention_mask = torch.ones(b, kv)
            pid = self.alloc(b * kv, I64)  # cumsum-based position ids (sliced past the prefix)
            pos2 = self.alloc(b * s, I64)  # position_ids + offset (kept by the embedding)
            mask = self.causal_mask(act)
            pe = self.embedding(self.P["model.decoder.embed_positions.weight"], T * h, act)
            pos2.drop()
            if wp != h:
                e2 = self.linear(emb, "model.decoder.project_in.weight", wp, h)
                emb.drop()
                emb = e2
            x = self.add(emb, pe, act)  # OPTDecoder.forward keeps inputs_embeds and pos_embeds
        for i in range(c.num_layers):
            with self.shallow(i):
                if self.wl.checkpointing:
                    ins = [x] + ([mask] if mask is not None else [])
                    nx = self.checkpoint(lambda i=i, x=x: self.layer(i, x, mask), ins)
                else:
                    nx = self.layer(i, x, mask)
            x.drop()
            x = nx
        if "model.decoder.final_layer_norm.weight" in self.P:
            xn = self.layer_norm(x, "model.decoder.final_layer_norm", h)
            x.drop()
            x = xn
        if wp != h:
            xo = self.linear(x, "model.decoder.project_out.weight", h, wp)
            x.drop()
            x = xo
        for t in (ones, pid, emb, pe) + ((mask,) if mask is not None else ()):
            t.drop()  # OPTDecoder.forward's locals
        head = (
            "lm_head.weight" if "lm_head.weight" in self.P else "model.decoder.embed_tokens.weight"
        )
        logits = self.linear(x, head, wp, c.vocab_size)
        loss = self.cross_entropy(logits, T, c.vocab_size, labels_copy=True)
        logits.drop()
        x.drop()
        self.end_autocast()
        return loss


PROGRAMS["opt"] = OPTProgram


class RobertaProgram(Program):
    """RobertaForMaskedLM (transformers modeling_roberta.py): post-LayerNorm encoder, GELU,
    dropout on embeddings, attention probabilities and both residual branches, an MLM head
    (dense + GELU + LayerNorm + decoder tied to the word embeddings) and a loss over every
    position computed in the logits' own dtype (no fp32 upcast, no label copy)."""

    def output_ln(self, y_in: Tensor, x: Tensor, dense: str, n_in: int, name: str) -> Tensor:
        """RobertaSelfOutput / RobertaOutput: LayerNorm(dropout(dense(y_in)) + x); the dropout
        output stays bound (`hidden_states`) until the LayerNorm returns."""
        h = self.cfg.hidden_size
        y = self.linear(y_in, dense + ".weight", n_in, h, dense + ".bias")
        yd = self.dropout(y, self.hidden_dropout)
        y.drop()
        s = self.add(yd, x, max(yd.elem, x.elem))
        out = self.layer_norm(s, name, h)
        s.drop()
        yd.drop()
        return out

    def layer(self, i: int, x: Tensor) -> Tensor:
        """RobertaLayer.forward; the comments name the HF variable that keeps a tensor."""
        c = self.cfg
        h, inter = c.hidden_size, c.intermediate_size
        pre = f"roberta.encoder.layer.{i}."
        at = pre + "attention.self."
        q = self.linear(x, at + "query.weight", h, h, at + "query.bias")
        k = self.linear(x, at + "key.weight", h, h, at + "key.bias")
        v = self.linear(x, at + "value.weight", h, h, at + "value.bias")
        o, probs = self.transposed_attention(q, k, v, None, softmax_fp32=False)
        for t in (q, k, v):  # RobertaSelfAttention.forward returns
            t.drop()
        x2 = self.output_ln(
            o, x, pre + "attention.output.dense", h, pre + "attention.output.LayerNorm"
        )
        o.drop()  # RobertaAttention's `attention_output` rebinds
        f1 = self.linear(
            x2, pre + "intermediate.dense.weight", h, inter, pre + "intermediate.dense.bias"
        )
        g = self.unary("gelu", f1, save_in=True)
        f1.drop()
        x3 = self.output_ln(g, x2, pre + "output.dense", inter, pre + "output.LayerNorm")
        g.drop()  # `intermediate_output`
        x2.drop()
        if probs is not None:  # `_`, bound until the layer returns
            probs.drop()
        return x3

    def forward(self) -> Tensor:
        c = self.cfg
        T = self.T
        h = c.hidden_size
        act = F32 if self.amp else self.a
        e = "roberta.embeddings."
        # position ids from input ids: ne(pad).int(), cumsum, * mask, + pad -> int64 (kept)
        pos = self.alloc(T, I64)
        tt = self.alloc(T, I64)  # gather of the buffered token_type_ids (kept)
        with self.shallow(-1):
            we = self.input_embedding(self.P[e + "word_embeddings.weight"], T * h, act)
            te = self.embedding(self.P[e + "token_type_embeddings.weight"], T * h, act)
            x = self.add(we, te, act)
            we.drop()
            te.drop()
            pe = self.embedding(self.P[e + "position_embeddings.weight"], T * h, act)
            x2 = self.add(x, pe, act)
            x.drop()
            pe.drop()
            xn = self.layer_norm(x2, e + "LayerNorm", h)
            x2.drop()
            emb_out = self.dropout(xn, self.hidden_dropout)
            xn.drop()
        pos.drop()  # RobertaEmbeddings.forward's locals
        tt.drop()
        x = emb_out.ref()  # RobertaModel.forward keeps `embedding_output` bound
        for i in range(c.num_layers):
            with self.shallow(i):
                if self.wl.checkpointing:
                    nx = self.checkpoint(lambda i=i, x=x: self.layer(i, x), [x])
                else:
                    nx = self.layer(i, x)
            x.drop()
            x = nx
        emb_out.drop()
        d = self.linear(x, "lm_head.dense.weight", h, h, "lm_head.dense.bias")
        g = self.unary("gelu", d, save_in=True)
        d.drop()
        gn = self.layer_norm(g, "lm_head.layer_norm", h)
        g.drop()
        logits = self.linear(gn, e + "word_embeddings.weight", h, c.vocab_size, "lm_head.bias")
        gn.drop()
        # CrossEntropyLoss on the logits as they are; under autocast log_softmax runs in fp32
        loss = self.cross_entropy(logits, T, c.vocab_size, labels_copy=False, upcast=self.amp)
        logits.drop()
        x.drop()  # `sequence_output`, bound until RobertaForMaskedLM.forward returns
        self.end_autocast()
        return loss


PROGRAMS["roberta"] = RobertaProgram
