"""The Gemma program (GemmaForCausalLM, transformers modeling_gemma.py): the LLaMA decoder with

- GemmaRMSNorm: `output = _norm(x.float()); output * (1.0 + weight.float()); .type_as(x)`:
  the normalized rows stay fp32 until the last cast, so the product with (1 + weight) saves
  the fp32 normalized rows (LLaMA's saves them in the input dtype); `weight.float()` is a copy
  unless the weight is fp32 and `1.0 + ...` a new (hidden,) fp32 tensor the product saves;
- GemmaTextScaledWordEmbedding: `embedding(input_ids) * embed_scale` (a 0-dim buffer cast to
  the weight's dtype): a second (tokens, hidden) tensor; the lookup's output dies with the
  expression. transformers' input-require-grads hook (checkpointing) marks the scaled output;
- a GeGLU MLP (`gelu_pytorch_tanh`: one op saving its input, as SiLU) and the tied head.

The Gemma-2 program (Gemma2ForCausalLM, modeling_gemma2.py) adds to that:

- four norms per layer: `post_attention_layernorm` on the attention output before the
  residual add, `pre_feedforward_layernorm` before the MLP (Gemma's post_attention_layernorm
  role) and `post_feedforward_layernorm` on the MLP output before its residual add;
- eager attention only (transformers has no SDPA path for it; memplan refuses `--attn sdpa`):
  the scaled scores (scaling `query_pre_attn_scalar ** -0.5`, a Python scalar as head_dim's
  was) are soft-capped, `scores / cap` (a new tensor), `tanh` (saves its output), `* cap`
  (a new tensor), before the mask;
- two additive masks, one per layer type (`full_attention`, `sliding_attention`), both built
  before the layers and bound until the model's forward returns. Sliding-window layers are
  taken as full attention: exact while seq <= sliding_window (4096 in the released configs),
  where the sliding mask masks what the causal one does;
- final-logit soft-capping: `logits / cap` (a vocabulary-sized tensor; the head's output dies
  with the rebinding), `tanh` (saves its vocabulary-sized output), `* cap` (the logits the
  loss and the model output get).
"""

from __future__ import annotations

from memplan.errors import MemplanError
from memplan.programs.kernels import F32, I64
from memplan.programs.llama import LlamaProgram
from memplan.tape import Tensor


class GemmaProgram(LlamaProgram):
    """GemmaForCausalLM; the comments name the HF variable that keeps a tensor."""

    mlp_act = "gelu"

    def mlp_bias(self, pre: str, proj: str) -> str | None:
        return None

    def input_embedding(self, w: Tensor, numel: int, elem: int) -> Tensor:
        """`super().forward(input_ids) * self.embed_scale.to(self.weight.dtype)`: the scalar
        product allocates the scaled copy (its backward a gradient of the same size)."""
        e = self.embedding(w, numel, elem)
        y = self.scale(e)
        e.drop()
        return self.tp.leaf(y) if self.input_grads else y

    def rmsnorm(self, x: Tensor, name: str, dim: int | None = None) -> Tensor:
        """GemmaRMSNorm: x.float(); pow(2) saves it (its backward holds two fp32
        temporaries); mean; +eps; rsqrt saves its output; x32 * rsqrt saves both; w32 =
        weight.float() (the weight itself when fp32); 1 + w32 (saves nothing); n32 * (1 +
        w32) saves both (the weight's gradient reduces a full-size fp32 product);
        .type_as(x)."""
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
        W = self.P[name]
        w32 = self.to(W, F32)
        # the sum's gradient passes through to w32; when that is the weight itself (fp32)
        # it becomes the weight's .grad
        gb = [w32.nbytes] if w32 is W else [0]
        w1 = tp.op1("add_one", [w32], W.numel, F32, grad_bytes=gb)
        w32.drop()
        o32 = self.mul(n32, w1, F32, bwd_temp=n32.nbytes)
        n32.drop()
        w1.drop()
        y = self.to(o32, x.elem)
        o32.drop()
        return y


