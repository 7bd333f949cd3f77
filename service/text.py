"""Text for people: a token's piece (GPT-2 tokens can end, or start, in the middle of a UTF-8
character: such bytes show as <e4 bd>, never as U+FFFD, which all look alike), a prompt's check,
and a database error as one line."""
from __future__ import annotations

import psycopg

from ..errors import UserError
from ..server.db import first_line


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


def run_pieces(conn, run_id: int) -> dict[int, str]:
    """The run's tokens by place, readable."""
    return {place: readable(raw) for place, raw in conn.execute(
        """select rt.place, tok.bytes from gptsql.run_token rt join gptsql.run r on r.id = rt.run_id
           join gptsql.token tok on tok.model_id = r.model_id and tok.token = rt.token
           where rt.run_id = %s""", [run_id])}


def token_pieces(conn, model_id: int, tokens) -> dict[int, str]:
    """Readable pieces of these token ids of the model."""
    return {token: readable(raw) for token, raw in conn.execute(
        "select token, bytes from gptsql.token where model_id = %s and token = any(%s)",
        [model_id, list(set(tokens))])}


def utf8_problem(value: str) -> str | None:
    """Why `value` (argv, which Python decodes with surrogateescape, or a JSON string) cannot be
    sent as UTF-8 text: the first byte that is not UTF-8 and its offset in bytes; None when it can."""
    for i, char in enumerate(value):
        if "\udc80" <= char <= "\udcff":
            offset = len(value[:i].encode("utf-8", "surrogateescape"))
            return f"byte 0x{ord(char) - 0xdc00:02x} at offset {offset}"
        if "\ud800" <= char <= "\udfff":
            return f"character {i} is a lone surrogate (U+{ord(char):04X})"
    return None


def check_prompt(prompt: str) -> str:
    """A prompt that PostgreSQL text can hold: UTF-8, no NUL."""
    problem = utf8_problem(prompt)
    if problem:
        raise UserError(f"the prompt is not UTF-8 text ({problem}); convert it to UTF-8")
    if "\x00" in prompt:
        raise UserError(f"the prompt contains a NUL character (U+0000) at offset {prompt.index(chr(0))}; "
                        "PostgreSQL text cannot hold it: remove it")
    return prompt


def db_error_message(exc: psycopg.Error) -> str:
    """A database error as one line: the server's message, its hint in parentheses."""
    diag = getattr(exc, "diag", None)
    primary = (diag.message_primary if diag and diag.message_primary else None) or first_line(exc)
    hint = diag.message_hint if diag else None
    return f"{primary} ({hint})" if hint else primary


def connection_lost(exc: psycopg.OperationalError) -> bool:
    """Whether an OperationalError is the connection's (no SQLSTATE: libpq's own; class 08; the
    server shutting down or crashed) rather than a statement's (a full disk, a deadlock, a lock or
    statement timeout: the server said what went wrong)."""
    state = getattr(exc, "sqlstate", None)
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")
