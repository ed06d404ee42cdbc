//! Loading and saving ONNX model files, including tensors kept in external data files.
//!
//! A loaded model is always self-contained: tensors stored externally are read into `raw_data`
//! while loading, so later stages never need the model's directory. Saving is atomic (temp file
//! in the target directory, then rename), and moves large tensors to one external data file when
//! asked to or when the model would exceed protobuf's 2 GiB message limit.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use lowbit_tensor::DType;
use prost::Message;

use crate::error::{OnnxError, Result};
use crate::pb::tensor_proto::DataLocation;
use crate::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, StringStringEntryProto, TensorProto,
};
use crate::tensor_proto::{proto_raw_bytes, raw_len, shape_from_proto};

/// Largest message protobuf readers accept (2 GiB - 1).
pub const PROTOBUF_LIMIT: u64 = i32::MAX as u64;

/// Tensors at least this many bytes go to the data file when `save_model` has to switch to
/// external data (the same default ONNX's own helpers use).
pub const AUTO_EXTERNAL_THRESHOLD: usize = 1024;

/// Tensors at least this large start at a page boundary in the data file so they can be
/// memory-mapped; smaller ones are aligned to [`SMALL_ALIGN`] to keep the file compact.
const PAGE_ALIGN: u64 = 4096;
const SMALL_ALIGN: u64 = 64;

/// Where one tensor's bytes came from when it was loaded from external data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalDataRef {
    /// The tensor's name.
    pub tensor: String,
    /// The `location` entry, relative to the model's directory.
    pub location: String,
    pub offset: u64,
    pub length: u64,
    /// The tensor's `external_data` entries as stored in the file.
    pub entries: Vec<StringStringEntryProto>,
}

/// Reads an ONNX model file, resolving external data relative to the file's directory.
pub fn load_model(path: impl AsRef<Path>) -> Result<ModelProto> {
    load_model_with_external_refs(path).map(|(m, _)| m)
}

/// Like [`load_model`], also telling which tensors were read from external data and where from.
pub fn load_model_with_external_refs(
    path: impl AsRef<Path>,
) -> Result<(ModelProto, Vec<ExternalDataRef>)> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| OnnxError::io(path, e))?;
    let mut model = decode_model(&bytes, path)?;
    drop(bytes);
    let refs = load_external_data(&mut model, parent_dir(path))?;
    Ok((model, refs))
}

/// Decodes a model from memory. A model referring to external data is an error here (there is
/// no directory to resolve it against): use [`load_model`] or [`load_external_data`].
pub fn load_model_bytes(bytes: &[u8]) -> Result<ModelProto> {
    let mut model = decode_model(bytes, Path::new("<memory>"))?;
    visit_model_tensors(&mut model, &mut |t| {
        if is_external(t) {
            Err(OnnxError::ExternalDataWithoutDir { tensor: t.name.clone() })
        } else {
            Ok(())
        }
    })?;
    Ok(model)
}

