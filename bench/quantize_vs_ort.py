"""Static INT8 quantization, lowbit vs ONNX Runtime's quantize_static, side by side in one run.

Not a test: tables to read. Model: paraphrase-MiniLM-L3-v2 (dev corpus). Calibration samples: the
first N rows of stsb_dev's input_ids_a / attention_mask_a (int64 [1500, 45], right-padded with 0),
the same sentences for both tools. For every method (minmax, entropy) and N (100, 500) each run is
its own child process under `/usr/bin/time -v` (or, without it, a fresh Python child reading
getrusage(RUSAGE_CHILDREN) after waiting its own child): wall time, CPU time (user+sys), peak RSS.

Table 1, "natural lengths" (what a user would run): every sentence at its real length
(attention_mask.sum()).
  - lowbit default: `lowbit quantize MODEL -o OUT --data DIR --samples N --method M -t 1 -q
    --force --min-sqnr 0`, DIR holding input_ids.npy and attention_mask.npy (the N padded rows):
    lowbit feeds batches of 32 rows, each batch cut to its longest real length via the mask.
  - lowbit per-sample .npz (where `lowbit calibrate --help` says per-sample .npz files are
    supported): the same command on a folder of N files, one per sentence, holding input_ids and
    attention_mask of shape [1, len]; lowbit batches equal-length neighbours, runs others apart.
  - ORT: a CalibrationDataReader yielding each sentence as its own [1, len] feed. ORT's MinMax
    calibrator accepts that; its Entropy (histogram) calibrator stacks every sample's outputs into
    one array and crashes on differing lengths: the script tries it, records the error (and how
    long ORT ran before it), and the Entropy row falls back to the padded [1, 45] ORT run of
    table 2, saying so in the row.
Table 2, "identical padded tensors": both tools see the same [*, 45] tensors: lowbit `--no-trim`
(batches of 32 rows; also with `-t 2`), ORT one [1, 45] row at a time (the values calibrated are
the same).

`--min-sqnr 0` (where lowbit has that option) makes lowbit quantize all 24 MatMuls, as ORT does.
ORT: quantize_static on the model that quant_pre_process (skip_symbolic_shape=True: sympy is
absent) wrote once, before and outside every timed run; QuantFormat.QDQ, per_channel=True,
activations QUInt8, weights QInt8, op_types_to_quantize=["MatMul"] (what lowbit quantizes in this
model: its 24 MatMuls), CalibrationMethod.MinMax / Entropy. ORT's calibration InferenceSession is
built by ORT with a default SessionOptions(); the child sets intra_op_num_threads on every
SessionOptions it creates to --ort-threads (1 by default; 0 leaves ORT's default: one thread per
physical core). The ORT wall time covers the whole child (Python start, `import
onnxruntime.quantization`, quantize_static); the quantize_static call alone is a column.

Every output model is then loaded in onnxruntime and run on 64 rows the calibration did not see
(rows 1000..1063, padded, with their mask): mean cosine of the pooled embedding ("461") to FP32 is
a column of both tables; a third table gives file size, QDQ node counts and the minimum cosine.
`--json FILE` writes the rows and the settings.

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
    # natural: each sentence cut to its real length (right padding: the mask is a prefix of ones)
    lens = mask.sum(1) if args.feeds == "natural" else np.full(len(ids), ids.shape[1])

    class Rows(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(ids):
                return None
            i, self.i = self.i, self.i + 1
            n = int(lens[i])
            return {"input_ids": ids[i : i + 1, :n], "attention_mask": mask[i : i + 1, :n]}

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}[args.method]
    t0 = time.perf_counter()
    quantize_static(args.model, args.out, Rows(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=method)
    print(json.dumps({"quantize_s": time.perf_counter() - t0}))


# ---------------------------------------------------------------- measuring a child

def measure(cmd, allow_fail=False):
    """Runs cmd as a child; returns {wall, rss (MB), cpu (user+sys s), rc, out, err}. A failing child
    raises, unless allow_fail."""
    if os.access("/usr/bin/time", os.X_OK):
        with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
            t0 = time.perf_counter()
            p = subprocess.run(["/usr/bin/time", "-v", "-o", tf.name] + cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            rep = tf.read()
        kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", rep).group(1))
        user = float(re.search(r"User time \(seconds\): ([\d.]+)", rep).group(1))
        sys_ = float(re.search(r"System time \(seconds\): ([\d.]+)", rep).group(1))
        r = {"wall": wall, "kb": kb, "cpu": user + sys_, "rc": p.returncode, "out": p.stdout, "err": p.stderr}
    else:
        # A fresh Python parent per measurement, so RUSAGE_CHILDREN's max is this child's alone.
        wrapper = ("import json,resource,subprocess,sys,time\n"
                   "t=time.perf_counter();p=subprocess.run(sys.argv[1:],capture_output=True,text=True)\n"
                   "w=time.perf_counter()-t;r=resource.getrusage(resource.RUSAGE_CHILDREN)\n"
                   "print(json.dumps({'rc':p.returncode,'wall':w,'kb':r.ru_maxrss,'cpu':r.ru_utime+r.ru_stime,"
                   "'out':p.stdout,'err':p.stderr}))")
        p = subprocess.run([sys.executable, "-c", wrapper] + cmd, capture_output=True, text=True, check=True)
        r = json.loads(p.stdout)
    if r["rc"] != 0 and not allow_fail:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r['rc']}): {r['err'].strip()[-2000:]}")
    return {"wall": r["wall"], "rss": r["kb"] / 1024, "cpu": r["cpu"], "rc": r["rc"], "out": r["out"], "err": r["err"]}


def last_error_line(err):
    """The exception line of a Python traceback (its last non-empty line)."""
    lines = [ln.strip() for ln in err.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no message)"


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
    ap.add_argument("--no-extras", action="store_true", help="skip the lowbit --no-trim -t 2 run")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--keep", metavar="DIR", help="keep the quantized models in DIR")
    # internal: the ORT child
    ap.add_argument("--ort-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--feeds", choices=["padded", "natural"], default="padded", help=argparse.SUPPRESS)
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
    lens_all = mask_all.sum(1)
    # right padding: every mask is a prefix of ones, so [:len] is the sentence
    assert (mask_all == (np.arange(SEQ)[None, :] < lens_all[:, None])).all()
    tmp = tempfile.mkdtemp(prefix="lowbit-qbench-")
    keep = args.keep
    if keep:
        os.makedirs(keep, exist_ok=True)
    outdir = keep or tmp
    lo_n, hi_n = min(args.samples), max(args.samples)
    try:
        # A private copy of the binary: others may rebuild target/release while this runs.
        lowbit = os.path.join(tmp, "lowbit")
        shutil.copy2(args.lowbit, lowbit)
        version = subprocess.run([lowbit, "--version"], capture_output=True, text=True).stdout.strip()
        # Where lowbit can leave low-SQNR MatMuls in float (--min-sqnr), quantize all of them, as ORT does.
        qhelp = subprocess.run([lowbit, "quantize", "--help"], capture_output=True, text=True).stdout
        chelp = subprocess.run([lowbit, "calibrate", "--help"], capture_output=True, text=True).stdout
        lb_common = ["--min-sqnr", "0"] if "--min-sqnr" in qhelp else []
        per_sample = "per sample" in " ".join((qhelp + chelp).split())
        dirs, psdirs = {}, {}
        for n in args.samples:
            d = dirs[n] = os.path.join(tmp, f"data{n}")
            os.makedirs(d)
            np.save(os.path.join(d, "input_ids.npy"), ids_all[:n])
            np.save(os.path.join(d, "attention_mask.npy"), mask_all[:n])
            if per_sample:
                d = psdirs[n] = os.path.join(tmp, f"persample{n}")
                os.makedirs(d)
                for i in range(n):
                    k = int(lens_all[i])
                    np.savez(os.path.join(d, f"s{i:05d}.npz"), input_ids=ids_all[i : i + 1, :k],
                             attention_mask=mask_all[i : i + 1, :k])
        t0 = time.perf_counter()
        pre = os.path.join(tmp, "minilm.pre.onnx")
        quant_pre_process(model, pre, skip_symbolic_shape=True)
        pre_s = time.perf_counter() - t0
        print(f"ORT quant_pre_process (once, untimed below): {pre_s:.2f} s", file=sys.stderr, flush=True)
        load0 = os.getloadavg()

        # rows[(table, method, n)] = list of runs, each {key, tool, label, wall, cpu, rss, out, ...}
        rows = {}
        crashes = []
        written = []

        def lb(method, n, key, label, data_dir, extra):
            out = os.path.join(outdir, f"lowbit_{method}_{n}_{key}.onnx")
            cmd = [lowbit, "quantize", model, "-o", out, "--data", data_dir, "--samples", str(n),
                   "--method", method, "--force", "-q"] + lb_common + extra
            m = measure(cmd)
            written.append(out)
            return {"key": key, "tool": "lowbit", "label": label, "wall": m["wall"], "cpu": m["cpu"], "rss": m["rss"],
                    "out": out, "cmd": " ".join(cmd[1:])}

        def ort_run(method, n, feeds, allow_fail=False):
            out = os.path.join(outdir, f"ort_{method}_{n}_{feeds}.onnx")
            cmd = [sys.executable, os.path.abspath(__file__), "--ort-child", "--model", pre, "--data", dirs[n],
                   "--samples", str(n), "--method", method, "--out", out, "--threads", str(args.ort_threads),
                   "--feeds", feeds]
            m = measure(cmd, allow_fail=allow_fail)
            if m["rc"] != 0:
                return m
            written.append(out)
            shape = f"[1, {SEQ}]" if feeds == "padded" else "[1, len]"
            return {"key": f"ort_{feeds}", "tool": "ORT", "label": f"ORT, one {shape} feed per sentence",
                    "wall": m["wall"], "cpu": m["cpu"], "rss": m["rss"], "out": out,
                    "quantize_static_s": json.loads(m["out"].strip().splitlines()[-1])["quantize_s"]}

        for method in args.methods:
            for n in args.samples:
                nat = rows[("natural", method, n)] = []
                pad = rows[("padded", method, n)] = []
                # table 2: identical padded tensors
                pad.append(lb(method, n, "notrim_t1", f"lowbit --no-trim -t 1, [32, {SEQ}] batches", dirs[n],
                              ["--no-trim", "-t", "1"]))
                if not args.no_extras:
                    pad.append(lb(method, n, "notrim_t2", f"lowbit --no-trim -t 2, [32, {SEQ}] batches", dirs[n],
                                  ["--no-trim", "-t", "2"]))
                ort_pad = ort_run(method, n, "padded")
                pad.append(ort_pad)
                # table 1: natural lengths
                nat.append(lb(method, n, "default_t1", "lowbit default -t 1, [32, longest in batch]", dirs[n], ["-t", "1"]))
                if per_sample:
                    nat.append(lb(method, n, "persample_t1", "lowbit -t 1, per-sample .npz [1, len]", psdirs[n], ["-t", "1"]))
                r = ort_run(method, n, "natural", allow_fail=True)
                if "rc" in r:  # ORT failed on differing lengths: record it, fall back to the padded run
                    msg = last_error_line(r["err"])
                    crashes.append({"method": method, "samples": n, "error": msg, "wall": r["wall"], "cpu": r["cpu"],
                                    "rss": r["rss"]})
                    r = dict(ort_pad, key="ort_padded_fallback",
                             label=f"ORT, one [1, {SEQ}] feed per sentence (fallback: [1, len] crashed, see notes)")
                    print(f"ORT {method} {n} on [1, len] feeds failed after {crashes[-1]['wall']:.1f} s: {msg}",
                          file=sys.stderr, flush=True)
                nat.append(r)
                for tbl, runs in (("natural", nat), ("padded", pad)):
                    print(f"{tbl:8} {method:8} {n:4}: " + "; ".join(f"{x['key']} {x['wall']:.2f} s {x['rss']:.0f} MB"
                                                                   for x in runs), file=sys.stderr, flush=True)
        load1 = os.getloadavg()

        checks = check_models([(p, p) for p in written], model, ids_all[CHECK_ROWS[0]:CHECK_ROWS[1]],
                              mask_all[CHECK_ROWS[0]:CHECK_ROWS[1]])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    for runs in rows.values():
        for x in runs:
            x["check"] = checks[x["out"]]
            x["file"] = os.path.basename(x["out"])

    def growth(table, method, key):
        """RSS at the largest N / at the smallest, same table, method and variant."""
        by_n = {n: x["rss"] for (t, m, n), runs in rows.items() if (t, m) == (table, method) for x in runs
                if x["key"] == key}
        if hi_n == lo_n or lo_n not in by_n or hi_n not in by_n:
            return None
        return by_n[hi_n] / by_n[lo_n]

    def ort_of(runs):
        return next(x for x in runs if x["tool"] == "ORT")

    growth_hdr = f"RSS({hi_n})/RSS({lo_n})"

    def f2(v):
        return f"{v:.2f}" if v is not None else "-"

    def table(name):
        print(f"| method | N | run (feeds) | wall s | CPU s | peak RSS MB | {growth_hdr} | ORT/lowbit wall "
              f"| ORT/lowbit CPU | cosine to FP32 (mean) | ORT quantize_static s |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for (t, method, n), runs in rows.items():
            if t != name:
                continue
            o = ort_of(runs)
            for x in runs:
                g = growth(name, method, x["key"]) if n == hi_n else None
                lowbit = x["tool"] == "lowbit"
                c = x["check"]
                cos = f"{c['cos_mean']:.4f}" if "cos_mean" in c else "does not run"
                x["ort_over_wall"] = o["wall"] / x["wall"] if lowbit else None
                x["ort_over_cpu"] = o["cpu"] / x["cpu"] if lowbit else None
                x["rss_growth"] = g
                print(f"| {method} | {n} | {x['label']} | {x['wall']:.2f} | {x['cpu']:.2f} | {x['rss']:.0f} "
                      f"| {f2(g)} | {f2(x['ort_over_wall'])} | {f2(x['ort_over_cpu'])} | {cos} "
                      f"| {f2(x.get('quantize_static_s'))} |")

    print()
    print("Table 1: natural lengths (each sentence at its real length; the run a user would do)")
    print()
    table("natural")
    print()
    print(f"Table 2: identical padded tensors (every sentence padded to {SEQ}, both tools)")
    print()
    table("padded")
    print()
    print(f"| written model | MB | QDQ nodes | ops fed by DQ | QuantizeLinear of (producer op) "
          f"| cosine to FP32, rows {CHECK_ROWS[0]}..{CHECK_ROWS[1] - 1}: mean | min |")
    print("|---|---:|---|---|---|---:|---:|")
    for path in written:
        c, label = checks[path], os.path.basename(path)
        if "error" in c:
            print(f"| {label} | {c['mb']:.1f} | does not run in onnxruntime: {c['error']} | | | | |")
        else:
            print(f"| {label} | {c['mb']:.1f} | {c['qdq']} | {c['fed_by_dq']} | {c['q_of']} "
                  f"| {c['cos_mean']:.4f} | {c['cos_min']:.4f} |")

    goals = []
    for (t, method, n), runs in rows.items():
        o = ort_of(runs)
        x = next(x for x in runs if x["key"] == ("default_t1" if t == "natural" else "notrim_t1"))
        g = {"table": t, "method": method, "samples": n, "lowbit": x["key"], "ort": o["key"],
             "ort_over_lowbit": o["wall"] / x["wall"], "speed_goal_met": o["wall"] / x["wall"] >= 5}
        if n == hi_n and hi_n != lo_n:
            g["lowbit_rss_growth"] = growth(t, method, x["key"])
            g["rss_goal_met"] = g["lowbit_rss_growth"] <= 1.10
        goals.append(g)
    print()
    rss_goal = f"; lowbit peak RSS at {hi_n} samples within 10 % of at {lo_n}" if hi_n != lo_n else ""
    print(f"Goal (issue 3): lowbit >= 5x faster than ORT (wall){rss_goal}. Table 1: lowbit default vs ORT's row; "
          f"table 2: lowbit --no-trim -t 1 vs ORT [1, {SEQ}].")
    for g in goals:
        line = (f"  {g['table']:8} {g['method']:8} {g['samples']:4}: speed x{g['ort_over_lowbit']:.2f} "
                f"{'met' if g['speed_goal_met'] else 'NOT met'}")
        if "rss_goal_met" in g:
            line += f"; RSS growth x{g['lowbit_rss_growth']:.2f} {'met' if g['rss_goal_met'] else 'NOT met'}"
        print(line)

    ort_threads = args.ort_threads if args.ort_threads > 0 else "ORT default (physical cores)"
    lens_desc = ", ".join(f"first {n}: {lens_all[:n].min()}..{lens_all[:n].max()} tokens, mean {lens_all[:n].mean():.1f}"
                          for n in args.samples)
    notes = [
        f"{version}; onnxruntime {ort.__version__}; {os.cpu_count()} CPUs; {platform.processor() or platform.machine()}; "
        f"load average {load0[0]:.2f} before, {load1[0]:.2f} after.",
        f"wall s: the whole child process (lowbit: load, calibrate, quantize, save; ORT: Python start, imports, "
        f"quantize_static incl. its calibration session and save; 'ORT quantize_static s': that call alone). "
        f"CPU s: user+sys of the child. Peak RSS: "
        f"{'/usr/bin/time -v' if os.access('/usr/bin/time', os.X_OK) else 'getrusage(RUSAGE_CHILDREN)'}. "
        f"ORT/lowbit: ORT's row of the same table, method and N over the lowbit row.",
        f"Sentences: the first N rows of stsb_dev *_a ({lens_desc}; padded to {SEQ} in the .npy files).",
        f"Table 1: lowbit default: --data with the padded .npy files, batches of 32 rows, each batch cut to its "
        f"longest real length via the mask; "
        + (f"lowbit per-sample: a folder of N .npz files, one sentence each, input_ids and attention_mask [1, len]; "
           if per_sample else "lowbit per-sample .npz: skipped (this lowbit's --help does not mention per-sample .npz files); ")
        + "ORT: a CalibrationDataReader yielding each sentence as its own [1, len] feed.",
        f"Table 2: same tensors for both: lowbit --no-trim, [32, {SEQ}] batches; ORT one [1, {SEQ}] row a run.",
        f"lowbit: -t 1 unless said{', --min-sqnr 0 (every MatMul quantized, as ORT does)' if lb_common else ''}, "
        f"int8 weights at lowbit's default (7-bit, reduce_range; --no-reduce-range not passed); ORT: calibration "
        f"session intra-op threads {ort_threads}, reduce_range=False (its default).",
        f"ORT ran on the output of quant_pre_process(skip_symbolic_shape=True), done once before the timed "
        f"runs ({pre_s:.2f} s, not counted); lowbit ran on the original model.",
        "ORT op_types_to_quantize=['MatMul'], QDQ, per-channel, QUInt8 activations, QInt8 weights. "
        "lowbit calibrates every float tensor with every method in one pass, ORT only the MatMul tensors with the one method.",
        "ORT's Entropy, as quantize_static runs it, keeps every sample's outputs in memory (its RSS grows with N) and "
        "builds one histogram of num_bins=128 over them all; with num_quantized_bins=128 the KL search has a single "
        "candidate, the full range: its scales equal MinMax's. lowbit's entropy is a real KL threshold search.",
    ]
    for c in crashes:
        notes.append(f"ORT {c['method']} on {c['samples']} [1, len] feeds crashed after {c['wall']:.2f} s wall "
                     f"({c['cpu']:.2f} s CPU, {c['rss']:.0f} MB peak RSS; all N samples had been run through the "
                     f"calibration session): `{c['error']}`. Table 1's ORT {c['method']} row is the padded "
                     f"[1, {SEQ}] run of table 2.")
    notes.append("Other processes share these CPUs (load average above): wall times vary run to run; CPU s is steadier.")
    print()
    for n in notes:
        print("- " + n)
    if args.json:
        out_rows = [dict({k: v for k, v in x.items() if k != "out"}, table=t, method=m, samples=n)
                    for (t, m, n), runs in rows.items() for x in runs]
        with open(args.json, "w") as f:
            json.dump({"model": MODEL, "data": DATA, "lowbit_version": version, "onnxruntime": ort.__version__,
                       "cpus": os.cpu_count(), "ort_threads": args.ort_threads, "lowbit_threads": 1,
                       "per_sample_npz": per_sample, "ort_pre_process_s": pre_s, "loadavg_before": load0[0],
                       "loadavg_after": load1[0], "rows": out_rows, "ort_crashes": crashes, "goals": goals,
                       "notes": notes}, f, indent=1)
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
