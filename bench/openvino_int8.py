"""OpenVINO (CPU plugin) on lowbit's `--target openvino` files: accuracy against the FP32 model
and latency, FP32 vs int8 in OpenVINO itself. crates/lowbit-cli/tests/openvino.rs runs it (with
few timing runs); run it alone for the figures:

    python bench/openvino_int8.py --lowbit target/release/lowbit [--models efficientnet,minilm]
        [--threads 1] [--runs 100] [--rounds 5] [--limit-pairs N] [--keep DIR] [--json]

Quantized with lowbit into a temp folder (`--keep DIR` writes them there instead):
  - efficientnet-lite0: static int8 calibrated on the first 100 corpus photos
    (`--data dev/data/imagenet_sample1000 --samples 100 --preprocess efficientnet-lite0.json`),
    scored on the other 900 (top-1, and agreement and output SQNR against FP32 in OpenVINO).
  - paraphrase-MiniLM-L3-v2: static int8 calibrated on 100 STS-B dev sentences (side b), and
    dynamic int8; scored as score.py scores it (Spearman x100 on the STS-B dev pairs, mean cosine
    to the FP32 embeddings, which ONNX Runtime computes: OpenVINO 2025.4 cannot compile the FP32
    file, see `minilm`). A file OpenVINO cannot compile is reported with its message.
Latency: one inference request at batch 1 (`--threads`, default 1, LATENCY hint, f32 precision
hint so no model runs in bf16), `--runs` samples per round (photos, or sentences evenly spread
over the split at their own length), the FP32 and quantized models alternated `--rounds` times;
reported: the median of the per-round medians, and its ratio to FP32 in the same run.

Needs `openvino` (scripts/setup-test-env.sh installs it), numpy, Pillow and the shared corpus
($LOWBIT_SHARED, else ../shared beside the repository). With --json it prints one object.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("LOWBIT_SHARED") or os.path.join(os.path.dirname(REPO), "shared")
CORPUS = os.path.join(SHARED, "corpus")
sys.path.insert(0, CORPUS)
import score  # noqa: E402  (the corpus' own preprocessing and metrics)

EFFNET = "efficientnet-lite0"
MINILM = "paraphrase-MiniLM-L3-v2"
CALIB = 100


class OvSession:
    """An OpenVINO compiled model behind ONNX Runtime's `run(names, feeds)`, so score.py's
    functions drive it unchanged."""

    def __init__(self, path, threads):
        import openvino as ov
        core = ov.Core()
        cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
               "INFERENCE_PRECISION_HINT": "f32"}
        self.model = core.compile_model(path, "CPU", cfg)
        self.req = self.model.create_infer_request()

    def run(self, names, feeds):
        res = self.req.infer(feeds)
        return [np.array(res[self.model.output(n)]) for n in names]


def lowbit_quantize(lowbit, model, out, args):
    r = subprocess.run([lowbit, "-q", "quantize", model, "-o", out, "--force",
                        "--target", "openvino"] + args, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"lowbit quantize {os.path.basename(model)} exited {r.returncode}: {r.stderr.strip()}")


def alternate(timers, rounds):
    """Per model, the median of its per-round medians (ms), the models timed in turn each round."""
    per = {k: [] for k in timers}
    for _ in range(rounds):
        for k, f in timers.items():
            per[k].append(float(np.median(f())) * 1e3)
    return {k: float(np.median(v)) for k, v in per.items()}, per


def efficientnet(args, tmp):
    model = os.path.join(CORPUS, f"dev/models/{EFFNET}.onnx")
    sidecar = os.path.join(CORPUS, f"dev/models/{EFFNET}.json")
    photos = os.path.join(CORPUS, "dev/data/imagenet_sample1000")
    q = os.path.join(tmp, f"{EFFNET}.openvino-static.onnx")
    t = time.time()
    lowbit_quantize(args.lowbit, model, q, ["--data", photos, "--samples", str(CALIB),
                                             "--preprocess", sidecar])
    quantize_s = time.time() - t
    cfg = score.load_json(sidecar)
    meta = score.load_json(os.path.join(photos, "meta.json"))
    imgs, labels = score.load_jpeg_folder(photos, meta, slice(CALIB, None))
    sessions = {"fp32": OvSession(model, args.threads), "int8": OvSession(q, args.threads)}
    logits = {k: score.run_classifier(s, cfg, imgs) for k, s in sessions.items()}
    f, i8 = logits["fp32"], logits["int8"]
    res = {
        "model": EFFNET, "file": q, "photos": len(labels), "quantize_s": quantize_s,
        "fp32_top1": float((f.argmax(1) == labels).mean() * 100),
        "int8_top1": float((i8.argmax(1) == labels).mean() * 100),
        "agreement": float((f.argmax(1) == i8.argmax(1)).mean() * 100),
        "sqnr_db": float(10 * np.log10((f.astype(np.float64) ** 2).sum()
                                       / max(((f - i8).astype(np.float64) ** 2).sum(), 1e-30))),
    }
    if args.runs > 0:
        timers = {k: (lambda s=s: score.latency_classifier(s, cfg, imgs, args.runs))
                  for k, s in sessions.items()}
        med, per = alternate(timers, args.rounds)
        res.update(fp32_ms=med["fp32"], int8_ms=med["int8"], speedup=med["fp32"] / med["int8"],
                   rounds_ms=per)
    return res


def try_ov(path, threads):
    """An OpenVINO session, or None and OpenVINO's message when it cannot compile the file."""
    try:
        return OvSession(path, threads), None
    except RuntimeError as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        return None, lines[-1] if lines else "RuntimeError"


