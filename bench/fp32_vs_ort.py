"""FP32 latency of lowbit and ONNX Runtime on the corpus models, same inputs, same run.

Not a test: a table to read. For every model and thread count it times
  - lowbit: `lowbit bench MODEL --data DIR --threads N --warmup 10 --json` on .npy inputs this
    script writes to a temp folder (one sample per run; MiniLM rows cut to their real length
    by lowbit's mask trimming), and
  - ONNX Runtime: InferenceSession(intra_op_num_threads=N, inter_op_num_threads=1), 10 warm-up
    runs, then one `run` per sample on the same rows (MiniLM rows cut the same way),
and prints the median per-sample latency of each and their ratio.

Inputs: MiniLM: 300 STS-B dev sentences (input_ids_a / attention_mask_a, rows evenly spread);
`MODEL@L` (e.g. paraphrase-MiniLM-L3-v2@45): the same sentences padded (or cut) to exactly L
tokens and timed at that length on both sides (lowbit with --no-trim), as a batch padded to its
longest sentence runs; MNIST models: the first 500 test images, preprocessed as each model's
sidecar JSON says; tv_mobilenet_v2_random and efficientnet-lite0: 30 N(0, 1) images
[1, 3, 224, 224] (seed 0; FP32 latency does not depend on the pixel values).

Run through bench/fp32_vs_ort.sh, which builds lowbit and uses the test venv's Python.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

MODELS = [
    "paraphrase-MiniLM-L3-v2",
    "paraphrase-MiniLM-L3-v2@16",
    "paraphrase-MiniLM-L3-v2@45",
    "paraphrase-MiniLM-L3-v2@128",
    "efficientnet-lite0",
    "mnist-8_cntk",
    "burn_mnist_bn",
    "mnist_mobilenetv2",
    "mnist_resnet",
    "speed/tv_mobilenet_v2_random",
]


def mnist_rows(corpus, cfg, n):
    imgs = np.load(os.path.join(corpus, "dev/data/mnist_test_0-4999/images.npy"))[:n]
    x = (imgs.astype(np.float32) * np.float32(cfg["scale"]) - np.float32(cfg["mean"])) / np.float32(cfg["std"])
    return {cfg["input"]: x[:, None, :, :].astype(np.float32)}


def minilm_rows(corpus, n):
    d = os.path.join(corpus, "dev/data/stsb_dev")
    ids = np.load(os.path.join(d, "input_ids_a.npy"))
    mask = np.load(os.path.join(d, "attention_mask_a.npy"))
    pick = np.linspace(0, len(ids) - 1, n).astype(int)
    return {"input_ids": ids[pick], "attention_mask": mask[pick]}


def fixed_length(arrays, length):
    """MiniLM rows padded with 0 (mask 0) or cut to exactly `length` tokens."""
    out = {}
    for k, v in arrays.items():
        w = np.zeros((len(v), length), dtype=v.dtype)
        n = min(length, v.shape[1])
        w[:, :n] = v[:, :n]
        out[k] = w
    return out


def split_name(name):
    """`model@L` -> (model, L); `model` -> (model, None)."""
    base, _, length = name.partition("@")
    return base, (int(length) if length else None)


def inputs_for(name, corpus, rows):
    name, length = split_name(name)
    cfg_path = os.path.join(corpus, "dev/models", name + ".json")
    cfg = json.load(open(cfg_path))
    if name.startswith("paraphrase-MiniLM"):
        arrays = minilm_rows(corpus, rows["minilm"])
        return fixed_length(arrays, length) if length else arrays
    if name.startswith("speed/") or name == "efficientnet-lite0":
        rng = np.random.default_rng(0)
        shape = [rows["mobilenet"]] + list(cfg.get("input_shape", [1, 3, 224, 224])[1:])
        return {cfg["input"]: rng.standard_normal(shape, dtype=np.float32)}
    return mnist_rows(corpus, cfg, rows["mnist"])


def ort_rows(arrays, trim=True):
    """Per-sample feeds [1, ...]; rows cut to their real length when a mask input exists and
    `trim`."""
    n = len(next(iter(arrays.values())))
    mask_name = next((k for k in arrays if "mask" in k.lower()), None) if trim else None
    for i in range(n):
        feed = {k: v[i : i + 1] for k, v in arrays.items()}
        if mask_name is not None:
            m = feed[mask_name][0]
            nz = np.nonzero(m)[0]
            length = max(int(nz[-1]) + 1 if len(nz) else 1, 1)
            feed = {k: (v[:, :length] if v.ndim >= 2 and v.shape[1] == m.shape[0] else v) for k, v in feed.items()}
        yield feed


def time_ort(model, arrays, threads, trim=True, warmup=10):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    feeds = [{k: v for k, v in f.items() if k in wanted} for f in ort_rows(arrays, trim)]
    for i in range(warmup):
        sess.run(None, feeds[i % len(feeds)])
    times = []
    for f in feeds:
        t0 = time.perf_counter()
        sess.run(None, f)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_lowbit(lowbit, model, data_dir, threads, trim=True, warmup=10):
    cmd = [lowbit, "--quiet", "bench", model, "--data", data_dir, "--threads", str(threads),
           "--warmup", str(warmup), "--json"] + ([] if trim else ["--no-trim"])
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        msg = (p.stderr.strip().splitlines() or ["failed"])[0]
        return None, msg
    return json.loads(p.stdout)["median_ms"], None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--lowbit", default=os.path.join(here, "..", "target", "release", "lowbit"))
    ap.add_argument("--corpus", default=os.path.join(here, "..", "..", "shared", "corpus"))
    ap.add_argument("--models", nargs="*", default=MODELS, help="subset of: " + " ".join(MODELS))
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--rows", type=float, default=1.0, help="scale the number of samples (e.g. 0.1 for a quick look)")
    args = ap.parse_args()
    rows = {k: max(1, int(v * args.rows)) for k, v in {"minilm": 300, "mnist": 500, "mobilenet": 30}.items()}

    results = []
    with tempfile.TemporaryDirectory(prefix="lowbit-bench-") as tmp:
        for name in args.models:
            base, length = split_name(name)
            trim = length is None
            model = os.path.join(args.corpus, "dev/models", base + ".onnx")
            arrays = inputs_for(name, args.corpus, rows)
            data_dir = os.path.join(tmp, name.replace("/", "_"))
            os.makedirs(data_dir)
            for k, v in arrays.items():
                np.save(os.path.join(data_dir, k + ".npy"), v)
            for t in args.threads:
                lb, err = time_lowbit(args.lowbit, model, data_dir, t, trim)
                ref = time_ort(model, arrays, t, trim)
                results.append((name, t, lb, ref, err))
                line = f"{name:32} {t:>2} threads  lowbit " + (f"{lb:8.3f} ms" if lb is not None else "   failed  ")
                print(line + f"  ORT {ref:8.3f} ms", file=sys.stderr, flush=True)

    print()
    print(f"| {'model':32} | threads | lowbit median ms | ORT median ms | lowbit/ORT |")
    print(f"|{'-' * 34}|---------|------------------|---------------|------------|")
    for name, t, lb, ref, err in results:
        lbs = f"{lb:.3f}" if lb is not None else "failed"
        ratio = f"{lb / ref:.2f}" if lb is not None else "-"
        print(f"| {name:32} | {t:>7} | {lbs:>16} | {ref:>13.3f} | {ratio:>10} |")
    failures = [(n, t, e) for n, t, lb, _, e in results if lb is None]
    for n, t, e in failures:
        print(f"\nlowbit failed on {n} ({t} threads): {e}")
    print(f"\nORT {ort.__version__}, {os.cpu_count()} CPUs; samples: MiniLM {rows['minilm']}, "
          f"MNIST {rows['mnist']}, mobilenet {rows['mobilenet']}; 10 warm-up runs each.")


if __name__ == "__main__":
    main()
