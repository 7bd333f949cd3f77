"""A conversation with a chat model: one recorded run over every turn. The first turn's prompt is
the conversation laid out in the model's chat format (gptsql.chat_prompt); each later message is
fed after the reply (gptsql.chat_next), so the KV cache of the turns before is read, not computed
again."""
from __future__ import annotations

import codecs
from typing import Iterator

import psycopg
from psycopg.types.json import Jsonb

from .generation import Generation


class Conversation(Generation):
    def __init__(self, conn: psycopg.Connection, model: str | None, messages: list[dict], max_tokens: int,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                 record: bool = True):
        prompt = conn.execute("select gptsql.chat_prompt(%s, %s)", [Jsonb(messages), model]).fetchone()[0]
        context = conn.execute("select n_ctx from gptsql.model where id = gptsql.model_id(%s)", [model]).fetchone()[0]
        # The run is as long as the model's window; each reply is cut at max_tokens.
        super().__init__(conn, model, prompt, max_tokens, temperature, top_k, top_p, seed, record,
                         allow_special=True, kind="chat")
        self.model, self.reply_tokens, self.room = model, max_tokens, context
        self.fresh, self.start = list(self.prompt_tokens), 0
        self.ended_by_stop = False

    def reply(self) -> Iterator[str]:
        """Stream the model's reply to the conversation so far, until it ends its turn or has said
        reply_tokens tokens."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.ended_by_stop = False
        if self.start == 0 and len(self.fresh) > self.PREFILL_CHUNK:
            self.fresh, self.start = self.prefill()
        for _ in range(self.reply_tokens):
            if self.start + len(self.fresh) >= self.room:
                break
            token, raw, _probability, _logit = self.step(self.fresh, self.start)
            self.start += len(self.fresh)
            self.fresh = [token]
            self.generated += 1
            if token == self.eot:
                self.ended_by_stop = True
                break
            text = decoder.decode(raw)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def say(self, content: str) -> None:
        """The user's next message, fed with the next reply."""
        text = self.conn.execute("select gptsql.chat_next(%s, %s, %s)",
                                 [content, self.model, self.ended_by_stop]).fetchone()[0]
        tokens = self.conn.execute("select gptsql.tokenize(%s, %s, true)", [text, self.model]).fetchone()[0]
        self.fresh = self.fresh + tokens       # the reply's last token (its stop, or where it was cut) first
