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
use lowbit_tensor::{DType, Tensor};
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
            summary.leave(n, gathers[0], format!("embedding table '{table}' is also read by other nodes"));
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
