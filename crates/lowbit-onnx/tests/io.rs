//! Integration tests on real ONNX files from `../shared`: lossless load/save round trips of the
//! corpus models and every backend node test, external data with the MiniLM encoder, tensor
//! decoding of the node tests' input/output `.pb` files, and damaged or non-ONNX input.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use lowbit_onnx::io::{load_model_with_external_refs, save_model_with_external_data};
use lowbit_onnx::pb::{type_proto, ModelProto, TensorProto};
use lowbit_onnx::tensor_proto::{tensor_from_proto, tensor_to_proto};
use lowbit_onnx::{load_model, load_model_bytes, save_model, OnnxError};
use lowbit_tensor::DType;
use prost::Message;

mod common;
use common::{corpus_models, shared};

fn node_test_dirs() -> Vec<PathBuf> {
    let root = shared().join("onnx-node-tests/node");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    v.sort();
    assert!(v.len() > 1000, "expected the ONNX node tests under {}", root.display());
    v
}

/// Field numbers each ONNX message declares, with the message type of message-typed fields.
/// Listed independently of `pb` so the scan below catches fields `pb` forgot: prost would
/// silently drop them, and a round trip through prost alone cannot notice.
fn schema(msg: &str) -> &'static [(u32, Option<&'static str>)] {
    match msg {
        "Model" => &[
            (1, None),
            (2, None),
            (3, None),
            (4, None),
            (5, None),
            (6, None),
            (7, Some("Graph")),
            (8, Some("OpsetId")),
            (14, Some("Entry")),
            (20, Some("TrainingInfo")),
            (25, Some("Function")),
            (26, Some("DeviceConfig")),
        ],
        "Graph" => &[
            (1, Some("Node")),
            (2, None),
            (5, Some("Tensor")),
            (15, Some("Sparse")),
            (10, None),
            (11, Some("ValueInfo")),
            (12, Some("ValueInfo")),
            (13, Some("ValueInfo")),
            (14, Some("TensorAnnotation")),
            (16, Some("Entry")),
        ],
        "Node" => &[
            (1, None),
            (2, None),
            (3, None),
            (4, None),
            (7, None),
            (8, None),
            (5, Some("Attribute")),
            (6, None),
            (9, Some("Entry")),
            (10, Some("NodeDeviceConfig")),
        ],
        "Attribute" => &[
            (1, None),
            (21, None),
            (13, None),
            (20, None),
            (2, None),
            (3, None),
            (4, None),
            (5, Some("Tensor")),
            (6, Some("Graph")),
            (22, Some("Sparse")),
            (14, Some("Type")),
            (7, None),
            (8, None),
            (9, None),
            (10, Some("Tensor")),
            (11, Some("Graph")),
            (23, Some("Sparse")),
            (15, Some("Type")),
        ],
        "Tensor" => &[
            (1, None),
            (2, None),
            (3, Some("Segment")),
            (4, None),
            (5, None),
            (6, None),
            (7, None),
            (8, None),
            (12, None),
            (9, None),
            (13, Some("Entry")),
            (14, None),
            (10, None),
            (11, None),
            (16, Some("Entry")),
        ],
        "Sparse" => &[(1, Some("Tensor")), (2, Some("Tensor")), (3, None)],
        "ValueInfo" => &[(1, None), (2, Some("Type")), (3, None), (4, Some("Entry"))],
        "Type" => &[
            (1, Some("TypeTensor")),
            (4, Some("TypeElem")),
            (5, Some("TypeMap")),
            (9, Some("TypeElem")),
            (8, Some("TypeTensor")),
            (7, Some("Opaque")),
            (6, None),
        ],
        "TypeTensor" => &[(1, None), (2, Some("Shape"))],
        "TypeElem" => &[(1, Some("Type"))],
        "TypeMap" => &[(1, None), (2, Some("Type"))],
        "Shape" => &[(1, Some("Dim"))],
        "Dim" => &[(1, None), (2, None), (3, None)],
        "TensorAnnotation" => &[(1, None), (2, Some("Entry"))],
        "TrainingInfo" => {
            &[(1, Some("Graph")), (2, Some("Graph")), (3, Some("Entry")), (4, Some("Entry"))]
        }
        "Function" => &[
            (1, None),
            (4, None),
            (5, None),
            (6, None),
            (11, Some("Attribute")),
            (7, Some("Node")),
            (8, None),
            (9, Some("OpsetId")),
            (10, None),
            (13, None),
            (12, Some("ValueInfo")),
            (14, Some("Entry")),
        ],
        "NodeDeviceConfig" => &[(1, None), (2, Some("Sharding")), (3, None)],
        "Sharding" => &[(1, None), (2, None), (3, Some("IntIntList")), (4, Some("ShardedDim"))],
        "ShardedDim" => &[(1, None), (2, Some("SimpleSharded"))],
        // Scalar and string fields only.
        "OpsetId" | "Entry" | "Opaque" | "Segment" | "DeviceConfig" | "IntIntList"
        | "SimpleSharded" => &[(1, None), (2, None), (3, None)],
        other => panic!("no schema for {other}"),
    }
}

