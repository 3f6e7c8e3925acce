"""The one reader of JSON files (configs, tokenizer files, manifests): one strictness everywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError


def read_json(path: Path, what: str, *, optional: bool = False) -> dict[str, Any]:
    """The JSON object in ``path``. A missing file is {} when ``optional``, else an error; a file that is
    not valid JSON or not an object is always an error naming ``what``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if optional:
            return {}
        raise EdgekitError(f"{what} {path} is missing", "restore the file from its source") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgekitError(f"{what} {path} cannot be read ({exc})", "restore the file from its source") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nesting deeper than Python's stack
        raise EdgekitError(f"{what} {path} is not valid JSON ({str(exc)[:120]})",
                           "restore the file from its source") from None
    if not isinstance(data, dict):
        raise EdgekitError(f"{what} {path} is not a JSON object", "restore the file from its source")
    return data
