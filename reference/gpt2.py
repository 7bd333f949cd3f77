"""GPT-2's forward pass in numpy, for checking the SQL engine (`gptsql check`) and the benchmark.

Reads like picoGPT: every name is the paper's term. Weights are the checkpoint's tensors
(HF names without the `transformer.` prefix), float32; scalars are Python floats so that nothing
silently promotes the activations to float64.
"""
from __future__ import annotations

import math

import numpy as np


def gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def layer_norm(x, g, b, eps=1e-5):
    mean = np.mean(x, axis=-1, keepdims=True)
    variance = np.var(x, axis=-1, keepdims=True)
    return g * (x - mean) / np.sqrt(variance + eps) + b


def linear(x, w, b):
    return x @ w + b


def attention(q, k, v, mask):
    return softmax(q @ k.T / math.sqrt(q.shape[-1]) + mask) @ v


class GPT2:
    """forward(tokens) gives the logits of every place; step() decodes with a KV cache."""

    def __init__(self, tensors: dict[str, np.ndarray], n_head: int, n_layer: int, eps: float = 1e-5):
        self.t, self.n_head, self.n_layer, self.eps = tensors, n_head, n_layer, eps
        self.cache: list[tuple[np.ndarray, np.ndarray]] = []

    def block(self, x, i, start):
        t, p = self.t, f"h.{i}."
        h = layer_norm(x, t[p + "ln_1.weight"], t[p + "ln_1.bias"], self.eps)
        q, k, v = np.split(linear(h, t[p + "attn.c_attn.weight"], t[p + "attn.c_attn.bias"]), 3, axis=-1)
        if start:
            k, v = np.concatenate([self.cache[i][0], k]), np.concatenate([self.cache[i][1], v])
        if len(self.cache) > i:
            self.cache[i] = (k, v)
        else:
            self.cache.append((k, v))
        n_new, n_all = q.shape[0], k.shape[0]
        mask = (1 - np.tri(n_all, dtype=x.dtype)[n_all - n_new:]) * -1e10   # causal
        heads = [attention(qh, kh, vh, mask) for qh, kh, vh in
                 zip(*(np.split(m, self.n_head, axis=-1) for m in (q, k, v)))]
        x = x + linear(np.hstack(heads), t[p + "attn.c_proj.weight"], t[p + "attn.c_proj.bias"])
        h = layer_norm(x, t[p + "ln_2.weight"], t[p + "ln_2.bias"], self.eps)
        a = gelu(linear(h, t[p + "mlp.c_fc.weight"], t[p + "mlp.c_fc.bias"]))
        return x + linear(a, t[p + "mlp.c_proj.weight"], t[p + "mlp.c_proj.bias"])

    def forward(self, tokens, start=0):
        """Logits of the places start .. start + len(tokens) - 1; earlier places from the cache."""
        if start == 0:
            self.cache = []
        t = self.t
        x = t["wte.weight"][tokens] + t["wpe.weight"][range(start, start + len(tokens))]
        for i in range(self.n_layer):
            x = self.block(x, i, start)
        h = layer_norm(x, t["ln_f.weight"], t["ln_f.bias"], self.eps)
        return (t["wte.weight"] @ h.T).T       # logits against the tied token embeddings

    def generate(self, tokens, n_new):
        """Greedy continuation with the KV cache."""
        logits = self.forward(list(tokens))
        out = []
        for _ in range(n_new):
            out.append(int(np.argmax(logits[-1])))
            logits = self.forward([out[-1]], start=len(tokens) + len(out) - 1)
        return out
