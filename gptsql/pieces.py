"""How a token's bytes read as text, for people: GPT-2 tokens can end (or start) in the middle of a
UTF-8 character, and such bytes show as <e4 bd> rather than as U+FFFD, which all look alike."""
from __future__ import annotations


def readable(raw: bytes | memoryview | None, fallback: str | None = None) -> str | None:
    """The token's text, with bytes that are not whole UTF-8 characters as <xx xx>: '中' stays,
    b'\\xe4\\xbd' becomes '<e4 bd>', b' \\xe4' becomes ' <e4>'. None (no bytes): the fallback."""
    if raw is None:
        return fallback
    data, text, bad = bytes(raw), [], []
    while data:
        try:
            text.append(data.decode("utf-8"))
            break
        except UnicodeDecodeError as exc:
            good, broken, data = data[:exc.start], data[exc.start:exc.end], data[exc.end:]
            if good:
                text.append(good.decode("utf-8"))
            elif text and text[-1].endswith(">") and bad and bad[-1] == len(text) - 1:
                text[-1] = text[-1][:-1] + " " + " ".join(f"{b:02x}" for b in broken) + ">"
                continue
            text.append("<" + " ".join(f"{b:02x}" for b in broken) + ">")
            bad.append(len(text) - 1)
    return "".join(text)
