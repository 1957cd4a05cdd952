"""Parameter-efficient schemes (peft): LoRA, prefix tuning, prompt tuning; their memory model and
their runnable step, side by side. Any first-order (fo-sgd, fo-sgd-mmt, fo-adam, adamw,
adafactor) or zeroth-order (zo-*) optimizer drives the adapters: `--method lora --optimizer
zo-sgd`. The base model is frozen; only the adapters train.

What each scheme adds (docs/peft.md derives the totals):

| scheme | trainable parameters                           | activations                           |
|--------|------------------------------------------------|---------------------------------------|
| lora   | A (r x in) + B (out x r) per targeted linear   | per target: A's input (the linear's   |
|        |                                                |   input, or its dropout), A(x) (r per |
|        |                                                |   token); back-prop through every     |
|        |                                                |   layer above the first adapter       |
| prefix | n x 2 L (kv heads x head dim) (one embedding)  | the K/V cache of n + s tokens per     |
|        |                                                |   layer; attention over n + s keys    |
| prompt | n x h (one embedding)                          | n more tokens through every layer,    |
|        |                                                |   the loss and the logits             |

Deviation from peft's defaults, on purpose: memplan trains in pure bf16/fp16 (weights, grads
and states in the workload's dtype, see docs/estimator.md), so the adapters are kept in that
dtype too. peft would upcast LoRA weights of a bf16 model to fp32 (`get_peft_model(...,
autocast_adapter_dtype=True)`, peft/tuners/tuners_utils.py `cast_adapter_dtype`) and builds
prompt encoders in torch's default dtype (fp32); the runnable step casts them to the model's
dtype so that the estimate and the run describe the same training.

Known limitations: prefix and prompt tuning are supported for the causal LMs (LLaMA/Mistral,
OPT); peft has no masked-LM task type for prompt learning, so RoBERTa takes LoRA only. LoRA
targets the attention/MLP linears of each layer (not embeddings or the LM head). Prefix tuning
runs without reparameterization (`prefix_projection=False`, as ZO-Bench). No torch here outside
`build_step`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from memplan.errors import MemplanError
from memplan.knobs import Knob
from memplan.methods.base import (
    Candidate,
    MethodSpec,
    SettingsGroup,
    get_method,
    register,
    register_settings,
)
from memplan.methods.fo import fo_memory, make_optimizer
from memplan.methods.replay import StepBuilder, replay_fo_step, replay_zo_step
from memplan.methods.zo import ZOOptimizer, for_device, zo_memory
from memplan.models import ParamSpec, get_family, layout, registered_families
from memplan.programs import I64, program_for
from memplan.runtime.context import RunContext

# defaults: ZO-Bench's LoRA (q_proj and v_proj, r = 8, alpha = 16), prefix (5 tokens, no
# reparameterization) and prompt tuning (10 virtual tokens); METHODS.md, "Parameter-efficient"
DEFAULT_TOKENS = {"prefix": 5, "prompt": 10}


def family_targets(cfg) -> tuple[str, ...]:
    """The per-layer linears of `cfg`'s family a LoRA target name can select (peft matches
    module names by suffix)."""
    return get_family(cfg.family).linears


def prompt_learning_applies(cfg) -> bool:
    """peft's prompt learning (prefix, prompt) needs the causal-LM task type."""
    return get_family(cfg.family).causal_lm


@dataclass(frozen=True)
class PEFTSettings:
    """Knobs of the PEFT schemes. `target_modules` None: the family's default (q/v projections);
    `num_virtual_tokens` None: the scheme's default (prefix 5, prompt 10). `dropout` is LoRA's
    dropout on the adapter input (0 by default, so peft uses nn.Identity and keeps no mask;
    ZO-Bench's LoRA has no dropout either). `optimizer` drives the adapters."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    num_virtual_tokens: int | None = None
    optimizer: str = "adamw"

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise MemplanError(f"--rank must be a positive integer, got {self.r}")
        if self.alpha <= 0:
            raise MemplanError(f"--alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise MemplanError(f"--lora-dropout must be in [0, 1), got {self.dropout}")
        if self.num_virtual_tokens is not None and (
            not isinstance(self.num_virtual_tokens, int) or self.num_virtual_tokens < 1
        ):
            raise MemplanError(
                f"--virtual-tokens must be a positive integer, got {self.num_virtual_tokens}"
            )
        if self.target_modules is not None:
            if isinstance(self.target_modules, str):
                object.__setattr__(self, "target_modules", parse_targets(self.target_modules))
            elif not self.target_modules:
                raise MemplanError("--target-modules needs at least one module name")

    def tokens(self, scheme: str) -> int:
        return self.num_virtual_tokens or DEFAULT_TOKENS.get(scheme, 0)

    def targets(self, family: str) -> tuple[str, ...]:
        """The target names given, or the family's default (memplan.models.families)."""
        return tuple(self.target_modules or get_family(family).lora_default)


