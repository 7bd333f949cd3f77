"""What a checkpoint is, whichever source it came from: its Config (the shapes of either family) and
its tensors, checked against the shapes that config implies.

Two families share the Checkpoint. GPT-2's tensors keep HF GPT2LMHeadModel's names without the
`transformer.` prefix, Conv1D layout (in, out). The Llama family's keep HF LlamaForCausalLM's names
without the `model.` prefix, torch Linear layout (out, in): see llama_shapes()."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from . import checks
from . import vocab as vocab_mod

# The Llama MLP's width a checkpoint may declare (the other shapes: checks.py's limits); SmolLM2's
# is 1536, the widest Llamas' under 30,000.
MAX_INNER = 1 << 16
ROPE_BASE_RANGE = (1.0, 1e12)
@dataclass
class Config:
    n_vocab: int
    n_ctx: int
    n_embd: int
    n_head: int
    n_layer: int
    layer_norm_epsilon: float = 1e-5   # the norms' epsilon: LayerNorm's (gpt2), RMSNorm's (llama)
    family: str = "gpt2"               # "gpt2" or "llama"
    n_kv_head: int = 0                 # key/value heads (llama: grouped-query attention); 0: n_head
    n_inner: int = 0                   # the MLP's width; 0: 4 * n_embd (GPT-2's)
    rope_theta: float = 0.0            # llama: the base of the rotary angles (theta_i = base^(-2i/head_dim))
    tied: bool = True                  # the output layer is the token embeddings (no lm_head.weight)

    def __post_init__(self):
        self.n_kv_head = self.n_kv_head or self.n_head
        self.n_inner = self.n_inner or 4 * self.n_embd

    @classmethod
    def from_hf(cls, raw, where: str) -> "Config":
        """config.json's values, each checked for its type and range (checks.py) before any is used."""
        if not isinstance(raw, dict):
            raise UserError(f"{where}: config.json is a JSON {type(raw).__name__}, not an object of settings")
        if raw.get("model_type") == "llama" or raw.get("architectures") == ["LlamaForCausalLM"]:
            return cls.from_hf_llama(raw, where)
        model_type = raw.get("model_type")
        archs = raw.get("architectures") or []
        if not isinstance(archs, list):
            archs = [archs]
        if model_type not in (None, "gpt2") or any(a not in ("GPT2LMHeadModel", "GPT2Model") for a in archs):
            raise UserError(
                f"{where}: architecture {model_type or archs} is not GPT-2 or Llama "
                "(gptsql runs GPT2LMHeadModel and LlamaForCausalLM checkpoints)"
            )
        act = raw.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise UserError(f"{where}: activation {act!r} is not GPT-2's tanh GELU (gelu_new)")
        here = f"{where}: config.json"
        config = cls(
            n_vocab=checks.whole(raw, "vocab_size", here, 1, checks.MAX_VOCAB),
            n_ctx=checks.whole(raw, "n_positions" if "n_positions" in raw else "n_ctx", here, 1, checks.MAX_CONTEXT),
            n_embd=checks.whole(raw, "n_embd", here, 1, checks.MAX_WIDTH),
            n_head=checks.whole(raw, "n_head", here, 1, checks.MAX_WIDTH),
            n_layer=checks.whole(raw, "n_layer", here, 1, checks.MAX_LAYERS),
            layer_norm_epsilon=checks.real(raw, "layer_norm_epsilon", here, *checks.EPSILON_RANGE, default=1e-5),
        )
        checks.check_shape(here, config.n_vocab, config.n_ctx, config.n_embd, config.n_head, config.n_layer)
        return config

    @classmethod
    def from_hf_llama(cls, raw: dict, where: str) -> "Config":
        """A LlamaForCausalLM config.json: the plain Llama block only (no rope scaling, biases or
        a head size other than n_embd / n_head)."""
        if raw.get("model_type") != "llama" or raw.get("architectures", ["LlamaForCausalLM"]) != ["LlamaForCausalLM"]:
            raise UserError(f"{where}: config.json is {raw.get('model_type')!r} {raw.get('architectures')}; "
                            "the Llama family is read as model_type llama, LlamaForCausalLM")
        if raw.get("hidden_act", "silu") != "silu":
            raise UserError(f"{where}: activation {raw.get('hidden_act')!r} is not Llama's SiLU (SwiGLU MLP)")
        if raw.get("attention_bias") or raw.get("mlp_bias"):
            raise UserError(f"{where}: config.json has attention or MLP biases; gptsql runs Llama blocks without biases")
        rope = raw.get("rope_parameters") or {}           # transformers 5; earlier ones: rope_theta, rope_scaling
        if not isinstance(rope, dict):
            raise UserError(f"{where}: config.json's rope_parameters is not an object")
        scaling = raw.get("rope_scaling") or ({} if rope.get("rope_type", "default") == "default" else rope)
        if scaling:
            raise UserError(f"{where}: config.json scales RoPE ({json.dumps(scaling)[:80]}); gptsql runs plain RoPE only")
        here = f"{where}: config.json"
        tied = raw.get("tie_word_embeddings", True)
        if not isinstance(tied, bool):
            raise UserError(f"{here}: tie_word_embeddings must be true or false, not {checks.shown(tied)}")
        n_head = checks.whole(raw, "num_attention_heads", here, 1, checks.MAX_WIDTH)
        config = cls(
            n_vocab=checks.whole(raw, "vocab_size", here, 1, checks.MAX_VOCAB),
            n_ctx=checks.whole(raw, "max_position_embeddings", here, 1, checks.MAX_CONTEXT),
            n_embd=checks.whole(raw, "hidden_size", here, 1, checks.MAX_WIDTH),
            n_head=n_head,
            n_layer=checks.whole(raw, "num_hidden_layers", here, 1, checks.MAX_LAYERS),
            layer_norm_epsilon=checks.real(raw, "rms_norm_eps", here, *checks.EPSILON_RANGE, default=1e-6),
            family="llama",
            n_kv_head=checks.whole(raw, "num_key_value_heads", here, 1, n_head) if "num_key_value_heads" in raw else n_head,
            n_inner=checks.whole(raw, "intermediate_size", here, 1, MAX_INNER),
            rope_theta=checks.real({"rope_theta": rope.get("rope_theta", raw.get("rope_theta", 10000.0))}, "rope_theta",
                                   here, *ROPE_BASE_RANGE),
            tied=tied,
        )
        head_dim = raw.get("head_dim")
        if head_dim is not None and head_dim != config.n_embd // config.n_head:
            raise UserError(f"{where}: head_dim {head_dim!r} is not hidden_size / num_attention_heads "
                            f"({config.n_embd // config.n_head}); gptsql runs heads of that size only")
        config.check(here)
        return config

    def check(self, where: str) -> None:
        """The shapes within what gptsql runs (checks.check_shape) and fitting together as a Llama
        block needs them, one line each."""
        checks.check_shape(where, self.n_vocab, self.n_ctx, self.n_embd, self.n_head, self.n_layer)
        if self.n_head % self.n_kv_head:
            raise UserError(f"{where}: {self.n_head} query heads cannot share {self.n_kv_head} key/value heads "
                            "evenly (n_head must be a multiple of n_kv_head)")
        if self.family == "llama" and self.head_dim % 2:
            raise UserError(f"{where}: head size {self.head_dim} is odd; rotary embeddings turn pairs of dimensions")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass
class Checkpoint:
    config: Config
    tensors: Mapping[str, np.ndarray]
    vocab: vocab_mod.Vocabulary
    source: str
    default_name: str
    extra: dict = field(default_factory=dict)

    def n_params(self) -> int:
        return int(sum(np.prod(shape) for shape in expected_shapes(self.config).values()))


def expected_shapes(c: Config) -> dict[str, tuple[int, ...]]:
    return llama_shapes(c) if c.family == "llama" else gpt2_shapes(c)


def llama_shapes(c: Config) -> dict[str, tuple[int, ...]]:
    """A Llama-family checkpoint's tensors: HF LlamaForCausalLM's names without `model.`, each
    weight (out, in) as torch's Linear holds it (y = x @ W.T). q_proj's rows are head after head,
    each head's in HF's rotate_half order (the first half of a head's dimensions turns with the
    second half); k_proj and v_proj have n_kv_head heads. lm_head.weight only when untied."""
    n, q, kv, inner = c.n_embd, c.n_head * c.head_dim, c.n_kv_head * c.head_dim, c.n_inner
    shapes = {"embed_tokens.weight": (c.n_vocab, n), "norm.weight": (n,)}
    if not c.tied:
        shapes["lm_head.weight"] = (c.n_vocab, n)
    for i in range(c.n_layer):
        p = f"layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (n,),
            p + "self_attn.q_proj.weight": (q, n), p + "self_attn.k_proj.weight": (kv, n),
            p + "self_attn.v_proj.weight": (kv, n), p + "self_attn.o_proj.weight": (n, q),
            p + "post_attention_layernorm.weight": (n,),
            p + "mlp.gate_proj.weight": (inner, n), p + "mlp.up_proj.weight": (inner, n),
            p + "mlp.down_proj.weight": (n, inner),
        })
    return shapes


