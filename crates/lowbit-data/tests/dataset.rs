//! The data pipeline end to end: `.npy` folders, `.npz` data sets and per-sample files read,
//! checked against declared inputs, batched, preprocessed and trimmed.

use lowbit_data::{DataError, Dataset, FeedSource, Preprocess};
use lowbit_tensor::{npy, DType, Dim, InputSpec, Tensor};
use std::path::PathBuf;

fn spec(name: &str, dtype: DType, dims: Vec<Dim>) -> InputSpec {
    InputSpec { name: name.into(), dtype: Some(dtype), dims: Some(dims) }
}

fn dataset(arrays: Vec<(InputSpec, Tensor)>) -> Result<Dataset, DataError> {
    let dir = tempfile::tempdir().unwrap();
    for (s, t) in &arrays {
        npy::write_npy(&dir.path().join(format!("{}.npy", s.name)), t).unwrap();
    }
    let specs: Vec<&InputSpec> = arrays.iter().map(|(s, _)| s).collect();
    Dataset::load(&specs, &FeedSource::Data(dir.path().to_path_buf()), None)
}

#[test]
fn mask_trims_each_batch_to_its_longest_row() {
    let ids = Tensor::from_vec(vec![2, 4], vec![101i64, 7, 102, 0, 101, 102, 0, 0]).unwrap();
    let mask = Tensor::from_vec(vec![2, 4], vec![1i64, 1, 1, 0, 1, 1, 0, 0]).unwrap();
    let free = || vec![Dim::Symbolic("batch".into()), Dim::Symbolic("seq".into())];
    let mut d = dataset(vec![
        (spec("input_ids", DType::I64, free()), ids),
        (spec("attention_mask", DType::I64, free()), mask),
    ])
    .unwrap();
    assert_eq!(d.mask_name(), Some("attention_mask"));
    let f = d.feeds(1, 2, true).unwrap();
    assert_eq!(f[0].1, Tensor::from_vec(vec![1, 2], vec![101i64, 102]).unwrap());
    let f = d.feeds(0, 2, true).unwrap();
    assert_eq!(f[1].1.shape(), &[2, 3]);
    assert_eq!(d.feeds(0, 1, false).unwrap()[0].1.shape(), &[1, 4]);
}

#[test]
fn fixed_batch_one_feeds_row_by_row() {
    let x = Tensor::from_vec(vec![3, 2], vec![0f32; 6]).unwrap();
    let mut d =
        dataset(vec![(spec("x", DType::F32, vec![Dim::Fixed(1), Dim::Fixed(2)]), x)]).unwrap();
    assert_eq!((d.samples, d.fixed_batch), (3, Some(1)));
    assert_eq!(d.ranges(1), vec![(0, 1), (1, 2), (2, 3)]);
    assert_eq!(d.feeds(2, 3, false).unwrap()[0].1.shape(), &[1, 2]);
}

#[test]
fn wrong_dtype_and_shape_name_the_input_and_file() {
    let x = Tensor::from_vec(vec![3, 2], vec![0f64; 6]).unwrap();
    let e = dataset(vec![(spec("x", DType::F32, vec![Dim::Unknown, Dim::Fixed(2)]), x)])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("'x'") && e.contains("x.npy") && e.contains("float64"), "{e}");
    let x = Tensor::from_vec(vec![3, 5], vec![0f32; 15]).unwrap();
    let e = dataset(vec![(spec("x", DType::F32, vec![Dim::Unknown, Dim::Fixed(2)]), x)])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("[3, 5]") && e.contains("[?, 2]"), "{e}");
}

/// A fresh folder for one test, removed when the returned guard drops.
fn folder() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    (dir, path)
}

fn ids(v: &[i64]) -> Tensor {
    Tensor::from_vec(vec![v.len()], v.to_vec()).unwrap()
}

fn seq_inputs() -> Vec<InputSpec> {
    let free = || vec![Dim::Symbolic("batch".into()), Dim::Symbolic("seq".into())];
    vec![spec("input_ids", DType::I64, free()), spec("attention_mask", DType::I64, free())]
}

