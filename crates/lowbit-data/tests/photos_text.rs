//! Photo folders and raw text against what the corpus's Python side makes of them: photos
//! decoded, resized and cropped as `score.py` does with Pillow, and sentences tokenized into
//! exactly the corpus's token-id arrays. Each test skips (with a message) where the corpus, or
//! a Python with Pillow, is missing.

use lowbit_data::photos::{PhotoFormat, PhotoList};
use lowbit_data::preprocess::Color;
use lowbit_data::resample::Filter;
use lowbit_data::{DataFormat, Dataset, FeedSource, Preprocess, TextSpec};
use lowbit_tensor::{npy, DType, Dim, InputSpec};
use std::path::{Path, PathBuf};

fn corpus() -> Option<PathBuf> {
    let shared = std::env::var_os("LOWBIT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let root = shared.join("corpus/dev");
    if root.is_dir() {
        Some(root)
    } else {
        eprintln!("skipped: no corpus at {}", root.display());
        None
    }
}

fn spec(name: &str, dtype: DType, dims: Vec<Dim>) -> InputSpec {
    InputSpec { name: name.into(), dtype: Some(dtype), dims: Some(dims) }
}

/// EfficientNet-Lite0's input: float32 `[N, 3, 224, 224]`.
fn imagenet_input() -> InputSpec {
    let dims = vec![Dim::Unknown, Dim::Fixed(3), Dim::Fixed(224), Dim::Fixed(224)];
    spec("input", DType::F32, dims)
}

/// The Python of `$LOWBIT_PYTHON` when it can import Pillow.
fn python_with_pillow() -> Option<String> {
    let py = std::env::var("LOWBIT_PYTHON").ok()?;
    let ok = std::process::Command::new(&py)
        .args(["-c", "import PIL, numpy"])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some(py)
    } else {
        eprintln!("skipped: {py} cannot import Pillow");
        None
    }
}

#[test]
fn corpus_photos_match_pillow_pixel_for_pixel_within_jpeg_noise() {
    let Some(root) = corpus() else { return };
    let Some(py) = python_with_pillow() else { return };
    let dir = root.join("data/imagenet_sample1000");
    let list = PhotoList::read(&dir).unwrap();
    assert_eq!(list.files.len(), 1000);
    let picked: Vec<&PathBuf> = list.files.iter().step_by(97).collect();
    let tmp = tempfile::tempdir().unwrap();
    // score.py's load_jpeg_folder, with sizes that make Pillow shrink (200) and enlarge (300).
    let script = r#"
import sys, numpy as np
from PIL import Image
out, r, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = []
for f in sys.argv[4:]:
    im = Image.open(f).convert("RGB")
    w, h = im.size
    s = r / min(w, h)
    nw, nh = max(c, round(w * s)), max(c, round(h * s))
    im = im.resize((nw, nh), Image.BILINEAR)
    x0, y0 = (nw - c) // 2, (nh - c) // 2
    rows.append(np.asarray(im.crop((x0, y0, x0 + c, y0 + c)), dtype=np.uint8))
np.save(out, np.stack(rows))
"#;
    for (resize, crop) in [(256, 224), (200, 180), (300, 224)] {
        let out = tmp.path().join(format!("pil{resize}.npy"));
        let status = std::process::Command::new(&py)
            .args(["-c", script, out.to_str().unwrap(), &resize.to_string(), &crop.to_string()])
            .args(picked.iter().map(|p| p.as_os_str()))
            .status()
            .unwrap();
        assert!(status.success());
        let pil = npy::read_npy(&out).unwrap();
        let pil = pil.as_slice::<u8>().unwrap();
        let f =
            PhotoFormat { resize, crop: [crop, crop], color: Color::Rgb, interp: Filter::Bilinear };
        let mut ours = vec![0u8; f.len() * picked.len()];
        for (p, out) in picked.iter().zip(ours.chunks_exact_mut(f.len())) {
            f.load(p, out).unwrap();
        }
        let diffs: Vec<u32> =
            ours.iter().zip(pil).map(|(&a, &b)| (a as i32 - b as i32).unsigned_abs()).collect();
        let mean = diffs.iter().sum::<u32>() as f64 / diffs.len() as f64;
        let exact = diffs.iter().filter(|&&d| d == 0).count() as f64 / diffs.len() as f64;
        let max = diffs.iter().max().copied().unwrap_or(0);
        eprintln!(
            "resize {resize} crop {crop}: mean |diff| {mean:.4}, max {max}, identical {:.2} %",
            100.0 * exact
        );
        // The resampling is Pillow's, bit for bit; what remains is the JPEG decoders' rounding.
        assert!(mean < 0.5 && exact > 0.6, "mean {mean}, identical {exact}");
    }
}

