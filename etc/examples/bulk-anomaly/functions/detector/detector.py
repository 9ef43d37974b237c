"""Anomaly detection at the edge: scores each press reading with the ONNX model deployed as the
`anomaly-model` resource (onnxruntime, CPU, one thread) and publishes an alert when the score passes
the threshold stored in the model. Normal readings produce nothing: only alerts leave the plant in
real time; the raw readings go to S3 in bulk.
"""

import os
from pathlib import Path

from functions import sdk

CHANNELS = ("temperature", "current", "vibration", "pressure")
_detector = []  # the loaded model, kept by the warm worker


class Detector:
    def __init__(self, model_dir):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        path = next(Path(model_dir).glob("*.onnx"))
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.threshold = float(self.session.get_modelmeta().custom_metadata_map["threshold"])

    def score(self, reading):
        import numpy

        row = numpy.array([[float(reading[c]) for c in CHANNELS]], dtype=numpy.float32)
        return float(self.session.run(["score"], {"readings": row})[0][0])


def model_dir():
    """The millgate variable, else Greengrass-style: prefix + the resource's path."""
    return os.environ.get("MILLGATE_RESOURCE_ANOMALY_MODEL") or os.environ["AWS_GG_RESOURCE_PREFIX"] + "/ml/anomaly"


def assess(detector, device, reading):
    """The alert for a reading, or None when it is normal (or not a complete reading)."""
    if not all(isinstance(reading.get(c), (int, float)) for c in CHANNELS):
        return None
    score = detector.score(reading)
    if score <= detector.threshold:
        return None
    return {
        "device": device,
        "ts": reading.get("ts"),
        "score": round(score, 3),
        "threshold": round(detector.threshold, 3),
        "reading": {c: reading[c] for c in CHANNELS},
    }


def function_handler(event, context):
    if not isinstance(event, dict):
        return None
    if not _detector:
        _detector.append(Detector(model_dir()))
    topic = context.client_context.custom["subject"]  # plant/<device>/sensors
    device = topic.split("/")[1] if topic.count("/") >= 2 else "unknown"
    alert = assess(_detector[0], device, event)
    if alert is not None:
        sdk.publish(f"alerts/{device}/anomaly", alert, qos=1)
    return alert
