"""`edgekit doctor`: what this host can run."""

from __future__ import annotations

import click

from edgekit.commands import emit


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor_cmd(as_json: bool) -> None:
    """What this host can run: CPU, memory, backends, onnxruntime providers, device profiles."""
    from runtimes.doctor import format_text, report

    rep = report()
    emit(rep, as_json, format_text(rep))