def parse_targets(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise MemplanError("--target-modules takes module names separated by commas, e.g. q_proj")
    return names


@dataclass(frozen=True)
class Adapter:
    """One LoRA adapter: the base linear's name (without `.weight`) and its shape."""

    base: str
    in_f: int
    out_f: int
    layer: int | None


def resolve(cfg, scheme: str, ps: PEFTSettings | None, wl=None) -> tuple[PEFTSettings, Any]:
    """Validate `ps` for `scheme` on `cfg` (and workload `wl`); returns (settings, the driving
    optimizer's MethodSpec)."""
    ps = ps or PEFTSettings()
    fam = cfg.family
    try:
        opt = get_method(ps.optimizer)
    except MemplanError as e:
        raise MemplanError(f"--optimizer: {e}") from e
    if not drives_peft(opt):
        raise MemplanError(
            f"--optimizer {ps.optimizer} cannot drive {scheme}; use a first-order (fo-sgd, "
            "fo-sgd-mmt, fo-adam, adamw, adafactor, adam8bit) or zeroth-order (zo-*) method"
        )
    if wl is not None and wl.device not in opt.devices:
        raise MemplanError(f"--optimizer {opt.name} runs CUDA kernels: use --device cuda")
    if scheme in ("prefix", "prompt") and not prompt_learning_applies(cfg):
        causal = ", ".join(f.name for f in registered_families() if f.causal_lm)
        raise MemplanError(
            f"{scheme} tuning is not supported for {cfg.name} ({fam}): peft's prompt learning "
            f"needs a causal LM ({causal}); use --method lora"
        )
    if scheme == "prefix" and cfg.family == "falcon" and cfg.num_kv_heads != cfg.num_heads:
        # peft sizes the prefix by num_attention_heads (FalconConfig names no
        # num_key_value_heads): the cache's cat with the model's fewer key heads fails
        raise MemplanError(
            f"prefix tuning does not work for {cfg.name} in peft: its prefix has "
            f"{cfg.num_heads} key/value heads, the model {cfg.num_kv_heads}; use --method "
            "lora or prompt"
        )
    if scheme == "prefix" and wl is not None and wl.checkpointing:
        # peft refuses it (peft_model.py, PeftModel._setup_prompt_encoder)
        raise MemplanError(
            "prefix tuning does not work with gradient checkpointing in peft; drop "
            "--checkpointing or use --method lora or prompt"
        )
    if scheme == "prompt" and cfg.raw.get("word_embed_proj_dim", cfg.hidden_size) != (
        cfg.hidden_size
    ):
        raise MemplanError(
            f"prompt tuning is not supported for {cfg.name}: its word embeddings "
            f"({cfg.raw['word_embed_proj_dim']}) are narrower than the hidden size "
            f"({cfg.hidden_size}) that peft's prompt encoder uses; use --method prefix or lora"
        )
    if scheme == "lora":
        valid = family_targets(cfg)
        bad = [t for t in ps.targets(fam) if t not in valid]
        if bad:
            raise MemplanError(
                f"unknown --target-modules {', '.join(bad)} for {cfg.name}; valid: "
                + ", ".join(valid)
            )
        tight = min(lora_adapters(cfg, ps), key=lambda a: min(a.in_f, a.out_f))
        limit = min(tight.in_f, tight.out_f)
        if ps.r > limit:  # the narrowest target bounds the rank
            raise MemplanError(
                f"--rank {ps.r} exceeds the smaller dimension ({limit}) of {tight.base} "
                f"({tight.out_f} x {tight.in_f}); use --rank {limit} or less"
            )
    return ps, opt


def lora_adapters(cfg, ps: PEFTSettings) -> list[Adapter]:
    """The targeted linears in the model's parameter order (peft's adapters follow it)."""
    targets = set(ps.targets(cfg.family))
    conv1d = get_family(cfg.family).conv1d  # Conv1D weights are (in, out), not (out, in)
    out = []
    for p in layout(cfg).params:
        parts = p.name.split(".")
        if p.layer is None or parts[-1] != "weight" or len(p.shape) != 2:
            continue
        if parts[-2] in targets:
            in_f, out_f = p.shape if conv1d else p.shape[::-1]
            out.append(Adapter(p.name[: -len(".weight")], in_f, out_f, p.layer))
    return out


def adapter_specs(cfg, scheme: str, ps: PEFTSettings) -> list:
    """ParamSpecs of the trainable adapter parameters, in peft's `named_parameters()` order."""
    if scheme == "lora":
        specs = []
        for a in lora_adapters(cfg, ps):
            specs.append(ParamSpec(a.base + ".lora_A.weight", (ps.r, a.in_f), a.layer, "adapter"))
            specs.append(ParamSpec(a.base + ".lora_B.weight", (a.out_f, ps.r), a.layer, "adapter"))
        return specs
    n = ps.tokens(scheme)
    if scheme == "prefix":
        # PrefixEncoder without projection: Embedding(n, num_layers * 2 * token_dim), token_dim
        # = kv heads x head dim (peft's _prepare_prompt_learning_config reads
        # num_key_value_heads for GQA models)
        kv = cfg.num_kv_heads * cfg.head_dim
        shape = (n, 2 * cfg.num_layers * kv)
        return [ParamSpec("prompt_encoder.embedding.weight", shape, None, "adapter")]
    # PromptEmbedding: Embedding(n, token_dim = the config's hidden size)
    shape = (n, cfg.hidden_size)
    return [ParamSpec("prompt_encoder.embedding.weight", shape, None, "adapter")]


# ---- memory model (no torch) --------------------------------------------------------------------
def _lora_program(base, adapters: dict[str, Adapter], ps: PEFTSettings):
    """`base` (a family Program) with peft's lora.Linear around each targeted linear
    (peft/tuners/lora/layer.py, Linear.forward): result = base_layer(x); x cast to lora_A's
    dtype (a no-op unless they differ); result = result + lora_B(lora_A(dropout(x))) *
    scaling, out of place; dropout is nn.Identity when p = 0 (update_layer)."""

    class LoraProgram(base):
        def linear(self, x, w, in_f, out_f, bias=None):
            y = super().linear(x, w, in_f, out_f, bias)
            name = w[: -len(".weight")]
            if name not in adapters:
                return y
            xc = self.to(x, self.w)  # _cast_input_dtype(x, lora_A.weight.dtype)
            p = ps.dropout if self.training else 0.0
            xd = self.dropout(xc, p)
            xc.drop()
            a = super().linear(xd, name + ".lora_A.weight", in_f, ps.r)
            xd.drop()
            bo = super().linear(a, name + ".lora_B.weight", ps.r, out_f)
            a.drop()
            sc = self.scale(bo)  # * scaling (a python float): saves nothing
            bo.drop()
            out = self.add(y, sc, max(y.elem, sc.elem))
            y.drop()
            sc.drop()
            if out.elem != y.elem:  # result.to(torch_result_dtype)
                o2 = self.to(out, y.elem)
                out.drop()
                out = o2
            return out

    return LoraProgram


def estimate_step(b: StepBuilder) -> None:
    """The estimator's PEFT step: the adapters over the frozen base, driven by the optimizer."""
    scheme = b.spec.name
    ps, opt = resolve(b.cfg, scheme, b.options.get("peft"), b.wl)
    extra = adapter_specs(b.cfg, scheme, ps)
    names = {p.name for p in extra}
    if scheme == "lora":
        adapters = {a.base: a for a in lora_adapters(b.cfg, ps)}
        cls = _lora_program(program_for(b.cfg), adapters, ps)
    else:
        cls = _prompt_program(b.cfg, scheme, ps)
    zo = opt.kind == "zo"
    prog = b.setup(trainable=names.__contains__, extra=extra, program=cls, training=not zo)
    if scheme != "lora":  # peft's prompt_tokens = arange(n) (int64), kept with the model
        b.tape.base["weights"] += b.tape.size(ps.tokens(scheme) * 8)
    b.info.update(optimizer=opt.name, trainable_params=sum(p.numel for p in extra))
    if zo:
        zs = for_device(b.options["zo"], b.wl.device)
        b.info["zo_impl"] = zs.impl
        replay_zo_step(b.tape, prog, zo_memory(opt.name, b.trainable_shapes(), b.elem, zs))
    else:
        om = fo_memory(opt.name, b.trainable_shapes(), b.elem, b.wl.optimizer_impl)
        replay_fo_step(b.tape, prog, om)


def _prompt_program(cfg, scheme: str, ps: PEFTSettings):
    base = program_for(cfg)
    n = ps.tokens(scheme)
    if scheme == "prompt":
        return _prompt_tuning(base, n)
    return _prefix_tuning(base, n)


def _prefix_tuning(base, n: int):
    """`base` run as PeftModelForCausalLM.forward runs it for prefix tuning (peft_model.py):
    get_prompt(b) embeds prompt_tokens (b, n) into E (b, n, 2 L kv) (PrefixEncoder without
    projection; kv = kv heads x head dim), views it (b, n, 2L, Hkv, d), permutes it to
    (2L, b, Hkv, n, d) and splits it into L chunks; DynamicCache(chunks) slices each chunk
    ([:2]), unpacks it into key and value (unbind) and copies them into its layer
    (DynamicLayer.update: cat([empty, k])); E dies when get_prompt returns. In layer i the
    attention's `cache.update` concatenates the prefix and the layer's keys/values (n + s,
    contiguous), which the cache holds until the forward returns; SDPA gets a bool mask
    (keys outnumber queries), and with a mask transformers repeats GQA keys/values itself
    (sdpa_attention_forward: use_gqa_in_sdpa is False when a mask is passed).

    Backward: cat's gradient is narrow views of the incoming one, so each layer's key and
    value gradients (n + s) stay alive until the prefix chain consumes them, after every
    layer: unbind (stack: a chunk), slice (zeros + copy: a chunk), split (cat: E), the
    permuted view reshaped (a copy: E), the embedding's weight gradient."""

    class PrefixProgram(base):
        def __init__(self, tape, cfg, wl, params, **kw):
            super().__init__(tape, cfg, wl, params, **kw)
            if self.kern.attention == "math":  # CPU SDPA with attention dropout > 0
                raise MemplanError(
                    "prefix tuning under SDPA's math kernel (attention dropout on cpu) has no "
                    "memory model; use --attn eager"
                )
            self.prefix = n
            self._cache: list = []

        def _prompt(self) -> None:
            tp, c, b = self.tp, self.cfg, self.b
            L, half = c.num_layers, b * c.num_kv_heads * n * c.head_dim
            e = self.w  # the encoder's dtype: the parameters' (fp32 under AMP)
            E = self.embedding(self.P["prompt_encoder.embedding.weight"], 2 * L * half, e)
            # view + permute; ViewBackward reshapes the permuted gradient: a copy of E
            Ep = tp.op1("view_permute", [E], 0, e, grad_bytes=[E.nbytes])
            E.drop()
            chunks = tp.op("split", [Ep], [(0, e)] * L, grad_bytes=[E.nbytes])  # cat in bwd
            Ep.drop()
            kvs = []
            for ch in chunks:
                sl = tp.op1("slice", [ch], 0, e, grad_bytes=[2 * half * e])
                ch.drop()
                kv = tp.op("unbind", [sl], [(0, e), (0, e)], grad_bytes=[2 * half * e])
                sl.drop()
                kvs.append(kv)
            for k, v in kvs:  # DynamicLayer.update: torch.cat([empty, states], dim=-2)
                kc = tp.op1("cat", [k], half, e, grad_bytes=[0])
                vc = tp.op1("cat", [v], half, e, grad_bytes=[0])
                k.drop()
                v.drop()
                self._cache.append([kc, vc])

        def _cat(self, a, b):
            """torch.cat([a, b], dim=-2); it promotes (under AMP an fp32 prefix and bf16
            projections give fp32). Backward: narrow views of the incoming gradient
            (cat_tensors_backward), cast back (a copy) for an input of another dtype."""
            out = self.tp.op1("cat", [a, b], a.numel + b.numel, max(a.elem, b.elem))
            if out.requires_grad:
                node = self.tp.nodes[-1]
                node.grad_bytes = [
                    0 if t.elem == out.elem else t.nbytes for t in (a, b) if t.requires_grad
                ]
            return out

        def kv_cache(self, i, k, v):
            pk, pv = self._cache[i]
            K, V = self._cat(pk, k), self._cat(pv, v)
            for t in (pk, pv, k, v):  # the cache rebinds; key_states/value_states rebind
                t.drop()
            self._cache[i] = [K.ref(), V.ref()]
            return K, V

        def flash_attention(self, q, k, v, H):
            tp = self.tp
            rep = H // self.cfg.num_kv_heads  # repeat_kv: locals of sdpa_attention_forward
            kr = tp.op1("repeat_kv", [k], k.numel * rep, k.elem) if rep > 1 else k.ref()
            vr = tp.op1("repeat_kv", [v], v.numel * rep, v.elem) if rep > 1 else v.ref()
            fm = None
            if self.wl.device != "meta":
                # SDPA converts the bool mask to an additive one in the query's dtype
                # (sdp_utils convert_boolean_attn_mask: where(mask.logical_not(), -inf, 0)),
                # materialized over the expanded batch; the kernel's autograd node saves it.
                # The meta backend calls the flash kernel with the bool mask itself.
                rows = self.b * self.s * (self.s + n)
                tp.transient(rows)  # logical_not (bool)
                fm = self.alloc(rows, 2 if self.amp else q.elem)  # after autocast's cast
            o = super().flash_attention(q, kr, vr, H)
            if fm is not None:
                if o.requires_grad:
                    tp.nodes[-1].saved.append(fm.ref())
                fm.drop()
            kr.drop()
            vr.drop()
            return o

        def forward(self):
            self._prompt()
            loss = super().forward()
            for kv in self._cache:  # the cache dies with the model output
                for t in kv:
                    t.drop()
            self._cache.clear()
            return loss

    return PrefixProgram


def _prompt_tuning(base, n: int):
    """`base` run as PeftModelForCausalLM.forward runs it for prompt tuning (peft_model.py):
    inputs_embeds = word_embeddings(input_ids); labels = cat(full((b, n), -100), labels);
    prompts = get_prompt(b) = prompt_encoder(prompt_tokens[:1]).repeat(b, 1, 1) (then
    .to(inputs_embeds.dtype), a no-op here); inputs_embeds = cat((prompts, inputs_embeds), 1);
    base_model(inputs_embeds=..., labels=...). From there the HF model runs over s + n tokens
    (the program's sequence), loss and logits included; `prompts`, the concatenated labels and
    embeddings stay bound in peft's frame until the forward returns."""

    class PromptProgram(base):
        def __init__(self, tape, cfg, wl, params, **kw):
            self.s0 = wl.seq
            super().__init__(tape, cfg, replace(wl, seq=wl.seq + n), params, **kw)
            self._peft_locals: list = []

        def input_embedding(self, w, numel, elem):
            b, h = self.b, numel // self.T
            emb = super().input_embedding(w, b * self.s0 * h, elem)
            tp = self.tp
            pl = self.alloc(b * n, I64)  # torch.full((b, n), -100)
            labels = self.alloc(b * (self.s0 + n), I64)  # torch.cat((prefix_labels, labels))
            one = self.embedding(self.P["prompt_encoder.embedding.weight"], n * h, elem)
            prompts = tp.op1("repeat", [one], b * n * h, elem)  # repeat_backward: a sum
            one.drop()
            x = tp.op1("cat", [prompts, emb], b * (self.s0 + n) * h, elem, grad_bytes=[0, 0])
            emb.drop()
            self._peft_locals += [pl, labels, prompts, x.ref()]
            return x

        def forward(self):
            loss = super().forward()
            for t in self._peft_locals:  # PeftModelForCausalLM.forward returns
                t.drop()
            self._peft_locals.clear()
            return loss

    return PromptProgram


# ---- runnable step ------------------------------------------------------------------------------
def build_step(ctx: RunContext):
    """The peft model over the HF model (base frozen), driven by `ps.optimizer`: torch's
    optimizer over the adapters (FO) or ZOOptimizer over the adapters' named parameters (ZO)."""
    import torch
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    scheme = ctx.spec.name
    cfg, wl = ctx.cfg, ctx.wl
    ps, opt = resolve(cfg, scheme, ctx.options.get("peft"), wl)
    if opt.kind == "fo" and wl.optimizer_impl == "fused" and wl.device == "meta":
        make_optimizer(opt.name, [], wl.optimizer_impl, wl.device)  # refuses: no meta kernels
    model = ctx.model()
    task = TaskType.CAUSAL_LM if prompt_learning_applies(cfg) else None
    if scheme == "lora":
        pc = LoraConfig(
            r=ps.r,
            lora_alpha=ps.alpha,
            lora_dropout=ps.dropout,
            target_modules=list(ps.targets(cfg.family)),
            task_type=task,
            fan_in_fan_out=get_family(cfg.family).conv1d,  # Conv1D weights: (in, out)
        )
    elif scheme == "prefix":
        pc = PrefixTuningConfig(
            num_virtual_tokens=ps.tokens(scheme), prefix_projection=False, task_type=task
        )
    else:
        pc = PromptTuningConfig(num_virtual_tokens=ps.tokens(scheme), task_type=task)
    # peft creates the adapters in torch's default dtype on the default device: build them on
    # the workload's device (meta: nothing materialized; LoRA's kaiming/zeros init and the
    # embeddings' normal init are no-ops there) and keep them in the model's dtype
    with torch.device(wl.device):
        pm = get_peft_model(model, pc, autocast_adapter_dtype=False)
    dtype = ctx.torch_dtype
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad and p.dtype != dtype:
                p.data = p.data.to(dtype)
    if scheme != "lora":
        # PeftModel keeps prompt_tokens (arange(n), int64) in a plain dict; expose it as a
        # non-persistent buffer so backends count it with the model's tensors
        pm.register_buffer("memplan_prompt_tokens", pm.prompt_tokens["default"], persistent=False)
    pm.train()
    if opt.kind == "zo":
        from memplan.runtime.step import run_zo_step

        zo = for_device(ctx.options["zo"], wl.device, run=True)
        zopt = ZOOptimizer(pm.named_parameters(), opt.name, zo)
        step = ctx.step(pm, [zopt], run_zo_step, training=False)
        step.info["zo_impl"] = zo.impl
    else:
        params = [p for p in pm.parameters() if p.requires_grad]
        step = ctx.step(pm, [make_optimizer(opt.name, params, wl.optimizer_impl, wl.device)])
    step.info["optimizer"] = opt.name
    return step


def drives_peft(opt: MethodSpec) -> bool:
    """Whether `opt` can drive the adapters: a torch first-order optimizer or a ZO method with
    an update rule (not forward-grad, GaLore, PEFT or the split)."""
    return opt.kind == "fo" or (opt.kind == "zo" and isinstance(opt.model, str))


PEFT_SETTINGS = register_settings(
    SettingsGroup(
        "peft",
        PEFTSettings,
        (
            Knob(
                "optimizer",
                str,
                PEFTSettings.optimizer,
                "lora/prefix/prompt: the FO or ZO method driving them",
            ),
            Knob(
                "rank",
                int,
                None,
                "lora: rank r of A (r x in) and B (out x r), default 8",
                field="r",
            ),
            Knob("alpha", float, PEFTSettings.alpha, "lora: scaling alpha (scale = alpha / r)"),
            Knob(
                "lora_dropout",
                float,
                PEFTSettings.dropout,
                "lora: dropout on A's input",
                field="dropout",
            ),
            Knob(
                "target_modules",
                str,
                None,
                "lora: linears to adapt, e.g. q_proj,v_proj (default: the family's q/v)",
                parse=parse_targets,
            ),
            Knob(
                "virtual_tokens",
                int,
                None,
                "prefix/prompt: virtual tokens (default 5 / 10)",
                field="num_virtual_tokens",
            ),
        ),
    )
)


def _drives(options: dict[str, Any]) -> tuple[str, ...]:
    return ((options.get("peft") or PEFTSettings()).optimizer,)


def _scheme(name: str, summary: str, knobs: tuple[str, ...], order: int, note: str, **kw):
    return MethodSpec(
        name,
        "peft",
        summary,
        estimate_step,
        build_step,
        settings=("peft", "zo"),
        knobs=("optimizer", *knobs),
        drives=_drives,
        drives_kinds=("fo", "zo"),
        candidates=(
            Candidate(name, "PEFT", note, order, options=lambda: {"peft": PEFTSettings()}),
        ),
        **kw,
    )


for _spec in (
    _scheme(
        "lora",
        "low-rank adapters A (r x in), B (out x r) on frozen linears (peft)",
        ("rank", "alpha", "lora_dropout", "target_modules"),
        0,
        "LoRA r=8 on q/v with AdamW: a tiny trainable set, adapter quality",
    ),
    _scheme(
        "prefix",
        "trainable key/value prefixes per layer, no reparameterization (peft)",
        ("virtual_tokens",),
        1,
        "prefix tuning (5 tokens) with AdamW",
        aliases=("prefix-tuning",),
    ),
    _scheme(
        "prompt",
        "trainable virtual input tokens before the embeddings (peft)",
        ("virtual_tokens",),
        2,
        "prompt tuning (10 tokens) with AdamW",
        aliases=("prompt-tuning",),
    ),
):
    register(_spec)
