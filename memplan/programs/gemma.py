"""The Gemma program (GemmaForCausalLM, transformers modeling_gemma.py): the LLaMA decoder with

- GemmaRMSNorm: `output = _norm(x.float()); output * (1.0 + weight.float()); .type_as(x)`:
  the normalized rows stay fp32 until the last cast, so the product with (1 + weight) saves
  the fp32 normalized rows (LLaMA's saves them in the input dtype); `weight.float()` is a copy
  unless the weight is fp32 and `1.0 + ...` a new (hidden,) fp32 tensor the product saves;
- GemmaTextScaledWordEmbedding: `embedding(input_ids) * embed_scale` (a 0-dim buffer cast to
  the weight's dtype): a second (tokens, hidden) tensor; the lookup's output dies with the
  expression. transformers' input-require-grads hook (checkpointing) marks the scaled output;
- a GeGLU MLP (`gelu_pytorch_tanh`: one op saving its input, as SiLU) and the tied head.
"""

from __future__ import annotations

from memplan.programs.kernels import F32
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
