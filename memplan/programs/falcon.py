"""The Falcon program (FalconForCausalLM, transformers modeling_falcon.py).

- `query_key_value(x)` (FalconLinear: `x @ W.T` (+ b)) is split per head by `_split_heads`:
  multi-query (falcon-7b): the query is a slice of the fused output (a view whose backward
  allocates zeros of the fused size), the key and the value `fused[..., [-2], :]` /
  `[..., [-1], :]`: advanced indexing, one-head copies whose backward allocates zeros of the
  fused size each; new_decoder_architecture: the query slice and the key/value broadcast to
  every head, each flattened by a copy (b, s, heads * head_dim); neither (3 * hidden): three
  selects, views. `transpose(1, 2).reshape(...)` keeps the shape: views.
- Rotary on the whole head (apply_rotary_pos_emb: q * cos + rotate_half(q) * sin).
- FalconModel always materializes the causal mask (`allow_is_causal_skip=False`): SDPA runs
  with a bool mask expanded over the batch, which ATen converts to a float mask in the query
  dtype (a `logical_not` then a `where`, both over the expanded shape) before the kernel; the
  multi-query key/value (one head against all query heads) rule out the fused kernels, so SDPA
  takes the math path, whose batched matmuls expand the key and the value to every head
  (copies they save); with as many key as query heads it runs the flash kernel, which saves
  the converted mask. On meta (memplan.runtime.emulation) SDPA is the flash kernel's meta
  implementation whatever the key heads, with the bool mask unconverted (saved). Eager: the
  model's own matmuls. attention_dropout applies to ALiBi only: SDPA runs with dropout 0.
- The attention output is permuted back by a copy; parallel_attn: the MLP reads the attention's
  normed input and `mlp_output += attention_output` adds in place; dropout_add (hidden_dropout)
  adds the residual. A sequential residual adds attention_dropout's dropout of the attention.
"""

from __future__ import annotations

from memplan.models.families.falcon import _flag, attention_kind, ln_count, qkv_out
from memplan.programs.gpt_neox import GPTNeoXProgram
from memplan.programs.kernels import BOOL, F32, I64
from memplan.tape import Tensor


