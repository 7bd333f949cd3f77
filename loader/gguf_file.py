"""Llama-architecture GGUF files (llama.cpp's format), read with the `gguf` package.

A GGUF holds the model's shapes, its tokenizer and its chat template as typed metadata, and its
tensors in llama.cpp's names, often quantized in blocks. Each value is checked for type and range
and each tensor for name, type and shape before anything is read further; tensors are dequantized
to float32 one at a time when the loader reads them (a non-finite value is refused then, and the
load rolls back).

llama.cpp's converter reorders the rows of each attention head's q and k projections: its RoPE
turns adjacent dimensions (2i, 2i + 1) together, HF's rotate_half turns i with i + head_dim / 2. The
rows are put back in HF's order here, so the tensors equal those of transformers' LlamaForCausalLM
loaded from the same file.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import checks
from . import vocab as vocab_mod
from .checkpoint import MAX_INNER, ROPE_BASE_RANGE, Checkpoint, Config, llama_shapes

MAGIC = b"GGUF"
MAX_GGUF_BYTES = 256 << 30
SUPPORTED_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1")
# tokenizer.ggml.token_type: 1 a normal token, 3 a control token (a special token: <|im_end|>).
NORMAL, CONTROL = 1, 3
TOKEN_TYPE_NAMES = {2: "unknown", 4: "user-defined", 5: "unused", 6: "byte"}


def check_file(path: Path) -> None:
    """A regular file (a FIFO or a device would be read forever, checks.open_regular) of a GGUF's
    size, starting with GGUF's magic."""
    fd = checks.open_regular(path, MAX_GGUF_BYTES)
    try:
        head = os.read(fd, 8)
    finally:
        os.close(fd)
    if len(head) < 8 or head[:4] != MAGIC:
        raise UserError(f"{path}: not a GGUF file (it does not start with 'GGUF'); give a .gguf file, or the "
                        "directory that holds config.json and model.safetensors")


def open_reader(path: Path):
    from gguf import GGUFReader

    try:
        return GGUFReader(path)
    except Exception as exc:   # the reader raises ValueError, struct errors or numpy errors on damage
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"{path}: cannot read the GGUF file ({detail}); it may be truncated or damaged") from exc


class Metadata:
    """The file's key-value metadata, each read as the type it must have."""

    def __init__(self, reader, where: str):
        from gguf import GGUFValueType as T

        self.fields, self.where, self.T = reader.fields, where, T
        self.kinds = {
            "int": [{t} for t in (T.UINT8, T.INT8, T.UINT16, T.INT16, T.UINT32, T.INT32, T.UINT64, T.INT64)],
            "float": [{T.FLOAT32}, {T.FLOAT64}],
            "str": [{T.STRING}],
            "bool": [{T.BOOL}],
            "str[]": [{T.ARRAY, T.STRING}],
            "int[]": [{T.ARRAY, t} for t in (T.UINT8, T.INT8, T.UINT16, T.INT16, T.UINT32, T.INT32,
                                              T.UINT64, T.INT64)],
        }

    def __contains__(self, key: str) -> bool:
        return key in self.fields

    def get(self, key: str, kind: str, default: object = ...) -> object:
        field = self.fields.get(key)
        if field is None:
            if default is ...:
                raise UserError(f"{self.where}: the GGUF metadata has no {key}")
            return default
        types = list(field.types)
        if not any(len(types) == len(k) and set(types) == k for k in self.kinds[kind]) \
                and not (kind.endswith("[]") and types[:1] == [self.T.ARRAY] and len(field.data) == 0):
            names = "/".join(getattr(t, "name", str(t)) for t in types)
            raise UserError(f"{self.where}: GGUF metadata {key} is {names}, not {kind}")
        try:
            value = field.contents()
        except (UnicodeDecodeError, ValueError) as exc:
            raise UserError(f"{self.where}: GGUF metadata {key} cannot be read ({exc})") from exc
        if kind == "float":
            value = float(value)
        elif kind == "int":
            value = int(value)
        return value

    def count(self, key: str, lo: int, hi: int, default: object = ...) -> int:
        return checks.whole({key: self.get(key, "int", default)}, key, f"{self.where}: GGUF metadata", lo, hi)

    def number(self, key: str, lo: float, hi: float, default: object = ...) -> float:
        return checks.real({key: self.get(key, "float", default)}, key, f"{self.where}: GGUF metadata", lo, hi)


