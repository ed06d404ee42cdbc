//! What a model declares for a tensor it takes: name, element type and dimensions (fixed sizes,
//! named free dimensions, unknown ones). The engine reads it from the graph; the data pipeline
//! checks arrays against it.

use crate::DType;
use std::fmt;

/// One dimension of a graph input as the model declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// A named free dimension (`batch_size`, `sequence_length`).
    Symbolic(String),
    /// Free and unnamed.
    Unknown,
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// `[1, batch, ?]` for declared dimensions, `(any shape)` for none.
pub fn shape_text(dims: Option<&[Dim]>) -> String {
    match dims {
        None => "(any shape)".into(),
        Some(d) => format!("[{}]", d.iter().map(Dim::to_string).collect::<Vec<_>>().join(", ")),
    }
}

/// A graph input the caller must feed.
#[derive(Clone, Debug)]
pub struct InputSpec {
    pub name: String,
    pub dtype: Option<DType>,
    /// `None` when the model declares no shape at all.
    pub dims: Option<Vec<Dim>>,
}

impl InputSpec {
    /// `[1, batch, ?]`-style text for messages.
    pub fn shape_text(&self) -> String {
        shape_text(self.dims.as_deref())
    }

    /// Whether `shape` fits the declared dimensions (any shape when none are declared).
    pub fn accepts_shape(&self, shape: &[usize]) -> bool {
        self.dims.as_ref().is_none_or(|dims| {
            dims.len() == shape.len()
                && dims.iter().zip(shape).all(|(d, &n)| !matches!(d, Dim::Fixed(f) if *f != n))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_text_names_free_dims_and_shapes_are_checked_against_fixed_ones() {
        let spec = InputSpec {
            name: "x".into(),
            dtype: Some(DType::F32),
            dims: Some(vec![Dim::Symbolic("batch".into()), Dim::Unknown, Dim::Fixed(3)]),
        };
        assert_eq!(spec.shape_text(), "[batch, ?, 3]");
        assert!(spec.accepts_shape(&[7, 2, 3]));
        assert!(!spec.accepts_shape(&[7, 2, 4]) && !spec.accepts_shape(&[7, 3]));
        let any = InputSpec { dims: None, ..spec };
        assert_eq!(any.shape_text(), "(any shape)");
        assert!(any.accepts_shape(&[1, 2, 3, 4]));
    }
}
