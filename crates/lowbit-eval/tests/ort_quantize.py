"""Quantizes a model with ONNX Runtime's quantize_static (QDQ, uint8 activations, int8 weights,
min-max, ORT's own pre-processing first), for tests/compare.rs.

usage: ort_quantize.py MODEL OUT CALIB.npy INPUT_NAME [--per-channel]

CALIB.npy holds the calibration rows, already preprocessed, fed 10 at a time.
"""
import os
import sys

import numpy as np
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process


def main():
    model, out, calib, input_name = sys.argv[1:5]
    per_channel = "--per-channel" in sys.argv[5:]
    x = np.load(calib)
    feeds = iter([{input_name: x[i:i + 10]} for i in range(0, len(x), 10)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    pre = out + ".pre.onnx"
    quant_pre_process(input_model_path=model, output_model_path=pre, skip_symbolic_shape=True)
    quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    reduce_range=False, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    os.remove(pre)


if __name__ == "__main__":
    main()
