"""Render a model's own chat template the way transformers does, within limits; a conversation over one
Engine that survives its context.

transformers (``utils/chat_template_utils.py``) compiles templates in jinja2's
``ImmutableSandboxedEnvironment`` with ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols``
extension and a ``{% generation %}`` block tag, and gives them ``raise_exception``, ``strftime_now``
and a ``tojson`` filter that keeps non-ASCII text; templates read ``messages``, ``bos_token``,
``eos_token`` and ``add_generation_prompt``. The same here, so a prompt is byte-identical to what
``tokenizer.apply_chat_template`` produces. The rendered text is tokenized without added special
tokens (the template writes BOS itself when the model wants it), again as transformers does.
The environment class is jinja2's own; the four small helpers are restated here because transformers
defines them inside a function (nothing to import) and importing it costs 1-3 s at every ``run``.

A template is code shipped inside a downloaded artifact. jinja2's sandbox stops it from reaching
Python internals, but not from looping for hours or building a 4 GB string; neither transformers nor
llama-cpp-python bound that, so the limits (time, output size, the size of any value an operator or a
width argument would build) are edgekit's own, in :class:`LimitedEnvironment`.
"""

from __future__ import annotations

import ctypes
import json
import re
import threading
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import Any

from edgekit.errors import EdgekitError

MAX_OUTPUT = 4_000_000   # characters a rendered prompt may have (a 128k-token context is ~0.5M characters)
MAX_SECONDS = 5.0        # a real template renders a conversation in milliseconds


class TemplateLimit(Exception):
    """A template went past :data:`MAX_OUTPUT` or :data:`MAX_SECONDS`."""


class _Timeout(BaseException):
    """Raised inside the rendering thread when the time is up (a BaseException, so no template-level
    ``except Exception`` in jinja2's runtime swallows it)."""


def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else None


def _check_size(n: int, what: str) -> None:
    if n > MAX_OUTPUT:
        raise TemplateLimit(f"{what} would hold {n:,} items, over the limit of {MAX_OUTPUT:,}")


def _check_replace(value: Any, old: Any, new: Any, count: Any = -1) -> None:
    if isinstance(value, str) and isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
        hits = len(value) + 1 if not old else value.count(old)
        if isinstance(count, int) and count >= 0:
            hits = min(hits, count)
        _check_size(len(value) + hits * (len(new) - len(old)), "replace")


_WIDE = re.compile(r"\d{7,}")  # a field width or precision of a million or more


def _check_format(fmt: str) -> None:
    if _WIDE.search(fmt):
        raise TemplateLimit(f"a format string with a field width over the limit ({_WIDE.search(fmt).group()})")


