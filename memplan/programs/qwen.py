"""The Qwen2 and Qwen3 programs (transformers modeling_qwen2.py, modeling_qwen3.py): the LLaMA
decoder with biases on the query, key and value projections (Qwen2), or an RMSNorm over each
head of the queries and keys before the rotary embedding (Qwen3).

Qwen2/Qwen3 configs may mark layers as sliding-window attention (`use_sliding_window`,
`layer_types`); like Mistral's, those are taken as full attention, exact while the sequence is
no longer than the window (the released Qwen2.5 and Qwen3 configs use no sliding layers).
"""

from __future__ import annotations

from memplan.programs.llama import LlamaProgram
from memplan.tape import Tensor


class Qwen2Program(LlamaProgram):
    """Qwen2ForCausalLM: Qwen2Attention's q/k/v projections have biases, o_proj none; the MLP
    has no bias switch."""

    def attn_bias(self, pre: str, proj: str) -> str | None:
        return pre + f"self_attn.{proj}.bias" if proj != "o_proj" else None

    def mlp_bias(self, pre: str, proj: str) -> str | None:
        return None


class Qwen3Program(LlamaProgram):
    """Qwen3ForCausalLM: `q_norm(q_proj(x).view(..., head_dim))` and the same for the keys;
    the projection's output dies once normalized (the norm's fp32 copy is what it saves,
    unless the model runs in fp32, where `.to(float32)` is the tensor itself)."""

    def mlp_bias(self, pre: str, proj: str) -> str | None:
        return None

    def query_states(self, pre: str, hn: Tensor) -> Tensor:
        q = super().query_states(pre, hn)
        qn = self.rmsnorm(q, pre + "self_attn.q_norm.weight", dim=self.cfg.head_dim)
        q.drop()
        return qn

    def key_states(self, pre: str, hn: Tensor) -> Tensor:
        k = super().key_states(pre, hn)
        kn = self.rmsnorm(k, pre + "self_attn.k_norm.weight", dim=self.cfg.head_dim)
        k.drop()
        return kn