fn decode_model(bytes: &[u8], path: &Path) -> Result<ModelProto> {
    let model = ModelProto::decode(bytes)
        .map_err(|source| OnnxError::Decode { path: path.to_path_buf(), source })?;
    // Protobuf decodes many non-protobuf byte strings into a mostly empty message; a model
    // without a graph is the reliable sign that the file was not ONNX.
    if model.graph.is_none() {
        return Err(OnnxError::NoGraph { path: path.to_path_buf() });
    }
    Ok(model)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn is_external(t: &TensorProto) -> bool {
    t.data_location == DataLocation::External as i32
}

/// Reads every externally stored tensor of `model` into `raw_data` (locations relative to
/// `base_dir`) and returns where each came from. Afterwards the model is self-contained.
pub fn load_external_data(model: &mut ModelProto, base_dir: &Path) -> Result<Vec<ExternalDataRef>> {
    // One open handle per data file: models usually keep all tensors in a single file.
    let mut files: HashMap<PathBuf, (File, u64)> = HashMap::new();
    let mut refs = Vec::new();
    visit_model_tensors(model, &mut |t| {
        if !is_external(t) {
            return Ok(());
        }
        let r = read_external(t, base_dir, &mut files)?;
        refs.push(r);
        Ok(())
    })?;
    Ok(refs)
}

fn read_external(
    t: &mut TensorProto,
    base_dir: &Path,
    files: &mut HashMap<PathBuf, (File, u64)>,
) -> Result<ExternalDataRef> {
    let tensor = t.name.clone();
    let invalid = |msg: String| OnnxError::ExternalDataInvalid { tensor: tensor.clone(), msg };
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for e in &t.external_data {
        let number = || {
            e.value
                .trim()
                .parse::<u64>()
                .map_err(|_| invalid(format!("'{}' is not a byte count: '{}'", e.key, e.value)))
        };
        match e.key.as_str() {
            "location" => location = Some(e.value.clone()),
            "offset" => offset = number()?,
            "length" => length = Some(number()?),
            _ => {} // "checksum" and unknown keys are informational.
        }
    }
    let location = location.ok_or_else(|| invalid("no 'location' entry".into()))?;
    check_relative(&location).map_err(invalid)?;
    if t.data_type == DType::String as i32 {
        return Err(invalid("string tensors cannot be stored externally".into()));
    }
    // The byte count the shape implies, when lowbit knows the type: it bounds the read when
    // `length` is absent and catches a `length` that disagrees with the shape.
    let expected = match (DType::from_onnx(t.data_type), shape_from_proto(t)) {
        (Some(d), Ok((_, n))) => raw_len(d, n).map(|b| b as u64),
        _ => None,
    };
    if let (Some(len), Some(exp)) = (length, expected) {
        if len != exp {
            return Err(invalid(format!(
                "length {len} disagrees with its shape {:?}, which needs {exp} bytes",
                t.dims
            )));
        }
    }
    let path = base_dir.join(&location);
    if !files.contains_key(&path) {
        let file = File::open(&path).map_err(|source| OnnxError::ExternalDataMissing {
            tensor: tensor.clone(),
            path: path.clone(),
            source,
        })?;
        let len = file.metadata().map_err(|e| OnnxError::io(&path, e))?.len();
        files.insert(path.clone(), (file, len));
    }
    let (file, file_len) = files.get_mut(&path).expect("inserted above");
    let file_len = *file_len;
    let len = length.or(expected).unwrap_or(file_len.saturating_sub(offset));
    let end = offset.checked_add(len).ok_or_else(|| invalid("offset + length overflows".into()))?;
    if end > file_len {
        return Err(OnnxError::ExternalDataTruncated { tensor, path, offset, end, file_len });
    }
    let mut buf = vec![0u8; len as usize];
    file.seek(SeekFrom::Start(offset)).map_err(|e| OnnxError::io(&path, e))?;
    file.read_exact(&mut buf).map_err(|e| OnnxError::io(&path, e))?;
    t.raw_data = buf;
    t.data_location = DataLocation::Default as i32;
    let entries = std::mem::take(&mut t.external_data);
    Ok(ExternalDataRef { tensor, location, offset, length: len, entries })
}

/// External data locations must stay inside the model's directory (ONNX forbids absolute paths
/// and `..`; honouring them would let a model file read anything on the machine).
fn check_relative(location: &str) -> std::result::Result<(), String> {
    let p = Path::new(location);
    if location.is_empty()
        || !p.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "location '{location}' must be a relative path inside the model's directory"
        ));
    }
    Ok(())
}

/// Writes `model` to `path` atomically. When the encoded model would exceed protobuf's 2 GiB
/// limit, tensors of at least [`AUTO_EXTERNAL_THRESHOLD`] bytes go to `<file name>.data` beside
/// it instead (see [`save_model_with_external_data`]).
pub fn save_model(model: &ModelProto, path: impl AsRef<Path>) -> Result<()> {
    save_model_limited(model, path.as_ref(), PROTOBUF_LIMIT)
}

fn save_model_limited(model: &ModelProto, path: &Path, limit: u64) -> Result<()> {
    if model.encoded_len() as u64 <= limit {
        return write_atomic(path, &model.encode_to_vec());
    }
    let name = path.file_name().ok_or_else(|| {
        OnnxError::InvalidArgument(format!("{}: not a file path", path.display()))
    })?;
    let data_name = format!("{}.data", name.to_string_lossy());
    save_external(model, path, &data_name, AUTO_EXTERNAL_THRESHOLD, limit)
}