fn varint(buf: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*i)?;
        *i += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Walks the protobuf wire format of `buf` as message `msg`, collecting `Msg.field` for every
/// field number the schema does not know.
fn unknown_fields(buf: &[u8], msg: &'static str, out: &mut BTreeSet<String>) {
    let fields = schema(msg);
    let mut i = 0;
    while i < buf.len() {
        let key = varint(buf, &mut i).expect("valid wire format");
        let (field, wire) = ((key >> 3) as u32, key & 7);
        let known = fields.iter().find(|(f, _)| *f == field);
        if known.is_none() {
            out.insert(format!("{msg}.{field}"));
        }
        match wire {
            0 => {
                varint(buf, &mut i).expect("varint");
            }
            1 => i += 8,
            5 => i += 4,
            2 => {
                let n = varint(buf, &mut i).expect("length") as usize;
                if let Some((_, Some(child))) = known {
                    unknown_fields(&buf[i..i + n], child, out);
                }
                i += n;
            }
            w => panic!("{msg}.{field}: unexpected wire type {w}"),
        }
    }
}

/// Loads, re-encodes and decodes again: the model must come back identical, and the file must
/// hold no field the declarations lack (so nothing was dropped on the way in).
fn assert_lossless(path: &Path) -> ModelProto {
    let bytes = std::fs::read(path).unwrap();
    let mut unknown = BTreeSet::new();
    unknown_fields(&bytes, "Model", &mut unknown);
    assert!(unknown.is_empty(), "{}: fields not declared in pb: {unknown:?}", path.display());
    let m = load_model(path).unwrap_or_else(|e| panic!("{e}"));
    let encoded = m.encode_to_vec();
    let again = load_model_bytes(&encoded).unwrap_or_else(|e| panic!("{e}"));
    // Compared as bytes, not with `==`: some models hold NaN attributes (tree ensembles).
    assert!(again.encode_to_vec() == encoded, "{}: model changed in a round trip", path.display());
    m
}

#[test]
fn corpus_models_round_trip_losslessly() {
    for path in corpus_models() {
        let m = assert_lossless(&path);
        let g = m.graph.as_ref().unwrap();
        assert!(!g.node.is_empty() && !m.opset_import.is_empty(), "{}", path.display());
        // Every initializer decodes to a tensor of its declared shape.
        for t in &g.initializer {
            let x = tensor_from_proto(t).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(x.shape().iter().map(|&d| d as i64).collect::<Vec<_>>(), t.dims);
        }
    }
}

#[test]
fn node_test_models_round_trip_losslessly() {
    let mut custom_domains = 0;
    for dir in node_test_dirs() {
        let m = assert_lossless(&dir.join("model.onnx"));
        let g = m.graph.as_ref().unwrap();
        custom_domains += g.node.iter().any(|n| !n.domain.is_empty()) as usize;
    }
    // The node tests exercise these fields; make sure the declarations keep them.
    assert!(custom_domains > 0, "no node test with a custom domain was seen");
}

