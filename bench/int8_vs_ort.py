"""INT8 latency of lowbit and ONNX Runtime on the corpus models, same files, same inputs, same run.

Not a test: a table to read. First the quantized files are written to a temp folder:
  - MNIST CNNs (mnist-8_cntk, burn_mnist_bn, mnist_mobilenetv2, mnist_resnet): `lowbit -q
    quantize MODEL -o OUT --data CALIB --preprocess SIDECAR.json` (static int8, default options),
    CALIB holding MNIST test rows 0..99 (uint8 [100, 28, 28]) as `<input>.npy`, the input name
    from the model's sidecar JSON; the sidecar also gives the preprocessing.
  - paraphrase-MiniLM-L3-v2: static int8 the same way (default options), calibrated on STS-B dev
    side-b sentences 0..99 (input_ids.npy, attention_mask.npy, padded to 45; lowbit cuts each
    batch to its real length); dynamic int8 (`--mode dynamic`); and ONNX Runtime's own
    `onnxruntime.quantization.quantize_dynamic(MODEL, OUT, per_channel=False)` (default options
    otherwise), so that lowbit's engine is also timed on a file ORT wrote.
  - speed/tv_mobilenet_v2_random: static int8 (default options) calibrated on 8 N(0, 1) float32
    images [8, 3, 224, 224] (numpy default_rng(0)) saved as `input.npy`.
  - efficientnet-lite0: static int8 (default options) calibrated on the first 100 of the
    corpus' ImageNet photos (`--data dev/data/imagenet_sample1000 --samples 100 --preprocess
    SIDECAR.json`, decoded as score.py does).

Then every file (FP32 included) is timed at each thread count by
    lowbit -q bench FILE --vs-ort --python PY --threads T --json --warmup 20 --runs R [--data DIR]
which times lowbit's `Session::run` at batch 1, then ONNX Runtime (this Python's onnxruntime,
intra_op_num_threads=T, inter_op 1, sequential, default graph optimizations) on the same file
with the same feeds in the same order, same warm-up and runs (docs/json.md, `bench --json`).
The table gives both medians, their ratio (< 1: lowbit faster), lowbit's speedup over lowbit's
own FP32 model at the same thread count (FP32 median / int8 median), and the largest absolute
difference between lowbit's and ORT's outputs on the first feed, over all graph outputs.

Inputs timed (never the calibration rows): MNIST: test rows 1000..1099 (uint8, `--preprocess`
with the sidecar); MiniLM: STS-B dev side-a sentences 0..49 (bench cuts each row to its own mask
length, as ORT users feed unpadded sentences); the speed model: bench's synthetic input (N(0, 1),
fixed seed, [1, 3, 224, 224]; EfficientNet-Lite0 likewise). MiniLM is timed again on the same
sentences at fixed lengths 16, 45 and 128 tokens with `--no-trim` (16 cuts them, 128 pads them
with id 0 / mask 0): what a server that pads a batch to one length runs. R = 200 for MNIST and MiniLM, 30
for the speed model and EfficientNet-Lite0, times
--runs-scale; samples are cycled when R exceeds them.

Run through bench/int8_vs_ort.sh, which builds lowbit and uses the test venv's Python.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

MNIST = ["mnist-8_cntk", "burn_mnist_bn", "mnist_mobilenetv2", "mnist_resnet"]
MINILM = "paraphrase-MiniLM-L3-v2"
SPEED = "speed/tv_mobilenet_v2_random"
EFFNET = "efficientnet-lite0"
GROUPS = ["mnist", "minilm", "speed", "effnet"]
CALIB_ROWS = 100
MNIST_BENCH_ROWS = (1000, 1100)
MINILM_BENCH_ROWS = 50
# Fixed lengths MiniLM is also timed at, padded (`--no-trim`).
MINILM_FIXED_LENGTHS = (16, 45, 128)
SPEED_CALIB_IMAGES = 8
RUNS = {"mnist": 200, "minilm": 200, "speed": 30, "effnet": 30}
WARMUP = 20


def first_error_line(stderr, default):
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("error")]
    return (errs or lines or [default])[0][:200]


def lowbit_quantize(lowbit, model, out, args):
    """Returns None, or the error line."""
    r = subprocess.run([lowbit, "-q", "quantize", model, "-o", out, "--force"] + args,
                       capture_output=True, text=True)
    if r.returncode != 0:
        return first_error_line(r.stderr, f"lowbit quantize exited {r.returncode}")
    return None


def ort_quantize_dynamic(model, out):
    try:
        from onnxruntime.quantization import quantize_dynamic
        quantize_dynamic(model, out, per_channel=False)
    except Exception as e:  # noqa: BLE001 - reported in the table
        return f"ORT quantize_dynamic: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    return None


def lowbit_bench(lowbit, model, threads, runs, extra):
    cmd = [lowbit, "-q", "bench", model, "--vs-ort", "--python", sys.executable, "--threads",
           str(threads), "--json", "--warmup", str(WARMUP), "--runs", str(runs)] + extra
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None, first_error_line(r.stderr, f"lowbit bench exited {r.returncode}")
    try:
        return json.loads(r.stdout), None
    except json.JSONDecodeError:
        return None, "lowbit bench printed no JSON: " + r.stdout.strip()[:120]


def need(paths):
    """The first of paths that does not exist, or None."""
    return next((p for p in paths if not os.path.exists(p)), None)


def mnist_group(corpus, tmp, lowbit):
    """[(model, [(variant, file or 'error: ...')], bench args)] for the MNIST CNNs."""
    images_path = os.path.join(corpus, "dev/data/mnist_test_0-4999/images.npy")
    images = np.load(images_path)
    out = []
    for name in MNIST:
        model = os.path.join(corpus, f"dev/models/{name}.onnx")
        sidecar = os.path.join(corpus, f"dev/models/{name}.json")
        inp = json.load(open(sidecar))["input"]
        calib = os.path.join(tmp, f"{name}_calib")
        data = os.path.join(tmp, f"{name}_bench")
        os.makedirs(calib)
        os.makedirs(data)
        np.save(os.path.join(calib, inp + ".npy"), images[:CALIB_ROWS])
        np.save(os.path.join(data, inp + ".npy"), images[MNIST_BENCH_ROWS[0]:MNIST_BENCH_ROWS[1]])
        q = os.path.join(tmp, f"{name}.lowbit-static.onnx")
        err = lowbit_quantize(lowbit, model, q, ["--data", calib, "--preprocess", sidecar])
        variants = [("fp32", model), ("lowbit static int8", "error: " + err if err else q)]
        out.append((name, variants, ["--data", data, "--preprocess", sidecar]))
    return out


def minilm_group(corpus, tmp, lowbit):
    stsb = os.path.join(corpus, "dev/data/stsb_dev")
    model = os.path.join(corpus, f"dev/models/{MINILM}.onnx")
    names = json.load(open(os.path.join(corpus, f"dev/models/{MINILM}.json")))["inputs"]
    ids_name, mask_name = names["input_ids"], names["attention_mask"]
    calib = os.path.join(tmp, "minilm_calib")
    data = os.path.join(tmp, "minilm_bench")
    os.makedirs(calib)
    os.makedirs(data)
    for side, folder, rows in (("b", calib, CALIB_ROWS), ("a", data, MINILM_BENCH_ROWS)):
        np.save(os.path.join(folder, ids_name + ".npy"), np.load(os.path.join(stsb, f"input_ids_{side}.npy"))[:rows])
        np.save(os.path.join(folder, mask_name + ".npy"), np.load(os.path.join(stsb, f"attention_mask_{side}.npy"))[:rows])
    variants = [("fp32", model)]
    for variant, tag, args in (("lowbit static int8", "static", ["--data", calib]),
                               ("lowbit dynamic int8", "dynamic", ["--mode", "dynamic"])):
        q = os.path.join(tmp, f"minilm.lowbit-{tag}.onnx")
        err = lowbit_quantize(lowbit, model, q, args)
        variants.append((variant, "error: " + err if err else q))
    q = os.path.join(tmp, "minilm.ort-dynamic.onnx")
    err = ort_quantize_dynamic(model, q)
    variants.append(("ORT dynamic int8", "error: " + err if err else q))
    out = [(MINILM, variants, ["--data", data])]
    # The same sentences at fixed lengths, run padded (`--no-trim`): what a server batching
    # sentences to one length runs. 16 cuts them, 128 pads them with [PAD] (id 0, mask 0).
    ids = np.load(os.path.join(data, ids_name + ".npy"))
    mask = np.load(os.path.join(data, mask_name + ".npy"))
    for length in MINILM_FIXED_LENGTHS:
        folder = os.path.join(tmp, f"minilm_bench_{length}")
        os.makedirs(folder)
        fixed_ids = np.zeros((ids.shape[0], length), ids.dtype)
        fixed_mask = np.zeros((mask.shape[0], length), mask.dtype)
        keep = min(length, ids.shape[1])
        fixed_ids[:, :keep] = ids[:, :keep]
        fixed_mask[:, :keep] = mask[:, :keep]
        np.save(os.path.join(folder, ids_name + ".npy"), fixed_ids)
        np.save(os.path.join(folder, mask_name + ".npy"), fixed_mask)
        out.append((f"{MINILM} @{length} tokens", variants, ["--data", folder, "--no-trim"]))
    return out


def speed_group(corpus, tmp, lowbit):
    model = os.path.join(corpus, f"dev/models/{SPEED}.onnx")
    cfg = json.load(open(os.path.join(corpus, f"dev/models/{SPEED}.json")))
    calib = os.path.join(tmp, "speed_calib")
    os.makedirs(calib)
    shape = [SPEED_CALIB_IMAGES] + list(cfg["input_shape"][1:])
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    np.save(os.path.join(calib, cfg["input"] + ".npy"), x)
    q = os.path.join(tmp, "tv_mobilenet_v2_random.lowbit-static.onnx")
    err = lowbit_quantize(lowbit, model, q, ["--data", calib])
    return [(SPEED, [("fp32", model), ("lowbit static int8", "error: " + err if err else q)], [])]


def effnet_group(corpus, tmp, lowbit):
    model = os.path.join(corpus, f"dev/models/{EFFNET}.onnx")
    photos = os.path.join(corpus, "dev/data/imagenet_sample1000")
    q = os.path.join(tmp, "efficientnet-lite0.lowbit-static.onnx")
    sidecar = os.path.join(corpus, f"dev/models/{EFFNET}.json")
    err = lowbit_quantize(lowbit, model, q, ["--data", photos, "--samples", "100", "--preprocess", sidecar])
    return [(EFFNET, [("fp32", model), ("lowbit static int8", "error: " + err if err else q)], [])]


def required_files(corpus, group):
    m, d = os.path.join(corpus, "dev/models"), os.path.join(corpus, "dev/data")
    if group == "mnist":
        return [os.path.join(d, "mnist_test_0-4999/images.npy")] + \
            [os.path.join(m, f"{n}.{ext}") for n in MNIST for ext in ("onnx", "json")]
    if group == "minilm":
        return [os.path.join(m, f"{MINILM}.{ext}") for ext in ("onnx", "json")] + \
            [os.path.join(d, f"stsb_dev/{a}_{s}.npy") for a in ("input_ids", "attention_mask") for s in "ab"]
    if group == "effnet":
        return [os.path.join(m, f"{EFFNET}.{ext}") for ext in ("onnx", "json")] + \
            [os.path.join(d, "imagenet_sample1000")]
    return [os.path.join(m, f"{SPEED}.{ext}") for ext in ("onnx", "json")]


def max_diff(ort):
    """Largest max_abs_diff over the outputs, and the notes of outputs not compared."""
    outs = (ort or {}).get("outputs") or []
    vals = [o["max_abs_diff"] for o in outs if o.get("max_abs_diff") is not None]
    notes = [f"{o['name']}: {o['note']}" for o in outs if o.get("max_abs_diff") is None]
    return (max(vals) if vals else None), notes


def cpu_info():
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return model, isa


def fmt(v, spec, none="—"):
    return none if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--lowbit", default=os.path.join(here, "..", "target", "release", "lowbit"))
    ap.add_argument("--corpus", default=os.path.join(here, "..", "..", "shared", "corpus"))
    ap.add_argument("--only", choices=GROUPS, help="one model group only")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--runs-scale", type=float, default=1.0,
                    help="scale the timed runs (200 MNIST/MiniLM, 30 speed model/EfficientNet), e.g. 0.05 for a quick look")
    ap.add_argument("--json", metavar="FILE", help="also write the rows and settings as JSON here")
    a = ap.parse_args()
    try:
        threads = [int(t) for t in a.threads.split(",") if t.strip()]
    except ValueError:
        ap.error(f"--threads: expected comma-separated integers, got {a.threads!r}")
    if not threads or any(t < 1 for t in threads):
        ap.error("--threads: give one or more counts >= 1")
    if a.runs_scale <= 0:
        ap.error("--runs-scale must be > 0")
    if not os.path.isfile(a.lowbit):
        sys.exit(f"int8_vs_ort: error: lowbit binary not found at {a.lowbit} (build it: "
                 "cargo build --release -p lowbit-cli)")
    runs = {g: max(1, round(r * a.runs_scale)) for g, r in RUNS.items()}

    groups = []
    for g in [a.only] if a.only else GROUPS:
        missing = need(required_files(a.corpus, g))
        if missing:
            print(f"int8_vs_ort: skipped {g}: {missing} not found (set LOWBIT_SHARED or pass --corpus DIR)",
                  file=sys.stderr)
        else:
            groups.append(g)
    if not groups:
        print(f"int8_vs_ort: skipped: nothing to time in {a.corpus}", file=sys.stderr)
        return

    t0 = time.time()
    rows = []
    tmp = tempfile.mkdtemp(prefix="lowbit-int8-bench-")
    try:
        for g in groups:
            print(f"int8_vs_ort: quantizing {g} ...", file=sys.stderr, flush=True)
            groups_fn = {"mnist": mnist_group, "minilm": minilm_group, "speed": speed_group, "effnet": effnet_group}
            models = groups_fn[g](a.corpus, tmp, a.lowbit)
            for name, variants, extra in models:
                for t in threads:
                    for variant, path in variants:
                        row = {"group": g, "model": name, "variant": variant, "threads": t,
                               "runs": runs[g], "warmup": WARMUP}
                        if path.startswith("error: "):
                            row["error"] = path[7:]
                        else:
                            row["bytes"] = os.path.getsize(path)
                            b, err = lowbit_bench(a.lowbit, path, t, runs[g], extra)
                            if err:
                                row["error"] = err
                            else:
                                ort = b.get("ort") or {}
                                diff, notes = max_diff(ort)
                                row.update({
                                    "lowbit_median_ms": b["median_ms"], "lowbit_p90_ms": b["p90_ms"],
                                    "ort_median_ms": ort.get("median_ms"), "ort_p90_ms": ort.get("p90_ms"),
                                    "ratio_median": b.get("ratio_median"), "max_abs_diff": diff,
                                    "diff_notes": notes, "outputs": ort.get("outputs"),
                                    "fused_ops": b.get("fused_ops"), "lowbit_load_ms": b.get("load_ms"),
                                    "ort_load_ms": ort.get("load_ms"), "peak_rss_mb": b.get("peak_rss_mb"),
                                    "ort_version": ort.get("version")})
                        rows.append(row)
                        print(f"  {name:30} {variant:20} {t} thr  " +
                              (f"error: {row['error']}" if "error" in row else
                               f"lowbit {row['lowbit_median_ms']:8.3f} ms  ORT {fmt(row['ort_median_ms'], '8.3f')} ms"),
                              file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # Speedups over the FP32 file at the same thread count (lowbit over lowbit, ORT over ORT).
    fp32 = {(r["model"], r["threads"]): r for r in rows if r["variant"] == "fp32" and "error" not in r}
    for r in rows:
        base = fp32.get((r["model"], r["threads"]))
        r["speedup_vs_lowbit_fp32"] = r["ort_speedup_vs_ort_fp32"] = None
        if base is None or "error" in r or r["variant"] == "fp32":
            continue
        r["speedup_vs_lowbit_fp32"] = base["lowbit_median_ms"] / r["lowbit_median_ms"]
        if base.get("ort_median_ms") and r.get("ort_median_ms"):
            r["ort_speedup_vs_ort_fp32"] = base["ort_median_ms"] / r["ort_median_ms"]

    cpu, isa = cpu_info()
    ort_version = next((r["ort_version"] for r in rows if r.get("ort_version")), None)
    print()
    print("| model | variant | threads | lowbit ms | ORT ms | lowbit/ORT | int8 speedup vs lowbit fp32 | max \\|diff\\| vs ORT |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['variant']} | {r['threads']} | error: {r['error']} | | | | |")
            continue
        print(f"| {r['model']} | {r['variant']} | {r['threads']} | {r['lowbit_median_ms']:.3f} | "
              f"{fmt(r['ort_median_ms'], '.3f')} | {fmt(r['ratio_median'], '.2f')} | "
              f"{fmt(r['speedup_vs_lowbit_fp32'], '.2f')} | {fmt(r['max_abs_diff'], '.3g')} |")
    notes = [(r["model"], r["variant"], r["threads"], n) for r in rows for n in r.get("diff_notes") or []]
    for m, v, t, n in notes:
        print(f"\nnot compared ({m}, {v}, {t} threads): {n}")
    label = {"mnist": "MNIST", "minilm": "MiniLM", "speed": "speed model", "effnet": "EfficientNet-Lite0"}
    counts = ", ".join(f"{runs[g]} ({label[g]})" for g in groups)
    print(f"\nmedians over {counts} timed runs after {WARMUP} warm-up runs, batch 1; ORT {ort_version}; "
          f"{os.cpu_count()} CPUs, {cpu} "
          f"({', '.join(isa) or 'no AVX2/VNNI flags'}); max |diff|: first feed, all outputs; "
          f"{time.time() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"settings": {"threads": threads, "runs": {g: runs[g] for g in groups}, "warmup": WARMUP,
                                    "runs_scale": a.runs_scale, "groups": groups, "corpus": a.corpus,
                                    "ort_version": ort_version, "python": sys.executable,
                                    "cpus": os.cpu_count(), "cpu": cpu, "isa": isa},
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
