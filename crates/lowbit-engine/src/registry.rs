//! The op registry: which (domain, op type) pairs the engine runs, and their builders.
//!
//! Families register themselves in [`crate::ops`]; the conformance test reads
//! [`Registry::claimed_ops`] to decide which ONNX node tests must pass.

use crate::error::OpResult;
use crate::op::{BuildCtx, Kernel};
use std::collections::BTreeMap;

pub type Builder = fn(&BuildCtx) -> OpResult<Box<dyn Kernel>>;

/// Normalizes ONNX's two spellings of the default domain.
pub fn canonical_domain(domain: &str) -> &str {
    if domain == "ai.onnx" {
        ""
    } else {
        domain
    }
}

#[derive(Default)]
pub struct Registry {
    builders: BTreeMap<(String, String), (Builder, &'static str)>,
    family: &'static str,
}

impl Registry {
    pub fn empty() -> Self {
        Registry::default()
    }

    /// Every op lowbit implements.
    pub fn with_all_ops() -> Self {
        let mut r = Registry::default();
        crate::ops::register_all_ops(&mut r);
        r
    }

    /// Names the family (the `ops` file) that the following registrations belong to.
    pub fn set_family(&mut self, family: &'static str) {
        self.family = family;
    }

    pub fn register(&mut self, domain: &str, op_type: &str, builder: Builder) {
        let key = (canonical_domain(domain).to_string(), op_type.to_string());
        self.builders.insert(key, (builder, self.family));
    }

    pub fn get(&self, domain: &str, op_type: &str) -> Option<Builder> {
        self.entry(domain, op_type).map(|e| e.0)
    }

    /// The family an op was registered under (`elementwise`, `nn`, …).
    pub fn family_of(&self, domain: &str, op_type: &str) -> Option<&'static str> {
        self.entry(domain, op_type).map(|e| e.1)
    }

    fn entry(&self, domain: &str, op_type: &str) -> Option<(Builder, &'static str)> {
        self.builders.get(&(canonical_domain(domain).to_string(), op_type.to_string())).copied()
    }

    pub fn supports(&self, domain: &str, op_type: &str) -> bool {
        self.get(domain, op_type).is_some()
    }

    /// (domain, op type) of every registered op, sorted.
    pub fn claimed_ops(&self) -> Vec<(String, String)> {
        self.builders.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit_onnx::infer::{ops_with_rules, rule_family};

    /// Ops shape inference types but the engine does not run: models carry them and `inspect`
    /// shows their shapes, but a session refuses them.
    const TYPED_ONLY: &[(&str, &str)] = &[
        ("", "Bernoulli"),
        ("", "Det"),
        ("", "GridSample"),
        ("", "LpNormalization"),
        ("", "NonMaxSuppression"),
        ("", "RMSNormalization"),
        ("", "RandomNormal"),
        ("", "RandomNormalLike"),
        ("", "RandomUniform"),
        ("", "RandomUniformLike"),
        ("", "RoiAlign"),
        ("", "RotaryEmbedding"),
        ("", "Swish"),
        ("", "Upsample"),
        ("com.microsoft", "DequantizeLinear"),
        ("com.microsoft", "QuantizeLinear"),
    ];

    /// Ops the engine runs outside the ONNX domain that inference leaves untyped: ONNX
    /// Runtime's contrib ops. (lowbit's own domain holds the fused ops a session makes from a
    /// pattern; they never reach inference.)
    const RUN_UNTYPED: &[(&str, &str)] = &[
        ("com.microsoft", "MatMulIntegerToFloat"),
        ("com.microsoft", "MatMulNBits"),
        ("com.microsoft", "QGemm"),
        ("com.microsoft", "QLinearAdd"),
        ("com.microsoft", "QLinearGlobalAveragePool"),
        ("com.microsoft", "QLinearMul"),
    ];

    #[test]
    fn every_op_the_engine_runs_has_a_shape_rule_in_the_same_family() {
        let reg = Registry::with_all_ops();
        for (domain, op) in reg.claimed_ops() {
            if domain == crate::fuse::LOWBIT_DOMAIN
                || RUN_UNTYPED.contains(&(domain.as_str(), op.as_str()))
            {
                assert!(rule_family(&domain, &op).is_none(), "{domain} {op} has a rule now");
                continue;
            }
            assert_eq!(
                rule_family(&domain, &op),
                reg.family_of(&domain, &op),
                "{domain:?} {op}: shape rule family vs engine family"
            );
        }
    }

    #[test]
    fn every_shape_rule_is_for_an_op_the_engine_runs_or_one_named_typed_only() {
        let reg = Registry::with_all_ops();
        for (domain, op, family) in ops_with_rules() {
            match reg.family_of(domain, op) {
                Some(f) => assert_eq!(f, family, "{domain:?} {op}"),
                None => assert!(
                    TYPED_ONLY.contains(&(domain, op)),
                    "{domain:?} {op} has a shape rule but no kernel: list it in TYPED_ONLY"
                ),
            }
        }
        for (domain, op) in TYPED_ONLY {
            assert!(!reg.supports(domain, op), "{domain:?} {op} runs now: drop it from TYPED_ONLY");
        }
    }
}