#[test]
fn photo_folder_dataset_feeds_preprocessed_nchw_batches_with_labels() {
    let Some(root) = corpus() else { return };
    let dir = root.join("data/imagenet_sample1000");
    let x = imagenet_input();
    let pre = Preprocess::parse("mean=127,std=128").unwrap();
    let mut d = Dataset::load(&[&x], &FeedSource::Data(dir.clone()), Some(&pre)).unwrap();
    assert_eq!(d.samples, 1000);
    let labels = d.labels().unwrap();
    assert_eq!((labels[0], labels[999]), (0, 999));
    assert!(
        d.notes().iter().any(|n| n.contains("labels.tsv") && n.contains("224×224")),
        "{:?}",
        d.notes()
    );
    let f = d.feeds(0, 3, false).unwrap();
    assert_eq!(f[0].1.shape(), &[3, 3, 224, 224]);
    let v = f[0].1.as_f32().unwrap();
    assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
    d.limit(10).unwrap();
    assert_eq!(d.labels().unwrap().len(), 10);
    // A crop the model does not take is named.
    let pre = Preprocess::parse("mean=127,std=128,crop=200").unwrap();
    let e = Dataset::load(&[&x], &FeedSource::Data(dir), Some(&pre)).err().unwrap().to_string();
    assert!(e.contains("200") && e.contains("224"), "{e}");
}

#[test]
fn corpus_sentences_tokenize_to_the_corpus_token_ids() {
    let Some(root) = corpus() else { return };
    let data = root.join("data/stsb_dev");
    let ids =
        spec("input_ids", DType::I64, vec![Dim::Symbolic("b".into()), Dim::Symbolic("s".into())]);
    let mask = spec(
        "attention_mask",
        DType::I64,
        vec![Dim::Symbolic("b".into()), Dim::Symbolic("s".into())],
    );
    let mut identical = 0;
    for (field, side) in [("sentence1", "a"), ("sentence2", "b")] {
        let src = FeedSource::Text(TextSpec {
            path: data.join("pairs.jsonl"),
            tokenizer: root.join("data/tokenizer/tokenizer.json"),
            fields: vec![field.into()],
            gold_field: Some("score".into()),
        });
        let mut d = Dataset::load(&[&ids, &mask], &src, None).unwrap();
        assert_eq!(d.samples, 1500);
        let want = npy::read_npy(&data.join(format!("input_ids_{side}.npy"))).unwrap();
        let want_mask = npy::read_npy(&data.join(format!("attention_mask_{side}.npy"))).unwrap();
        let width = want.shape()[1];
        // One batch of all 1500, right-padded with 0 to the longest: the corpus's arrays.
        let f = d.feeds(0, 1500, false).unwrap();
        assert_eq!(f[0].1.shape(), &[1500, width]);
        let got = f[0].1.as_i64().unwrap();
        let (w, wm) = (want.as_i64().unwrap(), want_mask.as_i64().unwrap());
        for r in 0..1500 {
            let row = r * width..(r + 1) * width;
            if got[row.clone()] == w[row.clone()] {
                identical += 1;
            }
            assert_eq!(&f[1].1.as_i64().unwrap()[row.clone()], &wm[row], "mask of row {r}");
        }
        let gold = d.gold().unwrap();
        let scores = npy::read_npy(&data.join("scores.npy")).unwrap().to_f64_vec().unwrap();
        assert!(gold.iter().zip(&scores).all(|(a, b)| (a - b).abs() < 1e-6));
        // Trimmed batches of one keep each sentence at its own length.
        let one = d.feeds(0, 1, true).unwrap();
        assert_eq!(one[0].1.shape()[1] as i64, wm[..width].iter().sum::<i64>());
    }
    assert_eq!(identical, 3000, "token ids identical to the corpus arrays");
}

