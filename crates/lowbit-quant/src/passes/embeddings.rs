//! Embedding tables: the float32 table `[V, D]` a `Gather` reads rows of (a word or position
//! embedding) becomes int8 with one symmetric scale per row, and the gathered rows are
//! dequantized after the gather:
//!
//! ```text
//! Gather(table, ids)  →  Mul(Cast(Gather(table_int8, ids), float), Gather(scales[V, 1], ids))
//! ```
//!
//! Only the rows used are dequantized, and the file stores a quarter of the table. The form
//! `DequantizeLinear(table) → Gather` would be simpler, but ONNX Runtime keeps a
//! DequantizeLinear of an initializer for its QDQ fusions instead of folding it, so it
//! dequantizes the whole table on every run (measured on MiniLM: 3× the FP32 latency); and a
//! DequantizeLinear after the Gather cannot apply per-row scales (its per-axis scales are
//! constant along one axis, not chosen by the indices). The Cast and Mul run everywhere.
//!
//! A table is quantized when it is a float32 initializer of rank 2 with at least
//! [`MIN_TABLE_ELEMENTS`] elements, every reader of it is a `Gather` on axis 0 with runtime
//! indices, and none of those is excluded. A table also read by other nodes (an output
//! projection tied to the embedding) stays float.

use super::{add_init, attr_i, constant_values, init_f32, is_default_domain, make_node};
use crate::config::QuantPlan;
use crate::error::Result;
use crate::qparams::quantize_tensor;
use crate::quantize::QuantizeSummary;
use crate::scheme::QuantScheme;
use lowbit_onnx::graph::Graph;
use lowbit_tensor::DType;
use std::collections::BTreeMap;

/// Smaller tables (BERT's two token-type rows) are left float: the extra nodes would cost
/// more than the bytes saved.
pub const MIN_TABLE_ELEMENTS: usize = 16 * 1024;