def read_config(meta: Metadata, n_vocab: int, tied: bool) -> Config:
    where = meta.where
    arch = meta.get("general.architecture", "str")
    if arch != "llama":
        raise UserError(f"{where}: architecture {arch!r} is not supported; gptsql reads llama GGUF files "
                        "(GPT-2 checkpoints as directories or hub ids)")
    if meta.get("llama.expert_count", "int", 0):
        raise UserError(f"{where}: a mixture of experts (llama.expert_count); gptsql runs dense Llama blocks only")
    scaling = meta.get("llama.rope.scaling.type", "str", "none")
    if scaling != "none" or meta.get("llama.rope.scaling.factor", "float", 1.0) not in (0.0, 1.0):
        raise UserError(f"{where}: RoPE scaling {scaling!r}; gptsql runs plain RoPE only")
    n_head = meta.count("llama.attention.head_count", 1, checks.MAX_WIDTH)
    config = Config(
        n_vocab=n_vocab,
        n_ctx=meta.count("llama.context_length", 1, checks.MAX_CONTEXT),
        n_embd=meta.count("llama.embedding_length", 1, checks.MAX_WIDTH),
        n_head=n_head,
        n_layer=meta.count("llama.block_count", 1, checks.MAX_LAYERS),
        layer_norm_epsilon=meta.number("llama.attention.layer_norm_rms_epsilon", *checks.EPSILON_RANGE),
        family="llama",
        n_kv_head=meta.count("llama.attention.head_count_kv", 1, n_head, n_head),
        n_inner=meta.count("llama.feed_forward_length", 1, MAX_INNER),
        rope_theta=meta.number("llama.rope.freq_base", *ROPE_BASE_RANGE, 10000.0),
        tied=tied,
    )
    config.check(where)
    for key in ("llama.rope.dimension_count", "llama.attention.key_length", "llama.attention.value_length"):
        value = meta.get(key, "int", config.head_dim)
        if value != config.head_dim:
            raise UserError(f"{where}: {key} is {value}, not the head size {config.head_dim} "
                            "(n_embd / n_head); gptsql runs heads of that size, fully rotated")
    if meta.get("llama.vocab_size", "int", n_vocab) != n_vocab:
        raise UserError(f"{where}: llama.vocab_size is {meta.get('llama.vocab_size', 'int')} but the tokenizer "
                        f"has {n_vocab} tokens")
    return config


def read_vocabulary(meta: Metadata) -> vocab_mod.Vocabulary:
    where = meta.where
    model = meta.get("tokenizer.ggml.model", "str")
    if model != "gpt2":
        raise UserError(f"{where}: tokenizer {model!r} is not supported; gptsql reads byte-level BPE "
                        "vocabularies (tokenizer.ggml.model 'gpt2')")
    spelled = meta.get("tokenizer.ggml.tokens", "str[]")
    if not 0 < len(spelled) <= checks.MAX_VOCAB:
        raise UserError(f"{where}: {len(spelled)} tokens; a vocabulary has 1 to {checks.MAX_VOCAB}")
    kinds = meta.get("tokenizer.ggml.token_type", "int[]", [NORMAL] * len(spelled))
    if len(kinds) != len(spelled):
        raise UserError(f"{where}: tokenizer.ggml.token_type has {len(kinds)} entries for {len(spelled)} tokens")
    for token, kind in enumerate(kinds):
        if kind not in (NORMAL, CONTROL):
            raise UserError(f"{where}: token {token} ({spelled[token][:40]!r}) is of type "
                            f"{TOKEN_TYPE_NAMES.get(kind, kind)}; gptsql reads normal and control tokens only")
    merges = meta.get("tokenizer.ggml.merges", "str[]")
    pre = meta.get("tokenizer.ggml.pre", "str", "default")
    vocabulary = vocab_mod.from_spelled(spelled, (m.split(" ") for m in merges),
                                        [i for i, k in enumerate(kinds) if k == CONTROL], where, pre)
    for key, attr in (("tokenizer.ggml.bos_token_id", "bos"), ("tokenizer.ggml.eos_token_id", "eos")):
        if key in meta:
            setattr(vocabulary, attr, meta.count(key, 0, len(spelled) - 1))
    vocabulary.add_bos = meta.get("tokenizer.ggml.add_bos_token", "bool", False)
    return vocab_mod.with_chat(vocabulary, meta.get("tokenizer.chat_template", "str", None))