#[test]
fn text_files_read_lines_csv_columns_and_name_missing_fields() {
    let Some(root) = corpus() else { return };
    let tokenizer = root.join("data/tokenizer/tokenizer.json");
    let tmp = tempfile::tempdir().unwrap();
    let ids = spec("input_ids", DType::I64, vec![Dim::Unknown, Dim::Unknown]);
    let types = spec("token_type_ids", DType::I64, vec![Dim::Unknown, Dim::Unknown]);
    let txt = tmp.path().join("s.txt");
    std::fs::write(&txt, "A man with a hard hat is dancing.\n\nHello\n").unwrap();
    let fmt = DataFormat::new(None, Some(&tokenizer), None, None, None).unwrap();
    let mut d = Dataset::load(&[&ids, &types], &fmt.source(&txt).unwrap(), None).unwrap();
    assert_eq!(d.samples, 2);
    let f = d.feeds(0, 1, false).unwrap();
    assert_eq!(
        f[0].1.as_i64().unwrap(),
        &[101, 1037, 2158, 2007, 1037, 2524, 6045, 2003, 5613, 1012, 102]
    );
    assert!(f[1].1.as_i64().unwrap().iter().all(|&t| t == 0));
    let csv = tmp.path().join("s.csv");
    std::fs::write(&csv, "id,text\n1,\"Hello, world\"\n2,Bye\n").unwrap();
    let d = Dataset::load(&[&ids], &fmt.source(&csv).unwrap(), None).unwrap();
    assert_eq!(d.samples, 2);
    let fmt = DataFormat::new(None, Some(&tokenizer), Some("body"), None, None).unwrap();
    let e = Dataset::load(&[&ids], &fmt.source(&csv).unwrap(), None).err().unwrap().to_string();
    assert!(e.contains("s.csv:2") && e.contains("'body'") && e.contains("id, text"), "{e}");
    // A text file without a tokenizer, and an input raw text cannot feed, are named.
    let plain = DataFormat::default();
    let e = plain.source(&txt).unwrap_err();
    assert!(e.is_usage() && e.to_string().contains("--tokenizer"), "{e}");
    let pixels = spec("pixel_values", DType::F32, vec![Dim::Unknown, Dim::Unknown]);
    let fmt = DataFormat::new(None, Some(&tokenizer), None, None, None).unwrap();
    let e = Dataset::load(&[&pixels], &fmt.source(&txt).unwrap(), None).err().unwrap().to_string();
    assert!(e.contains("pixel_values") && e.contains("input_ids"), "{e}");
}

/// Decoding speed (not a check: the machine may be shared): every photo of the corpus folder
/// decoded, resized, cropped and converted, a batch of 32 at a time on all cores.
/// `cargo test -p lowbit-data --test photos_text -- --ignored --nocapture`
#[test]
#[ignore]
fn photo_decoding_throughput() {
    let Some(root) = corpus() else { return };
    let dir = root.join("data/imagenet_sample1000");
    let x = imagenet_input();
    let pre = Preprocess::parse("resize=256,crop=224,mean=127,std=128").unwrap();
    let mut d = Dataset::load(&[&x], &FeedSource::Data(dir), Some(&pre)).unwrap();
    let start = std::time::Instant::now();
    for (s, e) in d.ranges(32) {
        let f = d.feeds(s, e, false).unwrap();
        assert_eq!(f[0].1.shape()[0], e - s);
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{} photos in {secs:.2} s: {:.0} photos/s on {} threads",
        d.samples,
        d.samples as f64 / secs,
        rayon::current_num_threads()
    );
}
