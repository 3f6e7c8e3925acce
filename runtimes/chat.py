"""Render a model's own chat template the way transformers does.

transformers (``utils/chat_template_utils.py``) compiles templates in jinja2's
``ImmutableSandboxedEnvironment`` with ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols``
extension and a ``{% generation %}`` block tag, and gives them ``raise_exception``, ``strftime_now``
and a ``tojson`` filter that keeps non-ASCII text; templates read ``messages``, ``bos_token``,
``eos_token`` and ``add_generation_prompt``. The same here, so a prompt is byte-identical to what
``tokenizer.apply_chat_template`` produces. The rendered text is tokenized without added special
tokens (the template writes BOS itself when the model wants it), again as transformers does.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from edgekit.errors import EdgekitError


def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    from jinja2 import nodes
    from jinja2.exceptions import TemplateSyntaxError
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        """``{% generation %}...{% endgeneration %}`` marks assistant text for training masks; rendering
        only outputs its body."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except TemplateSyntaxError as err:
        raise EdgekitError(f"the model's chat template does not compile: {err}",
                           "fix chat_template in the artifact, or run without --chat") from None


def render(template: str, messages: list[dict[str, Any]], *, bos_token: str | None = "", eos_token: str | None = "",
           add_generation_prompt: bool = True, **extra: Any) -> str:
    """The prompt text for ``messages`` ([{"role": ..., "content": ...}, ...])."""
    from jinja2.exceptions import TemplateError

    try:
        return _compile(template).render(messages=messages, bos_token=bos_token or "", eos_token=eos_token or "",
                                         add_generation_prompt=add_generation_prompt, **extra)
    except TemplateError as err:
        raise EdgekitError(f"the model's chat template failed: {err}", "check the messages' roles and order") from None


def prompt_tokens(engine: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of the rendered chat for ``engine`` (an Engine)."""
    if not engine.chat_template:
        raise EdgekitError(f"{engine.path} has no chat template", "run without --chat (plain completion)")
    text = render(engine.chat_template, messages, bos_token=engine.bos_token, eos_token=engine.eos_token,
                  add_generation_prompt=add_generation_prompt)
    return engine.tokenize(text, add_special=False)


class ChatSession:
    """A conversation over one Engine: history as messages, the KV cache reused from turn to turn (the
    re-rendered history is a prefix of the next prompt, so prefill only runs the new tokens)."""

    def __init__(self, engine: Any, system: str | None = None) -> None:
        if not engine.chat_template:
            raise EdgekitError(f"{engine.path} has no chat template", "pass -p PROMPT for a plain completion")
        self.engine = engine
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []

    def ask(self, text: str, params: Any = None, **generate_options: Any) -> Any:
        """Add the user's ``text``, generate the answer (runtimes.generate.Generation), keep both."""
        from runtimes.generate import generate

        messages = [*self.messages, {"role": "user", "content": text}]
        result = generate(self.engine, prompt_tokens(self.engine, messages), params, **generate_options)
        self.messages = [*messages, {"role": "assistant", "content": result.text}]
        return result
