"""The ``edgekit`` command line: thin Click wrappers over the public API.

Each command is a module in ``edgekit/commands/`` and one line in :data:`COMMANDS`, imported only when
it runs so ``edgekit --help`` stays fast. Every command takes ``--json``. User errors (EdgekitError)
print one line and exit 2; nothing prints a traceback unless EDGEKIT_DEBUG=1.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from edgekit.errors import EdgekitError

# command name -> "module:attribute" of its Click command; a new command is one module and one line here
COMMANDS: dict[str, str] = {
    "inspect": "edgekit.commands.inspect:inspect_cmd",
    "convert": "edgekit.commands.convert:convert_cmd",
    "run": "edgekit.commands.run:run_cmd",
    "doctor": "edgekit.commands.doctor:doctor_cmd",
    "imatrix": "edgekit.commands.imatrix:imatrix_cmd",
    "quantize": "edgekit.commands.quantize:quantize_cmd",
    "eval": "edgekit.commands.eval:eval_cmd",
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use (Click's documented lazy-loading pattern); command
    modules import only Click at top level, so listing them for ``--help`` stays cheap."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgekit")
def cli() -> None:
    """edgekit: take a Hugging Face causal LM to the device."""


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
