"""The OPT family program (OPTForCausalLM)."""

from __future__ import annotations

from memplan.programs.kernels import F32, I64
from memplan.programs.ops import Program
from memplan.tape import Tensor


class OPTProgram(Program):
    """OPTForCausalLM (transformers modeling_opt.py): learned positions (+2 offset), pre- or
    post-LayerNorm, ReLU FFN, biases, dropout after attention and after fc2, tied LM head."""

    @staticmethod
    def dropout_probs(cfg) -> tuple[float, float]:
        """OPT's `attention_dropout` and `dropout` (hidden; 0.1 when the config omits it)."""
        raw = cfg.raw
        return float(raw.get("attention_dropout", 0.0) or 0.0), float(raw.get("dropout", 0.1))

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