def gguf_names(c: Config) -> dict[str, str]:
    """llama.cpp's tensor names -> ours (HF LlamaForCausalLM's without `model.`)."""
    names = {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight"}
    if not c.tied:
        names["output.weight"] = "lm_head.weight"
    parts = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for i in range(c.n_layer):
        names.update({f"blk.{i}.{theirs}.weight": f"layers.{i}.{ours}.weight" for theirs, ours in parts.items()})
    return names


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of a q or k projection: within each head its rows come as pairs
    (i, i + head_dim / 2) side by side; HF keeps the first halves, then the second halves."""
    rows, cols = w.shape
    return np.ascontiguousarray(w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols))


class GGUFTensors(Mapping):
    """The checkpoint's tensors, dequantized to float32 (and q / k rows put in HF's order) when read;
    checked for name, type and shape when made."""

    def __init__(self, reader, config: Config, where: str):
        from gguf import GGMLQuantizationType

        self.config, self.where = config, where
        names = gguf_names(config)
        shapes = llama_shapes(config)
        self.tensors = {}
        for t in reader.tensors:
            if t.name not in names:
                raise UserError(f"{where}: tensor {t.name} is not part of a Llama model as gptsql runs it "
                                "(no biases, rope frequency tables or other extras)")
            ours = names[t.name]
            kind = GGMLQuantizationType(t.tensor_type).name
            if kind not in SUPPORTED_TYPES:
                raise UserError(f"{where}: tensor {t.name} is stored as {kind}; gptsql reads "
                                f"{', '.join(SUPPORTED_TYPES)} (convert with llama.cpp's llama-quantize, e.g. to Q8_0)")
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))   # GGUF lists the fastest dimension first
            if shape != shapes[ours]:
                raise UserError(f"{where}: tensor {t.name} has shape {shape}, the metadata implies {shapes[ours]}")
            if int(t.data.nbytes) != int(t.n_bytes):
                raise UserError(f"{where}: tensor {t.name} is cut short ({t.data.nbytes} of {t.n_bytes} bytes); "
                                "the file is truncated")
            self.tensors[ours] = t
        missing = [theirs for theirs, ours in names.items() if ours not in self.tensors]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise UserError(f"{where}: missing tensors {', '.join(missing[:3])}{more}")
        self.order = list(shapes)

    def __getitem__(self, key: str) -> np.ndarray:
        from gguf import dequantize

        t = self.tensors[key]
        weights = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(self._shape(key))
        if key.endswith("self_attn.q_proj.weight"):
            weights = unpermute_rope_rows(weights, self.config.n_head)
        elif key.endswith("self_attn.k_proj.weight"):
            weights = unpermute_rope_rows(weights, self.config.n_kv_head)
        checks.check_weights(key, weights, self.where)
        return weights

    def _shape(self, key: str) -> tuple[int, ...]:
        return tuple(int(d) for d in reversed(self.tensors[key].shape.tolist()))

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def from_gguf(path: Path, name: str | None = None, source: str | None = None) -> Checkpoint:
    """A llama-architecture GGUF file as a Checkpoint (tensors dequantized when read)."""
    check_file(path)
    where = str(path)
    reader = open_reader(path)
    meta = Metadata(reader, where)
    vocabulary = read_vocabulary(meta)
    tied = all(t.name != "output.weight" for t in reader.tensors)
    config = read_config(meta, len(vocabulary), tied)
    tensors = GGUFTensors(reader, config, where)
    default = path.name.removesuffix(".gguf") or "gguf-model"
    return Checkpoint(config, tensors, vocabulary, source or f"gguf:{os.path.realpath(path)}", name or default)