class Gemma2Program(GemmaProgram):
    """Gemma2ForCausalLM; the comments name the HF variable that keeps a tensor."""

    def __init__(self, tape, cfg, wl, params, **kw) -> None:
        super().__init__(tape, cfg, wl, params, **kw)
        if self.kern.attention != "eager":
            raise MemplanError(
                f"{cfg.name}: transformers has no SDPA attention for Gemma-2 (attention-logit "
                "soft-capping); use --attn eager"
            )
        raw = cfg.raw
        self.attn_cap = raw.get("attn_logit_softcapping", 50.0)
        self.final_cap = raw.get("final_logit_softcapping", 30.0)

    def cap_scores(self, sc: Tensor) -> Tensor:
        """attn_weights / softcap; tanh (saves its output); * softcap."""
        if self.attn_cap is None:
            return sc
        d = self.scale(sc)
        sc.drop()
        t = self.unary("tanh", d, save_in=False, save_out=True)
        d.drop()
        y = self.scale(t)
        t.drop()
        return y

    def causal_mask(self, act: int) -> Tensor | None:
        """create_causal_mask and create_sliding_window_causal_mask: the mask of every layer
        type, kept in `causal_mask_mapping`; the layers get theirs (`layer_mask`)."""
        full = super().causal_mask(act)
        self.sliding_mask = super().causal_mask(act)
        return full

    def layer_mask(self, i: int, mask: Tensor | None) -> Tensor | None:
        """Gemma2Config's default layer_types: sliding for even layers, full for odd ones."""
        types = self.cfg.raw.get("layer_types")
        sliding = types[i] == "sliding_attention" if types else i % 2 == 0
        return self.sliding_mask if sliding and self.sliding_mask is not None else mask

    def layer(self, i: int, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        """Gemma2DecoderLayer.forward."""
        c = self.cfg
        h, H, Hkv, d, inter = (
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.intermediate_size,
        )
        pre = f"model.layers.{i}."
        hn = self.rmsnorm(x, pre + "input_layernorm.weight")
        q = self.query_states(pre, hn)
        k = self.key_states(pre, hn)
        v = self.linear(
            hn, pre + "self_attn.v_proj.weight", h, Hkv * d, self.attn_bias(pre, "v_proj")
        )
        qe = self.rope(q, cos, sin)
        ke = self.rope(k, cos, sin)
        q.drop()
        k.drop()
        ke, v = self.kv_cache(i, ke, v)
        gqa, kv = Hkv != H, self.prefix > 0
        if gqa:  # repeat_kv (locals of eager_attention_forward)
            k2 = self.tp.op1("repeat_kv", [ke], ke.numel * H // Hkv, ke.elem)
            v2 = self.tp.op1("repeat_kv", [v], v.numel * H // Hkv, v.elem)
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
            copy_v=not (gqa or kv),
        )
        k2.drop()
        v2.drop()
        ao = self.linear(
            o, pre + "self_attn.o_proj.weight", H * d, h, self.attn_bias(pre, "o_proj")
        )
        for t in (o, qe, ke, v, hn):  # Gemma2Attention.forward returns; hidden_states rebinds
            t.drop()
        an = self.rmsnorm(ao, pre + "post_attention_layernorm.weight")
        ao.drop()
        x2 = self.add(x, an, max(x.elem, an.elem))
        an.drop()
        hn2 = self.rmsnorm(x2, pre + "pre_feedforward_layernorm.weight")
        g = self.linear(hn2, pre + "mlp.gate_proj.weight", h, inter)
        sg = self.unary(self.mlp_act, g, save_in=True)
        g.drop()
        u = self.linear(hn2, pre + "mlp.up_proj.weight", h, inter)
        m = self.mul(sg, u, sg.elem)
        sg.drop()
        u.drop()
        dn = self.linear(m, pre + "mlp.down_proj.weight", inter, h)
        m.drop()
        hn2.drop()  # the MLP's input, bound until mlp() returns
        fn = self.rmsnorm(dn, pre + "post_feedforward_layernorm.weight")
        dn.drop()
        x3 = self.add(x2, fn, max(x2.elem, fn.elem))
        fn.drop()
        x2.drop()
        probs.drop()  # `_`, bound until the layer returns
        return x3

    def forward(self) -> Tensor:
        """Gemma2ForCausalLM.forward: the model (as Gemma's, with a mask per layer type), the
        tied head, final-logit soft-capping, the loss."""
        c = self.cfg
        s, T = self.s, self.T
        h, d = c.hidden_size, self.rotary_dims()
        act = F32 if self.amp else self.a
        with self.shallow(-1):
            emb = self.input_embedding(self.P["model.embed_tokens.weight"], T * h, act)
        pos = self.alloc(s, I64)
        mask = self.causal_mask(act)
        cos = self.alloc(s * d, act)
        sin = self.alloc(s * d, act)
        x = emb.ref()
        for i in range(c.num_layers):
            lm = self.layer_mask(i, mask)
            with self.shallow(i):
                if self.wl.checkpointing:
                    x = self._ckpt_layer(i, x, cos, sin, lm)
                else:
                    nx = self.layer(i, x, cos, sin, lm)
                    x.drop()
                    x = nx
        hf = self.rmsnorm(x, "model.norm.weight")
        x.drop()
        for t in (emb, cos, sin, pos, mask, self.sliding_mask):
            if t is not None:
                t.drop()  # Gemma2Model.forward's locals
        head = "model.embed_tokens.weight" if c.tie_word_embeddings else "lm_head.weight"
        logits = self.linear(hf, head, h, c.vocab_size)
        if self.final_cap is not None:
            d1 = self.scale(logits)  # logits / final_logit_softcapping
            logits.drop()
            t = self.unary("tanh", d1, save_in=False, save_out=True)
            d1.drop()
            logits = self.scale(t)  # * final_logit_softcapping
            t.drop()
        loss = self.cross_entropy(logits, T, c.vocab_size, labels_copy=True)
        logits.drop()
        hf.drop()
        self.end_autocast()
        return loss