def gpt2_shapes(c: Config) -> dict[str, tuple[int, ...]]:
    n, shapes = c.n_embd, {
        "wte.weight": (c.n_vocab, c.n_embd),
        "wpe.weight": (c.n_ctx, c.n_embd),
        "ln_f.weight": (c.n_embd,),
        "ln_f.bias": (c.n_embd,),
    }
    for i in range(c.n_layer):
        shapes.update({
            f"h.{i}.ln_1.weight": (n,), f"h.{i}.ln_1.bias": (n,),
            f"h.{i}.attn.c_attn.weight": (n, 3 * n), f"h.{i}.attn.c_attn.bias": (3 * n,),
            f"h.{i}.attn.c_proj.weight": (n, n), f"h.{i}.attn.c_proj.bias": (n,),
            f"h.{i}.ln_2.weight": (n,), f"h.{i}.ln_2.bias": (n,),
            f"h.{i}.mlp.c_fc.weight": (n, 4 * n), f"h.{i}.mlp.c_fc.bias": (4 * n,),
            f"h.{i}.mlp.c_proj.weight": (4 * n, n), f"h.{i}.mlp.c_proj.bias": (n,),
        })
    return shapes


def check_tensors(config: Config, tensors: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """Keep the family's tensors (without HF's `transformer.` / `model.` prefix), float32; name what
    is missing or misshapen, or holds values no model can run (checks.check_weights)."""
    prefix = "model." if config.family == "llama" else "transformer."
    clean = {}
    for key, value in tensors.items():
        key = key.removeprefix(prefix)
        clean[key] = value
    wanted = expected_shapes(config)
    missing = [k for k in wanted if k not in clean]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(f"{where}: missing tensors {', '.join(missing[:3])}{more}")
    for key, shape in wanted.items():
        if tuple(clean[key].shape) != shape:
            raise UserError(
                f"{where}: tensor {key} has shape {tuple(clean[key].shape)}, config.json implies {shape}"
            )
    kept = {k: np.ascontiguousarray(clean[k], dtype=np.float32) for k in wanted}
    for key, tensor in kept.items():
        checks.check_weights(key, tensor, where)
    return kept


def weights_limit(c: Config) -> int:
    """The most bytes a model.safetensors of this shape can take: every parameter in float64, a
    tied output matrix stored again, GPT-2's causal-mask buffers (n_ctx x n_ctx a block), and room
    for the header."""
    n_params = sum(int(np.prod(shape)) for shape in expected_shapes(c).values())
    return 8 * (n_params + c.n_vocab * c.n_embd + c.n_layer * c.n_ctx * c.n_ctx) + 100 * checks.MIB


