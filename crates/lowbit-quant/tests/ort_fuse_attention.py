"""Fuses a BERT-like ONNX model's self-attention subgraphs into com.microsoft.Attention with ONNX
Runtime's transformer optimizer, and nothing else (no LayerNorm/GELU/embedding fusions), so the
result holds the fused op ORT's tools write and otherwise standard ONNX.

    python ort_fuse_attention.py IN.onnx OUT.onnx NUM_HEADS HIDDEN

Prints the number of Attention nodes written.
"""
import sys

from onnxruntime.transformers import optimizer
from onnxruntime.transformers.fusion_options import FusionOptions


def main():
    src, dst, heads, hidden = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    opts = FusionOptions("bert")
    for name in list(vars(opts)):
        if name.startswith("enable_"):
            setattr(opts, name, False)
    opts.enable_attention = True
    m = optimizer.optimize_model(
        src,
        model_type="bert",
        num_heads=heads,
        hidden_size=hidden,
        optimization_options=opts,
        opt_level=0,
        use_gpu=False,
    )
    m.save_model_to_file(dst)
    print(sum(1 for n in m.model.graph.node if n.op_type == "Attention"))


if __name__ == "__main__":
    main()