/// Every tensor-typed input/output `.pb` of the node tests decodes to the declared element type,
/// and re-encoding it gives the same bits (compared as protos, so NaNs compare equal).
#[test]
fn node_test_tensors_decode() {
    let mut checked = 0;
    for dir in node_test_dirs() {
        let m = load_model(dir.join("model.onnx")).unwrap();
        let g = m.graph.unwrap();
        let Ok(sets) = std::fs::read_dir(&dir) else { continue };
        for set in sets.map(|e| e.unwrap().path()).filter(|p| p.is_dir()) {
            for (kind, infos) in [("input", &g.input), ("output", &g.output)] {
                for (i, info) in infos.iter().enumerate() {
                    let pb = set.join(format!("{kind}_{i}.pb"));
                    let Some(type_proto::Value::TensorType(tt)) =
                        info.r#type.as_ref().and_then(|t| t.value.as_ref())
                    else {
                        continue;
                    };
                    if !pb.is_file() || DType::from_onnx(tt.elem_type).is_none() {
                        continue;
                    }
                    let bytes = std::fs::read(&pb).unwrap();
                    let p = TensorProto::decode(bytes.as_slice())
                        .unwrap_or_else(|e| panic!("{}: {e}", pb.display()));
                    assert_eq!(p.data_type, tt.elem_type, "{}", pb.display());
                    let t =
                        tensor_from_proto(&p).unwrap_or_else(|e| panic!("{}: {e}", pb.display()));
                    let q = tensor_to_proto(&p.name, &t);
                    assert_eq!(q.dims, p.dims, "{}", pb.display());
                    let t2 = tensor_from_proto(&q).unwrap();
                    assert_eq!(tensor_to_proto(&p.name, &t2), q, "{}", pb.display());
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 3000, "only {checked} tensors checked");
}

#[test]
fn minilm_external_data_round_trip() {
    let src = shared().join("corpus/dev/models/paraphrase-MiniLM-L3-v2.onnx");
    let original = load_model(&src).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("minilm.onnx");
    save_model_with_external_data(&original, &path, "minilm.weights", 1024).unwrap();

    let model_len = std::fs::metadata(&path).unwrap().len();
    let data_len = std::fs::metadata(dir.path().join("minilm.weights")).unwrap().len();
    assert!(model_len < 1 << 20, "model file is {model_len} bytes");
    assert!(data_len > 60_000_000, "data file is {data_len} bytes");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

    let (back, refs) = load_model_with_external_refs(&path).unwrap();
    assert!(refs.len() > 10, "only {} tensors were external", refs.len());
    let (a, b) = (original.graph.as_ref().unwrap(), back.graph.as_ref().unwrap());
    assert_eq!(a.initializer.len(), b.initializer.len());
    for (x, y) in a.initializer.iter().zip(&b.initializer) {
        assert_eq!(x.name, y.name);
        assert_eq!(x.dims, y.dims);
        assert_eq!(x.data_type, y.data_type);
        assert_eq!(tensor_from_proto(x).unwrap(), tensor_from_proto(y).unwrap(), "{}", x.name);
    }
    assert!(back == original, "the reloaded model differs from the original");
}

#[test]
fn damaged_and_foreign_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::read(shared().join("corpus/dev/models/mnist-8_cntk.onnx")).unwrap();

    let half = dir.path().join("half.onnx");
    std::fs::write(&half, &real[..real.len() / 2]).unwrap();
    let e = load_model(&half).unwrap_err();
    assert!(matches!(e, OnnxError::Decode { .. }), "{e}");
    assert!(e.to_string().contains("half.onnx") && e.to_string().contains("not a valid ONNX"));

    let text = dir.path().join("notes.onnx");
    std::fs::write(&text, "This is a text file, not a model.\nSecond line.\n").unwrap();
    let e = load_model(&text).unwrap_err();
    assert!(e.to_string().contains("notes.onnx"), "{e}");

    // Random bytes, and every prefix of a real model: errors or models, never a panic.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for len in [1, 7, 100, 4096] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(load_model_bytes(&bytes).is_err(), "{len} random bytes decoded");
    }
    for cut in (0..real.len()).step_by(97) {
        let _ = load_model_bytes(&real[..cut]);
    }

    let e = load_model(dir.path().join("absent.onnx")).unwrap_err();
    assert!(matches!(e, OnnxError::Io { .. }) && e.to_string().contains("absent.onnx"), "{e}");
}

#[test]
fn save_model_writes_a_loadable_file() {
    let src = shared().join("corpus/dev/models/burn_mnist_bn.onnx");
    let m = load_model(&src).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.onnx");
    save_model(&m, &path).unwrap();
    // Overwriting an existing file goes through the same temp-and-rename path.
    save_model(&m, &path).unwrap();
    assert_eq!(load_model(&path).unwrap(), m);
    let names: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec!["copy.onnx"]);
}

#[test]
fn wire_scan_reports_undeclared_fields() {
    let m = ModelProto { graph: Some(Default::default()), ..Default::default() };
    let mut bytes = m.encode_to_vec();
    bytes.extend_from_slice(&[(99 << 3) as u8 | 0x80, (99 >> 4) as u8, 1]); // field 99 = 1
    let mut unknown = BTreeSet::new();
    unknown_fields(&bytes, "Model", &mut unknown);
    assert_eq!(unknown.into_iter().collect::<Vec<_>>(), vec!["Model.99"]);
}
