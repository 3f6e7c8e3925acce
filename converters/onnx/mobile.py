"""Mobile readiness with onnxruntime's own tools: the usability checker's NNAPI / CoreML partitioning, and
conversion to the ORT format with the ``required_operators.config`` of a reduced-size build.

The checker is run as ``onnxruntime.tools.mobile_helpers.usability_checker.analyze_model(...,
skip_optimize=True)`` runs it (infer shapes, partition against each EP's supported-operator list), with
the model read without its external weights: partitioning needs only the graph, so checking a model
larger than RAM costs no more memory than checking a tiny one.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
from typing import Any

from edgekit.errors import EdgekitError


def usability(model_path: pathlib.Path) -> dict[str, Any]:
    """{ep: {partitions, nodes, supported_nodes, supported_share, unsupported_ops, ..., verdict}} for NNAPI and
    the two CoreML flavours, with shapes as exported (require_fixed_input_sizes=True, as a device sees them)."""
    import onnx
    from onnxruntime.tools.mobile_helpers import usability_checker as uc

    # analyze_model(skip_optimize=True)'s path: graph only. Its default first optimizes with an onnxruntime
    # session, which would read every weight into memory; the graph is already in the form the EPs see
    model = onnx.load(str(model_path), load_external_data=False)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    checks = {
        "NNAPI": lambda m: uc.check_nnapi_partitions(m, True),
        "CoreML MLProgram": lambda m: uc.check_coreml_partitions(m, True, "coreml_supported_mlprogram_ops.md"),
        "CoreML NeuralNetwork": lambda m: uc.check_coreml_partitions(m, True, "coreml_supported_neuralnetwork_ops.md"),
    }
    report: dict[str, Any] = {}
    for ep, check in checks.items():
        info = check(model)
        report[ep] = {
            "partitions": info.num_partitions,
            "nodes": info.num_nodes,
            "supported_nodes": info.num_supported_nodes,
            "supported_share": round(info.num_supported_nodes / max(info.num_nodes, 1), 4),
            "unsupported_ops": sorted(info.unsupported_ops),
            "nodes_unsupported_due_to_dynamic_shape": info.nodes_unsupported_due_to_dynamic_input,
            "ops_with_unsupported_rank": sorted(info.ops_with_unsupported_rank),
            "verdict": info.suitability().name,  # YES / MAYBE / NO, the checker's own rule
        }
    return report


def to_ort(directory: pathlib.Path) -> list[pathlib.Path]:
    """Convert every .onnx in ``directory`` to .ort beside it and write required_operators.config there."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):  # the tool prints its progress; keep --json output clean
            convert_onnx_models_to_ort(directory, output_dir=directory, optimization_styles=[OptimizationStyle.Fixed])
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EdgekitError(f"onnxruntime could not convert the model to ORT format ({first[:200]})",
                           "the ORT format holds at most 2 GiB; export without --ort for larger models") from None
    configs = sorted(directory.glob("required_operators*.config"))
    for config in configs:  # the tool names the models by absolute path: the temporary build directory's
        config.write_text(config.read_text().replace(str(directory.resolve()) + "/", ""))
    return sorted(directory.glob("*.ort")) + configs
