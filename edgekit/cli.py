"""The ``edgekit`` command line: thin Click wrappers over the public API.

Each command is a module in ``edgekit/commands/`` and one line in :data:`COMMANDS`, imported only when
it runs so ``edgekit --help`` stays fast. Every command takes ``--json``. User errors (EdgekitError)
and Click's usage errors print one line (a JSON object on stdout with ``--json``) and exit 2; an
unexpected exception prints one line naming a saved traceback file. SIGTERM and SIGHUP clean up as Ctrl-C does.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import signal
import sys
from pathlib import Path

import click

from edgekit.errors import EdgekitError

# command name -> "module:attribute" of its Click command; a new command is one module and one line here
COMMANDS: dict[str, str] = {
    "inspect": "edgekit.commands.inspect:inspect_cmd",
    "convert": "edgekit.commands.convert:convert_cmd",
    "run": "edgekit.commands.run:run_cmd",
    "doctor": "edgekit.commands.doctor:doctor_cmd",
    "verify": "edgekit.commands.verify:verify_cmd",
    "serve": "edgekit.commands.serve:serve_cmd",
    "create": "edgekit.commands.create:create_cmd",
    "list": "edgekit.commands.list:list_cmd",
    "show": "edgekit.commands.show:show_cmd",
    "cp": "edgekit.commands.cp:cp_cmd",
    "rm": "edgekit.commands.rm:rm_cmd",
    "ps": "edgekit.commands.ps:ps_cmd",
    "pull": "edgekit.commands.pull:pull_cmd",
    "package": "edgekit.commands.package:package_cmd",
    "imatrix": "edgekit.commands.imatrix:imatrix_cmd",
    "quantize": "edgekit.commands.quantize:quantize_cmd",
    "eval": "edgekit.commands.eval:eval_cmd",
    "bench": "edgekit.commands.bench:bench_cmd",
    "report": "edgekit.commands.report:report_cmd",
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


class Terminated(BaseException):
    """SIGTERM / SIGHUP, raised in the main thread like KeyboardInterrupt so that every ``finally`` and
    ``except BaseException`` (temporary outputs, child processes) cleans up exactly as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(signum)


def _report(what: str, hint: str | None, as_json: bool, code: int, **extra: str) -> None:
    """One error: a JSON object on stdout with ``--json``, else one line on stderr; then exit ``code``."""
    if as_json:
        click.echo(json.dumps({"error": what, "hint": hint, **extra}))
    else:
        click.echo(f"edgekit: error: {what}" + (f"; {hint}" if hint else ""), err=True)
    sys.exit(code)


def _usage_hint(err: click.ClickException) -> str:
    ctx = getattr(err, "ctx", None)
    return f"see '{ctx.command_path} --help'" if ctx is not None else "see 'edgekit --help'"


def _save_traceback() -> Path | None:
    """Write the current exception's traceback under $EDGEKIT_HOME (else ~/.cache/edgekit) for a bug report."""
    import time
    import traceback

    home = os.environ.get("EDGEKIT_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "edgekit")
    path = Path(home) / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"edgekit {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}")
    except OSError:
        return None
    return path


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI, turning every error into one line and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args[:args.index("--")] if "--" in args else "--json" in args
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, _terminate)
    try:
        cli.main(args=args, prog_name="edgekit", standalone_mode=False)
    except EdgekitError as err:
        _report(err.what, err.fix, as_json, err.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _report("interrupted", None, as_json, 130)
    except Terminated as err:
        _report(f"stopped by {signal.Signals(err.signum).name}", None, as_json, 128 + err.signum)
    except click.ClickException as err:  # usage errors: bad or missing options, unknown commands
        message = " ".join(err.format_message().split()).rstrip(".")
        _report(message[:1].lower() + message[1:], _usage_hint(err), as_json, 2)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            _report(f"disk full ({err.filename or err.strerror})", "free space or choose another -o", as_json, 2)
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            _report(f"{err.strerror}: {err.filename}", "check the path's permissions", as_json, 2)
        _internal(err, as_json)
    except Exception as err:  # a bug, not bad input: still one line, with the traceback saved for a report
        _internal(err, as_json)


def _internal(err: Exception, as_json: bool) -> None:
    if os.environ.get("EDGEKIT_DEBUG"):
        raise err
    first = str(err).splitlines()[0] if str(err) else ""
    saved = _save_traceback()
    where = f"traceback saved to {saved}" if saved else "set EDGEKIT_DEBUG=1 for the traceback"
    _report(f"internal error: {type(err).__name__}: {first}", f"{where}; please include it in a bug report",
            as_json, 1, **({"traceback": str(saved)} if saved else {}))


if __name__ == "__main__":
    main()
