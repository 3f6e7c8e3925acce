"""The interactive chat of ``edgekit run ARTIFACT`` (no ``-p``).

On a terminal, lines are read with prompt_toolkit (editing, Up/Down history); from a pipe or file, one
line at a time (what scripts and tests rely on), with the same commands. Ctrl-C during an answer stops
that answer and returns to the prompt; at an empty prompt a second Ctrl-C, Ctrl-D or ``/bye`` leaves.
Input that is not valid UTF-8 has its bad bytes replaced by U+FFFD (one warning line), never ending
the chat. The conversation and its trimming to the context live in :class:`runtimes.chat.ChatSession`.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

import click

from edgekit.errors import EdgekitError

PROMPT, MORE = ">>> ", "... "
FENCE = '"""'

HELP = f"""Commands:
  /help              this text
  /set               show the sampling options
  /set NAME VALUE    change one: temperature, top_k, top_p, min_p, repeat_penalty, presence_penalty,
                     frequency_penalty, seed (none = random), num_predict (most tokens per answer)
  /set system TEXT   a new system message (the conversation starts over)
  /clear             forget the conversation (the system message stays)
  /bye               leave (Ctrl-D at the prompt too)
Multi-line input: start a message with {FENCE} and end it with {FENCE}, or end a line with \\ to continue it.
Ctrl-C stops an answer; at an empty prompt, Ctrl-C twice leaves. Up/Down recall earlier lines."""

# /set name -> parser; sampling fields go to SamplingParams (which checks ranges), the rest to the loop
_INT = ("top_k", "seed", "num_predict", "penalty_last_n")
_FLOAT = ("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty")
_ALIASES = {"max_tokens": "num_predict", "temp": "temperature"}


def valid_text(text: str) -> tuple[str, bool]:
    """``text`` with anything that is not valid UTF-8 replaced by U+FFFD, and whether something was.
    Undecodable bytes reach Python as lone surrogates (argv and stdin use surrogateescape)."""
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the original bytes, when they came from the OS
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace"), True


def warn_replaced(where: str) -> None:
    click.echo(f"edgekit: warning: {where} was not valid UTF-8; the invalid bytes were replaced by U+FFFD",
               err=True)


class PipeReader:
    """Lines from a non-terminal stdin, decoded leniently (bad bytes -> U+FFFD)."""

    interactive = False

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdin.buffer

    def read(self, prompt: str) -> str:
        raw = self.stream.readline()
        if not raw:
            raise EOFError
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        if "\ufffd" in text and b"\xef\xbf\xbd" not in raw:
            warn_replaced("the input line")
        return text


class TerminalReader:
    """prompt_toolkit line editing with an in-memory history (Up/Down), on a real terminal."""

    interactive = True

    def __init__(self) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import InMemoryHistory

        self.session: Any = PromptSession(history=InMemoryHistory())

    def read(self, prompt: str) -> str:
        text = self.session.prompt(prompt)
        text, replaced = valid_text(text)
        if replaced:
            warn_replaced("the input line")
        return text


def reader_for_stdin() -> PipeReader | TerminalReader:
    if sys.stdin.isatty() and sys.stdout.isatty():
        return TerminalReader()
    return PipeReader()


