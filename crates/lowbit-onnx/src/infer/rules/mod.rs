//! Shape and dtype rules, one file per op family, each with a table from op type to rule.
//!
//! The families carry the names the engine's op registry files its kernels under
//! (`lowbit_engine::ops::{elementwise, reduce, linalg, nn, shape, resize, quant, control}`), so an op's
//! rule sits under the same word as its kernel, as tract keeps an op's rules with the op. The
//! tables here are the one list of ops inference types. They cannot be the engine's list
//! itself: the engine depends on this crate, and inference also types ops the engine does not
//! run (recurrent layers, random generators, `Upsample`), which models carry and `inspect`
//! shows. So the engine's registry test holds the two lists together instead: every op the
//! engine runs in the ONNX domain has a rule here under the family it registers the op in, and
//! every rule here is for an op the engine runs or one that test names as typed only.

use super::{Cx, Out, Result};

mod control;
mod elementwise;
mod linalg;
mod nn;
mod quant;
mod reduce;
mod resize;
mod shape;

/// How one op's outputs are typed: one [`Out`] per output (fewer leaves the rest unknown).
pub(super) type RuleFn = fn(&mut Cx) -> Result<Vec<Out>>;

/// The rule tables, by family.
const FAMILIES: [(&str, &[(&str, RuleFn)]); 8] = [
    ("elementwise", elementwise::RULES),
    ("reduce", reduce::RULES),
    ("linalg", linalg::RULES),
    ("nn", nn::RULES),
    ("shape", shape::RULES),
    ("resize", resize::RULES),
    ("quant", quant::RULES),
    ("control", control::RULES),
];

/// Ops outside the ONNX domain that are ONNX ops under another name: ONNX Runtime's quantizer
/// writes `QuantizeLinear`/`DequantizeLinear` in `com.microsoft`.
const ALIASES: [(&str, &str); 2] =
    [("com.microsoft", "QuantizeLinear"), ("com.microsoft", "DequantizeLinear")];

/// ONNX Runtime contrib ops with rules of their own: (domain, op, family, rule). Typing them
/// lets what follows them be typed too (a `MatMul` after a fused `Attention` is then a float
/// activation the quantizer can take).
const CONTRIB: [(&str, &str, &str, RuleFn); 1] =
    [("com.microsoft", "Attention", "nn", nn::ort_attention)];

/// One op inference has a rule for.
#[derive(Clone, Copy)]
pub(super) struct Rule {
    pub(super) domain: &'static str,
    pub(super) op: &'static str,
    pub(super) family: &'static str,
    pub(super) infer: RuleFn,
}

/// Every rule: the ONNX domain's (as `""`), then the aliases.
pub(super) fn all() -> impl Iterator<Item = Rule> {
    let onnx = FAMILIES.into_iter().flat_map(|(family, rules)| {
        rules.iter().map(move |&(op, infer)| Rule { domain: "", op, family, infer })
    });
    let aliases =
        ALIASES.into_iter().filter_map(|(domain, op)| lookup("", op).map(|r| Rule { domain, ..r }));
    let contrib =
        CONTRIB.into_iter().map(|(domain, op, family, infer)| Rule { domain, op, family, infer });
    onnx.chain(aliases).chain(contrib)
}

/// The rule for `op` in `domain` (`""` and `ai.onnx` are the ONNX domain).
pub(super) fn lookup(domain: &str, op: &str) -> Option<Rule> {
    let onnx = matches!(domain, "" | "ai.onnx");
    if let Some(&(domain, op, family, infer)) =
        CONTRIB.iter().find(|c| !onnx && c.0 == domain && c.1 == op)
    {
        return Some(Rule { domain, op, family, infer });
    }
    if !onnx && !ALIASES.contains(&(domain, op)) {
        return None;
    }
    FAMILIES.iter().find_map(|&(family, rules)| {
        rules.iter().find(|r| r.0 == op).map(|&(op, infer)| Rule { domain: "", op, family, infer })
    })
}
