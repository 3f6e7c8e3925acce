"""The ``edgekit`` command line: thin Click wrappers over the public API.

Every command takes ``--json``. User errors (EdgekitError) print one line and exit 2; nothing prints
a traceback unless EDGEKIT_DEBUG=1.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from edgekit.errors import EdgekitError


def emit(result: Any, as_json: bool, text: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        click.echo(text if text is not None else str(result))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgekit")
def cli() -> None:
    """edgekit: convert, quantize, run, serve and benchmark causal LMs on devices."""


@cli.command("inspect")
@click.argument("model")
@click.option("--adapter", metavar="DIR", help="PEFT LoRA adapter to merge on the fly.")
@click.option("--allow-pickle", is_flag=True, help="Read pytorch_model.bin (torch.load weights_only=True).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect_cmd(model: str, adapter: str | None, allow_pickle: bool, as_json: bool) -> None:
    """Describe MODEL (a local Hugging Face directory or hub id org/name[@rev])."""
    from edgekit.inspect import format_text, inspect

    info = inspect(model, adapter=adapter, allow_pickle=allow_pickle)
    emit(info, as_json, format_text(info))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI, turning user errors into one line and exit code 2."""
    try:
        cli.main(args=argv, prog_name="edgekit", standalone_mode=False)
    except EdgekitError as err:
        click.echo(f"edgekit: error: {err}", err=True)
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        click.echo("edgekit: aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(2)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except Exception as err:  # a bug, not bad input: still one line unless debugging
        if os.environ.get("EDGEKIT_DEBUG"):
            raise
        first = str(err).splitlines()[0] if str(err) else ""
        click.echo(f"edgekit: internal error: {type(err).__name__}: {first} (set EDGEKIT_DEBUG=1 for the traceback)",
                   err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
