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
