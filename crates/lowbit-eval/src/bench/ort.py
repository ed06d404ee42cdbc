"""ONNX Runtime's half of `lowbit bench --vs-ort`.

lowbit embeds this file (include_str!), writes it into its temp folder and runs it as
`PYTHON ort.py JOB.json` after timing its own engine. JOB.json says:
  mode     "check" (import onnxruntime and say its version; run before lowbit's timing so a
           missing package fails fast) or "bench"
  model    the .onnx file
  feeds    one {file, inputs} per distinct feed set lowbit ran, in its order (run i feeds set
           i % len): the .npz holds input inputs[j] as member "i<j>" (names may hold characters
           a zip member name should not)
  threads, warmup, runs, out_dir
Bench mode times `sess.run` alone with time.perf_counter per run, saves the outputs of the
first run fed (set 0) as OUT_DIR/<k>.npy and prints one JSON line as the last stdout line.
Errors print {"error": KIND, "message": ...} (KIND: import, load, run) and exit 3.
"""

import json
import os
import sys
import time


def emit(obj):
    print(json.dumps(obj), flush=True)


def fail(kind, message):
    emit({"error": kind, "message": message})
    sys.exit(3)


def main():
    with open(sys.argv[1]) as f:
        job = json.load(f)
    try:
        import numpy as np
        import onnxruntime as ort
    except Exception as e:  # ImportError, or a broken install failing some other way
        fail("import", f"{type(e).__name__}: {e}")
    if job["mode"] == "check":
        emit({"version": ort.__version__, "python": sys.executable})
        return

    sets = []
    for feed in job["feeds"]:
        with np.load(feed["file"], allow_pickle=False) as z:
            sets.append({name: z[f"i{j}"] for j, name in enumerate(feed["inputs"])})

    so = ort.SessionOptions()
    so.intra_op_num_threads = job["threads"]
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # graph_optimization_level stays at its default (ORT_ENABLE_ALL), as users run ORT.
    t0 = time.perf_counter()
    try:
        sess = ort.InferenceSession(job["model"], sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:
        fail("load", str(e))
    load_ms = (time.perf_counter() - t0) * 1e3

    n = len(sets)
    first = None
    times = []
    label = ""
    try:
        for i in range(job["warmup"]):
            label = f"warm-up run {i + 1}"
            out = sess.run(None, sets[i % n])
            if first is None:
                first = out
        for i in range(job["runs"]):
            label = f"run {i + 1}"
            feed = sets[i % n]
            start = time.perf_counter()
            out = sess.run(None, feed)
            times.append((time.perf_counter() - start) * 1e3)
            if first is None:
                first = out
    except Exception as e:
        fail("run", f"{label}: {e}")

    outputs = []
    for k, (meta, value) in enumerate(zip(sess.get_outputs(), first)):
        entry = {"name": meta.name, "file": None, "note": None}
        if not isinstance(value, np.ndarray):
            entry["note"] = f"ONNX Runtime returned a {type(value).__name__}, not a tensor"
        elif value.dtype.kind not in "biuf":
            entry["note"] = f"ONNX Runtime returned {value.dtype} values"
        else:
            path = os.path.join(job["out_dir"], f"{k}.npy")
            np.save(path, np.ascontiguousarray(value), allow_pickle=False)
            entry["file"] = path
        outputs.append(entry)

    emit(
        {
            "version": ort.__version__,
            "python": sys.executable,
            "providers": sess.get_providers(),
            "load_ms": load_ms,
            "times_ms": times,
            "outputs": outputs,
        }
    )


if __name__ == "__main__":
    main()