/// Quantizes every embedding table of `g` (see the module docs); returns how many.
pub fn quantize_embeddings(
    g: &mut Graph,
    plan: &QuantPlan,
    summary: &mut QuantizeSummary,
) -> Result<usize> {
    let consts = constant_values(g);
    // Table name → the Gather nodes reading it.
    let mut tables: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (idx, n) in g.nodes().iter().enumerate() {
        if !is_default_domain(n) || n.op_type != "Gather" || n.input.len() != 2 {
            continue;
        }
        let Some(t) = g.initializer(&n.input[0]) else { continue };
        let elements: i64 = t.dims.iter().product();
        if t.dims.len() != 2
            || DType::from_onnx(t.data_type) != Some(DType::F32)
            || (elements as usize) < MIN_TABLE_ELEMENTS
            || !matches!(attr_i(n, "axis").unwrap_or(0), 0 | -2)
            || consts.contains(&n.input[1])
        {
            continue;
        }
        tables.entry(n.input[0].clone()).or_default().push(idx);
    }
    let mut done = 0;
    let mut new_nodes = Vec::new();
    for (table, gathers) in tables {
        let readers = g.consumers(&table).to_vec();
        if readers.len() != gathers.len() || g.is_graph_output(&table) {
            let n = &g.nodes()[gathers[0]];
            summary.leave(
                n,
                gathers[0],
                format!("embedding table '{table}' is also read by other nodes"),
            );
            continue;
        }
        let excluded =
            gathers.iter().find_map(|&i| plan.exclude.reason(&g.nodes()[i]).map(|r| (i, r)));
        if let Some((i, r)) = excluded {
            let n = g.nodes()[i].clone();
            summary.exclude(&n, i, r);
            continue;
        }
        let Some(w) = init_f32(g, &table)? else { continue };
        let rows = w.shape()[0];
        let q = quantize_tensor(&w, &QuantScheme::int8().symmetric().per_channel(0))?;
        let values = add_init(g, &format!("{table}_quantized"), &q.values);
        let scales = q.params.scale.clone().reshape(vec![rows, 1])?;
        let scales = add_init(g, &format!("{table}_scale"), &scales);
        for &i in &gathers {
            let node = g.nodes()[i].clone();
            let out = node.output[0].clone();
            let base = if node.name.is_empty() { out.clone() } else { node.name.clone() };
            let codes = g.unique_name(&format!("{out}_quantized"));
            let floats = g.unique_name(&format!("{out}_float"));
            let row_scales = g.unique_name(&format!("{out}_scale"));
            let ids = node.input[1].clone();
            let gather = g.node_mut(i).expect("gather index");
            gather.input[0] = values.clone();
            gather.output[0] = codes.clone();
            let cast_attr = super::int_attr("to", DType::F32.onnx_id() as i64);
            new_nodes.push(make_node(
                "Gather",
                g.unique_name(&format!("{base}_scale")),
                vec![scales.clone(), ids],
                vec![row_scales.clone()],
                node.attribute.clone(),
            ));
            new_nodes.push(make_node(
                "Cast",
                g.unique_name(&format!("{base}_Cast")),
                vec![codes],
                vec![floats.clone()],
                vec![cast_attr],
            ));
            new_nodes.push(make_node(
                "Mul",
                g.unique_name(&format!("{base}_dequantize")),
                vec![floats, row_scales],
                vec![out],
                vec![],
            ));
            summary.count("Gather");
        }
        done += 1;
    }
    for n in new_nodes {
        g.push_node(n);
    }
    g.topo_sort()?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{QuantMode, QuantizeConfig};
    use crate::quantize::quantize_model;
    use lowbit_engine::{Session, SessionOptions};
    use lowbit_onnx::pb::{self, ModelProto};
    use lowbit_onnx::tensor_to_proto;
    use lowbit_tensor::Tensor;

    const ROWS: usize = 512;
    const DIM: usize = 32;

    /// Rows of different magnitudes (row r scaled by 1 + r % 7), row 5 all zero.
    fn table(seed: u32) -> Vec<f32> {
        (0..ROWS * DIM)
            .map(|i| {
                let r = i / DIM;
                let v = ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32
                    / (1u32 << 24) as f32
                    - 0.5;
                if r == 5 {
                    0.0
                } else {
                    v * (1 + r % 7) as f32
                }
            })
            .collect()
    }

    /// `words` (quantized), `small` (too small), `tied` (also read by a Transpose).
    fn model() -> ModelProto {
        let node = |op: &str, ins: &[&str], out: &str| {
            let ins = ins.iter().map(|s| s.to_string()).collect();
            make_node(op, format!("{op}_{out}"), ins, vec![out.into()], vec![])
        };
        let init = |name: &str, rows: usize, v: Vec<f32>| {
            tensor_to_proto(name, &Tensor::from_vec(vec![rows, DIM], v).unwrap())
        };
        let vi = |name: &str| pb::ValueInfoProto { name: name.into(), ..Default::default() };
        ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
            graph: Some(pb::GraphProto {
                node: vec![
                    node("Gather", &["words", "ids"], "e1"),
                    node("Gather", &["small", "ids2"], "e2"),
                    node("Gather", &["tied", "ids"], "e3"),
                    node("Transpose", &["tied"], "tt"),
                ],
                initializer: vec![
                    init("words", ROWS, table(1)),
                    init("small", 2, table(2)[..2 * DIM].to_vec()),
                    init("tied", ROWS, table(3)),
                ],
                input: vec![vi("ids"), vi("ids2")],
                output: ["e1", "e2", "e3", "tt"].iter().map(|o| vi(o)).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn run(m: &ModelProto) -> Vec<Tensor> {
        let ids = Tensor::from_vec(vec![2, 3], vec![0i64, 5, 511, 17, -1, 6]).unwrap();
        let ids2 = Tensor::from_vec(vec![2], vec![1i64, 0]).unwrap();
        let s = Session::new(m, &SessionOptions::default()).unwrap();
        let feeds = vec![("ids".to_string(), ids), ("ids2".to_string(), ids2)];
        s.run(feeds).unwrap().into_iter().map(|(_, t)| t).collect()
    }

    #[test]
    fn tables_become_int8_rows_dequantized_after_the_gather() {
        let m = model();
        let (q, s) = quantize_model(m.clone(), &QuantizeConfig::weight_only_int8(), None).unwrap();
        assert_eq!(s.quantized.get("Gather"), Some(&1), "{s}");
        assert!(s.left_float.iter().any(|n| n.reason.contains("'tied'")), "{s}");
        let g = Graph::new(q.clone()).unwrap();
        let codes = g.initializer("words_quantized").expect("int8 table");
        assert_eq!((codes.dims.as_slice(), codes.data_type), (&[512i64, 32][..], 3));
        assert_eq!(g.initializer("words_scale").unwrap().dims, vec![512, 1]);
        assert!(g.initializer("words").is_none() && g.initializer("small").is_some());
        let ops: Vec<&str> = g.nodes().iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops.iter().filter(|&&o| o == "Cast" || o == "Mul").count(), 2, "{ops:?}");

        // Per row: the largest code is ±127 (the zero row stays zero).
        let codes = lowbit_onnx::tensor_from_proto(codes).unwrap();
        let codes = codes.as_slice::<i8>().unwrap();
        for (r, row) in codes.chunks(DIM).enumerate() {
            let top = row.iter().map(|c| c.unsigned_abs()).max().unwrap();
            assert_eq!(top, if r == 5 { 0 } else { 127 }, "row {r}");
        }
        // Each gathered value within half a step of its row's scale; the others unchanged.
        let (want, got) = (run(&m), run(&q));
        let scales = g.initializer("words_scale").unwrap();
        let scales = lowbit_onnx::tensor_from_proto(scales).unwrap().to_f32_vec().unwrap();
        let (e1, e1q) = (want[0].as_f32().unwrap(), got[0].as_f32().unwrap());
        assert_eq!(got[0].shape(), &[2, 3, DIM]);
        for (k, row) in [0usize, 5, 511, 17, 511, 6].into_iter().enumerate() {
            for d in 0..DIM {
                let i = k * DIM + d;
                assert!((e1[i] - e1q[i]).abs() <= scales[row] * 0.5 + 1e-7, "row {row}");
            }
        }
        assert_eq!(&want[1..], &got[1..]);
    }

    #[test]
    fn the_plan_decides_per_mode_and_can_keep_tables_float() {
        let keep = QuantizeConfig {
            quantize_embeddings: Some(false),
            ..QuantizeConfig::weight_only_int8()
        };
        let (_, s) = quantize_model(model(), &keep, None).unwrap();
        assert_eq!(s.quantized.get("Gather"), None);
        for mode in [QuantMode::Static, QuantMode::Dynamic, QuantMode::WeightOnly] {
            let p = QuantPlan::resolve(&QuantizeConfig { mode, ..Default::default() }).unwrap();
            assert!(p.quantize_embeddings, "{mode}");
        }
        let fp16 =
            QuantizeConfig { quantize_embeddings: Some(true), ..QuantizeConfig::float16(false) };
        assert!(QuantPlan::resolve(&fp16).unwrap_err().to_string().contains("embedding"));
        assert!(!QuantPlan::resolve(&QuantizeConfig::float16(true)).unwrap().quantize_embeddings);
    }
}
