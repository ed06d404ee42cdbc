//! Weight-only patterns: `DequantizeLinear(W const int8/uint8/int4/uint4) → MatMul` (with a
//! following `Add` of a constant `[N]` bias) or `→ Gemm` (`transA = 0`, `alpha = 1`, bias `C`)
//! become one `ai.lowbit` `WeightOnlyMatMul` that dequantizes inside the GEMM
//! ([`lowbit_kernels::wgemm`]). Scales per column or per tensor, or blocked along K (opset
//! 21 `block_size`); the dequantized weight must have no other reader.

use super::{int_attr, Fuser, LOWBIT_DOMAIN};
use crate::registry::canonical_domain;
use lowbit_onnx::attr::Attrs;
use lowbit_onnx::pb::NodeProto;
use lowbit_tensor::DType;

impl<'g> Fuser<'g> {
    /// Node `i` (a `MatMul` or `Gemm`) with a weight-only quantized `B`, and the nodes it
    /// absorbs.
    pub(super) fn weight_only(&mut self, i: usize) -> Option<(NodeProto, Vec<usize>)> {
        let node = &self.nodes[i];
        let gemm = node.op_type == "Gemm";
        let at = Attrs::new(node);
        let trans_b = gemm && at.int_or("transB", 0).ok()? != 0;
        if gemm && (at.int_or("transA", 0).ok()? != 0 || at.float_or("alpha", 1.0).ok()? != 1.0) {
            return None;
        }
        let w_out = node.input.get(1)?.as_str();
        if self.sole_reader(w_out, &node.op_type)? != i || node.input[0] == w_out {
            return None;
        }
        let &d = self.producer.get(w_out)?;
        let dq = &self.nodes[d];
        let da = Attrs::new(dq);
        if dq.op_type != "DequantizeLinear"
            || !canonical_domain(&dq.domain).is_empty()
            || !matches!(da.int_or("output_dtype", 0).ok()?, 0 | 1)
        {
            return None;
        }
        let q = self.qdq(d);
        let (dt, dims) = self.constant_meta(q.data)?;
        if !matches!(dt, DType::I8 | DType::U8 | DType::I4 | DType::U4) || dims.len() != 2 {
            return None;
        }
        let (k_axis, n) = if trans_b { (1, dims[0]) } else { (0, dims[1]) };
        let k = dims[k_axis];
        let (sdt, sdims) = self.constant_meta(q.scale)?;
        if sdt != DType::F32 {
            return None;
        }
        let axis = da.int_or("axis", 1).ok()?;
        let axis = if axis < 0 { axis + 2 } else { axis };
        let block = da.int_or("block_size", 0).ok()?;
        let per_tensor = sdims.iter().product::<usize>() == 1 && sdims.len() <= 1;
        let ok = if block > 0 {
            let nb = k.div_ceil(block as usize);
            let want = if trans_b { [n, nb] } else { [nb, n] };
            axis == k_axis as i64 && sdims == want
        } else {
            per_tensor || (sdims == [n] && axis == 1 - k_axis as i64)
        };
        if !ok {
            return None;
        }
        if let Some(z) = q.zero_point {
            let (zdt, zdims) = self.constant_meta(z)?;
            if zdt != dt || zdims != sdims {
                return None;
            }
        }
        let mut gone = vec![d];
        let mut out = node.output.first()?.as_str();
        let mut bias = String::new();
        if gemm {
            if let Some(c) = node.input.get(2).filter(|c| !c.is_empty()) {
                let (cdt, cdims) = self.constant_meta(c)?;
                let beta = at.float_or("beta", 1.0).ok()?;
                if cdt != DType::F32 || beta != 1.0 || cdims.iter().product::<usize>() != n {
                    return None;
                }
                bias = c.to_string();
            }
        } else if let Some(add) = self.sole_reader(out, "Add") {
            let an = &self.nodes[add];
            let other = if an.input[0] == out { &an.input[1] } else { &an.input[0] };
            if self.constant_meta(other).is_some_and(|(t, d)| t == DType::F32 && d == [n]) {
                bias = other.clone();
                out = an.output[0].as_str();
                gone.push(add);
            }
        }
        let inputs = vec![
            node.input[0].clone(),
            q.data.to_string(),
            q.scale.to_string(),
            q.zero_point.unwrap_or("").to_string(),
            bias,
        ];
        let mut fused = self.node(i, "WeightOnlyMatMul", LOWBIT_DOMAIN, inputs, out);
        fused.attribute =
            vec![int_attr("block_size", block.max(0)), int_attr("trans_b", trans_b as i64)];
        Some((fused, gone))
    }
}
