"""A model's chat template (jinja) taken apart into the pieces SQL can put together.

gptsql.chat_prompt (sql/01_tokenizer.sql) builds a prompt without jinja: the text before the first
message, each role's text before and after a message's content, the system message the template adds
when a conversation starts without one, and what opens the assistant's reply. Those pieces are found
here, at load time, by rendering the template on probe conversations and taking the renderings apart;
then the pieces are put together again for other conversations and compared with the template's own
renderings. A template the pieces cannot reproduce (one that changes a message's text, or depends on
its place other than the first system message) gives no chat format, with the reason.

Templates come from checkpoint files: they are rendered in jinja's sandbox, as transformers does,
and in a child process bounded in time and memory (a template is a program: it can loop or build a
string of any size).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from datetime import datetime

ROLES = ("system", "user", "assistant")
MAX_TEMPLATE_CHARS = 65536
MAX_RENDERED_CHARS = 1 << 20
RENDER_SECONDS = 10.0
RENDER_MEMORY = 1 << 30


class TemplateUnsupported(Exception):
    """The template's output is not made of per-role pieces; the message says how."""


@dataclass
class ChatFormat:
    begin: str                     # before the first message
    prefix: dict[str, str]         # role -> the text before a message's content
    suffix: dict[str, str]         # role -> the text after it
    generation_prompt: str         # what opens the assistant's reply
    default_system: str | None     # the system message added when the first message is not one
    stop: list[int]                # tokens that end the assistant's reply
    template: str                  # the jinja template the pieces were taken from

    def assemble(self, messages: list[dict], add_generation_prompt: bool) -> str:
        """The prompt from the pieces: what gptsql.chat_prompt computes in SQL (here only to check
        the pieces against the template at load time)."""
        text = self.begin
        if self.default_system is not None and messages[0]["role"] != "system":
            text += self.prefix["system"] + self.default_system + self.suffix["system"]
        for message in messages:
            text += self.prefix[message["role"]] + message["content"] + self.suffix[message["role"]]
        return text + (self.generation_prompt if add_generation_prompt else "")


def render(template: str, messages: list[dict], add_generation_prompt: bool, bos_token: str = "",
           eos_token: str = "") -> str:
    """The template's text for a conversation, rendered as transformers' apply_chat_template renders
    it (sandboxed, trim_blocks and lstrip_blocks, raise_exception)."""
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = tojson
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            bos_token=bos_token, eos_token=eos_token)


def _after(text: str, head: str, what: str) -> str:
    if not text.startswith(head):
        raise TemplateUnsupported(f"{what} does not extend the shorter conversation's text")
    return text[len(head):]


def _around(text: str, marker: str, what: str) -> tuple[str, str]:
    if text.count(marker) != 1:
        raise TemplateUnsupported(f"{what}: the message's text appears {text.count(marker)} times, not once")
    before, after = text.split(marker)
    return before, after