/// Writes `model` to `path` with every initializer and node-attribute tensor (subgraphs
/// included) of at least `size_threshold` bytes moved into `data_file_name`, a file beside the
/// model. Offsets are 4096-aligned for tensors of 4 KiB or more, 64-aligned otherwise. Both files
/// are written atomically; if no tensor qualifies, no data file is written. String tensors and
/// tensors already marked external stay as they are.
pub fn save_model_with_external_data(
    model: &ModelProto,
    path: impl AsRef<Path>,
    data_file_name: &str,
    size_threshold: usize,
) -> Result<()> {
    save_external(model, path.as_ref(), data_file_name, size_threshold, PROTOBUF_LIMIT)
}

fn save_external(
    model: &ModelProto,
    path: &Path,
    data_file_name: &str,
    size_threshold: usize,
    limit: u64,
) -> Result<()> {
    let mut comps = Path::new(data_file_name).components();
    if !matches!((comps.next(), comps.next()), (Some(Component::Normal(_)), None)) {
        return Err(OnnxError::InvalidArgument(format!(
            "external data file name '{data_file_name}' must be a plain file name"
        )));
    }
    if path.file_name().is_some_and(|n| n == data_file_name) {
        return Err(OnnxError::InvalidArgument(format!(
            "external data file name '{data_file_name}' is the model's own file name"
        )));
    }
    let data_path = parent_dir(path).join(data_file_name);
    let data = TempFile::create(&data_path)?;
    let mut writer = DataWriter {
        out: BufWriter::new(data.file.as_ref().expect("open")),
        path: &data.path,
        location: data_file_name,
        threshold: size_threshold.max(1),
        offset: 0,
        moved: 0,
    };
    let out = map_model(model, &mut |t| writer.place(t))?;
    let moved = writer.moved;
    writer.out.flush().map_err(|e| OnnxError::io(&data.path, e))?;
    drop(writer);
    let size = out.encoded_len() as u64;
    if size > limit {
        return Err(OnnxError::TooLarge { path: path.to_path_buf(), size });
    }
    let mut model_file = TempFile::create(path)?;
    model_file.write_all(&out.encode_to_vec())?;
    if moved > 0 {
        // Data first: the model must never name a data file that is not in place yet.
        data.persist(&data_path)?;
    }
    model_file.persist(path)
}

/// Appends qualifying tensors to the data file and returns the proto that refers to them.
struct DataWriter<'a> {
    out: BufWriter<&'a File>,
    path: &'a Path,
    location: &'a str,
    threshold: usize,
    offset: u64,
    moved: usize,
}

impl DataWriter<'_> {
    fn place(&mut self, t: &TensorProto) -> Result<TensorProto> {
        if is_external(t) {
            return Ok(t.clone());
        }
        // A tensor whose typed fields do not decode is kept inline, untouched: saving should
        // not be where a malformed constant is reported.
        let bytes = match proto_raw_bytes(t) {
            Ok(Some(b)) if b.len() >= self.threshold => b,
            _ => return Ok(t.clone()),
        };
        let len = bytes.len() as u64;
        let align = if len >= PAGE_ALIGN { PAGE_ALIGN } else { SMALL_ALIGN };
        let start = self.offset.div_ceil(align) * align;
        let io = |e| OnnxError::io(self.path, e);
        let pad = (start - self.offset) as usize;
        self.out.write_all(&[0u8; PAGE_ALIGN as usize][..pad]).map_err(io)?;
        self.out.write_all(&bytes).map_err(io)?;
        self.offset = start + len;
        self.moved += 1;
        let entry = |k: &str, v: String| StringStringEntryProto { key: k.to_string(), value: v };
        Ok(TensorProto {
            dims: t.dims.clone(),
            data_type: t.data_type,
            segment: t.segment.clone(),
            name: t.name.clone(),
            doc_string: t.doc_string.clone(),
            metadata_props: t.metadata_props.clone(),
            external_data: vec![
                entry("location", self.location.to_string()),
                entry("offset", start.to_string()),
                entry("length", len.to_string()),
            ],
            data_location: DataLocation::External as i32,
            ..Default::default()
        })
    }
}

