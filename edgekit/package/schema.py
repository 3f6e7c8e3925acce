"""``bundle.json``'s schema (``bundle.schema.json`` beside this file) and the version this edgekit reads."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).with_name("bundle.schema.json")
BUNDLE_FILE = "bundle.json"


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def check(data: Any) -> None:
    """Raise a one-line EdgekitError unless ``data`` is a bundle.json this edgekit reads."""
    import jsonschema

    if not isinstance(data, dict):
        raise EdgekitError("bundle.json is not a JSON object", "re-create the bundle with edgekit package")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise EdgekitError("bundle.json has no integer schema_version", "re-create the bundle with edgekit package")
    if version > SCHEMA_VERSION:
        raise EdgekitError(f"bundle.json has schema version {version}, newer than the {SCHEMA_VERSION} this edgekit "
                           "reads", "upgrade edgekit, or re-create the bundle with this version")
    validator = jsonschema.Draft202012Validator(schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        message = error.message.splitlines()[0][:200]
        raise EdgekitError(f"bundle.json does not match its schema at {where}: {message}",
                           "re-create the bundle with edgekit package")