#[test]
fn per_sample_files_of_different_lengths_are_fed_one_by_one() {
    let (_guard, dir) = folder();
    // Sorted name order: a (3 tokens), b (3 tokens, stored with the batch axis), c (5).
    let b = Tensor::from_vec(vec![1, 3], vec![4i64, 5, 6]).unwrap();
    npy::write_npz(
        &dir.join("c.npz"),
        &[("input_ids".into(), ids(&[7, 8, 9, 10, 11])), ("attention_mask".into(), ids(&[1; 5]))],
    )
    .unwrap();
    npy::write_npz(
        &dir.join("a.npz"),
        &[("attention_mask".into(), ids(&[1, 1, 0])), ("input_ids".into(), ids(&[1, 2, 0]))],
    )
    .unwrap();
    let mask_b = Tensor::from_vec(vec![1, 3], vec![1i64, 1, 1]).unwrap();
    npy::write_npz(
        &dir.join("b.npz"),
        &[("input_ids".into(), b), ("attention_mask".into(), mask_b)],
    )
    .unwrap();
    let specs = seq_inputs();
    let refs: Vec<&InputSpec> = specs.iter().collect();
    let mut d = Dataset::load(&refs, &FeedSource::Data(dir.clone()), None).unwrap();
    assert_eq!(d.samples, 3);
    assert_eq!(d.mask_name(), Some("attention_mask"));
    // a and b share a shape and are batched together; c starts a new batch.
    assert_eq!(d.ranges(32), vec![(0, 2), (2, 3)]);
    assert_eq!(d.ranges(1), vec![(0, 1), (1, 2), (2, 3)]);
    let f = d.feeds(0, 2, false).unwrap();
    assert_eq!(f[0].0, "input_ids");
    assert_eq!(f[0].1, Tensor::from_vec(vec![2, 3], vec![1i64, 2, 0, 4, 5, 6]).unwrap());
    let f = d.feeds(2, 3, false).unwrap();
    assert_eq!(f[0].1, Tensor::from_vec(vec![1, 5], vec![7i64, 8, 9, 10, 11]).unwrap());
    // Trimming: a alone is cut to its 2 real tokens.
    let f = d.feeds(0, 1, true).unwrap();
    assert_eq!(f[0].1, Tensor::from_vec(vec![1, 2], vec![1i64, 2]).unwrap());
    assert_eq!(d.row_label(2), format!("sample 2 ({})", dir.join("c.npz").display()));
    assert!(d.range_label(0, 2).contains("a.npz to "), "{}", d.range_label(0, 2));
    // --limit keeps the first samples, across files.
    d.limit(2).unwrap();
    assert_eq!(d.ranges(32), vec![(0, 2)]);
}

#[test]
fn per_sample_files_with_several_rows_batch_across_files() {
    let (_guard, dir) = folder();
    let x = |v: Vec<f32>| Tensor::from_vec(vec![v.len() / 2, 2], v).unwrap();
    npy::write_npz(&dir.join("0.npz"), &[("x".into(), x(vec![0., 1., 2., 3., 4., 5.]))]).unwrap();
    npy::write_npz(&dir.join("1.npz"), &[("x".into(), x(vec![6., 7.]))]).unwrap();
    npy::write_npz(&dir.join("2.npz"), &[("x".into(), x(vec![8., 9., 10., 11.]))]).unwrap();
    let s = spec("x", DType::F32, vec![Dim::Unknown, Dim::Fixed(2)]);
    let mut d = Dataset::load(&[&s], &FeedSource::Data(dir.clone()), None).unwrap();
    assert_eq!(d.samples, 6);
    assert_eq!(d.ranges(4), vec![(0, 4), (4, 6)]);
    let f = d.feeds(2, 5, false).unwrap();
    assert_eq!(f[0].1, x(vec![4., 5., 6., 7., 8., 9.]));
    assert_eq!(d.row_label(5), format!("sample 5 ({}, row 1)", dir.join("2.npz").display()));
}

#[test]
fn a_per_sample_file_without_an_input_is_named() {
    let (_guard, dir) = folder();
    npy::write_npz(
        &dir.join("s0.npz"),
        &[("input_ids".into(), ids(&[1, 2])), ("attention_mask".into(), ids(&[1, 1]))],
    )
    .unwrap();
    npy::write_npz(&dir.join("s1.npz"), &[("input_ids".into(), ids(&[3, 4, 5]))]).unwrap();
    let specs = seq_inputs();
    let refs: Vec<&InputSpec> = specs.iter().collect();
    let e = Dataset::load(&refs, &FeedSource::Data(dir.clone()), None).err().unwrap().to_string();
    assert!(e.contains("s1.npz") && e.contains("'attention_mask'"), "{e}");
    assert!(!e.contains("s0.npz"), "{e}");
}

