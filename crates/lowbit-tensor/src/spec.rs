//! What a model declares for a tensor it takes: name, element type and dimensions (fixed sizes,
//! named free dimensions, unknown ones). The engine reads it from the graph; the data pipeline
//! checks arrays against it.

use crate::DType;

/// One dimension of a graph input as the model declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// A named free dimension (`batch_size`, `sequence_length`).
    Symbolic(String),
    /// Free and unnamed.
    Unknown,
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
        match &self.dims {
            None => "(any shape)".into(),
            Some(d) => {
                let parts: Vec<String> = d
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(n) => n.to_string(),
                        Dim::Symbolic(s) => s.clone(),
                        Dim::Unknown => "?".into(),
                    })
                    .collect();
                format!("[{}]", parts.join(", "))
            }
        }
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
