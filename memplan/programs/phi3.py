"""The Phi-3 program (Phi3ForCausalLM, transformers modeling_phi3.py): the LLaMA decoder with
a fused query/key/value projection and a fused gate/up projection.

- `qkv_proj(x)` is sliced into q, k, v (`qkv[..., a:b]`, views), each viewed per head and
  transposed. In backward each slice allocates zeros of the whole projection's size (and the
  view's reshape copies its transposed gradient); the value, a strided view the attention
  kernel saves, keeps the projection's storage alive until backward.
- apply_rotary_pos_emb rotates the first rotary_dim of each head (int(head_dim *
  partial_rotary_factor)) and concatenates the rest back: `cat([q_rot * cos +
  rotate_half(q_rot) * sin, q_pass])`, a new contiguous tensor even when q_pass is empty (a
  full slice `q[..., :head_dim]` is q itself; the empty q_pass still gets its zeros in
  backward).
- `gate_up_proj(x).chunk(2, -1)`: the chunk's backward concatenates the two gradients (one
  tensor of 2 * intermediate per token); `up * act(gate)` keeps the fused output alive.
- `resid_attn_dropout` / `resid_mlp_dropout` (resid_pdrop) and `attention_dropout` are the
  dropout probabilities (0 in the released configs).

Sliding-window attention (`sliding_window`, 2047 in the released configs) is taken as full
attention: exact while the sequence is shorter than the window (SDPA then runs is_causal with
no mask); longrope scaling changes the rotary frequencies only (its long-factor copy, rotary_dim
/ 2 fp32 values made at the first forward, is left out).
"""

from __future__ import annotations

from memplan.models.families.phi3 import rotary_ndims
from memplan.programs.gpt_neox import GPTNeoXProgram
from memplan.programs.llama import LlamaProgram
from memplan.tape import Tensor