def _make_environment() -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class LimitedEnvironment(ImmutableSandboxedEnvironment):
        """jinja2's immutable sandbox, plus size checks before ``*``, ``**`` and ``+`` build a value and
        before a call passes a huge width (``'x'.ljust(10**9)``): jinja2 routes those through
        ``call_binop`` / ``call`` for exactly this purpose, and has no limits of its own."""

        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, times in ((left, right), (right, left)):
                    if _size(seq) is not None and isinstance(times, int):
                        _check_size(_size(seq) * max(times, 0), "'*'")
            elif operator == "+" and _size(left) is not None and _size(right) is not None:
                _check_size(_size(left) + _size(right), "'+'")
            elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
                _check_size(max(abs(left).bit_length(), 1) * right // 8, "'**'")
            elif operator == "%" and isinstance(left, str):
                _check_format(left)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - jinja2's own
            for value in (*args, *kwargs.values()):
                if isinstance(value, int) and not isinstance(value, bool) and value > MAX_OUTPUT:
                    raise TemplateLimit(f"a call with the argument {value:,} (over the limit of {MAX_OUTPUT:,})")
            owner, method = getattr(__obj, "__self__", None), getattr(__obj, "__name__", "")
            if isinstance(owner, str) and method == "replace" and len(args) >= 2:
                _check_replace(owner, *args[:3])
            return super().call(__context, __obj, *args, **kwargs)

        def wrap_str_format(self, value: Any) -> Any:
            wrapped = super().wrap_str_format(value)  # jinja2 sandboxes str.format / format_map here
            if wrapped is not None:
                _check_format(value.__self__)
            return wrapped

    return LimitedEnvironment


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols

    class GenerationTag(Extension):
        """``{% generation %}...{% endgeneration %}`` marks assistant text for training masks; rendering
        only outputs its body."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    env = _make_environment()(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = _tojson
    for name in ("center", "indent"):  # filters that allocate by a width argument
        env.filters[name] = _width_checked(env.filters[name])
    env.filters["replace"] = _replace_checked(env.filters["replace"])
    env.filters["format"] = _format_checked(env.filters["format"])
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def _width_checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(value: Any, width: Any = 80, *args: Any, **kwargs: Any) -> Any:
        if isinstance(width, int) and width > MAX_OUTPUT:
            raise TemplateLimit(f"a width of {width:,} (over the limit of {MAX_OUTPUT:,})")
        return fn(value, width, *args, **kwargs)

    return wrapped


def _replace_checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(eval_ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> Any:
        _check_replace(str(s), old, new, -1 if count is None else count)
        return fn(eval_ctx, s, old, new, count)

    wrapped.jinja_pass_arg = getattr(fn, "jinja_pass_arg", None)  # type: ignore[attr-defined]
    return wrapped


def _format_checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            _check_format(value)
        return fn(value, *args, **kwargs)

    return wrapped


def _render_limited(compiled: Any, context: dict[str, Any]) -> str:
    """Render with :data:`MAX_OUTPUT` and :data:`MAX_SECONDS` enforced. The time limit raises an exception
    in the rendering thread itself (CPython's PyThreadState_SetAsyncExc): a template is Python bytecode
    once compiled, so it stops at the next instruction; no library offers a time limit for jinja2."""
    me = threading.get_ident()
    lock = threading.Lock()
    state = {"done": False, "fired": False}

    def fire() -> None:
        with lock:
            if not state["done"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(me), ctypes.py_object(_Timeout))

    timer = threading.Timer(MAX_SECONDS, fire)
    timer.daemon = True
    parts: list[str] = []
    total = 0
    timer.start()
    try:
        try:
            for piece in compiled.generate(**context):
                total += len(piece)
                if total > MAX_OUTPUT:
                    raise TemplateLimit(f"its output passed the limit of {MAX_OUTPUT:,} characters")
                parts.append(piece)
        finally:
            with lock:
                state["done"] = True
            timer.cancel()
    except _Timeout:
        raise TemplateLimit(f"it ran longer than {MAX_SECONDS:g} s") from None
    return "".join(parts)


def render(template: str, messages: list[dict[str, Any]], *, bos_token: str | None = "", eos_token: str | None = "",
           add_generation_prompt: bool = True, name: str = "the model", **extra: Any) -> str:
    """The prompt text for ``messages`` ([{"role": ..., "content": ...}, ...]); ``name`` says whose template
    it is in error messages (the artifact's path)."""
    from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError

    where = f"the chat template of {name}"
    try:
        compiled = _compile(template)
    except TemplateSyntaxError as err:
        raise EdgekitError(f"{where} does not compile: {err} (line {err.lineno})",
                           "fix the artifact's chat template, or run with --raw (plain completion)") from None
    context = dict(messages=messages, bos_token=bos_token or "", eos_token=eos_token or "",
                   add_generation_prompt=add_generation_prompt, **extra)
    try:
        return _render_limited(compiled, context)
    except TemplateLimit as err:
        raise EdgekitError(f"{where} was stopped: {err}",
                           "the template is broken or hostile; fix it, or run with --raw (plain completion)") from None
    except SecurityError as err:
        raise EdgekitError(f"{where} tried something the sandbox forbids: {err}",
                           "do not trust this artifact's template; run with --raw (plain completion)") from None
    except TemplateError as err:
        if _raised_by_template(err):  # raise_exception(...): the template refuses this conversation
            raise EdgekitError(f"{where} refused the conversation: {err}",
                               "check the messages' roles and order") from None
        raise EdgekitError(f"{where} is broken: {type(err).__name__}: {err}",
                           "fix the artifact's chat template, or run with --raw (plain completion)") from None
    except (RecursionError, MemoryError, ArithmeticError, TypeError, ValueError, LookupError, AttributeError) as err:
        raise EdgekitError(f"{where} is broken: {type(err).__name__}: {str(err)[:200]}",
                           "fix the artifact's chat template, or run with --raw (plain completion)") from None


def _raised_by_template(err: Exception) -> bool:
    from jinja2.exceptions import TemplateRuntimeError, UndefinedError

    return type(err).__name__ == "TemplateError" and not isinstance(err, (UndefinedError, TemplateRuntimeError))


def prompt_tokens(engine: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of the rendered chat for ``engine`` (an Engine)."""
    if not engine.chat_template:
        raise EdgekitError(f"{engine.path} has no chat template", "run with --raw (plain completion)")
    text = render(engine.chat_template, messages, bos_token=engine.bos_token, eos_token=engine.eos_token,
                  add_generation_prompt=add_generation_prompt, name=engine.path)
    return engine.tokenize(text, add_special=False)


class ChatSession:
    """A conversation over one Engine: history as messages, the KV cache reused from turn to turn (the
    re-rendered history is a prefix of the next prompt, so prefill only runs the new tokens).

    When the history no longer fits the context (with room left for an answer), the oldest turns are
    dropped, the system message kept; :attr:`dropped` counts the dropped messages and ``on_trim`` is
    called the first time it happens."""

    def __init__(self, engine: Any, system: str | None = None,
                 on_trim: Callable[[int, int], None] | None = None) -> None:
        if not engine.chat_template:
            raise EdgekitError(f"{engine.path} has no chat template", "pass -p PROMPT for a plain completion")
        self.engine = engine
        self.system = system
        self.messages: list[dict[str, Any]] = self._start()
        self.dropped = 0
        self.on_trim = on_trim

    def _start(self) -> list[dict[str, Any]]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def clear(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages = self._start()

    def fit(self, messages: list[dict[str, Any]], room: int) -> tuple[list[dict[str, Any]], list[int]]:
        """``messages`` with the oldest turns dropped until the prompt leaves ``room`` tokens free in the
        context, and its tokens. A single message too long for the context is the caller's error."""
        head = 1 if messages and messages[0]["role"] == "system" else 0
        limit = self.engine.context_length - room
        while True:
            tokens = prompt_tokens(self.engine, messages)
            body = messages[head:]
            if len(tokens) <= limit or len(body) <= 1:
                break
            # drop the oldest user turn and everything up to the next user message (its answer)
            cut = next((i for i in range(1, len(body)) if body[i]["role"] == "user"), len(body) - 1)
            messages = messages[:head] + body[cut:]
            self.dropped += cut
            if self.on_trim is not None and self.dropped == cut:
                self.on_trim(cut, self.engine.context_length)
        if len(tokens) >= self.engine.context_length:
            raise EdgekitError(f"the message needs {len(tokens)} tokens with the chat template, the context holds "
                               f"{self.engine.context_length}", "shorten it, or start with a larger --context")
        return messages, tokens

    def ask(self, text: str, params: Any = None, *, room: int | None = None, **generate_options: Any) -> Any:
        """Add the user's ``text``, generate the answer (runtimes.generate.Generation), keep both. ``room``:
        tokens kept free for the answer when older turns must go (default: a quarter of the context, at
        most ``max_tokens``). A cancelled answer is kept as far as it got."""
        from runtimes.generate import generate

        if room is None:
            room = min(generate_options.get("max_tokens", 256), self.engine.context_length // 4)
        messages, tokens = self.fit([*self.messages, {"role": "user", "content": text}], room)
        result = generate(self.engine, tokens, params, **generate_options)
        self.messages = [*messages, {"role": "assistant", "content": result.text}]
        return result
