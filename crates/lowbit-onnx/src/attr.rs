//! Typed access to a node's attributes, with errors that name the node, its op type and the
//! attribute.

use crate::pb::{AttributeProto, NodeProto, TensorProto};

/// A missing or mistyped attribute.
#[derive(Debug, thiserror::Error)]
#[error("node '{node}' ({op_type}): attribute '{attr}' {msg}")]
pub struct AttrError {
    pub node: String,
    pub op_type: String,
    pub attr: String,
    pub msg: String,
}

// ONNX AttributeProto.AttributeType numbers.
const FLOAT: i32 = 1;
const INT: i32 = 2;
const STRING: i32 = 3;
const TENSOR: i32 = 4;
const FLOATS: i32 = 6;
const INTS: i32 = 7;
const STRINGS: i32 = 8;

/// Borrowed view of one node's attributes.
#[derive(Clone, Copy)]
pub struct Attrs<'a> {
    node: &'a NodeProto,
}

impl<'a> Attrs<'a> {
    pub fn new(node: &'a NodeProto) -> Self {
        Attrs { node }
    }

    fn err(&self, attr: &str, msg: impl Into<String>) -> AttrError {
        AttrError {
            node: self.node.name.clone(),
            op_type: self.node.op_type.clone(),
            attr: attr.to_string(),
            msg: msg.into(),
        }
    }

    /// The raw attribute, if present.
    pub fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn typed(
        &self,
        name: &str,
        ty: i32,
        what: &str,
    ) -> Result<Option<&'a AttributeProto>, AttrError> {
        match self.get(name) {
            None => Ok(None),
            // Some exporters leave `type` unset (0); trust the field then.
            Some(a) if a.r#type == ty || a.r#type == 0 => Ok(Some(a)),
            Some(a) => {
                Err(self.err(name, format!("should be {what}, found attribute type {}", a.r#type)))
            }
        }
    }

    pub fn int(&self, name: &str) -> Result<Option<i64>, AttrError> {
        Ok(self.typed(name, INT, "an int")?.map(|a| a.i))
    }

    pub fn int_or(&self, name: &str, default: i64) -> Result<i64, AttrError> {
        Ok(self.int(name)?.unwrap_or(default))
    }

    pub fn req_int(&self, name: &str) -> Result<i64, AttrError> {
        self.int(name)?.ok_or_else(|| self.err(name, "is required but missing"))
    }

    pub fn float(&self, name: &str) -> Result<Option<f32>, AttrError> {
        Ok(self.typed(name, FLOAT, "a float")?.map(|a| a.f))
    }

    pub fn float_or(&self, name: &str, default: f32) -> Result<f32, AttrError> {
        Ok(self.float(name)?.unwrap_or(default))
    }

    pub fn ints(&self, name: &str) -> Result<Option<Vec<i64>>, AttrError> {
        Ok(self.typed(name, INTS, "a list of ints")?.map(|a| a.ints.clone()))
    }

    pub fn ints_or(&self, name: &str, default: &[i64]) -> Result<Vec<i64>, AttrError> {
        Ok(self.ints(name)?.unwrap_or_else(|| default.to_vec()))
    }

    pub fn floats(&self, name: &str) -> Result<Option<Vec<f32>>, AttrError> {
        Ok(self.typed(name, FLOATS, "a list of floats")?.map(|a| a.floats.clone()))
    }

    pub fn string(&self, name: &str) -> Result<Option<String>, AttrError> {
        self.typed(name, STRING, "a string")?
            .map(|a| String::from_utf8(a.s.clone()).map_err(|_| self.err(name, "is not UTF-8")))
            .transpose()
    }

    pub fn string_or(&self, name: &str, default: &str) -> Result<String, AttrError> {
        Ok(self.string(name)?.unwrap_or_else(|| default.to_string()))
    }

    pub fn strings(&self, name: &str) -> Result<Option<Vec<String>>, AttrError> {
        self.typed(name, STRINGS, "a list of strings")?
            .map(|a| {
                a.strings
                    .iter()
                    .map(|s| {
                        String::from_utf8(s.clone()).map_err(|_| self.err(name, "is not UTF-8"))
                    })
                    .collect()
            })
            .transpose()
    }

    pub fn tensor(&self, name: &str) -> Result<Option<&'a TensorProto>, AttrError> {
        Ok(self.typed(name, TENSOR, "a tensor")?.and_then(|a| a.t.as_ref()))
    }

    /// An error about attribute `name` of this node, for checks the caller does itself
    /// (value out of range, unsupported mode).
    pub fn invalid(&self, name: &str, msg: impl Into<String>) -> AttrError {
        self.err(name, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeProto {
        NodeProto {
            name: "conv1".into(),
            op_type: "Conv".into(),
            attribute: vec![
                AttributeProto { name: "group".into(), r#type: INT, i: 2, ..Default::default() },
                AttributeProto {
                    name: "pads".into(),
                    r#type: INTS,
                    ints: vec![1, 1, 1, 1],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn typed_getters_and_defaults() {
        let n = node();
        let a = Attrs::new(&n);
        assert_eq!(a.int_or("group", 1).unwrap(), 2);
        assert_eq!(a.int_or("missing", 7).unwrap(), 7);
        assert_eq!(a.ints("pads").unwrap(), Some(vec![1, 1, 1, 1]));
    }

    #[test]
    fn errors_name_node_and_attribute() {
        let n = node();
        let a = Attrs::new(&n);
        let e = a.float("group").unwrap_err().to_string();
        assert!(e.contains("conv1") && e.contains("Conv") && e.contains("group"), "{e}");
        let e = a.req_int("axis").unwrap_err().to_string();
        assert!(e.contains("axis") && e.contains("missing"), "{e}");
    }
}
