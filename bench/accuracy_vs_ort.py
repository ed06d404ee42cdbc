#!/usr/bin/env python3
"""Accuracy table: FP32 vs lowbit's quantizer vs ONNX Runtime's quantizer, same models, same
calibration rows, every file scored by the corpus's own score.py (ONNX Runtime, default graph
optimizations, 1 thread) — so the numbers are what a user deploying on ONNX Runtime would see.

    python accuracy_vs_ort.py --lowbit target/release/lowbit --corpus ../shared/corpus [--json F]

MNIST-style classifiers (mnist-8_cntk, burn_mnist_bn, mnist_mobilenetv2, mnist_resnet):
calibration on test rows 0..99 (preprocessed with each model's sidecar), scored on rows
500..4999 (top-1, and top-1 agreement with FP32). Variants: static int8 per-channel (lowbit and
ORT `quantize_static`, QDQ, uint8 activations, int8 weights, min-max), each with and without
reduce_range ("+rr": 7-bit weights, lowbit's default; on x86 CPUs without VNNI ONNX Runtime's
fused u8×s8 kernels saturate 8-bit weights).

MiniLM (paraphrase-MiniLM-L3-v2) on STS-B dev (1500 pairs, Spearman×100 and mean cosine of the
embeddings to FP32): static int8 (calibration: side-b sentences 0..99, which are also among the
3000 scored sentences), dynamic int8 (lowbit vs ORT `quantize_dynamic`), lowbit weight-only int4
(blocks of 32) and fp16.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

MNIST = ["mnist-8_cntk", "burn_mnist_bn", "mnist_mobilenetv2", "mnist_resnet"]
MINILM = "paraphrase-MiniLM-L3-v2"
CALIB_ROWS = 100
EVAL_START = 500


def score(corpus, model, data, config, ref, start=None):
    cmd = [sys.executable, os.path.join(corpus, "score.py"), model, data, "--config", config,
           "--ref-model", ref, "--json"]
    if start is not None:
        cmd += ["--start", str(start)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["score.py failed"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def lowbit_quantize(lowbit, model, out, args):
    r = subprocess.run([lowbit, "-q", "quantize", model, "-o", out, "--force"] + args,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip())


def ort_quantize_static(model, out, feeds, per_channel=True, reduce_range=False, op_types=None):
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    pre = out + ".pre.onnx"
    quant_pre_process(input_model_path=model, output_model_path=pre, skip_symbolic_shape=True)
    kw = {}
    if op_types:
        kw["op_types_to_quantize"] = op_types
    quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax, **kw)
    os.remove(pre)


def preprocess(images, cfg):
    x = images.astype(np.float32) * cfg["scale"]
    x = (x - np.float32(cfg["mean"])) / np.float32(cfg["std"])
    return x[:, None].astype(np.float32)


def mnist_rows(corpus, tmp, lowbit):
    data = os.path.join(corpus, "dev/data/mnist_test_0-4999")
    images = np.load(os.path.join(data, "images.npy"))
    rows = []
    for name in MNIST:
        model = os.path.join(corpus, f"dev/models/{name}.onnx")
        config = os.path.join(corpus, f"dev/models/{name}.json")
        cfg = json.load(open(config))
        x = preprocess(images[:CALIB_ROWS], cfg)
        calib = os.path.join(tmp, name + "_calib")
        os.makedirs(calib, exist_ok=True)
        np.save(os.path.join(calib, cfg["input"] + ".npy"), x)
        fixed_batch = cfg.get("batch", 1) == 1
        feeds = [{cfg["input"]: x[i:i + 1]} for i in range(CALIB_ROWS)] if fixed_batch else \
            [{cfg["input"]: x[i:i + 10]} for i in range(0, CALIB_ROWS, 10)]
        variants = [("fp32", model)]
        for rr in (False, True):
            tag = "+rr" if rr else ""
            out = os.path.join(tmp, f"{name}.lowbit{tag}.onnx")
            lowbit_quantize(lowbit, model, out, ["--data", calib] + ([] if rr else ["--no-reduce-range"]))
            variants.append((f"lowbit static int8{tag}", out))
            out = os.path.join(tmp, f"{name}.ort{tag}.onnx")
            try:
                ort_quantize_static(model, out, feeds, reduce_range=rr)
                variants.append((f"ORT static int8{tag}", out))
            except Exception as e:  # noqa: BLE001 - reported in the table
                variants.append((f"ORT static int8{tag}", "error: " + str(e).splitlines()[0][:80]))
        for variant, path in variants:
            if path.startswith("error: "):
                rows.append({"model": name, "variant": variant, "error": path[7:]})
                continue
            s = score(corpus, path, data, config, model, EVAL_START)
            s.update({"model": name, "variant": variant, "bytes": os.path.getsize(path)})
            rows.append(s)
            print(f"  {name} {variant}: {metric_of(s)} {s.get('error', '')}", file=sys.stderr)
    return rows


def minilm_rows(corpus, tmp, lowbit):
    data = os.path.join(corpus, "dev/data/stsb_dev")
    model = os.path.join(corpus, f"dev/models/{MINILM}.onnx")
    config = os.path.join(corpus, f"dev/models/{MINILM}.json")
    ids = np.load(os.path.join(data, "input_ids_b.npy"))[:CALIB_ROWS]
    mask = np.load(os.path.join(data, "attention_mask_b.npy"))[:CALIB_ROWS]
    calib = os.path.join(tmp, "minilm_calib")
    os.makedirs(calib, exist_ok=True)
    np.save(os.path.join(calib, "input_ids.npy"), ids)
    np.save(os.path.join(calib, "attention_mask.npy"), mask)
    # ORT's calibrators get each sentence at its own length, one at a time.
    feeds = [{"input_ids": ids[i:i + 1, :mask[i].sum()],
              "attention_mask": mask[i:i + 1, :mask[i].sum()]} for i in range(CALIB_ROWS)]
    variants = [("fp32", model)]

    def lb(tag, args):
        out = os.path.join(tmp, f"minilm.{tag}.onnx")
        lowbit_quantize(lowbit, model, out, args)
        variants.append((f"lowbit {tag}", out))

    lb("static int8", ["--data", calib, "--no-reduce-range"])
    lb("static int8+rr", ["--data", calib])
    for rr in (False, True):
        tag = "+rr" if rr else ""
        out = os.path.join(tmp, f"minilm.ort{tag}.onnx")
        try:
            ort_quantize_static(model, out, feeds, reduce_range=rr, op_types=["MatMul"])
            variants.append((f"ORT static int8{tag}", out))
        except Exception as e:  # noqa: BLE001
            variants.append((f"ORT static int8{tag}", "error: " + str(e).splitlines()[0][:80]))
    lb("dynamic int8", ["--mode", "dynamic"])
    from onnxruntime.quantization import QuantType, quantize_dynamic
    out = os.path.join(tmp, "minilm.ort-dynamic.onnx")
    quantize_dynamic(model, out, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    variants.append(("ORT dynamic int8", out))
    lb("weight-only int4 b32", ["--mode", "weight-only", "--weights", "int4", "--block-size", "32"])
    lb("fp16", ["--mode", "fp16"])
    rows = []
    for variant, path in variants:
        if path.startswith("error: "):
            rows.append({"model": MINILM, "variant": variant, "error": path[7:]})
            continue
        s = score(corpus, path, data, config, model)
        s.update({"model": MINILM, "variant": variant, "bytes": os.path.getsize(path)})
        rows.append(s)
        print(f"  {MINILM} {variant}: {metric_of(s)} {s.get('error', '')}", file=sys.stderr)
    return rows


def metric_of(r):
    """Top-1 % for classifiers, Spearman×100 for STS."""
    return 100 * r["top1"] if "top1" in r else r.get("spearman_x100")


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lowbit", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--json", help="also write the rows as JSON here")
    ap.add_argument("--only", choices=["mnist", "minilm"])
    a = ap.parse_args()
    t0 = time.time()
    tmp = tempfile.mkdtemp(prefix="lowbit-accuracy-")
    rows = []
    try:
        if a.only in (None, "mnist"):
            rows += mnist_rows(a.corpus, tmp, a.lowbit)
        if a.only in (None, "minilm"):
            rows += minilm_rows(a.corpus, tmp, a.lowbit)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nscored with score.py (ONNX Runtime, default optimizations, 1 thread); "
          f"MNIST: calibration rows 0..{CALIB_ROWS - 1}, scored rows {EVAL_START}..4999\n")
    print("| model | variant | size | top-1 % / Spearman×100 | Δ vs FP32 (pt) | agreement % / mean cos |")
    print("|---|---|---|---|---|---|")
    base = {r["model"]: metric_of(r) for r in rows if r["variant"] == "fp32"}
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['variant']} | — | error: {r['error']} | | |")
            continue
        metric = metric_of(r)
        agree = (100 * r["top1_agreement_with_ref"] if "top1_agreement_with_ref" in r
                 else r.get("mean_cosine_with_ref"))
        delta = None if metric is None or base.get(r["model"]) is None else metric - base[r["model"]]
        print(f"| {r['model']} | {r['variant']} | {r['bytes'] / 1e6:.3f} MB | {fmt(metric, '.2f')} | "
              f"{fmt(delta, '+.2f')} | {fmt(agree, '.4f')} |")
    print(f"\n({time.time() - t0:.0f} s)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