def derive(template: str, specials: dict[int, str], eos: int | None, bos_text: str = "",
           eos_text: str = "") -> ChatFormat:
    """The pieces of `template`, checked; TemplateUnsupported says why there are none."""
    if not isinstance(template, str) or not template.strip():
        raise TemplateUnsupported("the chat template is empty")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise TemplateUnsupported(f"the chat template is {len(template)} characters long (at most {MAX_TEMPLATE_CHARS})")

    def text(messages, generation=False):
        try:
            out = render(template, messages, generation, bos_text, eos_text)
        except Exception as exc:   # the template's own error (raise_exception), or a sandbox refusal
            raise TemplateUnsupported(f"rendering fails ({type(exc).__name__}: {str(exc)[:120]})") from exc
        if len(out) > MAX_RENDERED_CHARS:
            raise TemplateUnsupported("the template renders more than 1 MB for a short conversation")
        return out

    def said(role, content):
        return {"role": role, "content": content}

    # Markers for the probe messages' text, unlikely in any template.
    sys_m, user1, asst1, user2 = "\u27e6s1\u27e7", "\u27e6u1\u27e7", "\u27e6a1\u27e7", "\u27e6u2\u27e7"
    one = text([said("user", user1)])
    two = text([said("user", user1), said("assistant", asst1)])
    three = text([said("user", user1), said("assistant", asst1), said("user", user2)])
    prefix, suffix = {}, {}
    prefix["assistant"], suffix["assistant"] = _around(_after(two, one, "an assistant message"), asst1,
                                                       "an assistant message")
    prefix["user"], suffix["user"] = _around(_after(three, two, "a second user message"), user2,
                                             "a second user message")
    generation_prompt = _after(text([said("user", user1)], True), one, "the generation prompt")

    user_turn = prefix["user"] + user1 + suffix["user"]
    if not one.endswith(user_turn):
        raise TemplateUnsupported("a first user message is written differently from a later one")
    lead = one[:-len(user_turn)]                            # begin (+ a default system message)
    with_system = text([said("system", sys_m), said("user", user1)])
    if not with_system.endswith(user_turn):
        raise TemplateUnsupported("a user message after a system message is written differently")
    head, suffix["system"] = _around(with_system[:-len(user_turn)], sys_m, "a system message")
    if head.startswith(lead):                               # no default system message
        begin, prefix["system"], default_system = lead, head[len(lead):], None
    elif lead.startswith(head) and lead.endswith(suffix["system"]):
        begin, prefix["system"] = "", head
        default_system = lead[len(head):len(lead) - len(suffix["system"])]
    else:
        raise TemplateUnsupported("what comes before the first user message is neither empty nor a system message")

    stop = [] if eos is None else [eos]
    for token, special in specials.items():   # the special token that closes the assistant's turn
        if suffix["assistant"].startswith(special) and token not in stop:
            stop.append(token)
    chat = ChatFormat(begin, prefix, suffix, generation_prompt, default_system, stop, template)
    verify(chat, text)
    return chat


PROBES = [   # a conversation has at least one message (transformers refuses an empty one)
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"},
     {"role": "user", "content": "Tell me a joke.\nA short one."}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "  spaced  "},
     {"role": "assistant", "content": "ok"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
     {"role": "assistant", "content": "d"}],
]


def verify(chat: ChatFormat, text) -> None:
    """The pieces give the template's own text for every probe conversation, with and without the
    generation prompt."""
    for messages in PROBES:
        for generation in (False, True):
            if chat.assemble(messages, generation) != text(messages, generation):
                roles = ", ".join(m["role"] for m in messages) or "no messages"
                raise TemplateUnsupported(f"the pieces do not reproduce the template for a conversation of "
                                          f"{roles}{' with the generation prompt' if generation else ''}")


def derive_isolated(template: str, specials: dict[int, str], eos: int | None, bos_text: str = "",
                    eos_text: str = "", seconds: float = RENDER_SECONDS) -> ChatFormat:
    """derive() in a child process that may take `seconds` and RENDER_MEMORY bytes."""
    if not isinstance(template, str) or len(template) > MAX_TEMPLATE_CHARS:
        return derive(template, specials, eos, bos_text, eos_text)      # refused before rendering
    request = json.dumps({"template": template, "specials": list(specials.items()), "eos": eos,
                          "bos_text": bos_text, "eos_text": eos_text})
    try:
        child = subprocess.run([sys.executable, "-m", __name__], input=request, capture_output=True, text=True,
                               timeout=seconds, preexec_fn=_bounded if os.name == "posix" else None)
    except subprocess.TimeoutExpired as exc:
        raise TemplateUnsupported(f"rendering takes more than {seconds:g} s") from exc
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
        raise TemplateUnsupported(f"rendering fails ({last[:160]})")
    answer = json.loads(child.stdout)
    if "unsupported" in answer:
        raise TemplateUnsupported(answer["unsupported"])
    return ChatFormat(**answer)


def _bounded() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (RENDER_MEMORY, RENDER_MEMORY))


if __name__ == "__main__":   # the child of derive_isolated: a request on stdin, the pieces on stdout
    asked = json.load(sys.stdin)
    try:
        found = derive(asked["template"], {int(k): v for k, v in asked["specials"]}, asked["eos"], asked["bos_text"],
                       asked["eos_text"])
        print(json.dumps(asdict(found)))
    except TemplateUnsupported as exc:
        print(json.dumps({"unsupported": str(exc)}))
