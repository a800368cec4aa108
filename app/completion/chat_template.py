"""The chat template: which one, and rendering it safely.

Where it comes from, in order: GATEWAY_CHAT_TEMPLATE (the name of one
shipped in app/completion/chat_templates/, e.g. `mobilellama-v1`, or a path to a Jinja
file), else the tokenizer's own `chat_template`, else none (chat requests
get a 400 that names GATEWAY_CHAT_TEMPLATE). A base model such as
MobileLLaMA-1.4B-Base ships none.

Rendered in Jinja's immutable sandbox, as transformers renders chat
templates: a template (or a message) cannot reach Python internals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from app.errors import InvalidRequest, TemplateMissing

SHIPPED = Path(__file__).parent / "chat_templates"


def load_source(setting: str | None, tokenizer: Any) -> str | None:
    """The template text, or None when there is none."""
    if setting:
        shipped = SHIPPED / f"{setting}.jinja"
        path = shipped if shipped.is_file() else Path(setting)
        return path.read_text()
    own = getattr(tokenizer, "chat_template", None)
    return own if isinstance(own, str) and own else None


def _raise(message: str) -> None:
    raise TemplateError(message)


class ChatTemplate:
    def __init__(self, source: str | None, bos: str, eos: str):
        self.source = source
        self._bos, self._eos = bos, eos
        self._template = None
        if source is not None:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise
            self._template = env.from_string(source)

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt text for `messages`, ending with the assistant's turn."""
        if self._template is None:
            raise TemplateMissing(
                "This model has no chat template: set GATEWAY_CHAT_TEMPLATE to a Jinja "
                "file or a shipped template name (mobilellama-v1), or use /v1/completions."
            )
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except TemplateError as exc:
            raise InvalidRequest(
                f"The chat template refused these messages: {str(exc)[:200]}", param="messages"
            ) from None
