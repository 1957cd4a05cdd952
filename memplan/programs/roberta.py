"""The RoBERTa family program (RobertaForMaskedLM)."""

from __future__ import annotations

from memplan.programs.kernels import F32, I64
from memplan.programs.ops import Program
from memplan.tape import Tensor


class RobertaProgram(Program):
    """RobertaForMaskedLM (transformers modeling_roberta.py): post-LayerNorm encoder, GELU,
    dropout on embeddings, attention probabilities and both residual branches, an MLM head
    (dense + GELU + LayerNorm + decoder tied to the word embeddings) and a loss over every
    position computed in the logits' own dtype (no fp32 upcast, no label copy)."""

    @staticmethod
    def dropout_probs(cfg) -> tuple[float, float]:
        """BERT-style `attention_probs_dropout_prob` and `hidden_dropout_prob` (0.1 each when
        the config omits them)."""
        raw = cfg.raw
        return (
            float(raw.get("attention_probs_dropout_prob", 0.1)),
            float(raw.get("hidden_dropout_prob", 0.1)),
        )

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
