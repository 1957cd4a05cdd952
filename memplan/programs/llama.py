"""The LLaMA family program (LlamaForCausalLM, MistralForCausalLM): RMSNorm, rotary
positions, grouped-query attention, a SwiGLU MLP and an untied LM head.
"""

from __future__ import annotations

from memplan.programs.kernels import F32, I64
from memplan.programs.ops import Program
from memplan.tape import Tensor


class LlamaProgram(Program):
    """LlamaForCausalLM / MistralForCausalLM (transformers modeling_llama.py)."""

    mlp_act = "silu"  # the gate's activation (one op saving its input; Gemma: gelu)

    def rmsnorm(self, x: Tensor, name: str, dim: int | None = None) -> Tensor:
        """LlamaRMSNorm over the last `dim` elements (default: the hidden size): x.to(fp32);
        pow(2) saves x32; mean; +eps; rsqrt saves its output; x32 * rsqrt saves both; .to(input
        dtype); weight * that saves it. Backward of pow(2) holds x^1 and 2*x^1 (two fp32
        temporaries) besides its result."""
        tp = self.tp
        x32 = self.to(x, F32)
        rows = x32.numel // (dim or self.cfg.hidden_size)
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

    # ---- what the derived families (memplan.programs.qwen, phi3) change ------------------------
    def rotary_dims(self) -> int:
        """The rotary embedding's cos/sin width: the head size (Phi-3: partial_rotary_factor)."""
        return self.cfg.head_dim

    def attn_bias(self, pre: str, proj: str) -> str | None:
        """The bias of attention projection `proj` (q_proj, k_proj, v_proj, o_proj), if any:
        LlamaAttention's `attention_bias` switch, on all four."""
        return pre + f"self_attn.{proj}.bias" if self.cfg.raw.get("attention_bias") else None

    def mlp_bias(self, pre: str, proj: str) -> str | None:
        return pre + f"mlp.{proj}.bias" if self.cfg.raw.get("mlp_bias") else None

    def query_states(self, pre: str, hn: Tensor) -> Tensor:
        """`q_proj(hidden_states)` (before the rotary embedding)."""
        c = self.cfg
        w = pre + "self_attn.q_proj.weight"
        return self.linear(
            hn, w, c.hidden_size, c.num_heads * c.head_dim, self.attn_bias(pre, "q_proj")
        )

    def key_states(self, pre: str, hn: Tensor) -> Tensor:
        c = self.cfg
        w = pre + "self_attn.k_proj.weight"
        return self.linear(
            hn, w, c.hidden_size, c.num_kv_heads * c.head_dim, self.attn_bias(pre, "k_proj")
        )

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
        # LlamaDecoderLayer.forward; the comments name the HF variable that keeps a tensor
        hn = self.rmsnorm(x, pre + "input_layernorm.weight")
        q = self.query_states(pre, hn)
        k = self.key_states(pre, hn)
        v = self.linear(
            hn, pre + "self_attn.v_proj.weight", h, Hkv * d, self.attn_bias(pre, "v_proj")
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
            o, pre + "self_attn.o_proj.weight", H * d, h, self.attn_bias(pre, "o_proj")
        )
        for t in (o, qe, ke, v, hn):  # LlamaAttention.forward returns; hidden_states rebinds
            t.drop()
        x2 = self.add(x, ao, max(x.elem, ao.elem))
        ao.drop()
        hn2 = self.rmsnorm(x2, pre + "post_attention_layernorm.weight")
        mb = lambda n: self.mlp_bias(pre, n)  # noqa: E731
        g = self.linear(hn2, pre + "mlp.gate_proj.weight", h, inter, mb("gate_proj"))
        sg = self.unary(self.mlp_act, g, save_in=True)
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
        h, d = c.hidden_size, self.rotary_dims()
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
