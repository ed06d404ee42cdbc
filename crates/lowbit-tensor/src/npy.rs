//! NumPy `.npy` and `.npz` reading and writing.
//!
//! Written by hand because the only full crate (`npyz`) takes minutes to build for what is a
//! header line and raw little-endian bytes. Supports C-order arrays of bool, (u)int8–64,
//! float16/32/64; Fortran-order and big-endian arrays are rejected with a clear message.
//! `.npz` is a zip of `.npy` members (stored or deflated), one per array.

use crate::error::{Result, TensorError};
use crate::{DType, Tensor, TensorData};
use std::io::{Read, Write};
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

fn err(path: &str, msg: impl Into<String>) -> TensorError {
    TensorError::Npy { path: path.to_string(), msg: msg.into() }
}

fn descr_dtype(descr: &str) -> Option<DType> {
    let (order, code) = descr.split_at(1);
    if !matches!(order, "<" | "|" | "=") {
        return None;
    }
    Some(match code {
        "f4" => DType::F32,
        "f8" => DType::F64,
        "f2" => DType::F16,
        "i8" => DType::I64,
        "i4" => DType::I32,
        "i2" => DType::I16,
        "i1" => DType::I8,
        "u8" => DType::U64,
        "u4" => DType::U32,
        "u2" => DType::U16,
        "u1" => DType::U8,
        "b1" => DType::Bool,
        _ => return None,
    })
}

fn dtype_descr(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::I64 => "<i8",
        DType::I32 => "<i4",
        DType::I16 => "<i2",
        DType::I8 => "|i1",
        DType::U64 => "<u8",
        DType::U32 => "<u4",
        DType::U16 => "<u2",
        DType::U8 => "|u1",
        DType::Bool => "|b1",
        _ => return None,
    })
}

/// Value of `'key': value` in the header dict, as raw text up to the next top-level comma.
fn header_field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("'{key}':");
    let start = header.find(&pat)? + pat.len();
    let rest = header[start..].trim_start();
    if rest.starts_with('(') {
        let end = rest.find(')')?;
        Some(&rest[..=end])
    } else {
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim())
    }
}

/// Element type and shape from a `.npy` header dict; `path` only labels errors.
fn parse_header(header: &str, path: &str) -> Result<Header> {
    let descr = header_field(header, "descr")
        .map(|s| s.trim_matches(|c| c == '\'' || c == '"'))
        .ok_or_else(|| err(path, "header has no 'descr'"))?;
    let dtype = descr_dtype(descr).ok_or_else(|| {
        err(
            path,
            format!(
                "unsupported dtype '{descr}' (expected little-endian bool, int, uint or float)"
            ),
        )
    })?;
    if header_field(header, "fortran_order") == Some("True") {
        return Err(err(
            path,
            "Fortran-order arrays are not supported; save with np.ascontiguousarray",
        ));
    }
    let shape_txt =
        header_field(header, "shape").ok_or_else(|| err(path, "header has no 'shape'"))?;
    let shape: Vec<usize> = shape_txt
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| err(path, format!("bad shape {shape_txt}"))))
        .collect::<Result<_>>()?;
    Ok((dtype, shape))
}

/// The header dict's length and where it starts, from the first 12 bytes (10 for version 1).
fn header_span(prefix: &[u8], path: &str) -> Result<(usize, usize)> {
    if prefix.len() < 10 || &prefix[..6] != MAGIC {
        return Err(err(path, "not a .npy file (bad magic)"));
    }
    match prefix[6] {
        1 => Ok((u16::from_le_bytes([prefix[8], prefix[9]]) as usize, 10)),
        2 | 3 => {
            let b = prefix.get(8..12).ok_or_else(|| err(path, "truncated header"))?;
            Ok((u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize, 12))
        }
        v => Err(err(path, format!("unsupported .npy version {v}"))),
    }
}

/// Decodes a `.npy` byte buffer; `path` only labels errors.
pub fn decode_npy(bytes: &[u8], path: &str) -> Result<Tensor> {
    let (hlen, hstart) = header_span(&bytes[..bytes.len().min(12)], path)?;
    let header = bytes
        .get(hstart..hstart + hlen)
        .ok_or_else(|| err(path, "truncated header"))
        .and_then(|h| std::str::from_utf8(h).map_err(|_| err(path, "header is not text")))?;
    let (dtype, shape) = parse_header(header, path)?;
    let n: usize = shape.iter().product();
    let width = dtype.bits() / 8;
    let body = &bytes[hstart + hlen..];
    if body.len() < n * width {
        return Err(err(
            path,
            format!(
                "truncated data: shape {shape:?} needs {} bytes, file has {}",
                n * width,
                body.len()
            ),
        ));
    }
    let body = &body[..n * width];
    let data = decode_le(body, dtype);
    Tensor::new(shape, data)
}