/// A temp file beside its destination, removed on drop unless persisted (renamed into place),
/// so a failed save never leaves a half-written file under the real name.
struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    fn create(dest: &Path) -> Result<TempFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = parent_dir(dest).join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        // Errors name the destination: the temp name means nothing to the user.
        let file = File::create(&path).map_err(|e| OnnxError::io(dest, e))?;
        Ok(TempFile { path, file: Some(file) })
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let f = self.file.as_mut().expect("open until persisted");
        f.write_all(bytes).map_err(|e| OnnxError::io(&self.path, e))
    }

    fn persist(mut self, dest: &Path) -> Result<()> {
        let f = self.file.take().expect("open until persisted");
        // Flushed to disk before the rename, so a crash leaves the old file or the new one.
        f.sync_all().map_err(|e| OnnxError::io(&self.path, e))?;
        drop(f);
        std::fs::rename(&self.path, dest).map_err(|e| OnnxError::io(dest, e))?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            self.file.take();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = TempFile::create(path)?;
    tmp.write_all(bytes)?;
    tmp.persist(path)
}

/// Calls `f` on every tensor proto of the model: initializers, sparse initializers, node
/// attributes (recursively through subgraphs), training graphs and function bodies.
pub fn visit_model_tensors(
    model: &mut ModelProto,
    f: &mut dyn FnMut(&mut TensorProto) -> Result<()>,
) -> Result<()> {
    if let Some(g) = &mut model.graph {
        visit_graph(g, f)?;
    }
    for ti in &mut model.training_info {
        for g in [&mut ti.initialization, &mut ti.algorithm].into_iter().flatten() {
            visit_graph(g, f)?;
        }
    }
    for func in &mut model.functions {
        for a in &mut func.attribute_proto {
            visit_attribute(a, f)?;
        }
        for n in &mut func.node {
            visit_node(n, f)?;
        }
    }
    Ok(())
}

fn visit_graph(
    g: &mut GraphProto,
    f: &mut dyn FnMut(&mut TensorProto) -> Result<()>,
) -> Result<()> {
    for t in &mut g.initializer {
        f(t)?;
    }
    for s in &mut g.sparse_initializer {
        for t in [&mut s.values, &mut s.indices].into_iter().flatten() {
            f(t)?;
        }
    }
    for n in &mut g.node {
        visit_node(n, f)?;
    }
    Ok(())
}

fn visit_node(n: &mut NodeProto, f: &mut dyn FnMut(&mut TensorProto) -> Result<()>) -> Result<()> {
    for a in &mut n.attribute {
        visit_attribute(a, f)?;
    }
    Ok(())
}

fn visit_attribute(
    a: &mut AttributeProto,
    f: &mut dyn FnMut(&mut TensorProto) -> Result<()>,
) -> Result<()> {
    for t in a.t.iter_mut().chain(a.tensors.iter_mut()) {
        f(t)?;
    }
    for s in a.sparse_tensor.iter_mut().chain(a.sparse_tensors.iter_mut()) {
        for t in [&mut s.values, &mut s.indices].into_iter().flatten() {
            f(t)?;
        }
    }
    for g in a.g.iter_mut().chain(a.graphs.iter_mut()) {
        visit_graph(g, f)?;
    }
    Ok(())
}

type TensorMap<'a> = dyn FnMut(&TensorProto) -> Result<TensorProto> + 'a;

/// A copy of `model` with the main graph's initializers and node-attribute tensors (subgraphs
/// included) passed through `f`. Built field by field rather than by `clone()` so tensors that
/// move out are never copied, and so a field added to `pb` fails to compile here instead of
/// being dropped silently.
fn map_model(m: &ModelProto, f: &mut TensorMap<'_>) -> Result<ModelProto> {
    Ok(ModelProto {
        ir_version: m.ir_version,
        opset_import: m.opset_import.clone(),
        producer_name: m.producer_name.clone(),
        producer_version: m.producer_version.clone(),
        domain: m.domain.clone(),
        model_version: m.model_version,
        doc_string: m.doc_string.clone(),
        graph: m.graph.as_ref().map(|g| map_graph(g, f)).transpose()?,
        metadata_props: m.metadata_props.clone(),
        training_info: m.training_info.clone(),
        functions: m.functions.clone(),
        configuration: m.configuration.clone(),
    })
}

fn map_graph(g: &GraphProto, f: &mut TensorMap<'_>) -> Result<GraphProto> {
    Ok(GraphProto {
        node: g.node.iter().map(|n| map_node(n, f)).collect::<Result<_>>()?,
        name: g.name.clone(),
        initializer: g.initializer.iter().map(&mut *f).collect::<Result<_>>()?,
        sparse_initializer: g.sparse_initializer.clone(),
        doc_string: g.doc_string.clone(),
        input: g.input.clone(),
        output: g.output.clone(),
        value_info: g.value_info.clone(),
        quantization_annotation: g.quantization_annotation.clone(),
        metadata_props: g.metadata_props.clone(),
    })
}

