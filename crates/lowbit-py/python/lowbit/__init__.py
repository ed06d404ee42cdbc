"""lowbit: quantize ONNX models, score them, compare them layer by layer, run them.

The quantization calls take ONNX Runtime's argument names, so switching is one import::

    from lowbit import quantize_static            # was: from onnxruntime.quantization import ...
    quantize_static("model.onnx", "model.int8.onnx", MyCalibrationDataReader())

What ONNX Runtime leaves to its defaults (``per_channel=False``, ``QInt8`` activations) lowbit
decides from the deployment ``target`` when the argument is omitted: per-channel weights and the
activation type and weight range the target runs best. Arguments given are honoured. Every call
runs the same library code as the ``lowbit`` command line and raises its error messages
(``LowbitError``; ``ValueError`` for arguments that make no sense).
"""

import json
import os
import warnings

from . import _native
from ._native import LowbitError, Session, ValidationError

__version__ = _native.__version__

__all__ = [
    "quantize_static",
    "quantize_dynamic",
    "eval",
    "compare",
    "Session",
    "LowbitError",
    "ValidationError",
    "QuantType",
    "QuantFormat",
    "CalibrationMethod",
]


class _Names:
    """A namespace of names: ``QuantType.QInt8 == "QInt8"``, so ONNX Runtime's enums and these
    strings are accepted alike."""

    def __init__(self, *names):
        for n in names:
            setattr(self, n, n)


#: ONNX Runtime's ``QuantType`` names (its enum members work too).
QuantType = _Names("QInt8", "QUInt8", "QInt16", "QUInt16", "QInt4", "QUInt4")
#: ONNX Runtime's ``QuantFormat`` names: lowbit writes QDQ.
QuantFormat = _Names("QDQ", "QOperator")
#: ONNX Runtime's ``CalibrationMethod`` names.
CalibrationMethod = _Names("MinMax", "Entropy", "Percentile", "Distribution")

_TYPES = {
    "qint8": "int8",
    "int8": "int8",
    "quint8": "uint8",
    "uint8": "uint8",
    "qint16": "int16",
    "int16": "int16",
    "qint4": "int4",
    "int4": "int4",
    "quint4": "uint4",
    "uint4": "uint4",
}
_METHODS = {
    "minmax": "minmax",
    "entropy": "entropy",
    "percentile": "percentile",
    "mse": "mse",
    "moving-average": "moving-average",
    "movingaverage": "moving-average",
}


def _name(value):
    """An enum member's name (ONNX Runtime's QuantType.QInt8 -> "QInt8"), or the string."""
    if value is None:
        return None
    name = getattr(value, "name", value)
    return str(name)


def _type(value, what):
    if value is None:
        return None
    key = _name(value).lower()
    if key not in _TYPES:
        raise ValueError(
            f"{what}={_name(value)!r}: expected QInt8, QUInt8, QInt16, QInt4 or QUInt4 "
            "(ONNX Runtime's QuantType) or int8, uint8, int16, int4, uint4"
        )
    return _TYPES[key]


def _method(value):
    key = _name(value).lower()
    if key == "distribution":
        raise ValueError(
            "calibrate_method=Distribution is not implemented in lowbit: use MinMax, Entropy, "
            "Percentile or 'mse'"
        )
    if key not in _METHODS:
        raise ValueError(f"calibrate_method={_name(value)!r}: expected MinMax, Entropy or Percentile")
    return _METHODS[key]


def _path(p):
    return None if p is None else os.fspath(p)


def _common(kwargs, *, op_types_to_quantize, per_channel, reduce_range,
            weight_type, nodes_to_quantize, nodes_to_exclude, use_external_data_format,
            extra_options):
    if use_external_data_format:
        warnings.warn(
            "use_external_data_format: lowbit writes the weights into the .onnx file (they "
            "shrink 4x); the argument is ignored",
            stacklevel=3,
        )
    for key in (extra_options or {}):
        warnings.warn(f"extra_options[{key!r}] has no lowbit equivalent and is ignored", stacklevel=3)
    if per_channel is not None:
        kwargs["per_channel"] = bool(per_channel)
    if reduce_range is not None:
        kwargs["reduce_range"] = bool(reduce_range)
    if weight_type is not None:
        kwargs["weights"] = _type(weight_type, "weight_type")
    if op_types_to_quantize:
        kwargs["quantize_op_types"] = list(op_types_to_quantize)
    if nodes_to_quantize:
        kwargs["quantize_nodes"] = list(nodes_to_quantize)
    if nodes_to_exclude:
        kwargs["exclude"] = list(kwargs.get("exclude", [])) + list(nodes_to_exclude)
    return kwargs


def _summary(text):
    return json.loads(text)


