//! One value per sample from a `.npy` file (`[N]` or `[N, 1]`), checked against the data's
//! sample count: class labels (`--labels`) and gold similarity scores (`--gold`).

use crate::error::{invalid_bail, DataError, Result};
use lowbit_tensor::{npy, Tensor};
use std::path::Path;

/// One value per sample from `path` (`what` and `flag` name it in errors; `data` is the folder
/// the samples come from).
fn per_sample(path: &Path, what: &str, flag: &str, samples: usize, data: &Path) -> Result<Tensor> {
    let t = npy::read_npy(path)
        .map_err(|source| DataError::File { what: format!("cannot read the {what}"), source })?;
    let n = t.shape().first().copied().unwrap_or(1);
    if t.rank() == 0 || t.rank() > 2 || (t.rank() == 2 && t.shape()[1] != 1) {
        invalid_bail!(
            "{flag} {}: {what} of shape {:?}; expected one per sample, shape [{samples}]",
            path.display(),
            t.shape()
        );
    }
    if n != samples {
        invalid_bail!(
            "{flag} {} holds {n} {what} but --data {} holds {samples} sample{}: one per sample",
            path.display(),
            data.display(),
            if samples == 1 { "" } else { "s" }
        );
    }
    Ok(t)
}

/// Class indices from `--labels`, one per sample.
pub fn read_labels(path: &Path, samples: usize, data: &Path) -> Result<Vec<usize>> {
    let t = per_sample(path, "labels", "--labels", samples, data)?;
    if !t.dtype().is_integer() {
        invalid_bail!(
            "--labels {}: labels are {}; expected integer class indices",
            path.display(),
            t.dtype()
        );
    }
    t.to_i64_vec()?
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            usize::try_from(l).map_err(|_| {
                DataError::Invalid(format!(
                    "--labels {}: label {l} of row {i} is negative",
                    path.display()
                ))
            })
        })
        .collect()
}

/// Gold similarity scores from `--gold`, one per pair.
pub fn read_gold(path: &Path, samples: usize, data: &Path) -> Result<Vec<f64>> {
    let t = per_sample(path, "scores", "--gold", samples, data)?;
    let v = t
        .to_f64_vec()
        .map_err(|source| DataError::File { what: format!("--gold {}", path.display()), source })?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        invalid_bail!("--gold {}: score {} of row {i} is not finite", path.display(), v[i]);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked_for_count_type_and_sign() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, t: Tensor| {
            let p = dir.path().join(name);
            npy::write_npy(&p, &t).unwrap();
            p
        };
        let ok = file("ok.npy", Tensor::from_vec(vec![3, 1], vec![2i64, 0, 7]).unwrap());
        let data = dir.path();
        assert_eq!(read_labels(&ok, 3, data).unwrap(), vec![2, 0, 7]);
        let e = read_labels(&ok, 4, data).unwrap_err().to_string();
        assert!(e.contains("holds 3 labels") && e.contains("4 samples"), "{e}");
        let neg = file("neg.npy", Tensor::from_vec(vec![2], vec![1i32, -1]).unwrap());
        let e = read_labels(&neg, 2, data).unwrap_err().to_string();
        assert!(e.contains("label -1 of row 1 is negative"), "{e}");
        let gold = file("gold.npy", Tensor::from_vec(vec![2], vec![0.5f32, f32::NAN]).unwrap());
        let e = read_gold(&gold, 2, data).unwrap_err().to_string();
        assert!(e.contains("score NaN of row 1"), "{e}");
        let wide = file("wide.npy", Tensor::from_vec(vec![1, 2], vec![0.5f32, 1.0]).unwrap());
        assert!(read_gold(&wide, 1, data).unwrap_err().to_string().contains("[1, 2]"));
    }
}
