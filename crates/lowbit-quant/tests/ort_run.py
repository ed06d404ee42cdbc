"""Runs an ONNX model in ONNX Runtime (CPU) on .npy inputs and writes its outputs as .npy.

    python ort_run.py MODEL.onnx DIR [--no-optimize]

DIR/inputs.json: {"samples": [[["input name", "file.npy"], ...], ...]} (files relative to DIR).
Writes DIR/out_<sample>_<k>.npy for output k of each sample (session output order) and
DIR/outputs.json with the output names. Used by lowbit-quant's tests to check that every model
lowbit writes loads and runs in ONNX Runtime, and to compare ORT's outputs with lowbit's engine.
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort


def main():
    model, d = sys.argv[1], sys.argv[2]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    if "--no-optimize" in sys.argv[3:]:
        # The graph as written (QDQ semantics), without ORT's integer-kernel fusions.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    spec = json.load(open(os.path.join(d, "inputs.json")))
    names = [o.name for o in sess.get_outputs()]
    for s, sample in enumerate(spec["samples"]):
        feeds = {name: np.load(os.path.join(d, f)) for name, f in sample}
        outs = sess.run(None, feeds)
        for k, o in enumerate(outs):
            np.save(os.path.join(d, f"out_{s}_{k}.npy"), np.ascontiguousarray(o))
    json.dump({"outputs": names}, open(os.path.join(d, "outputs.json"), "w"))


if __name__ == "__main__":
    main()