class Phi3Program(LlamaProgram):
    """Phi3ForCausalLM; the comments name the HF variable that keeps a tensor."""

    views = GPTNeoXProgram.views
    cat_pass = GPTNeoXProgram.cat_pass

    def __init__(self, tape, cfg, wl, params, **kw) -> None:
        super().__init__(tape, cfg, wl, params, **kw)
        self.rot = rotary_ndims(cfg)

    @staticmethod
    def dropout_probs(cfg) -> tuple[float, float]:
        """Phi-3's `attention_dropout` and `resid_pdrop` (both 0 when omitted)."""
        raw = cfg.raw
        return (
            float(raw.get("attention_dropout", 0.0) or 0.0),
            float(raw.get("resid_pdrop", 0.0) or 0.0),
        )

    def rotary_dims(self) -> int:
        return self.rot

    def rope_phi3(self, q: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """apply_rotary_pos_emb on q or k (a slice of the fused projection): q_rot = q[...,
        :rot] (q itself when rot is the head size; else a slice whose backward allocates
        zeros of q's size), q_pass = q[..., rot:] (likewise, even when empty); the rotated
        part as LLaMA's; then cat([q_embed, q_pass]), a new tensor of q's size."""
        tp, rot, d = self.tp, self.rot, self.cfg.head_dim
        rows = q.numel // d
        nr, npass = rows * rot, rows * (d - rot)
        elem = max(q.elem, cos.elem)
        q_rot = q if rot == d else self.views("slice", q, [nr], q.nbytes)[0]
        (q_pass,) = self.views("slice", q, [npass], q.nbytes)
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
        out = self.cat_pass(e, q_pass)
        e.drop()
        return out

    def attention(self, pre: str, hn: Tensor, cos: Tensor, sin: Tensor, mask, i: int):
        """Phi3Attention.forward: returns (o_proj output, attention probabilities or None)."""
        c = self.cfg
        h, H, K, d = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
        a = pre + "self_attn."
        qn, kn = self.T * H * d, self.T * K * d
        qkv = self.linear(hn, a + "qkv_proj.weight", h, (H + 2 * K) * d)
        qkv_views = []
        for n in (qn, kn, kn):  # qkv[..., a:b], then .view(b, s, -1, d).transpose(1, 2)
            (sl,) = self.views("slice", qkv, [n], qkv.nbytes)
            (vw,) = self.views("view", sl, [n], n * qkv.elem)
            qkv_views.append(vw)
        q, k, v = qkv_views
        qe = self.rope_phi3(q, cos, sin)
        ke = self.rope_phi3(k, cos, sin)
        ke, v = self.kv_cache(i, ke, v)  # `cache.update(key_states, value_states, ...)`
        keeps_qkv = self.prefix == 0  # a kernel saving the value slice keeps qkv's storage
        gqa = K != H
        probs = None
        if self.kern.attention == "flash":
            of = self.flash_attention(qe, ke, v, H)
            if of.requires_grad and keeps_qkv:
                self.tp.nodes[-1].saved.append(qkv.ref())
            # the kernel lays its output out as the query ((b, H, s, d): the cat's layout),
            # so sdpa_attention_forward's transpose(1, 2).contiguous() copies it
            o = self.tp.op1("contiguous", [of], of.numel, of.elem)
            of.drop()
        elif self.kern.attention == "math":
            copy_v = keeps_qkv and not gqa and self.b > 1 and v.elem != 2
            o = self.math_attention(qe, ke, v, H, d, causal=True, copy_v=copy_v)
        else:
            if gqa:
                k2 = self.tp.op1("repeat_kv", [ke], ke.numel * H // K, ke.elem)
                v2 = self.tp.op1("repeat_kv", [v], v.numel * H // K, v.elem)
            else:
                k2, v2 = ke.ref(), v.ref()
            o, probs = self.eager_attention(
                qe,
                k2,
                v2,
                H,
                d,
                mask,
                softmax_fp32=True,
                copy_q=False,
                copy_v=keeps_qkv and not gqa,
            )
            k2.drop()
            v2.drop()
        ao = self.linear(o, a + "o_proj.weight", H * d, h)
        for t in (o, qe, ke, v, qkv):  # Phi3Attention.forward returns
            t.drop()
        return ao, probs

    def mlp(self, pre: str, x: Tensor) -> Tensor:
        """Phi3MLP: gate_up_proj, chunk(2, -1) (views; backward cats the two gradients),
        up * act(gate) (act saves gate, the product saves up and act(gate): both views keep
        the fused output), down_proj."""
        c = self.cfg
        h, inter = c.hidden_size, c.intermediate_size
        m = pre + "mlp."
        gu = self.linear(x, m + "gate_up_proj.weight", h, 2 * inter)
        gate, up = self.views("chunk", gu, [gu.numel // 2] * 2, gu.nbytes)
        ag = self.unary("silu", gate, save_in=False)
        if ag.requires_grad:
            self.tp.nodes[-1].saved.append(gu.ref())
        p = self.mul(up, ag, max(up.elem, ag.elem))
        ag.drop()
        gu.drop()
        dn = self.linear(p, m + "down_proj.weight", inter, h)
        p.drop()
        return dn

    def layer(self, i: int, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        """Phi3DecoderLayer.forward."""
        pre = f"model.layers.{i}."
        hn = self.rmsnorm(x, pre + "input_layernorm.weight")
        ao, probs = self.attention(pre, hn, cos, sin, mask, i)
        hn.drop()
        ad = self.dropout(ao, self.hidden_dropout)  # resid_attn_dropout
        ao.drop()
        x2 = self.add(x, ad, max(x.elem, ad.elem))
        ad.drop()
        hn2 = self.rmsnorm(x2, pre + "post_attention_layernorm.weight")
        dn = self.mlp(pre, hn2)
        hn2.drop()
        md = self.dropout(dn, self.hidden_dropout)  # resid_mlp_dropout
        dn.drop()
        x3 = self.add(x2, md, max(x2.elem, md.elem))
        md.drop()
        x2.drop()
        if probs is not None:  # `self_attn_weights`, bound until the layer returns
            probs.drop()
        return x3