def minilm(args, tmp):
    model = os.path.join(CORPUS, f"dev/models/{MINILM}.onnx")
    cfg = score.load_json(os.path.join(CORPUS, f"dev/models/{MINILM}.json"))
    stsb = os.path.join(CORPUS, "dev/data/stsb_dev")
    calib = os.path.join(tmp, "minilm_calib")
    os.makedirs(calib, exist_ok=True)
    for name, stored in (("input_ids", "input_ids_b"), ("attention_mask", "attention_mask_b")):
        np.save(os.path.join(calib, cfg["inputs"][name] + ".npy"),
                np.load(os.path.join(stsb, stored + ".npy"))[:CALIB])
    files = {"fp32": model}
    for mode, extra in (("static", ["--data", calib]), ("dynamic", ["--mode", "dynamic"])):
        files[mode] = os.path.join(tmp, f"minilm.openvino-{mode}.onnx")
        lowbit_quantize(args.lowbit, model, files[mode], extra)
    a, b, gold = score.load_sts(stsb, 0, args.limit_pairs)
    res = {"model": MINILM, "pairs": len(gold)}
    # The FP32 reference scored by ONNX Runtime as well: OpenVINO 2025.4 cannot compile the
    # corpus' FP32 MiniLM (its mean-pooling mask Expand: "Arguments do not have the same
    # element type (i64, i32)"), nor a file keeping that head unchanged.
    ort_fp32 = score.make_session(model, args.threads)
    ref_a, ref_b = score.embed(ort_fp32, cfg, *a), score.embed(ort_fp32, cfg, *b)
    res["fp32_ort_spearman"] = float(score.spearman(score.cos_rows(ref_a, ref_b), gold) * 100)
    sessions = {}
    for k, path in files.items():
        sess, err = try_ov(path, args.threads)
        if sess is None:
            res[f"{k}_error"] = err
            continue
        sessions[k] = sess
        ea, eb = score.embed(sess, cfg, *a), score.embed(sess, cfg, *b)
        res[f"{k}_spearman"] = float(score.spearman(score.cos_rows(ea, eb), gold) * 100)
        res[f"{k}_cosine"] = float(score.cos_rows(ref_a, ea).mean())
    if args.runs > 0:
        timers = {f"{k}_ms": (lambda s=s: score.latency_encoder(s, cfg, *a, args.runs)[0])
                  for k, s in sessions.items()}
        timers["fp32_ort_ms"] = lambda: score.latency_encoder(ort_fp32, cfg, *a, args.runs)[0]
        med, per = alternate(timers, args.rounds)
        res.update(med)
        res["rounds_ms"] = per
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lowbit", default=os.path.join(REPO, "target/release/lowbit"))
    ap.add_argument("--models", default="efficientnet,minilm")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=100, help="timed samples per round (0: no timing)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--limit-pairs", type=int, default=None, help="STS-B pairs scored (default all)")
    ap.add_argument("--keep", help="write the quantized files here")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import openvino
    out = {"openvino": openvino.__version__, "threads": args.threads, "results": []}
    with tempfile.TemporaryDirectory(prefix="lowbit-openvino-") as t:
        tmp = args.keep or t
        for m in args.models.split(","):
            out["results"].append({"efficientnet": efficientnet, "minilm": minilm}[m](args, tmp))
    if args.json:
        print(json.dumps(out))
        return
    print(f"OpenVINO {out['openvino']}, {args.threads} thread(s)")
    for r in out["results"]:
        if r["model"] == EFFNET:
            print(f"{EFFNET} ({r['photos']} held-back photos): top-1 FP32 {r['fp32_top1']:.2f}, "
                  f"int8 {r['int8_top1']:.2f} (agreement {r['agreement']:.1f} %, "
                  f"SQNR {r['sqnr_db']:.1f} dB)")
            if "fp32_ms" in r:
                print(f"  latency FP32 {r['fp32_ms']:.2f} ms, int8 {r['int8_ms']:.2f} ms: "
                      f"{r['speedup']:.2f}x")
        else:
            print(f"{MINILM} ({r['pairs']} STS-B pairs): Spearman FP32 in ONNX Runtime "
                  f"{r['fp32_ort_spearman']:.2f}")
            for k in ("fp32", "static", "dynamic"):
                if f"{k}_error" in r:
                    print(f"  {k} in OpenVINO: does not compile: {r[k + '_error']}")
                    continue
                line = (f"  {k} in OpenVINO: Spearman {r[k + '_spearman']:.2f}, cosine to FP32 "
                        f"{r[k + '_cosine']:.4f}")
                if f"{k}_ms" in r:
                    line += f", {r[k + '_ms']:.2f} ms"
                print(line)
            if "fp32_ort_ms" in r:
                print(f"  FP32 in ONNX Runtime: {r['fp32_ort_ms']:.2f} ms")


if __name__ == "__main__":
    main()