/// Element type and shape from the header at the start of a `.npy` stream, reading no data.
pub fn read_header(r: &mut impl Read, path: &str) -> Result<Header> {
    let truncated = |_| err(path, "truncated header");
    let mut prefix = [0u8; 12];
    r.read_exact(&mut prefix[..10]).map_err(truncated)?;
    if prefix[6] >= 2 {
        r.read_exact(&mut prefix[10..]).map_err(truncated)?;
    }
    let (hlen, _) = header_span(&prefix, path)?;
    let mut header = vec![0u8; hlen];
    r.read_exact(&mut header).map_err(truncated)?;
    let header = std::str::from_utf8(&header).map_err(|_| err(path, "header is not text"))?;
    parse_header(header, path)
}

/// Little-endian bytes to typed storage (`dtype` must be a plain numeric or bool type).
pub fn decode_le(b: &[u8], dtype: DType) -> TensorData {
    macro_rules! le {
        ($t:ty, $variant:ident) => {
            TensorData::$variant(
                b.chunks_exact(std::mem::size_of::<$t>())
                    .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            )
        };
    }
    match dtype {
        DType::F32 => le!(f32, F32),
        DType::F64 => le!(f64, F64),
        DType::F16 => TensorData::F16(
            b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]])).collect(),
        ),
        DType::BF16 => TensorData::BF16(
            b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]])).collect(),
        ),
        DType::I64 => le!(i64, I64),
        DType::I32 => le!(i32, I32),
        DType::I16 => le!(i16, I16),
        DType::I8 => TensorData::I8(b.iter().map(|&x| x as i8).collect()),
        DType::U64 => le!(u64, U64),
        DType::U32 => le!(u32, U32),
        DType::U16 => le!(u16, U16),
        DType::U8 => TensorData::U8(b.to_vec()),
        DType::F8E4M3FN => TensorData::F8E4M3FN(b.to_vec()),
        DType::F8E5M2 => TensorData::F8E5M2(b.to_vec()),
        DType::Bool => TensorData::Bool(b.iter().map(|&x| x != 0).collect()),
        DType::I4 | DType::U4 | DType::String => {
            unreachable!("decode_le is for byte-aligned numeric types, got {dtype}")
        }
    }
}

/// Typed storage to little-endian bytes (byte-aligned numeric and bool types only).
pub fn encode_le(d: &TensorData) -> Vec<u8> {
    match d {
        TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I8(v) => v.iter().map(|&x| x as u8).collect(),
        TensorData::U64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::U16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::U8(v) | TensorData::F8E4M3FN(v) | TensorData::F8E5M2(v) => v.clone(),
        TensorData::Bool(v) => v.iter().map(|&x| x as u8).collect(),
        TensorData::I4(_) | TensorData::U4(_) | TensorData::String(_) => {
            unreachable!("encode_le is for byte-aligned numeric types, got {}", d.dtype())
        }
    }
}

/// Encodes a tensor as a version-1 `.npy` buffer.
pub fn encode_npy(t: &Tensor) -> Result<Vec<u8>> {
    let descr = dtype_descr(t.dtype())
        .ok_or_else(|| TensorError::Unsupported(format!("{} in .npy", t.dtype())))?;
    let shape = match t.shape() {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        s => format!("({})", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so the data starts on a 64-byte boundary, newline-terminated, as NumPy does.
    let total = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.len() * t.dtype().bits() / 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&encode_le(t.data()));
    Ok(out)
}

fn io_err(path: &Path, source: std::io::Error) -> TensorError {
    TensorError::Io { path: path.display().to_string(), source }
}

/// Reads one `.npy` file.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    decode_npy(&bytes, &path.display().to_string())
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// crash never leaves a half-written file behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(|e| io_err(path, e))
}

/// Writes one `.npy` file atomically.
pub fn write_npy(path: &Path, t: &Tensor) -> Result<()> {
    write_atomic(path, &encode_npy(t)?)
}

/// Reads every array of a `.npz` file, in archive order, keyed by member name without `.npy`.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let p = path.display().to_string();
    let mut zip = open_npz(path)?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut member = zip.by_index(i).map_err(|e| err(&p, format!("member {i}: {e}")))?;
        let name = member.name().trim_end_matches(".npy").to_string();
        let mut buf = Vec::with_capacity(member.size() as usize);
        member.read_to_end(&mut buf).map_err(|e| err(&p, format!("member {name}: {e}")))?;
        out.push((name.clone(), decode_npy(&buf, &format!("{p}:{name}"))?));
    }
    Ok(out)
}

fn open_npz(path: &Path) -> Result<zip::ZipArchive<std::fs::File>> {
    let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    zip::ZipArchive::new(file)
        .map_err(|e| err(&path.display().to_string(), format!("not a .npz archive: {e}")))
}

