"""The GPT-2 family program (GPT2LMHeadModel, transformers modeling_gpt2.py)."""

from __future__ import annotations

from memplan.errors import MemplanError
from memplan.programs.kernels import F32, I64
from memplan.programs.ops import Program
from memplan.tape import Tensor


class GPT2Program(Program):
    """GPT2LMHeadModel: token + learned position embeddings (the positions broadcast over the
    batch), embedding dropout, pre-LayerNorm blocks of Conv1D linears (`torch.addmm(bias, x,
    W)`: the same saved tensors and gradients as a linear), one fused q/k/v projection split
    into views, attention with `scaling` (head_dim^-0.5, divided by layer_idx + 1 under
    `scale_attn_by_inverse_layer_idx`: a value, no memory), dropout on the attention output
    and after the MLP, `activation_function` (gelu_new by default), a final LayerNorm and the
    head tied to the token embeddings.

    `reorder_and_upcast_attn` (a baddbmm path taken only under eager attention) is refused."""

    def __init__(self, tape, cfg, wl, params, **kw) -> None:
        super().__init__(tape, cfg, wl, params, **kw)
        if self.kern.attention == "eager" and cfg.raw.get("reorder_and_upcast_attn"):
            raise MemplanError(
                f"{cfg.name}: reorder_and_upcast_attn under eager attention has no memory "
                "model; use --attn sdpa or set it to false"
            )

    @staticmethod
    def dropout_probs(cfg) -> tuple[float, float]:
        """GPT-2's `attn_pdrop` and `resid_pdrop` (0.1 each when the config omits them); the
        embeddings' `embd_pdrop` is read by the forward."""
        raw = cfg.raw
        return float(raw.get("attn_pdrop", 0.1)), float(raw.get("resid_pdrop", 0.1))

    def act(self, x: Tensor) -> Tensor:
        """`ACT2FN[activation_function]`. gelu_new is transformers' NewGELUActivation,
        `0.5 * x * (1.0 + torch.tanh(sqrt(2 / pi) * (x + 0.044715 * torch.pow(x, 3.0))))`,
        op by op: pow saves x (backward: x^2 and 3 x^2 beside its result, C++ temporaries of
        one expression), tanh saves its output, the last product both factors. Under AMP pow
        is an fp32 op (autocast casts x, the cast is what pow saves) and the rest promotes.
        gelu / gelu_pytorch_tanh: one F.gelu (saves its input); relu saves its output."""
        name = self.cfg.hidden_act
        if name == "relu":
            return self.unary("relu", x, save_in=False, save_out=True)
        if name != "gelu_new":
            return self.unary("gelu", x, save_in=True)
        tp = self.tp
        half = self.scale(x)  # 0.5 * input
        x32 = self.to(x, F32) if self.amp else x.ref()
        e = x32.elem
        cube = tp.op1("pow", [x32], x32.numel, e, saved=[x32], bwd_temp=2 * x32.numel * e)
        x32.drop()
        c = self.scale(cube)  # 0.044715 * pow(...)
        cube.drop()
        inner = self.add(x, c, max(x.elem, e))
        c.drop()
        z = self.scale(inner)  # sqrt(2 / pi) * (...)
        inner.drop()
        th = self.unary("tanh", z, save_in=False, save_out=True)
        z.drop()
        one = tp.op1("add_scalar", [th], th.numel, th.elem, grad_bytes=[0])  # 1.0 + tanh
        th.drop()
        y = self.mul(half, one, max(half.elem, one.elem))
        half.drop()
        one.drop()
        return y

    def attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None):
        """`attention_interface(...)` then `reshape(...).contiguous()`: SDPA (flash, or the
        math path on cpu with attention dropout) or GPT-2's eager_attention_forward (plain
        softmax, `.type(value.dtype)`: a cast back under AMP only). q, k and v are views of
        c_attn's output with its row stride, so folding (batch, heads) for the batched matmul
        copies them when batch > 1. Returns (output, probabilities or None)."""
        c = self.cfg
        H, d = c.num_heads, c.head_dim
        kv = self.prefix > 0  # keys/values out of the cache's torch.cat: contiguous
        if self.kern.attention == "flash":
            return self.flash_attention(q, k, v, H), None
        if self.kern.attention == "math":
            return self.math_attention(q, k, v, H, d, transposed=True, causal=True), None
        copy = self.b > 1
        return self.eager_attention(
            q,
            k,
            v,
            H,
            d,
            mask,
            softmax_fp32=self.amp,
            copy_q=copy,
            copy_k=copy and not kv,
            copy_v=copy and not kv,
        )

    def layer(self, i: int, x: Tensor, mask: Tensor | None) -> Tensor:
        """GPT2Block.forward; the comments name the HF variable that keeps a tensor."""
        c = self.cfg
        h, inner = c.hidden_size, c.intermediate_size
        pre = f"transformer.h.{i}."
        p_resid = self.hidden_dropout
        hn = self.layer_norm(x, pre + "ln_1", h)
        a = pre + "attn."
        qkv = self.linear(hn, a + "c_attn.weight", h, 3 * h, a + "c_attn.bias")
        q, k, v = self.tp.split(qkv, [qkv.numel // 3] * 3)  # .split(split_size, dim=2)
        qkv.drop()
        k, v = self.kv_cache(i, k, v)  # `curr_cache.update(key_states, value_states, ...)`
        o, probs = self.attention(q, k, v, mask)
        ao = self.linear(o, a + "c_proj.weight", h, h, a + "c_proj.bias")
        o.drop()
        ad = self.dropout(ao, p_resid)  # resid_dropout
        ao.drop()
        for t in (q, k, v):  # GPT2Attention.forward returns
            t.drop()
        x2 = self.add(ad, x, max(ad.elem, x.elem))  # attn_output + residual
        hn.drop()  # `hidden_states` rebinds
        hn2 = self.layer_norm(x2, pre + "ln_2", h)
        m = pre + "mlp."
        f1 = self.linear(hn2, m + "c_fc.weight", h, inner, m + "c_fc.bias")
        g = self.act(f1)
        f1.drop()
        f2 = self.linear(g, m + "c_proj.weight", inner, h, m + "c_proj.bias")
        g.drop()
        fd = self.dropout(f2, p_resid)
        f2.drop()
        x3 = self.add(x2, fd, max(x2.elem, fd.elem))  # residual + feed_forward_hidden_states
        for t in (fd, hn2, x2, ad):  # the block returns; `attn_output` was bound until now
            t.drop()
        if probs is not None:  # `_`, bound until the block returns
            probs.drop()
        return x3

    def forward(self) -> Tensor:
        c = self.cfg
        b, s, T = self.b, self.s, self.T
        h = c.hidden_size
        act = F32 if self.amp else self.a
        p_embd = float(c.raw.get("embd_pdrop", 0.1)) if self.training else 0.0
        t = "transformer."
        with self.shallow(-1):
            emb = self.input_embedding(self.P[t + "wte.weight"], T * h, act)
            ar = self.alloc(s, I64)  # torch.arange(s) + past_seen_tokens
            pid = self.alloc(s, I64)  # position_ids (1, s), bound until the forward returns
            ar.drop()
            # wpe(position_ids): (1, s, h); the embedding keeps its indices for backward
            pe = self.tp.op1("embedding", [self.P[t + "wpe.weight"]], s * h, act, saved=[pid])
            # inputs_embeds + position_embeds: the positions' gradient is summed over the batch
            x0 = self.tp.op1(
                "add", [emb, pe], T * h, act, grad_bytes=[0, 0 if b == 1 else pe.nbytes]
            )
            mask = self.causal_mask(act)
            x = self.dropout(x0, p_embd)  # self.drop
            x0.drop()
        for i in range(c.num_layers):
            with self.shallow(i):
                if self.wl.checkpointing:
                    ins = [x] + ([mask] if mask is not None else [])
                    nx = self.checkpoint(lambda i=i, x=x: self.layer(i, x, mask), ins)
                else:
                    nx = self.layer(i, x, mask)
            x.drop()
            x = nx
        xf = self.layer_norm(x, t + "ln_f", h)
        x.drop()
        for u in (emb, pe, pid) + ((mask,) if mask is not None else ()):
            u.drop()  # GPT2Model.forward's locals
        head = "lm_head.weight" if "lm_head.weight" in self.P else t + "wte.weight"
        logits = self.linear(xf, head, h, c.vocab_size)
        loss = self.cross_entropy(logits, T, c.vocab_size, labels_copy=True)
        logits.drop()
        xf.drop()
        self.end_autocast()
        return loss
