"""The token-by-token loop: one SQL statement per token, streamed as text."""
from __future__ import annotations

import codecs
from typing import Callable, Iterator

import psycopg

Progress = Callable[[int, int], None]  # (prompt places computed, prompt places in all)


class Generation:
    """A run of gptsql: started in SQL (tokenized, validated, recorded), then stepped one token at a
    time. Text is decoded incrementally, so a token that ends mid-character waits for the next.
    A long prompt is fed PREFILL_CHUNK places per statement (the last chunk by the first step), so
    that `on_prefill` can show progress between them and Ctrl-C never waits for a whole prompt."""

    PREFILL_CHUNK = 64

    def __init__(self, conn: psycopg.Connection, model, prompt, max_tokens, temperature=0.0, top_k=0,
                 top_p=1.0, seed=None, record=True, truncate_left=False, allow_special=False, kind="generate"):
        self.conn = conn
        self.max_tokens = max_tokens
        row = conn.execute(
            """select run_id, model_id, tokens, eot from gptsql.start_run(%s, %s, %s, %s, %s, %s, %s, %s,
                      kind => %s, truncate_left => %s, allow_special => %s)""",
            [model, prompt, max_tokens, temperature, top_k, top_p, seed, record, kind, truncate_left, allow_special],
        ).fetchone()
        self.run_id, self.model_id, self.prompt_tokens, self.eot = row
        self.tokens: list[int] = []
        self.generated = 0
        self.decoded = 0   # generated tokens whose bytes went into stream()'s decoder
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.finished = False
        self.on_prefill: Progress | None = None

    def prefill(self) -> tuple[list[int], int]:
        """Feed the prompt's chunks but the last: (the last chunk, its start)."""
        prompt, chunk = list(self.prompt_tokens), self.PREFILL_CHUNK
        start = 0
        while len(prompt) - start > chunk:
            self.feed(prompt[start:start + chunk], start)
            start += chunk
            if self.on_prefill:
                self.on_prefill(start, len(prompt))
        return prompt[start:], start

    def feed(self, fresh: list[int], start: int) -> None:
        """Feed `fresh` (places start, ...) into the run's cache without choosing a token."""
        self.conn.execute("select gptsql.feed(%s, %s, %s)", [self.run_id, fresh, start], prepare=True)

    def steps(self) -> Iterator[tuple[int, bytes, float]]:
        fresh, start = self.prefill() if self.max_tokens else ([], 0)
        for i in range(self.max_tokens):
            token, raw, probability, _logit = self.step(fresh, start)
            if i == 0 and self.on_prefill:  # the first token ends the prefill
                self.on_prefill(len(self.prompt_tokens), len(self.prompt_tokens))
            start += len(fresh)
            fresh = [token]
            self.tokens.append(token)
            self.generated += 1
            if token == self.eot:
                break
            yield token, raw, probability
        self.stop("done")

    def predict(self, top_n: int) -> list[tuple]:
        """The distribution after the prompt (a run started with kind="predict", max_tokens 0):
        (rank, token, piece, probability, logit) rows, best first; the run is finished."""
        fresh, start = self.prefill()
        rows = self.conn.execute("select * from gptsql.predict_run(%s, %s, %s, %s)",
                                 [self.run_id, fresh, start, top_n]).fetchall()
        self.finished = True
        if self.on_prefill:
            self.on_prefill(len(self.prompt_tokens), len(self.prompt_tokens))
        return rows

    def step(self, fresh: list[int], start: int) -> tuple:
        """Feed `fresh` (places start, ...): (token, bytes, probability, logit) of the next token."""
        return chosen(self.conn.execute("select token, bytes, probability, logit from gptsql.step(%s, %s, %s)",
                                        [self.run_id, fresh, start], prepare=True).fetchone())

    def texts(self) -> Iterator[tuple[int | None, bytes, float | None, str]]:
        """steps() with the text each token adds to the stream: (token, bytes, probability, text).
        The bytes are decoded incrementally: a token that ends mid-character adds "" and the next
        one the whole character; bytes that never make one read as U+FFFD, as gptsql.detokenize
        reads them. After the last token, bytes still held back come as (None, b"", None, text)."""
        for token, raw, probability in self.steps():
            self.decoded += 1
            yield token, raw, probability, self.decoder.decode(raw)
        tail = self.decoder.decode(b"", final=True)
        if tail:
            yield None, b"", None, tail

    def stream(self) -> Iterator[str]:
        """The continuation's text, as it comes."""
        for _token, _raw, _probability, text in self.texts():
            if text:
                yield text

    def unstreamed(self) -> str:
        """After a Ctrl-C: the text of the tokens the run recorded that stream() never decoded (a
        step can commit while the interrupt cancels its fetch), and a character held back, so that
        what was printed is what was recorded."""
        try:
            rows = self.conn.execute(
                """select t.bytes from gptsql.run_token r
                   join gptsql.run u on u.id = r.run_id
                   join gptsql.token t on t.model_id = u.model_id and t.token = r.token
                   where r.run_id = %s and not r.is_prompt and r.token <> %s
                   order by r.place offset %s""", [self.run_id, self.eot, self.decoded]).fetchall()
        except psycopg.Error:
            rows = []
        return self.decoder.decode(b"".join(raw for raw, in rows), final=True)

    def recorded(self) -> int:
        """Generated tokens as the run recorded them: a Ctrl-C can land after a step committed but
        before its token reached Python, one more than self.generated counted."""
        try:
            return self.conn.execute("select count(*) from gptsql.run_token where run_id = %s and not is_prompt",
                                     [self.run_id]).fetchone()[0]
        except psycopg.Error:
            return self.generated

    def stop(self, status: str, error: str | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        for _attempt in range(2):
            try:
                self.conn.execute("select gptsql.finish_run(%s, %s, %s)", [self.run_id, status, error])
                return
            except psycopg.errors.QueryCanceled:
                continue  # Ctrl-C's cancel request arrived late and hit this statement: once more
            except psycopg.Error:
                return  # the server is gone: the run is marked failed when it is back (Database.connect)


def chosen(row: tuple | None) -> tuple:
    """A step's (token, bytes, probability, logit). No row: the model's vocabulary went while the
    step ran (an unload commits without waiting for generations), which the caller reports."""
    if row is None:
        raise psycopg.errors.NoDataFound("the step chose no token: the model's rows are gone")
    return row
