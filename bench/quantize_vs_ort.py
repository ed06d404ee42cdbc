"""Static INT8 quantization, lowbit vs ONNX Runtime's quantize_static, side by side in one run.

Not a test: a table to read. Model: paraphrase-MiniLM-L3-v2 (dev corpus). Calibration samples:
the first N rows of stsb_dev's input_ids_a / attention_mask_a (int64 [1500, 45], right-padded
with 0), the same rows for both tools. For every method (minmax, entropy) and N (100, 500) it runs,
each as its own child process under `/usr/bin/time -v` (or, without it, a fresh Python child
reading getrusage(RUSAGE_CHILDREN) after waiting its own child), and records wall time and peak
RSS of:
  - lowbit: `lowbit quantize MODEL -o OUT --data DIR --samples N --method M --no-trim -t 1 -q
    --force` (+ `--min-sqnr 0` where lowbit has that option: all 24 MatMuls quantized), DIR holding input_ids.npy and attention_mask.npy (the N rows). `--no-trim` makes
    lowbit see the same padded [*, 45] tensors as ORT (lowbit feeds batches of 32 rows; ORT one
    row at a time; the values calibrated are the same). Extra columns: the same with `-t 2`, and
    lowbit's default (each batch cut to its longest real length via the mask, `-t 1`).
  - ORT: onnxruntime.quantization.quantize_static on the model that quant_pre_process
    (skip_symbolic_shape=True: sympy is absent) wrote once, before and outside every timed run;
    QuantFormat.QDQ, per_channel=True, activations QUInt8, weights QInt8,
    op_types_to_quantize=["MatMul"] (what lowbit quantizes in this model: its 24 MatMuls),
    CalibrationMethod.MinMax / Entropy, a CalibrationDataReader yielding one [1, 45] row at a
    time (ORT's histogram calibrators cannot merge samples of differing lengths). ORT's
    calibration InferenceSession is built by ORT with a default SessionOptions(); the child
    sets intra_op_num_threads on every SessionOptions it creates to --ort-threads (1 by
    default; 0 leaves ORT's default: one thread per physical core). The ORT wall time covers
    the whole child (Python start, `import onnxruntime.quantization`, quantize_static); the
    quantize_static call alone is an extra column.

Every output model is then loaded in onnxruntime and run on 64 rows the calibration did not see
(rows 1000..1063): file size and mean cosine of the pooled embedding ("461") to FP32 are printed
as a sanity check. `--json FILE` writes the rows and the settings.

Run through bench/quantize_vs_ort.sh, which builds lowbit and uses the test venv's Python.
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

MODEL = "dev/models/paraphrase-MiniLM-L3-v2.onnx"
DATA = "dev/data/stsb_dev"
SEQ = 45
CHECK_ROWS = (1000, 1064)


# ---------------------------------------------------------------- ORT child (run in its own process)

def ort_child(args):
    """quantize_static in this (fresh) process; prints one JSON line with the in-process time."""
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    if args.threads > 0:
        base = ort.SessionOptions

        class OneThreadOptions(base):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                self.intra_op_num_threads = args.threads
                self.inter_op_num_threads = 1

        ort.SessionOptions = OneThreadOptions  # calibrate.py calls onnxruntime.SessionOptions()

    ids = np.load(os.path.join(args.data, "input_ids.npy"))[: args.samples]
    mask = np.load(os.path.join(args.data, "attention_mask.npy"))[: args.samples]

    class Rows(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(ids):
                return None
            i, self.i = self.i, self.i + 1
            return {"input_ids": ids[i : i + 1], "attention_mask": mask[i : i + 1]}

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}[args.method]
    t0 = time.perf_counter()
    quantize_static(args.model, args.out, Rows(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=method)
    print(json.dumps({"quantize_s": time.perf_counter() - t0}))


# ---------------------------------------------------------------- measuring a child

def measure(cmd):
    """Runs cmd as a child; returns (wall s, peak RSS MB, CPU s user+sys, stdout)."""
    if os.access("/usr/bin/time", os.X_OK):
        with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
            t0 = time.perf_counter()
            p = subprocess.run(["/usr/bin/time", "-v", "-o", tf.name] + cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            rep = tf.read()
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
        kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", rep).group(1))
        user = float(re.search(r"User time \(seconds\): ([\d.]+)", rep).group(1))
        sys_ = float(re.search(r"System time \(seconds\): ([\d.]+)", rep).group(1))
        return wall, kb / 1024, user + sys_, p.stdout
    # A fresh Python parent per measurement, so RUSAGE_CHILDREN's max is this child's alone.
    wrapper = ("import json,resource,subprocess,sys,time\n"
               "t=time.perf_counter();p=subprocess.run(sys.argv[1:],capture_output=True,text=True)\n"
               "w=time.perf_counter()-t;r=resource.getrusage(resource.RUSAGE_CHILDREN)\n"
               "print(json.dumps({'rc':p.returncode,'wall':w,'kb':r.ru_maxrss,'cpu':r.ru_utime+r.ru_stime,"
               "'out':p.stdout,'err':p.stderr}))")
    p = subprocess.run([sys.executable, "-c", wrapper] + cmd, capture_output=True, text=True, check=True)
    r = json.loads(p.stdout)
    if r["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r['rc']}): {r['err'].strip()[-2000:]}")
    return r["wall"], r["kb"] / 1024, r["cpu"], r["out"]


# ---------------------------------------------------------------- checks of the written models

def check_models(paths, fp32_model, ids, mask):
    import onnxruntime as ort

    feed = {"input_ids": ids, "attention_mask": mask}
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1

    def embed(path):
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        names = [o.name for o in s.get_outputs()]
        return s.run(["461"], feed)[0], s, names

    ref, _, _ = embed(fp32_model)
    out = {}
    for label, path in paths:
        try:
            emb, s, _ = embed(path)
            cos = np.sum(emb * ref, 1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
            import onnx

            m = onnx.load(path, load_external_data=False)
            ops, fed, quantized_out = {}, {}, {}
            dq_out = {n.output[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
            producer = {o: n.op_type for n in m.graph.node for o in n.output}
            for n in m.graph.node:
                ops[n.op_type] = ops.get(n.op_type, 0) + 1
                if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq_out for i in n.input):
                    fed[n.op_type] = fed.get(n.op_type, 0) + 1
                if n.op_type == "QuantizeLinear":
                    src = producer.get(n.input[0], "input")
                    quantized_out[src] = quantized_out.get(src, 0) + 1
            out[label] = {"mb": os.path.getsize(path) / 1e6, "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
                          "qdq": f"{ops.get('QuantizeLinear', 0)} Q / {ops.get('DequantizeLinear', 0)} DQ",
                          "fed_by_dq": " ".join(f"{k}×{v}" for k, v in sorted(fed.items())),
                          "q_of": " ".join(f"{k}×{v}" for k, v in sorted(quantized_out.items()))}
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            out[label] = {"mb": os.path.getsize(path) / 1e6 if os.path.exists(path) else 0.0, "error": str(e)[:300]}
    return out


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--lowbit", default=os.path.join(here, "..", "target", "release", "lowbit"))
    shared = os.environ.get("LOWBIT_SHARED") or os.path.join(here, "..", "..", "shared")
    ap.add_argument("--corpus", default=os.path.join(shared, "corpus"), help="default: $LOWBIT_SHARED/corpus or ../shared/corpus")
    ap.add_argument("--methods", nargs="*", default=["minmax", "entropy"], choices=["minmax", "entropy"])
    ap.add_argument("--samples", nargs="*", type=int, default=[100, 500])
    ap.add_argument("--ort-threads", type=int, default=1, help="intra-op threads of ORT's calibration session (0: ORT's default)")
    ap.add_argument("--no-extras", action="store_true", help="skip the lowbit -t 2 and trimmed (default) runs")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--keep", metavar="DIR", help="keep the quantized models in DIR")
    # internal: the ORT child
    ap.add_argument("--ort-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ort_child:
        args.samples = args.samples[0]
        return ort_child(args)

    model = os.path.join(args.corpus, MODEL)
    data = os.path.join(args.corpus, DATA)
    if not (os.path.isfile(model) and os.path.isdir(data)):
        print(f"quantize_vs_ort: skipped: corpus not found ({model}, {data}); pass --corpus DIR", file=sys.stderr)
        return 0
    import onnxruntime as ort
    from onnxruntime.quantization import quant_pre_process

    ids_all = np.load(os.path.join(data, "input_ids_a.npy"))
    mask_all = np.load(os.path.join(data, "attention_mask_a.npy"))
    assert ids_all.shape[1] == SEQ and ids_all.dtype == np.int64
    tmp = tempfile.mkdtemp(prefix="lowbit-qbench-")
    keep = args.keep
    if keep:
        os.makedirs(keep, exist_ok=True)
    outdir = keep or tmp
    try:
        # A private copy of the binary: others may rebuild target/release while this runs.
        lowbit = os.path.join(tmp, "lowbit")
        shutil.copy2(args.lowbit, lowbit)
        version = subprocess.run([lowbit, "--version"], capture_output=True, text=True).stdout.strip()
        # Where lowbit can leave low-SQNR MatMuls in float (--min-sqnr), quantize all of them, as ORT does.
        qhelp = subprocess.run([lowbit, "quantize", "--help"], capture_output=True, text=True).stdout
        lb_common = ["--min-sqnr", "0"] if "--min-sqnr" in qhelp else []
        dirs = {}
        for n in args.samples:
            d = dirs[n] = os.path.join(tmp, f"data{n}")
            os.makedirs(d)
            np.save(os.path.join(d, "input_ids.npy"), ids_all[:n])
            np.save(os.path.join(d, "attention_mask.npy"), mask_all[:n])
        t0 = time.perf_counter()
        pre = os.path.join(tmp, "minilm.pre.onnx")
        quant_pre_process(model, pre, skip_symbolic_shape=True)
        pre_s = time.perf_counter() - t0
        print(f"ORT quant_pre_process (once, untimed below): {pre_s:.2f} s", file=sys.stderr, flush=True)
        load0 = os.getloadavg()

        rows = []
        written = []
        for method in args.methods:
            for n in args.samples:
                r = {"method": method, "samples": n}

                def lb(tag, extra):
                    out = os.path.join(outdir, f"lowbit_{method}_{n}_{tag}.onnx")
                    cmd = [lowbit, "quantize", model, "-o", out, "--data", dirs[n], "--samples", str(n),
                           "--method", method, "--force", "-q"] + lb_common + extra
                    wall, mb, cpu, _ = measure(cmd)
                    r[f"lowbit_{tag}_s"], r[f"lowbit_{tag}_rss_mb"], r[f"lowbit_{tag}_cpu_s"] = wall, mb, cpu
                    written.append((f"lowbit {tag} {method} {n}", out))

                lb("t1", ["--no-trim", "-t", "1"])
                if not args.no_extras:
                    lb("t2", ["--no-trim", "-t", "2"])
                    lb("trim_t1", ["-t", "1"])
                out = os.path.join(outdir, f"ort_{method}_{n}.onnx")
                cmd = [sys.executable, os.path.abspath(__file__), "--ort-child", "--model", pre, "--data", dirs[n],
                       "--samples", str(n), "--method", method, "--out", out, "--threads", str(args.ort_threads)]
                wall, mb, cpu, stdout = measure(cmd)
                r["ort_s"], r["ort_rss_mb"], r["ort_cpu_s"] = wall, mb, cpu
                r["ort_quantize_static_s"] = json.loads(stdout.strip().splitlines()[-1])["quantize_s"]
                written.append((f"ORT {method} {n}", out))
                rows.append(r)
                extra = ""
                if "lowbit_t2_s" in r:
                    extra = f" (-t 2 {r['lowbit_t2_s']:.2f} s, trimmed {r['lowbit_trim_t1_s']:.2f} s)"
                print(f"{method:8} {n:4} samples  lowbit {r['lowbit_t1_s']:7.2f} s {r['lowbit_t1_rss_mb']:7.0f} MB"
                      f"{extra}   ORT {r['ort_s']:7.2f} s {r['ort_rss_mb']:7.0f} MB", file=sys.stderr, flush=True)
        load1 = os.getloadavg()

        checks = check_models(written, model, ids_all[CHECK_ROWS[0]:CHECK_ROWS[1]], mask_all[CHECK_ROWS[0]:CHECK_ROWS[1]])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def rss_growth(tool, method):
        by_n = {r["samples"]: r[f"{tool}_rss_mb"] for r in rows if r["method"] == method}
        lo, hi = min(by_n), max(by_n)
        return by_n[hi] / by_n[lo] if lo != hi else None

    lo_n, hi_n = min(args.samples), max(args.samples)
    growth_hdr = f"RSS({hi_n})/RSS({lo_n})"
    print()
    print(f"| method | samples | lowbit s | ORT s | ORT/lowbit | lowbit peak RSS MB | ORT peak RSS MB "
          f"| lowbit {growth_hdr} | ORT {growth_hdr} | lowbit -t 2 s | lowbit trimmed s | ORT quantize_static s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        gl = gr = "-"
        if r["samples"] == hi_n and hi_n != lo_n:
            gl, gr = f"{rss_growth('lowbit_t1', r['method']):.2f}", f"{rss_growth('ort', r['method']):.2f}"
        t2 = f"{r['lowbit_t2_s']:.2f}" if "lowbit_t2_s" in r else "-"
        tr = f"{r['lowbit_trim_t1_s']:.2f}" if "lowbit_trim_t1_s" in r else "-"
        print(f"| {r['method']} | {r['samples']} | {r['lowbit_t1_s']:.2f} | {r['ort_s']:.2f} "
              f"| {r['ort_s'] / r['lowbit_t1_s']:.2f} | {r['lowbit_t1_rss_mb']:.0f} | {r['ort_rss_mb']:.0f} "
              f"| {gl} | {gr} | {t2} | {tr} | {r['ort_quantize_static_s']:.2f} |")
    print()
    print("| CPU s (user+sys) | samples | lowbit -t 1 | ORT | lowbit -t 2 | lowbit trimmed | "
          "lowbit -t 2 RSS MB | lowbit trimmed RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        def g(k, f="{:.2f}"):
            return f.format(r[k]) if k in r else "-"
        print(f"| {r['method']} | {r['samples']} | {g('lowbit_t1_cpu_s')} | {g('ort_cpu_s')} | {g('lowbit_t2_cpu_s')} "
              f"| {g('lowbit_trim_t1_cpu_s')} | {g('lowbit_t2_rss_mb', '{:.0f}')} | {g('lowbit_trim_t1_rss_mb', '{:.0f}')} |")
    print()
    print(f"| written model | MB | QDQ nodes | ops fed by DQ | QuantizeLinear of (producer op) "
          f"| cosine to FP32, rows {CHECK_ROWS[0]}..{CHECK_ROWS[1] - 1}: mean | min |")
    print("|---|---:|---|---|---|---:|---:|")
    for label, _ in written:
        c = checks[label]
        if "error" in c:
            print(f"| {label} | {c['mb']:.1f} | does not run in onnxruntime: {c['error']} | | | | |")
        else:
            print(f"| {label} | {c['mb']:.1f} | {c['qdq']} | {c['fed_by_dq']} | {c['q_of']} "
                  f"| {c['cos_mean']:.4f} | {c['cos_min']:.4f} |")

    goals = []
    for r in rows:
        speed_ok = r["ort_s"] / r["lowbit_t1_s"] >= 5
        g = {"method": r["method"], "samples": r["samples"], "ort_over_lowbit": r["ort_s"] / r["lowbit_t1_s"],
             "speed_goal_met": speed_ok}
        if r["samples"] == hi_n and hi_n != lo_n:
            g["lowbit_rss_growth"] = rss_growth("lowbit_t1", r["method"])
            g["rss_goal_met"] = g["lowbit_rss_growth"] <= 1.10
        goals.append(g)
    print()
    rss_goal = f"; lowbit peak RSS at {hi_n} samples within 10 % of at {lo_n}" if hi_n != lo_n else ""
    print(f"Goal (issue 3): lowbit >= 5x faster than ORT{rss_goal}.")
    for g in goals:
        line = f"  {g['method']:8} {g['samples']:4}: speed x{g['ort_over_lowbit']:.2f} {'met' if g['speed_goal_met'] else 'NOT met'}"
        if "rss_goal_met" in g:
            line += f"; RSS growth x{g['lowbit_rss_growth']:.2f} {'met' if g['rss_goal_met'] else 'NOT met'}"
        print(line)

    ort_threads = args.ort_threads if args.ort_threads > 0 else "ORT default (physical cores)"
    notes = [
        f"{version}; onnxruntime {ort.__version__}; {os.cpu_count()} CPUs; {platform.processor() or platform.machine()}; "
        f"load average {load0[0]:.2f} before, {load1[0]:.2f} after.",
        f"lowbit s / ORT s: wall time of the whole child process (lowbit: load, calibrate, quantize, save; "
        f"ORT: Python start, imports, quantize_static incl. its calibration session and save). "
        f"Peak RSS: {'/usr/bin/time -v' if os.access('/usr/bin/time', os.X_OK) else 'getrusage(RUSAGE_CHILDREN)'}.",
        f"Same tensors for both: the first N rows of stsb_dev *_a, padded to {SEQ}; lowbit --no-trim, 32 rows a batch, "
        f"-t 1{' --min-sqnr 0 (every MatMul quantized, as ORT does)' if lb_common else ''}; ORT one [1, {SEQ}] row a run, calibration session intra-op threads: {ort_threads}. "
        f"'lowbit trimmed': lowbit's default, batches cut to their longest real length (-t 1).",
        f"ORT ran on the output of quant_pre_process(skip_symbolic_shape=True), done once before the timed "
        f"runs ({pre_s:.2f} s, not counted); lowbit ran on the original model.",
        "ORT op_types_to_quantize=['MatMul'], QDQ, per-channel, QUInt8 activations, QInt8 weights. "
        "lowbit calibrates every float tensor with every method in one pass, ORT only the MatMul tensors with the one method.",
        "ORT's Entropy, as quantize_static runs it, keeps every sample's outputs in memory (its RSS grows with N) and "
        "builds one histogram of num_bins=128 over them all; with num_quantized_bins=128 the KL search has a single "
        "candidate, the full range: its scales equal MinMax's. lowbit's entropy is a real KL threshold search.",
        "Other processes share these CPUs (load average above): wall times vary run to run; the CPU table is steadier.",
    ]
    print()
    for n in notes:
        print("- " + n)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": MODEL, "data": DATA, "lowbit_version": version, "onnxruntime": ort.__version__,
                       "cpus": os.cpu_count(), "ort_threads": args.ort_threads, "lowbit_threads": 1,
                       "ort_pre_process_s": pre_s, "loadavg_before": load0[0], "loadavg_after": load1[0],
                       "rows": rows, "goals": goals, "checks": checks, "notes": notes}, f, indent=1)
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
