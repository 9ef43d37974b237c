"""Builds the example anomaly model from synthetic data, so nothing is downloaded: a linear
autoencoder (PCA) fitted with numpy on normal press readings, as an ONNX graph whose output `score`
is the squared reconstruction error of the standardized reading plus the squared excess over 4
standard deviations of any channel. The alert threshold travels in the model's metadata.

Usage: python etc/examples/bulk-anomaly/build_model.py [OUT]   (default: models/anomaly.onnx beside this file)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CHANNELS = ("temperature", "current", "vibration", "pressure")
COMPONENTS = 2
Z_LIMIT = 4.0


def normal_readings(count: int, seed: int = 7) -> np.ndarray:
    """A press under varying load: temperature, current and vibration follow the load; pressure does not."""
    rng = np.random.default_rng(seed)
    load = rng.uniform(0.0, 1.0, count)
    return np.column_stack(
        [
            60.0 + 20.0 * load + rng.normal(0, 0.8, count),
            5.0 + 3.0 * load + rng.normal(0, 0.15, count),
            0.2 + 0.3 * load + rng.normal(0, 0.02, count),
            4.0 + rng.normal(0, 0.1, count),
        ]
    ).astype(np.float32)


def scores(model: dict[str, np.ndarray], readings: np.ndarray) -> np.ndarray:
    """The graph's arithmetic in numpy (to fit the threshold)."""
    z = (readings - model["mean"]) / model["std"]
    residual = z @ model["project"]
    excess = np.maximum(np.abs(z) - Z_LIMIT, 0.0)
    return np.asarray((residual**2).sum(axis=1) + (excess**2).sum(axis=1), dtype=np.float32)


def fit(readings: np.ndarray) -> dict[str, np.ndarray]:
    mean = readings.mean(axis=0)
    std = readings.std(axis=0)
    z = (readings - mean) / std
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    basis = vt[:COMPONENTS].T
    project = np.eye(len(CHANNELS)) - basis @ basis.T  # what the kept components cannot explain
    return {k: v.astype(np.float32) for k, v in {"mean": mean, "std": std, "project": project}.items()}


def graph(model: dict[str, np.ndarray], threshold: float) -> onnx.ModelProto:
    constants = [numpy_helper.from_array(v, name) for name, v in model.items()]
    constants.append(numpy_helper.from_array(np.array([Z_LIMIT], np.float32), "limit"))
    constants.append(numpy_helper.from_array(np.array([0.0], np.float32), "zero"))
    constants.append(numpy_helper.from_array(np.array([1], np.int64), "axis"))
    nodes = [
        helper.make_node("Sub", ["readings", "mean"], ["centered"]),
        helper.make_node("Div", ["centered", "std"], ["z"]),
        helper.make_node("MatMul", ["z", "project"], ["residual"]),
        helper.make_node("ReduceSumSquare", ["residual", "axis"], ["reconstruction"], keepdims=0),
        helper.make_node("Abs", ["z"], ["magnitude"]),
        helper.make_node("Sub", ["magnitude", "limit"], ["over"]),
        helper.make_node("Max", ["over", "zero"], ["excess"]),
        helper.make_node("ReduceSumSquare", ["excess", "axis"], ["outlying"], keepdims=0),
        helper.make_node("Add", ["reconstruction", "outlying"], ["score"]),
    ]
    body = helper.make_graph(
        nodes,
        "press-anomaly",
        [helper.make_tensor_value_info("readings", TensorProto.FLOAT, ["batch", len(CHANNELS)])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        constants,
    )
    built = helper.make_model(body, opset_imports=[helper.make_opsetid("", 18)], producer_name="millgate-example")
    built.ir_version = 8  # readable by onnxruntime releases from 1.14 on
    helper.set_model_props(built, {"threshold": f"{threshold:.6f}", "channels": ",".join(CHANNELS)})
    onnx.checker.check_model(built)
    return built


def build(out: Path, samples: int = 20_000) -> float:
    """Fit on synthetic normal readings, write the model to `out`; returns the alert threshold."""
    readings = normal_readings(samples)
    model = fit(readings)
    threshold = float(np.quantile(scores(model, readings), 0.9995) * 1.5)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph(model, threshold), str(out))
    return threshold


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "models" / "anomaly.onnx"
    print(f"{target}: threshold {build(target):.3f}")