def quantize_static(
    model_input,
    model_output,
    calibration_data_reader=None,
    quant_format=None,
    op_types_to_quantize=None,
    per_channel=None,
    reduce_range=None,
    activation_type=None,
    weight_type=None,
    nodes_to_quantize=None,
    nodes_to_exclude=None,
    use_external_data_format=False,
    calibrate_method=CalibrationMethod.MinMax,
    calibration_providers=None,
    extra_options=None,
    *,
    data=None,
    samples=None,
    preprocess=None,
    tokenizer=None,
    text_field=None,
    target="auto",
    validate=32,
    min_output_sqnr=None,
    allow_degraded=False,
    threads=0,
    **lowbit_options,
):
    """Static (calibrated QDQ) quantization of ``model_input`` into ``model_output``.

    ``calibration_data_reader``: any object whose ``get_next()`` returns a dict of input name
    -> numpy array, then ``None`` (ONNX Runtime's ``CalibrationDataReader``). It is read once;
    its batches are kept for the passes that replay them (in memory up to 1 GiB, then in a
    temporary folder). Or ``data=``: a path read as ``lowbit quantize --data`` reads it (a
    folder of ``.npy``/``.npz``, a photo folder with ``preprocess=``, a text file with
    ``tokenizer=``), of which the first ``samples`` calibrate and the next ``validate`` check.

    ONNX Runtime's arguments mean what they mean there; omitted ones are left to lowbit's plan
    for ``target`` (per-channel weights, the target's activation type). lowbit's own options
    (``equalize``, ``smooth_quant``, ``bias_correction``, ``adaround``, ``block_size``,
    ``int4_ends``, ``min_sqnr``, ``memory_budget``) may be passed by name. With 4-bit weights
    the first and last weighted layers keep int8 weights unless ``int4_ends=True``.

    Before writing, the quantized model runs against FP32 on held-back samples (the reader's
    last ``validate`` samples); below ``min_output_sqnr`` dB it raises ``ValidationError`` and
    writes nothing, unless ``allow_degraded=True``. When fewer than 10 % of the weighted nodes
    (Conv, Gemm, MatMul, ...) could be quantized it raises ``LowbitError`` naming the causes
    and writes nothing, unless ``allow_partial=True`` (a lowbit option). Returns the quantizer's
    summary as a dict.
    """
    if quant_format is not None and _name(quant_format) not in ("QDQ",):
        raise ValueError(f"quant_format={_name(quant_format)}: lowbit writes QDQ models only")
    if calibration_providers:
        warnings.warn("calibration_providers: lowbit calibrates on its own CPU engine", stacklevel=2)
    kwargs = _common(
        dict(lowbit_options),
        op_types_to_quantize=op_types_to_quantize,
        per_channel=per_channel,
        reduce_range=reduce_range,
        weight_type=weight_type,
        nodes_to_quantize=nodes_to_quantize,
        nodes_to_exclude=nodes_to_exclude,
        use_external_data_format=use_external_data_format,
        extra_options=extra_options,
    )
    if activation_type is not None:
        kwargs["activations"] = _type(activation_type, "activation_type")
    kwargs["method"] = _method(calibrate_method)
    if min_output_sqnr is not None:
        kwargs["min_output_sqnr"] = float(min_output_sqnr)
    return _summary(
        _native.quantize(
            _path(model_input),
            _path(model_output),
            "static",
            calibration_data_reader,
            _path(data),
            samples=samples,
            preprocess=preprocess,
            tokenizer=_path(tokenizer),
            text_field=text_field,
            target=target,
            validate=validate,
            allow_degraded=allow_degraded,
            threads=threads,
            **kwargs,
        )
    )


def quantize_dynamic(
    model_input,
    model_output,
    op_types_to_quantize=None,
    per_channel=None,
    reduce_range=None,
    weight_type=None,
    nodes_to_quantize=None,
    nodes_to_exclude=None,
    use_external_data_format=False,
    extra_options=None,
    *,
    target="auto",
    threads=0,
    **lowbit_options,
):
    """Dynamic quantization (int8 weights, activations quantized at run time) of
    ``model_input`` into ``model_output``; ONNX Runtime's arguments. Returns the summary."""
    kwargs = _common(
        dict(lowbit_options),
        op_types_to_quantize=op_types_to_quantize,
        per_channel=per_channel,
        reduce_range=reduce_range,
        weight_type=weight_type,
        nodes_to_quantize=nodes_to_quantize,
        nodes_to_exclude=nodes_to_exclude,
        use_external_data_format=use_external_data_format,
        extra_options=extra_options,
    )
    return _summary(
        _native.quantize(
            _path(model_input), _path(model_output), "dynamic", target=target, threads=threads, **kwargs
        )
    )


def eval(model, data, *, labels=None, output=None, preprocess=None, tokenizer=None,
         text_field=None, pair_fields=None, gold_field=None, limit=None, batch=None, threads=0,
         latency=0, trim=True):
    """Scores ``model`` on ``data`` as ``lowbit eval`` does and returns its JSON report as a
    dict: top-1/top-5 with ``labels`` (a ``.npy`` file, or a photo folder's own labels),
    Spearman of sentence pairs (a text file with ``tokenizer``, ``pair_fields="a,b"`` and
    ``gold_field``), and latency over ``latency`` single samples."""
    return json.loads(
        _native.eval(
            _path(model),
            _path(data),
            labels=_path(labels),
            output=output,
            preprocess=preprocess,
            tokenizer=_path(tokenizer),
            text_field=text_field,
            pair_fields=pair_fields if pair_fields is None or isinstance(pair_fields, str) else ",".join(pair_fields),
            gold_field=gold_field,
            limit=limit,
            batch=batch,
            threads=threads,
            latency=latency,
            trim=trim,
        )
    )


def compare(fp32, quant, data, *, samples=100, preprocess=None, tokenizer=None, text_field=None,
            threads=0, trim=True):
    """Per-layer quantization noise of ``quant`` against ``fp32`` on the first ``samples`` of
    ``data``, as ``lowbit compare --json`` reports it (a dict: outputs, activations, weights,
    ranking worst first with hints)."""
    return json.loads(
        _native.compare(
            _path(fp32),
            _path(quant),
            _path(data),
            samples=samples,
            preprocess=preprocess,
            tokenizer=_path(tokenizer),
            text_field=text_field,
            threads=threads,
            trim=trim,
        )
    )