class FalconProgram(GPTNeoXProgram):
    """FalconForCausalLM; the comments name the HF variable that keeps a tensor."""

    def __init__(self, tape, cfg, wl, params, **kw) -> None:
        super().__init__(tape, cfg, wl, params, **kw)
        self.rot = cfg.head_dim
        self.kind = attention_kind(cfg.raw)
        self.bias = _flag(cfg.raw, "bias", False)
        self.parallel = _flag(cfg.raw, "parallel_attn", True)
        self.two_ln = ln_count(cfg.raw) == 2

    @staticmethod
    def dropout_probs(cfg) -> tuple[float, float]:
        """(0, hidden_dropout): with rotary positions SDPA runs with dropout 0."""
        return 0.0, float(cfg.raw.get("hidden_dropout", 0.0) or 0.0)

    def _b(self, name: str) -> str | None:
        return name + ".bias" if self.bias else None

    def causal_mask(self, act: int) -> Tensor | None:
        """create_causal_mask with allow_is_causal_skip=False: eager an additive float (b, 1, s,
        kv) mask; SDPA a bool (1, 1, s, kv) mask expanded over the batch."""
        if self.kern.attention == "eager":
            return super().causal_mask(act)
        return self.alloc(self.s * (self.s + self.prefix), BOOL)

    def rope_full(self, q: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """q * cos + rotate_half(q) * sin; rotate_half slices q twice (views whose backward
        allocate zeros of q's size) and concatenates (-x2, x1)."""
        tp = self.tp
        n = q.numel
        elem = max(q.elem, cos.elem)
        tmp = n * elem if q.elem != elem else 0
        m1 = self.mul(q, cos, elem, bwd_temp=tmp)
        x1, x2 = (self.views("slice", q, [n // 2], n * q.elem)[0] for _ in range(2))
        ng = tp.op1("neg", [x2], n // 2, q.elem)
        c = tp.op1("cat", [ng, x1], n, q.elem, grad_bytes=[0, 0])
        ng.drop()
        m2 = self.mul(c, sin, elem, bwd_temp=tmp)
        c.drop()
        e = self.add(m1, m2, elem)
        m1.drop()
        m2.drop()
        return e

    def split_heads(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """FalconAttention._split_heads, then transpose(1, 2).reshape (views)."""
        c = self.cfg
        H, K, d, T = c.num_heads, c.num_kv_heads, c.head_dim, self.T
        tp = self.tp
        (fv,) = self.views("view", qkv, [qkv.numel], qkv.nbytes)
        if self.kind == "mha":
            return tuple(self.views("select", fv, [T * H * d] * 3, qkv.nbytes))
        (q,) = self.views("slice", fv, [T * H * d], qkv.nbytes)
        if self.kind == "mqa":
            k = tp.op1("index", [fv], T * d, qkv.elem, grad_bytes=[qkv.nbytes])
            v = tp.op1("index", [fv], T * d, qkv.elem, grad_bytes=[qkv.nbytes])
            return q, k, v
        # new_decoder_architecture: q slice, k/v indexed (one per group), broadcast, flattened
        qf = tp.op1("flatten", [q], T * H * d, qkv.elem)
        out = [qf]
        for _ in range(2):
            kx = tp.op1("index", [fv], T * K * d, qkv.elem, grad_bytes=[qkv.nbytes])
            (kb,) = self.views("expand", kx, [T * H * d], kx.nbytes)
            kf = tp.op1("flatten", [kb], T * H * d, qkv.elem)
            kx.drop()
            out.append(kf)
        return tuple(out)

    def convert_mask(self, elem: int) -> Tensor:
        """ATen's conversion of the bool mask: `where(logical_not(mask), -inf, 0)` in the
        query dtype, both over the expanded (b, 1, s, kv) shape."""
        n = self.b * self.s * (self.s + self.prefix)
        nt = self.alloc(n, BOOL)
        fmask = self.alloc(n, elem)
        nt.drop()
        return fmask

    def sdpa_flash(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """SDPA's flash kernel with the converted mask, which it saves for backward. On meta
        (memplan.runtime.emulation) SDPA goes to the flash kernel's meta implementation with
        the bool mask as is, whatever the key heads."""
        if self.wl.device == "meta":  # the node saves the model's bool mask
            o = self.flash_attention(q, k, v, self.cfg.num_heads)
            if o.requires_grad and mask is not None:
                self.tp.nodes[-1].saved.append(mask.ref())
            return o
        fmask = self.convert_mask(q.elem)
        o = self.flash_attention(q, k, v, self.cfg.num_heads)
        if o.requires_grad:
            self.tp.nodes[-1].saved.append(fmask.ref())
        fmask.drop()
        return o

    def eager(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """FalconAttention's eager path: `q @ k^T` (the batched matmul copies the query, laid
        out (b, s, H, d), when b > 1, and a key of fewer heads expanded to every head), `/=`
        in place, softmax(scores + mask, dtype=hidden dtype) (saves its output), `@ v` (the
        value expanded likewise). Returns (output, probabilities: bound until the layer
        returns)."""
        tp, b, s = self.tp, self.b, self.s
        H, d = self.cfg.num_heads, self.cfg.head_dim
        kv = s + self.prefix
        qi, ki = self.lowp(q), self.lowp(k)
        e = qi.elem
        qc = tp.op1("contiguous", [qi], qi.numel, e) if b > 1 else qi.ref()
        kc = tp.op1("contiguous", [ki], qi.numel // s * kv, e) if ki.numel != qi.numel else None
        if kc is None:  # k^T of a (b, s, H, d)-laid-out key: a copy when b > 1
            kc = tp.op1("contiguous", [ki], ki.numel, e) if b > 1 else ki.ref()
        out = 2 if self.amp else q.elem
        sc = tp.op1("matmul", [qc, kc], b * H * s * kv, out, saved=self.pair_saved(qc, kc))
        for t in (qi, ki, qc, kc):
            t.drop()
        sm = self.add(sc, mask, max(sc.elem, mask.elem))  # `/=` is in place
        hd = F32 if self.amp else q.elem  # hidden_states.dtype
        s32 = self.to(sm, hd)
        p = self.unary("softmax", s32, save_in=False, save_out=True)
        s32.drop()
        sm.drop()
        sc.drop()  # `attention_scores`, rebound to the probabilities
        pi, vi = self.lowp(p), self.lowp(v)
        vn = b * H * kv * d  # the value expanded to every head, or laid out (b, s, H, d)
        copy_v = vi.numel != vn or b > 1
        vc = tp.op1("contiguous", [vi], vn, e) if copy_v else vi.ref()
        o = tp.op1("matmul", [pi, vc], b * H * s * d, out, saved=self.pair_saved(pi, vc))
        if o.requires_grad and not copy_v and vi.elem == v.elem and self.kind == "mha":
            tp.nodes[-1].saved.append(self.qkv.ref())  # the saved value is a select of it
        for t in (pi, vi, vc):
            t.drop()
        return o, p

    def sdpa_math(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """SDPA with the bool mask: the mask's conversion (logical_not, where in the query
        dtype, over (b, 1, s, kv)), then the math path (memplan.programs.ops.math_attention's
        lifetimes) with the key and value broadcast to the query heads by the matmuls."""
        tp, b, s = self.tp, self.b, self.s
        H, d = self.cfg.num_heads, self.cfg.head_dim
        kv = s + self.prefix
        out_elem = q.elem
        fmask = self.convert_mask(q.elem)
        upcast = q.elem == 2
        qa, ka, va = (self.to(t, F32) if upcast else t.ref() for t in (q, k, v))
        a = qa.elem
        qs = tp.op1("sdpa_scale", [qa], qa.numel, a)
        ks = tp.op1("sdpa_scale", [ka], ka.numel, a)
        bc = ka.numel != qa.numel  # the matmul expands k^T to every head: a copy
        kt = tp.op1("contiguous", [ks], qa.numel // s * kv, a) if bc else ks.ref()
        # the rotated query keeps the projection's (b, s, H, d) layout (as do the cast and the
        # scaling): folding (b, H) into one batch dimension copies it when b > 1
        qc = tp.op1("contiguous", [qs], qs.numel, a) if b > 1 else qs.ref()
        qk = tp.op1("matmul", [qc, kt], b * H * s * kv, a, saved=self.pair_saved(qc, kt))
        kt.drop()
        qc.drop()
        ks.drop()
        qm = self.add(qk, fmask, a) if qk.requires_grad else qk.ref()  # + mask (measured)
        qk.drop()
        p = self.unary("softmax", qm, save_in=False, save_out=True)
        qm.drop()
        pl = self.to(p, out_elem) if upcast else None  # the discarded second output
        vc = tp.op1("contiguous", [va], b * H * kv * d, a) if va.numel != qa.numel else va.ref()
        o = tp.op1("matmul", [p, vc], b * H * s * d, a, saved=self.pair_saved(p, vc))
        vc.drop()
        ol = self.to(o, out_elem)
        for t in (o, pl, qs, qa, ka, va, p, fmask):
            if t is not None:
                t.drop()
        return ol

    def attention(self, pre: str, hn: Tensor, cos: Tensor, sin: Tensor, mask, i: int):
        """FalconAttention.forward: returns (dense output, attention probabilities or None)."""
        c = self.cfg
        h = c.hidden_size
        a = pre + "self_attention."
        qkv = self.linear(
            hn, a + "query_key_value.weight", h, qkv_out(c), self._b(a + "query_key_value")
        )
        q, k, v = self.split_heads(qkv)
        self.qkv = qkv
        qe = self.rope_full(q, cos, sin)
        ke = self.rope_full(k, cos, sin)
        q.drop()  # query_layer, key_layer rebound to the rotated copies
        k.drop()
        ke, v = self.kv_cache(i, ke, v)
        probs = None
        if self.kern.attention == "eager":
            o, probs = self.eager(qe, ke, v, mask)
            oc = self.tp.op1("contiguous", [o], o.numel, o.elem)  # permute(0, 2, 1, 3).reshape
            o.drop()
        elif self.kern.attention == "flash" and (ke.numel == qe.numel or self.wl.device == "meta"):
            oc = self.sdpa_flash(qe, ke, v, mask)  # (b, s, H, d) layout: the permute is free
            if oc.requires_grad and self.kind == "mha" and self.prefix == 0:
                self.tp.nodes[-1].saved.append(qkv.ref())  # the saved value is a select of it
        else:
            o = self.sdpa_math(qe, ke, v, mask)
            oc = self.tp.op1("contiguous", [o], o.numel, o.elem)  # permute(0, 2, 1, 3).reshape
            o.drop()
        ao = self.linear(oc, a + "dense.weight", h, h, self._b(a + "dense"))
        for t in (oc, qe, ke, v, qkv):  # FalconAttention.forward returns
            t.drop()
        return ao, probs

    def mlp(self, pre: str, x: Tensor) -> Tensor:
        """FalconMLP: dense_h_to_4h, GELU (saves its input), dense_4h_to_h."""
        c = self.cfg
        h, inter = c.hidden_size, c.intermediate_size
        m = pre + "mlp."
        f1 = self.linear(x, m + "dense_h_to_4h.weight", h, inter, self._b(m + "dense_h_to_4h"))
        g = self.unary("gelu", f1, save_in=True)
        f1.drop()
        f2 = self.linear(g, m + "dense_4h_to_h.weight", inter, h, self._b(m + "dense_4h_to_h"))
        g.drop()
        return f2

    def layer(self, i: int, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        """FalconDecoderLayer.forward."""
        c = self.cfg
        h = c.hidden_size
        pre = f"transformer.h.{i}."
        if self.parallel and self.two_ln:
            an = self.layer_norm(x, pre + "ln_attn", h)
            mn = self.layer_norm(x, pre + "ln_mlp", h)
        elif self.parallel:
            an = self.layer_norm(x, pre + "input_layernorm", h)
            mn = an.ref()
        else:
            an = self.layer_norm(x, pre + "input_layernorm", h)
            mn = None
        ao, probs = self.attention(pre, an, cos, sin, mask, i)
        residual = x.ref()
        if mn is None:  # dropout_add(attention_output, residual, attention_dropout)
            p_attn = float(c.raw.get("attention_dropout", 0.0) or 0.0) if self.training else 0.0
            ad = self.dropout(ao, p_attn)
            r2 = self.add(residual, ad, max(residual.elem, ad.elem))
            ad.drop()
            residual.drop()
            residual = r2
            mn = self.layer_norm(residual, pre + "post_attention_layernorm", h)
        mo = self.mlp(pre, mn)
        if self.parallel or self.kind == "new":  # mlp_output += attention_output: in place
            (ms,) = self.tp.op("add_", [mo, ao], [(0, mo.elem)], grad_bytes=[0, 0])
            ms.numel = mo.numel  # mo's storage, which mo keeps
            ms.alive = False
            self.tp._live.pop(id(ms), None)
        else:
            ms = mo.ref()
        md = self.dropout(ms, self.hidden_dropout)
        y = self.add(residual, md, max(residual.elem, md.elem))
        for t in (md, ms, mo, ao, an, mn, residual):
            t.drop()
        self.held = probs  # `outputs[1]` in FalconModel.forward, bound until the next block
        return y

    def forward(self) -> Tensor:
        c = self.cfg
        s, T = self.s, self.T
        h = c.hidden_size
        act = F32 if self.amp else self.a  # embedding output keeps the weight dtype
        with self.shallow(-1):
            emb = self.input_embedding(self.P["transformer.word_embeddings.weight"], T * h, act)
            pos = self.alloc(s, I64)  # position_ids (1, s)
            mask = self.causal_mask(act)
        cos = self.alloc(s * self.rot, act)
        sin = self.alloc(s * self.rot, act)
        x = emb.ref()
        held = self.held = None
        for i in range(c.num_layers):
            with self.shallow(i):
                if self.wl.checkpointing:
                    ins = [x, cos, sin] + ([mask] if mask is not None else [])
                    nx = self.checkpoint(lambda i=i, x=x: self.layer(i, x, cos, sin, mask), ins)
                else:
                    nx = self.layer(i, x, cos, sin, mask)
            x.drop()
            x = nx
            if held is not None:
                held.drop()
            held, self.held = self.held, None
        hf = self.layer_norm(x, "transformer.ln_f", h)
        x.drop()
        for t in (emb, cos, sin, pos, held) + ((mask,) if mask is not None else ()):
            if t is not None:
                t.drop()  # FalconModel.forward's locals
        head = "transformer.word_embeddings.weight" if c.tie_word_embeddings else "lm_head.weight"
        logits = self.linear(hf, head, h, c.vocab_size)
        loss = self.cross_entropy(logits, T, c.vocab_size, labels_copy=True)
        logits.drop()
        hf.drop()
        self.end_autocast()
        return loss