class Chat:
    """The read-answer loop. ``report(result)`` prints a turn's numbers (or its JSON)."""

    def __init__(self, session: Any, params: Any, *, max_tokens: int, stop: tuple[str, ...],
                 on_text: Callable[[str], None] | None, report: Callable[[Any], None]) -> None:
        self.session, self.params = session, params
        self.max_tokens, self.stop = max_tokens, stop
        self.on_text, self.report = on_text, report
        session.on_trim = self._trimmed

    @staticmethod
    def _trimmed(dropped: int, context: int) -> None:
        click.echo(f"(the conversation outgrew the context of {context} tokens: the oldest turns are dropped "
                   "from now on, the system message kept)", err=True)

    def loop(self, reader: PipeReader | TerminalReader) -> None:
        interrupted = False  # the last thing at the prompt was Ctrl-C
        while True:
            try:
                text = self._read_message(reader)
            except EOFError:
                if reader.interactive:
                    click.echo("", err=True)
                return
            except KeyboardInterrupt:
                if interrupted:
                    click.echo("", err=True)
                    return
                interrupted = True
                click.echo("(Ctrl-C again, Ctrl-D or /bye to leave)", err=True)
                continue
            interrupted = False
            if text is None:
                continue
            if text.startswith("/"):
                if self._command(text) == "bye":
                    return
                continue
            self._answer(text)

    def _read_message(self, reader: PipeReader | TerminalReader) -> str | None:
        """One message (multi-line blocks joined), or None for a blank line."""
        line = reader.read(PROMPT)
        stripped = line.strip()
        if not stripped:
            return None
        if stripped.startswith(FENCE):
            body = stripped[len(FENCE):]
            lines = []
            while not body.rstrip().endswith(FENCE):
                lines.append(body)
                body = reader.read(MORE)
            lines.append(body.rstrip()[:-len(FENCE)])
            return "\n".join(lines).strip("\n") or None
        lines = []
        while line.endswith("\\"):
            lines.append(line[:-1])
            line = reader.read(MORE)
        lines.append(line)
        return "\n".join(lines).strip() or None

    def _command(self, text: str) -> str | None:
        name, _, rest = text.partition(" ")
        rest = rest.strip()
        try:
            if name in ("/bye", "/exit", "/quit"):
                return "bye"
            if name in ("/help", "/?"):
                click.echo(HELP, err=True)
            elif name == "/clear":
                self.session.clear()
                click.echo("(conversation cleared)", err=True)
            elif name == "/set":
                self._set(rest)
            else:
                raise EdgekitError(f"unknown command {name}", "/help lists the commands")
        except EdgekitError as err:
            click.echo(f"edgekit: error: {err}", err=True)
        return None

    def settings(self) -> dict[str, Any]:
        return {**self.params.as_dict(), "num_predict": self.max_tokens}

    def _set(self, rest: str) -> None:
        if not rest:
            for key, value in self.settings().items():
                click.echo(f"{key} = {value}", err=True)
            if self.session.system:
                click.echo(f"system = {self.session.system}", err=True)
            return
        key, _, value = rest.partition(" ")
        key, value = _ALIASES.get(key, key), value.strip()
        if key == "system":
            self.session.system = value or None
            self.session.clear()
            click.echo("set system message (conversation cleared)", err=True)
            return
        if key not in _INT + _FLOAT:
            raise EdgekitError(f"unknown option {key!r}", "/set lists the options")
        if not value:
            raise EdgekitError(f"/set {key} needs a value", f"e.g. /set {key} {self.settings()[key] or 1}")
        parsed: Any
        if key == "seed" and value.lower() in ("none", "random", "off"):
            parsed = None
        else:
            try:
                parsed = int(value) if key in _INT else float(value)
            except ValueError:
                raise EdgekitError(f"/set {key}: {value!r} is not a number", "pass a number") from None
            if isinstance(parsed, float) and not math.isfinite(parsed):
                raise EdgekitError(f"/set {key}: {value} is not finite", "pass a finite number")
        if key == "num_predict":
            if parsed < 1:
                raise EdgekitError(f"/set num_predict {parsed} must be at least 1", "pass a positive count")
            self.max_tokens = parsed
        else:
            self.params = dataclasses.replace(self.params, **{key: parsed})  # SamplingParams checks the range
        click.echo(f"set {key} = {parsed}", err=True)

    def _answer(self, text: str) -> None:
        """Generate one answer; Ctrl-C stops it (the part so far stays in the conversation)."""
        stopped = threading.Event()
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, lambda signum, frame: stopped.set())
        try:
            result = self.session.ask(text, self.params, max_tokens=self.max_tokens, stop=self.stop,
                                      on_text=self.on_text, cancel=stopped.is_set)
        except EdgekitError as err:  # a message too long, a template that refuses it: the chat goes on
            click.echo(f"edgekit: error: {err}", err=True)
            return
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if result.finish_reason == "cancelled":
            click.echo("\n[answer stopped]", err=True)
        self.report(result)