/// The array names in a `.npz` file (member names without `.npy`), from its directory only.
pub fn npz_names(path: &Path) -> Result<Vec<String>> {
    Ok(open_npz(path)?.file_names().map(|n| n.trim_end_matches(".npy").to_string()).collect())
}

/// An array's element type and shape, as its `.npy` header states them.
pub type Header = (DType, Vec<usize>);

/// The headers of the arrays `names` of a `.npz` file (`None` for a name it does not hold),
/// reading no data.
pub fn npz_headers(path: &Path, names: &[&str]) -> Result<Vec<Option<Header>>> {
    let mut zip = open_npz(path)?;
    let members: Vec<String> = zip.file_names().map(str::to_string).collect();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let Some(member) = members.iter().find(|m| m.trim_end_matches(".npy") == *name) else {
            out.push(None);
            continue;
        };
        let label = format!("{}:{name}", path.display());
        let mut r = zip.by_name(member).map_err(|e| err(&label, format!("cannot read: {e}")))?;
        out.push(Some(read_header(&mut r, &label)?));
    }
    Ok(out)
}

/// Writes arrays as an uncompressed `.npz` (what `np.savez` writes), atomically.
pub fn write_npz(path: &Path, arrays: &[(String, Tensor)]) -> Result<()> {
    let p = path.display().to_string();
    let mut cursor = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut cursor);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(true);
        for (name, t) in arrays {
            zip.start_file(format!("{name}.npy"), opts).map_err(|e| err(&p, e.to_string()))?;
            zip.write_all(&encode_npy(t)?).map_err(|e| io_err(path, e))?;
        }
        zip.finish().map_err(|e| err(&p, e.to_string()))?;
    }
    write_atomic(path, &cursor.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip_every_numeric_dtype() {
        for dtype in [
            DType::F32,
            DType::F64,
            DType::F16,
            DType::I64,
            DType::I32,
            DType::I16,
            DType::I8,
            DType::U64,
            DType::U32,
            DType::U16,
            DType::U8,
            DType::Bool,
        ] {
            let src = Tensor::from_vec(vec![2, 3], vec![0i64, 1, 2, 3, 4, 5]).unwrap();
            let t = src.cast(dtype).unwrap();
            let bytes = encode_npy(&t).unwrap();
            assert_eq!(bytes.len() % 64, (t.len() * dtype.bits() / 8) % 64, "{dtype}");
            assert_eq!(decode_npy(&bytes, "mem").unwrap(), t, "{dtype}");
        }
    }

    #[test]
    fn scalar_and_1d_shapes() {
        for shape in [vec![], vec![4], vec![0, 3]] {
            let n = shape.iter().product();
            let t = Tensor::from_vec(shape, vec![1.5f32; n]).unwrap();
            assert_eq!(decode_npy(&encode_npy(&t).unwrap(), "mem").unwrap(), t);
        }
    }

    #[test]
    fn truncated_and_garbage_are_errors() {
        let t = Tensor::from_vec(vec![8], vec![1.0f32; 8]).unwrap();
        let bytes = encode_npy(&t).unwrap();
        let e = decode_npy(&bytes[..bytes.len() - 4], "x.npy").unwrap_err().to_string();
        assert!(e.contains("x.npy") && e.contains("truncated"), "{e}");
        assert!(decode_npy(b"hello world", "y.npy").unwrap_err().to_string().contains("magic"));
    }

    #[test]
    fn npz_round_trip() {
        let dir = std::env::temp_dir().join(format!("lowbit-npz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.npz");
        let arrays = vec![
            ("input_ids".to_string(), Tensor::from_vec(vec![1, 3], vec![101i64, 7, 102]).unwrap()),
            ("x".to_string(), Tensor::from_vec(vec![2], vec![0.5f32, -1.0]).unwrap()),
        ];
        write_npz(&path, &arrays).unwrap();
        assert_eq!(read_npz(&path).unwrap(), arrays);
        assert_eq!(npz_names(&path).unwrap(), vec!["input_ids", "x"]);
        let headers = npz_headers(&path, &["x", "labels", "input_ids"]).unwrap();
        assert_eq!(
            headers,
            vec![Some((DType::F32, vec![2])), None, Some((DType::I64, vec![1, 3]))]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn headers_are_read_from_a_stream_without_the_data() {
        let t = Tensor::from_vec(vec![2, 3], vec![1u8, 2, 3, 4, 5, 6]).unwrap();
        let bytes = encode_npy(&t).unwrap();
        let header_only = &bytes[..bytes.len() - 6];
        let got = read_header(&mut std::io::Cursor::new(header_only), "t.npy").unwrap();
        assert_eq!(got, (DType::U8, vec![2, 3]));
        let e = read_header(&mut std::io::Cursor::new(&bytes[..5]), "t.npy").unwrap_err();
        assert!(e.to_string().contains("t.npy: truncated header"), "{e}");
    }
}
