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
