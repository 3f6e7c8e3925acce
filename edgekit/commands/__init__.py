"""One module per CLI command, each exposing a Click command; :data:`edgekit.cli.COMMANDS` names them."""

from __future__ import annotations

import json
from typing import Any

import click


def emit(result: Any, as_json: bool, text: str | None = None) -> None:
    """Print ``result`` as JSON (``--json``) or as ``text`` for people."""
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        click.echo(text if text is not None else str(result))


class FiniteFloat(click.ParamType):
    """A float option that refuses inf and nan (Click's FLOAT accepts both), optionally from a minimum."""

    name = "float"

    def __init__(self, minimum: float | None = None) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        import math

        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.minimum is not None and number < self.minimum:
            self.fail(f"{value!r} is below {self.minimum:g}", param, ctx)
        return number


FINITE = FiniteFloat()
NON_NEGATIVE = FiniteFloat(0.0)