#[test]
fn inputs_spread_over_npz_files_are_still_one_data_set() {
    let (_guard, dir) = folder();
    let two = |v: Vec<i64>| Tensor::from_vec(vec![2, 2], v).unwrap();
    npy::write_npz(&dir.join("ids.npz"), &[("input_ids".into(), two(vec![1, 2, 3, 4]))]).unwrap();
    npy::write_npz(&dir.join("mask.npz"), &[("attention_mask".into(), two(vec![1, 1, 1, 0]))])
        .unwrap();
    let specs = seq_inputs();
    let refs: Vec<&InputSpec> = specs.iter().collect();
    let mut d = Dataset::load(&refs, &FeedSource::Data(dir.clone()), None).unwrap();
    assert_eq!((d.samples, d.ranges(32)), (2, vec![(0, 2)]));
    assert_eq!(d.feeds(0, 2, false).unwrap()[1].1, two(vec![1, 1, 1, 0]));
    assert_eq!(d.row_label(1), "row 1");
}

#[test]
fn preprocessing_converts_each_batch_of_uint8_images() {
    let (_guard, dir) = folder();
    let images = Tensor::from_vec(vec![3, 2, 2], (0u8..12).collect()).unwrap();
    npy::write_npy(&dir.join("x.npy"), &images).unwrap();
    let s = spec("x", DType::F32, vec![Dim::Unknown, Dim::Fixed(1), Dim::Fixed(2), Dim::Fixed(2)]);
    let src = FeedSource::Data(dir.clone());
    // Without --preprocess the dtype error says how to convert.
    let e = Dataset::load(&[&s], &src, None).err().unwrap().to_string();
    assert!(e.contains("uint8") && e.contains("--preprocess"), "{e}");
    let pre = Preprocess::parse("scale=2,mean=1,std=4").unwrap();
    let mut d = Dataset::load(&[&s], &src, Some(&pre)).unwrap();
    assert_eq!(d.samples, 3);
    assert!(d.notes()[0].contains("uint8 [3, 2, 2] -> float32 [3, 1, 2, 2]"), "{:?}", d.notes());
    let f = d.feeds(1, 3, false).unwrap();
    let want: Vec<f32> = (4..12).map(|v| (v as f32 * 2.0 - 1.0) / 4.0).collect();
    assert_eq!(f[0].1, Tensor::from_vec(vec![2, 1, 2, 2], want).unwrap());
    // Float data is left alone, with a note.
    let floats = Tensor::from_vec(vec![1, 1, 2, 2], vec![0.5f32; 4]).unwrap();
    npy::write_npy(&dir.join("x.npy"), &floats).unwrap();
    let mut d = Dataset::load(&[&s], &src, Some(&pre)).unwrap();
    assert!(d.notes()[0].contains("already"), "{:?}", d.notes());
    assert_eq!(d.feeds(0, 1, false).unwrap()[0].1, floats);
}

#[test]
fn per_sample_uint8_images_get_batch_and_channel_axes() {
    let (_guard, dir) = folder();
    for (k, v) in [(0u8, [0u8, 1, 2, 3]), (1, [4, 5, 6, 7])] {
        let img = Tensor::from_vec(vec![2, 2], v.to_vec()).unwrap();
        npy::write_npz(&dir.join(format!("img{k}.npz")), &[("x".into(), img)]).unwrap();
    }
    let s = spec("x", DType::F32, vec![Dim::Unknown, Dim::Fixed(1), Dim::Fixed(2), Dim::Fixed(2)]);
    let pre = Preprocess::parse("scale=1,mean=1,std=2").unwrap();
    let mut d = Dataset::load(&[&s], &FeedSource::Data(dir.clone()), Some(&pre)).unwrap();
    assert_eq!((d.samples, d.ranges(32)), (2, vec![(0, 2)]));
    let want: Vec<f32> = (0..8).map(|v| (v as f32 - 1.0) / 2.0).collect();
    assert_eq!(
        d.feeds(0, 2, false).unwrap()[0].1,
        Tensor::from_vec(vec![2, 1, 2, 2], want).unwrap()
    );
}