fn map_node(n: &NodeProto, f: &mut TensorMap<'_>) -> Result<NodeProto> {
    Ok(NodeProto {
        input: n.input.clone(),
        output: n.output.clone(),
        name: n.name.clone(),
        op_type: n.op_type.clone(),
        domain: n.domain.clone(),
        overload: n.overload.clone(),
        attribute: n.attribute.iter().map(|a| map_attribute(a, f)).collect::<Result<_>>()?,
        doc_string: n.doc_string.clone(),
        metadata_props: n.metadata_props.clone(),
        device_configurations: n.device_configurations.clone(),
    })
}

fn map_attribute(a: &AttributeProto, f: &mut TensorMap<'_>) -> Result<AttributeProto> {
    Ok(AttributeProto {
        name: a.name.clone(),
        ref_attr_name: a.ref_attr_name.clone(),
        doc_string: a.doc_string.clone(),
        r#type: a.r#type,
        f: a.f,
        i: a.i,
        s: a.s.clone(),
        t: a.t.as_ref().map(&mut *f).transpose()?,
        g: a.g.as_ref().map(|g| map_graph(g, f)).transpose()?,
        sparse_tensor: a.sparse_tensor.clone(),
        tp: a.tp.clone(),
        floats: a.floats.clone(),
        ints: a.ints.clone(),
        strings: a.strings.clone(),
        tensors: a.tensors.iter().map(&mut *f).collect::<Result<_>>()?,
        graphs: a.graphs.iter().map(|g| map_graph(g, f)).collect::<Result<_>>()?,
        sparse_tensors: a.sparse_tensors.clone(),
        type_protos: a.type_protos.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{tensor_proto::DataType, AttributeProto, ValueInfoProto};

    fn float_tensor(name: &str, n: usize) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: vec![n as i64],
            data_type: DataType::Float as i32,
            raw_data: (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect(),
            ..Default::default()
        }
    }

    /// A model with a big and a small initializer, a Constant node and an If subgraph whose
    /// branch holds another big initializer.
    fn model() -> ModelProto {
        let branch = GraphProto {
            name: "then".into(),
            initializer: vec![float_tensor("sub_w", 3000)],
            ..Default::default()
        };
        let graph = GraphProto {
            name: "g".into(),
            initializer: vec![float_tensor("w", 5000), float_tensor("b", 4)],
            node: vec![
                NodeProto {
                    op_type: "Constant".into(),
                    output: vec!["c".into()],
                    attribute: vec![AttributeProto {
                        name: "value".into(),
                        r#type: 4,
                        t: Some(float_tensor("", 2000)),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                NodeProto {
                    op_type: "If".into(),
                    attribute: vec![AttributeProto {
                        name: "then_branch".into(),
                        r#type: 5,
                        g: Some(branch),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
            input: vec![ValueInfoProto { name: "x".into(), ..Default::default() }],
            ..Default::default()
        };
        ModelProto { ir_version: 8, graph: Some(graph), ..Default::default() }
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn external_data_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        let m = model();
        save_model_with_external_data(&m, &path, "m.bin", 1024).unwrap();
        assert_eq!(files_in(dir.path()), vec!["m.bin", "m.onnx"]);

        // The file on disk refers to the data file; the small tensor stayed inline.
        let raw = ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
        let g = raw.graph.as_ref().unwrap();
        assert!(is_external(&g.initializer[0]) && g.initializer[0].raw_data.is_empty());
        assert!(!is_external(&g.initializer[1]));
        let offsets: Vec<u64> = [&g.initializer[0], g.node[0].attribute[0].t.as_ref().unwrap()]
            .iter()
            .map(|t| {
                t.external_data.iter().find(|e| e.key == "offset").unwrap().value.parse().unwrap()
            })
            .collect();
        assert!(offsets.iter().all(|o| o % SMALL_ALIGN == 0), "{offsets:?}");
        assert_eq!(offsets[0] % PAGE_ALIGN, 0);

        let (back, refs) = load_model_with_external_refs(&path).unwrap();
        assert_eq!(back, m);
        let names: Vec<&str> = refs.iter().map(|r| r.tensor.as_str()).collect();
        assert_eq!(names, vec!["w", "", "sub_w"]);
        assert!(refs.iter().all(|r| r.location == "m.bin"));
    }

    #[test]
    fn save_switches_to_external_over_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.onnx");
        let m = model();
        save_model_limited(&m, &path, 10_000).unwrap();
        assert_eq!(files_in(dir.path()), vec!["big.onnx", "big.onnx.data"]);
        assert!(std::fs::metadata(&path).unwrap().len() < 10_000);
        assert_eq!(load_model(&path).unwrap(), m);

        // Under the limit: one self-contained file, no temp files left behind.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small.onnx");
        save_model(&m, &path).unwrap();
        assert_eq!(files_in(dir.path()), vec!["small.onnx"]);
        assert_eq!(load_model_bytes(&std::fs::read(&path).unwrap()).unwrap(), m);

        // Too large even when external: an error, and nothing written.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.onnx");
        let e = save_model_limited(&m, &path, 10).unwrap_err();
        assert!(matches!(e, OnnxError::TooLarge { .. }), "{e}");
        assert!(files_in(dir.path()).is_empty());
    }

    #[test]
    fn bad_data_file_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        for name in ["", "../x.data", "/tmp/x.data", "sub/x.data", "m.onnx"] {
            let e = save_model_with_external_data(&model(), &path, name, 1).unwrap_err();
            assert!(matches!(e, OnnxError::InvalidArgument(_)), "{name}: {e}");
        }
        assert!(files_in(dir.path()).is_empty());
    }

    /// `model()` saved with external data, for tests that then damage the data reference.
    fn saved_external(dir: &tempfile::TempDir) -> PathBuf {
        let path = dir.path().join("m.onnx");
        save_model_with_external_data(&model(), &path, "m.bin", 1024).unwrap();
        path
    }

    fn edit_first_initializer(path: &Path, f: impl FnOnce(&mut TensorProto)) {
        let mut m = ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
        f(&mut m.graph.as_mut().unwrap().initializer[0]);
        std::fs::write(path, m.encode_to_vec()).unwrap();
    }

    #[test]
    fn external_data_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = saved_external(&dir);
        let data = dir.path().join("m.bin");
        let full = std::fs::read(&data).unwrap();

        std::fs::write(&data, &full[..100]).unwrap();
        let e = load_model(&path).unwrap_err();
        assert!(
            matches!(&e, OnnxError::ExternalDataTruncated { tensor, .. } if tensor == "w"),
            "{e}"
        );
        assert!(e.to_string().contains("truncated") && e.to_string().contains("m.bin"), "{e}");

        std::fs::remove_file(&data).unwrap();
        let e = load_model(&path).unwrap_err();
        assert!(
            matches!(&e, OnnxError::ExternalDataMissing { tensor, .. } if tensor == "w"),
            "{e}"
        );
        assert!(e.to_string().contains("m.bin"), "{e}");
        std::fs::write(&data, &full).unwrap();

        let e = load_model_bytes(&std::fs::read(&path).unwrap()).unwrap_err();
        assert!(matches!(&e, OnnxError::ExternalDataWithoutDir { tensor } if tensor == "w"), "{e}");

        for (key, value, needle) in [
            ("location", "../m.bin", "relative path"),
            ("location", "/etc/passwd", "relative path"),
            ("length", "12", "disagrees"),
            ("offset", "x", "not a byte count"),
        ] {
            edit_first_initializer(&path, |t| {
                t.external_data.iter_mut().find(|e| e.key == key).unwrap().value = value.into();
            });
            let e = load_model(&path).unwrap_err().to_string();
            assert!(e.contains("'w'") && e.contains(needle), "{key}={value}: {e}");
            saved_external(&dir);
        }

        // Without `length` the shape decides how much to read.
        edit_first_initializer(&path, |t| t.external_data.retain(|e| e.key != "length"));
        assert_eq!(load_model(&path).unwrap(), model());
    }

    #[test]
    fn not_onnx_is_an_error() {
        let e = load_model_bytes(b"").unwrap_err();
        assert!(matches!(e, OnnxError::NoGraph { .. }), "{e}");
        let e = load_model_bytes(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]).unwrap_err();
        assert!(e.to_string().contains("not a valid ONNX model"), "{e}");
        let e = load_model("/nonexistent/dir/model.onnx").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dir/model.onnx"), "{e}");
    }
}
