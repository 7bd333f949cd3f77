"""The Llama block in numpy, beside GPT-2's (gpt2.py), for checking the SQL engine on SmolLM2 and
the random Llama shapes.

What changes from GPT-2, in the papers' terms:
  RMSNorm (Zhang & Sennrich 2019)   x / sqrt(mean(x^2) + eps) * g: no mean taken out, no bias.
  RoPE (Su et al. 2021)             no position embeddings: each query and key is turned, pair of
                                    dimensions by pair, by an angle place * theta_i with
                                    theta_i = base^(-2i / head_dim). HF pairs dimension i with
                                    i + head_dim / 2 (rotate_half); the checkpoint's q / k rows are
                                    in that order (loader/gguf_file.py puts GGUF's back).
  grouped-query attention           n_head query heads share n_kv_head key/value heads: query head h
  (Ainslie et al. 2023)             reads key/value head h // (n_head / n_kv_head).
  SwiGLU (Shazeer 2020)             MLP(x) = down(silu(gate(x)) * up(x)), silu(z) = z * sigmoid(z).
  output                            logits against the token embeddings (tied) or lm_head.
Weights are the checkpoint's tensors (sources.llama_shapes: HF names without `model.`, (out, in)),
float32; scalars stay Python floats so that nothing promotes the activations to float64.
"""
from __future__ import annotations

import math

import numpy as np

from .gpt2 import softmax


def rms_norm(x, g, eps):
    return g * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def silu(x):
    return x / (1 + np.exp(-x))


def linear(x, w):
    return x @ w.T          # torch Linear's layout: one row per output unit


def rotary_angles(places, head_dim, base):
    """cos and sin of place * theta_i for each place, repeated for the two halves (rotate_half)."""
    inverse = (1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)).astype(np.float32)
    angles = np.outer(np.asarray(places, dtype=np.float32), inverse)
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope(x, cos, sin):
    return x * cos + rotate_half(x) * sin


class Llama:
    """forward(tokens) gives the logits of every place; generate() decodes greedily with a KV cache.
    The same interface as GPT2."""

    def __init__(self, tensors, config):
        self.t, self.c = tensors, config
        self.cache: list[tuple[np.ndarray, np.ndarray]] = []
        self.output = tensors["embed_tokens.weight"] if config.tied else tensors["lm_head.weight"]

    def attention(self, x, i, start):
        t, c, p = self.t, self.c, f"layers.{i}.self_attn."
        d, n_new = c.head_dim, x.shape[0]
        cos, sin = rotary_angles(range(start, start + n_new), d, c.rope_theta)
        q = linear(x, t[p + "q_proj.weight"]).reshape(n_new, c.n_head, d).transpose(1, 0, 2)
        k = linear(x, t[p + "k_proj.weight"]).reshape(n_new, c.n_kv_head, d).transpose(1, 0, 2)
        v = linear(x, t[p + "v_proj.weight"]).reshape(n_new, c.n_kv_head, d).transpose(1, 0, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if start:
            k = np.concatenate([self.cache[i][0], k], axis=1)
            v = np.concatenate([self.cache[i][1], v], axis=1)
        if len(self.cache) > i:
            self.cache[i] = (k, v)
        else:
            self.cache.append((k, v))
        n_all = k.shape[1]
        mask = (1 - np.tri(n_all, dtype=x.dtype)[n_all - n_new:]) * np.float32(-1e10)   # causal
        group = c.n_head // c.n_kv_head
        heads = [softmax(q[h] @ k[h // group].T / np.float32(math.sqrt(d)) + mask) @ v[h // group]
                 for h in range(c.n_head)]
        return linear(np.hstack(heads), t[p + "o_proj.weight"])

    def mlp(self, x, i):
        t, p = self.t, f"layers.{i}.mlp."
        return linear(silu(linear(x, t[p + "gate_proj.weight"])) * linear(x, t[p + "up_proj.weight"]),
                      t[p + "down_proj.weight"])

    def block(self, x, i, start):
        t, eps, p = self.t, self.c.layer_norm_epsilon, f"layers.{i}."
        x = x + self.attention(rms_norm(x, t[p + "input_layernorm.weight"], eps), i, start)
        return x + self.mlp(rms_norm(x, t[p + "post_attention_layernorm.weight"], eps), i)

    def forward(self, tokens, start=0):
        """Logits of the places start .. start + len(tokens) - 1; earlier places from the cache."""
        if start == 0:
            self.cache = []
        x = self.t["embed_tokens.weight"][list(tokens)]
        for i in range(self.c.n_layer):
            x = self.block(x, i, start)
        return linear(rms_norm(x, self.t["norm.weight"], self.c.layer_norm_epsilon), self.output)

    def generate(self, tokens, n_new, stop=()):
        """Greedy continuation with the KV cache (ends early at a token of `stop`)."""
        logits = self.forward(list(tokens))
        out = []
        for _ in range(n_new):
            out.append(int(np.argmax(logits[-1])))
            if out[-1] in stop:
                break
            logits = self.forward([out[-1]], start=len(tokens) + len(out) - 1)
        return out
