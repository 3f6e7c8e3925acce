"""`edgekit package`: a verified bundle for a phone app (Android: onnxruntime, iOS: Core ML)."""

from __future__ import annotations

import click

from edgekit.commands import emit


class _DefaultBuild(click.Group):
    """``edgekit package SOURCE ...`` builds; ``edgekit package verify DIR`` verifies: anything that is not a
    subcommand name goes to ``build``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["build", *args]
        return super().parse_args(ctx, args)


@click.group("package", cls=_DefaultBuild)
def package_cmd() -> None:
    """Bundle a model for a phone app, or verify a bundle.

    \b
    edgekit package ARTIFACT|MODEL --platform android|ios [-o DIR] [--zip] [--json]
    edgekit package verify DIR [--json]
    """


@package_cmd.command("build")
@click.argument("source", metavar="ARTIFACT|MODEL")
@click.option("--platform", required=True, type=click.Choice(["android", "ios"]), help="Target platform.")
@click.option("-o", "--output", type=click.Path(), help="Bundle directory (default: ./NAME-PLATFORM-bundle).")
@click.option("--zip", "zip_output", is_flag=True, help="Also write DIR.zip.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), help="From a checkpoint: weight precision.")
@click.option("--context", type=int, help="From a checkpoint: context window (KV slots) in tokens.")
@click.option("--prefill-chunk", type=int, help="From a checkpoint, android: tokens per prefill call (1 = one graph).")
@click.option("--force", is_flag=True, help="Overwrite an existing bundle.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def build_cmd(source: str, platform: str, output: str | None, zip_output: bool, dtype: str | None,
              context: int | None, prefill_chunk: int | None, force: bool, as_json: bool) -> None:
    """Write the bundle for ARTIFACT (edgekit convert output) or MODEL (checkpoint, converted first)."""
    from edgekit.package import package

    result = package(source, platform, output, zip_output=zip_output, dtype=dtype, context=context,
                     prefill_chunk=prefill_chunk, force=force, progress=not as_json)
    verdicts = result.get("mobile_usability")
    text = (f"wrote {result['output']} ({platform}, {result['dtype']}, {result['bytes'] / 1e6:.1f} MB, context "
            f"{result['context_length']}) in {result['seconds']:.1f} s")
    if verdicts:
        text += "\nNNAPI: " + ", ".join(f"{g} {v['NNAPI']}" for g, v in verdicts.items()) \
            + f"; preferred provider {result['provider']}, fallback CPU"
    if result.get("zip"):
        text += f"\nzip: {result['zip']} ({result['zip_bytes'] / 1e6:.1f} MB)"
    emit(result, as_json, text)


@package_cmd.command("verify")
@click.argument("bundle", metavar="DIR")
@click.option("--no-numeric", is_flag=True, help="Schema, hashes and structure only (skip the reference loop).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify_cmd(bundle: str, no_numeric: bool, as_json: bool) -> None:
    """Check DIR's bundle.json (schema), every file's sha256, the graphs' I/O, and the reference loop."""
    from edgekit.package import verify

    report = verify(bundle, numeric=not no_numeric)
    numeric = report["numeric"]
    if isinstance(numeric, dict):
        numeric = f"reference loop reproduced the {numeric['greedy_tokens']} greedy self-test tokens"
    emit(report, as_json, f"ok: {report['bundle']} ({report['platform']}): schema v{report['schema_version']}, "
                          f"{report['files']} files hashed, structure ok; {numeric}")
