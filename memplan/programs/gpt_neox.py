"""The GPT-NeoX family program (GPTNeoXForCausalLM, transformers modeling_gpt_neox.py):
LayerNorm, one fused query/key/value projection whose output is viewed per head and chunked,
partial rotary positions (the first rotary_ndims of each head; the rest concatenated back), a
GELU MLP, dropout on the embeddings and after attention and the MLP (`hidden_dropout`), the
parallel residual (x + attn(ln1(x)) + mlp(ln2(x))) or the sequential one, an untied head.

Only GELU (`hidden_act` "gelu", Pythia's) has a memory model; SDPA's math path (CPU with
attention dropout) takes the value chunk's contiguous copy before the kernel rather than inside
its batched matmul.
"""

from __future__ import annotations

from memplan.errors import MemplanError
from memplan.models.families.gpt_neox import rotary_ndims
from memplan.programs.kernels import F32, I64
from memplan.programs.ops import Program
from memplan.tape import Tensor


class GPTNeoXProgram(Program):
    """GPTNeoXForCausalLM; the comments name the HF variable that keeps a tensor."""

    def __init__(self, tape, cfg, wl, params, **kw) -> None:
        super().__init__(tape, cfg, wl, params, **kw)
        if cfg.hidden_act != "gelu":
            raise MemplanError(
                f"{cfg.name}: hidden_act '{cfg.hidden_act}' has no memory model for gpt_neox "
                "(modelled: gelu)"
            )
        self.rot = rotary_ndims(cfg)

    @staticmethod
    def dropout_probs(cfg) -> tuple[float, float]:
        """GPT-NeoX's `attention_dropout` and `hidden_dropout` (both 0 when omitted)."""
        raw = cfg.raw
        return (
            float(raw.get("attention_dropout", 0.0) or 0.0),
            float(raw.get("hidden_dropout", 0.0) or 0.0),
        )

    def views(self, name: str, x: Tensor, numels: list[int], grad_bytes: int) -> list[Tensor]:
        """An op whose outputs are views of `x` (view/transpose, chunk, slice): no storage of
        their own; backward allocates `grad_bytes` for x's gradient (a reshape's copy, chunk's
        cat, slice_backward's zeros)."""
        outs = self.tp.op(name, [x], [(0, x.elem)] * len(numels), grad_bytes=[grad_bytes])
        for o, n in zip(outs, numels):
            o.numel = n  # sizes for the ops that read them; the storage is x's
            o.alive = False
            self.tp._live.pop(id(o), None)
        return outs

    def rope(self, q: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """apply_rotary_pos_emb on one of q, k (a chunk of the fused projection): q_rot, q_pass
        = q[..., :rot], q[..., rot:] (views); (q_rot * cos) + (rotate_half(q_rot) * sin), with
        rotate_half = cat(-x2, x1); then cat([q_embed, q_pass]) (contiguous, full size).
        Backward: each slice allocates zeros of its input's size; the muls their grad; under
        AMP (fp32 cos/sin, bf16 q) the products promote and the grads are cast back."""
        tp, rot, d = self.tp, self.rot, self.cfg.head_dim
        rows = q.numel // d
        nr, npass = rows * rot, rows * (d - rot)
        elem = max(q.elem, cos.elem)
        q_rot, q_pass = (self.views("slice", q, [n], q.nbytes)[0] for n in (nr, npass))
        cast = q.elem != elem  # a mul's grad is computed in `elem`, then cast to q's dtype
        tmp = nr * elem if cast else 0
        m1 = self.mul(q_rot, cos, elem, bwd_temp=tmp)
        x1, x2 = (self.views("slice", q_rot, [nr // 2], nr * q.elem)[0] for _ in range(2))
        n = tp.op1("neg", [x2], nr // 2, q.elem)
        c = tp.op1("cat", [n, x1], nr, q.elem, grad_bytes=[0, 0])
        n.drop()
        m2 = self.mul(c, sin, elem, bwd_temp=tmp)
        c.drop()
        e = self.add(m1, m2, elem)
        m1.drop()
        m2.drop()
        return e, q_pass

    def cat_pass(self, e: Tensor, q_pass: Tensor) -> Tensor:
        """torch.cat([q_embed, q_pass], dim=-1): promotes; backward narrows the incoming
        gradient (a view), cast back (a copy) for an input of another dtype."""
        out = self.tp.op1("cat", [e, q_pass], e.numel + q_pass.numel, max(e.elem, q_pass.elem))
        if out.requires_grad:
            self.tp.nodes[-1].grad_bytes = [
                0 if t.elem == out.elem else t.nbytes for t in (e, q_pass) if t.requires_grad
            ]
        return out

    def attention(self, pre: str, hn: Tensor, cos: Tensor, sin: Tensor, mask, i: int):
        """GPTNeoXAttention.forward: returns (dense output, attention probabilities or None)."""
        c = self.cfg
        h, H, d = c.hidden_size, c.num_heads, c.head_dim
        a = pre + "attention."
        bias = (
            (lambda n: a + n + ".bias") if c.raw.get("attention_bias", True) else (lambda n: None)
        )
        qkv = self.linear(hn, a + "query_key_value.weight", h, 3 * h, bias("query_key_value"))
        # .view(b, s, H, 3d).transpose(1, 2): ViewBackward reshapes the transposed grad (a copy)
        (qv,) = self.views("view", qkv, [qkv.numel], qkv.nbytes)
        q, k, v = self.views("chunk", qv, [qkv.numel // 3] * 3, qkv.nbytes)  # cat in backward
        qr, qp = self.rope(q, cos, sin)
        kr, kp = self.rope(k, cos, sin)
        qe = self.cat_pass(qr, qp)
        qr.drop()
        ke = self.cat_pass(kr, kp)
        kr.drop()
        ke, v = self.kv_cache(i, ke, v)  # `layer_past.update(key_states, value_states, ...)`
        keeps_qkv = self.prefix == 0  # a kernel saving the value chunk keeps qkv's storage
        probs = None
        if self.kern.attention == "flash":
            of = self.flash_attention(qe, ke, v, H)
            if of.requires_grad and keeps_qkv:
                self.tp.nodes[-1].saved.append(qkv.ref())
            # the kernel lays its output out as the query ((b, H, s, d) here, the cat's
            # layout), so sdpa_attention_forward's transpose(1, 2).contiguous() copies it
            o = self.tp.op1("contiguous", [of], of.numel, of.elem)
            of.drop()
        elif self.kern.attention == "math":
            # q, k: contiguous (the cats); the value chunk is a strided view, which the batched
            # matmul copies unless the half-precision upcast already made it contiguous
            copy_v = keeps_qkv and self.b > 1 and v.elem != 2
            o = self.math_attention(qe, ke, v, H, d, causal=True, copy_v=copy_v)
        else:
            o, probs = self.eager_attention(
                qe, ke, v, H, d, mask, softmax_fp32=True, copy_q=False, copy_v=keeps_qkv
            )
        ao = self.linear(o, a + "dense.weight", h, h, bias("dense"))
        for t in (o, qe, ke, v, qkv):  # GPTNeoXAttention.forward returns
            t.drop()
        return ao, probs

    def mlp(self, pre: str, x: Tensor) -> Tensor:
        """post_attention_layernorm, then GPTNeoXMLP: dense_h_to_4h, GELU (saves its input),
        dense_4h_to_h; then post_mlp_dropout."""
        c = self.cfg
        h, inter = c.hidden_size, c.intermediate_size
        m = pre + "mlp."
        hn = self.layer_norm(x, pre + "post_attention_layernorm", h)
        f1 = self.linear(hn, m + "dense_h_to_4h.weight", h, inter, m + "dense_h_to_4h.bias")
        g = self.unary("gelu", f1, save_in=True)
        f1.drop()
        f2 = self.linear(g, m + "dense_4h_to_h.weight", inter, h, m + "dense_4h_to_h.bias")
        g.drop()
        hn.drop()  # the MLP's input, bound until mlp() returns
        fd = self.dropout(f2, self.hidden_dropout)
        f2.drop()
        return fd

    def layer(self, i: int, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        """GPTNeoXLayer.forward."""
        c = self.cfg
        pre = f"gpt_neox.layers.{i}."
        hn = self.layer_norm(x, pre + "input_layernorm", c.hidden_size)
        ao, probs = self.attention(pre, hn, cos, sin, mask, i)
        hn.drop()
        ad = self.dropout(ao, self.hidden_dropout)
        ao.drop()
        if c.raw.get("use_parallel_residual", True):
            md = self.mlp(pre, x)
            s1 = self.add(md, ad, max(md.elem, ad.elem))  # mlp_output + attn_output + x
            md.drop()
            ad.drop()
            y = self.add(s1, x, max(s1.elem, x.elem))
            s1.drop()
        else:
            x2 = self.add(ad, x, max(ad.elem, x.elem))  # attn_output = attn_output + x
            ad.drop()
            md = self.mlp(pre, x2)
            y = self.add(md, x2, max(md.elem, x2.elem))
            md.drop()
            x2.drop()
        if probs is not None:  # `_`, bound until the layer returns
            probs.drop()
        return y

    def forward(self) -> Tensor:
        c = self.cfg
        s, T = self.s, self.T
        h = c.hidden_size
        act = F32 if self.amp else self.a  # embedding output keeps the weight dtype
        with self.shallow(-1):
            emb = self.input_embedding(self.P["gpt_neox.embed_in.weight"], T * h, act)
            pos = self.alloc(s, I64)  # position_ids (1, s)
            mask = self.causal_mask(act)
            x = self.dropout(emb, self.hidden_dropout)  # emb_dropout; inputs_embeds stays bound
        # rotary: cos/sin (1, s, rotary_ndims) in the hidden states' dtype
        cos = self.alloc(s * self.rot, act)
        sin = self.alloc(s * self.rot, act)
        for i in range(c.num_layers):
            with self.shallow(i):
                if self.wl.checkpointing:
                    ins = [x, cos, sin] + ([mask] if mask is not None else [])
                    nx = self.checkpoint(lambda i=i, x=x: self.layer(i, x, cos, sin, mask), ins)
                else:
                    nx = self.layer(i, x, cos, sin, mask)
            x.drop()
            x = nx
        hf = self.layer_norm(x, "gpt_neox.final_layer_norm", h)
        x.drop()
        for t in (emb, cos, sin, pos) + ((mask,) if mask is not None else ()):
            t.drop()  # GPTNeoXModel.forward's locals
        head = "gpt_neox.embed_in.weight" if c.tie_word_embeddings else "lm_head.weight"
        logits = self.linear(hf, head, h, c.vocab_size)
        loss = self.cross_entropy(logits, T, c.vocab_size, labels_copy=True)
        logits.drop()
        hf.drop()
        self.end_autocast()
        return loss
