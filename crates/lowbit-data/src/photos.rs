//! Photo folders: JPEG, PNG and WebP files decoded, resized (shorter side, as Pillow resizes:
//! [`crate::resample`]), centre-cropped and fed as `uint8 [N, H, W, C]` batches, which
//! `--preprocess` then turns into the model's float tensor like any integer image array.
//!
//! Which photos, in which order, and their labels:
//! - `labels.tsv` or `labels.txt` in the folder: one `file<TAB>class` line per photo (spaces
//!   also separate; `#` starts a comment), the file relative to the folder; classes are integer
//!   indices, or names numbered in sorted order;
//! - else the ImageFolder convention: one sub-folder per class, classes numbered in sorted
//!   name order, photos sorted by name within each;
//! - else the photos in the folder itself, sorted by name, without labels.
//!
//! A `meta.json` beside them may give `resize`, `crop` and `color` (the corpus's photo folders
//! do); `--preprocess` keys win over it. Photos are decoded a batch at a time, in parallel, so
//! memory does not grow with the number of photos. Like Pillow's `Image.open(f).convert(...)`,
//! no EXIF rotation is applied and an alpha channel is dropped.

use crate::dataset::SampleSource;
use crate::error::{invalid_bail, DataError, Result};
use crate::preprocess::{Color, Preprocess};
use crate::resample::{resize, Filter};
use lowbit_tensor::{DType, Tensor};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// File extensions decoded (compared case-insensitively).
pub const EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Label files looked for, in this order.
const LABEL_FILES: [&str; 2] = ["labels.tsv", "labels.txt"];

fn is_photo(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| DataError::Io { what: format!("cannot list {}", dir.display()), source };
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(io)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    Ok(v)
}

/// Whether `dir` is a photo folder: no `.npy`/`.npz` files, and a label file, photos, or
/// sub-folders of photos.
pub fn is_photo_folder(dir: &Path) -> Result<bool> {
    if !dir.is_dir() {
        return Ok(false);
    }
    let entries = list_dir(dir)?;
    let arrays = |p: &PathBuf| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("npy") || e.eq_ignore_ascii_case("npz"))
    };
    if entries.iter().any(arrays) {
        return Ok(false);
    }
    if LABEL_FILES.iter().any(|f| dir.join(f).is_file()) || entries.iter().any(|p| is_photo(p)) {
        return Ok(true);
    }
    for sub in entries.iter().filter(|p| p.is_dir()) {
        if list_dir(sub)?.iter().any(|p| is_photo(p)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The photos of a folder, in feeding order, with their labels when the folder has any.
#[derive(Clone, Debug)]
pub struct PhotoList {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    pub labels: Option<Vec<usize>>,
    /// Class names by index, when they are known (sub-folder names, or names in a label file).
    pub classes: Option<Vec<String>>,
    /// Where the list came from, for notes: `labels.tsv`, `ImageFolder (12 classes)`, ...
    pub origin: String,
}

impl PhotoList {
    /// Lists the photos of `dir` (see the module docs for the conventions).
    pub fn read(dir: &Path) -> Result<PhotoList> {
        for name in LABEL_FILES {
            let f = dir.join(name);
            if f.is_file() {
                return PhotoList::from_label_file(dir, &f, name);
            }
        }
        let entries = list_dir(dir)?;
        let top: Vec<PathBuf> =
            entries.iter().filter(|p| p.is_file() && is_photo(p)).cloned().collect();
        let mut classes = Vec::new();
        let mut files = Vec::new();
        let mut labels = Vec::new();
        for sub in entries.iter().filter(|p| p.is_dir()) {
            let photos: Vec<PathBuf> =
                list_dir(sub)?.into_iter().filter(|p| p.is_file() && is_photo(p)).collect();
            if photos.is_empty() {
                continue;
            }
            labels.extend(std::iter::repeat_n(classes.len(), photos.len()));
            files.extend(photos);
            classes.push(sub.file_name().map_or(String::new(), |n| n.to_string_lossy().into()));
        }
        if !classes.is_empty() {
            if !top.is_empty() {
                invalid_bail!(
                    "{}: photos both in the folder ({}) and in class sub-folders ({}): put every \
                     photo in its class's sub-folder, or list them in labels.tsv",
                    dir.display(),
                    top[0].display(),
                    files[0].display()
                );
            }
            return Ok(PhotoList {
                dir: dir.to_path_buf(),
                origin: format!(
                    "class sub-folders ({} class{})",
                    classes.len(),
                    if classes.len() == 1 { "" } else { "es" }
                ),
                files,
                labels: Some(labels),
                classes: Some(classes),
            });
        }
        if top.is_empty() {
            invalid_bail!(
                "{}: no photos ({}) in the folder or in sub-folders, and no labels.tsv",
                dir.display(),
                EXTENSIONS.join(", ")
            );
        }
        Ok(PhotoList {
            dir: dir.to_path_buf(),
            files: top,
            labels: None,
            classes: None,
            origin: "the folder, without labels".into(),
        })
    }

    fn from_label_file(dir: &Path, file: &Path, name: &str) -> Result<PhotoList> {
        let text = std::fs::read_to_string(file).map_err(|source| DataError::Io {
            what: format!("cannot read {}", file.display()),
            source,
        })?;
        let mut files = Vec::new();
        let mut raw = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // A tab separates file and class (file names may hold spaces); else the last space.
            let split = line.split_once('\t').or_else(|| line.rsplit_once(' '));
            let Some((f, class)) = split.map(|(f, c)| (f.trim(), c.trim())) else {
                invalid_bail!(
                    "{}:{}: expected 'file<TAB>class', got '{line}'",
                    file.display(),
                    i + 1
                );
            };
            let path = dir.join(f);
            if !path.is_file() {
                invalid_bail!("{}:{}: no photo {}", file.display(), i + 1, path.display());
            }
            files.push(path);
            raw.push(class.to_string());
        }
        if files.is_empty() {
            invalid_bail!("{}: lists no photos", file.display());
        }
        let (labels, classes) = match raw.iter().map(|c| c.parse::<usize>().ok()).collect() {
            Some(ints) => (ints, None),
            None => {
                let mut names = raw.clone();
                names.sort();
                names.dedup();
                let labels =
                    raw.iter().map(|c| names.binary_search(c).expect("listed above")).collect();
                (labels, Some(names))
            }
        };
        Ok(PhotoList {
            dir: dir.to_path_buf(),
            files,
            labels: Some(labels),
            classes,
            origin: name.to_string(),
        })
    }
}

/// What a folder's `meta.json` says about its photos (the keys [`Preprocess`] does not set).
#[derive(Clone, Debug, Default)]
struct FolderMeta {
    resize: Option<usize>,
    crop: Option<[usize; 2]>,
    color: Option<Color>,
}

impl FolderMeta {
    fn read(dir: &Path) -> Result<FolderMeta> {
        let path = dir.join("meta.json");
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(FolderMeta::default()) };
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|source| {
            DataError::Json { what: format!("{}: not valid JSON", path.display()), source }
        })?;
        let size = |k: &str| json.get(k).and_then(|v| v.as_u64()).map(|n| n as usize);
        Ok(FolderMeta {
            resize: size("resize"),
            crop: size("crop").map(|c| [c, c]),
            color: json.get("color").and_then(|v| v.as_str()).and_then(Color::parse),
        })
    }
}

/// How every photo becomes `H × W × C` bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PhotoFormat {
    /// The shorter side after resizing.
    pub resize: usize,
    /// Centre crop: height, width.
    pub crop: [usize; 2],
    pub color: Color,
    pub interp: Filter,
}

impl PhotoFormat {
    /// The format for a model input whose height and width are fixed at `hw` (when they are) and
    /// whose channel axis is fixed at `channels`: `pre`'s keys first, then `dir`'s
    /// `meta.json`, then the model's shape.
    pub fn resolve(
        pre: Option<&Preprocess>,
        dir: &Path,
        hw: Option<[usize; 2]>,
        channels: Option<usize>,
    ) -> Result<PhotoFormat> {
        let meta = FolderMeta::read(dir)?;
        let crop = pre.and_then(|p| p.crop).or(meta.crop).or(hw);
        let Some(crop) = crop else {
            invalid_bail!(
                "{}: photos are cropped to one size to be batched, and the model's input does \
                 not fix its height and width: pass --preprocess crop=H (or crop=[H,W]) and \
                 resize=N",
                dir.display()
            );
        };
        let resize = pre.and_then(|p| p.resize).or(meta.resize).unwrap_or(crop[0].max(crop[1]));
        if resize == 0 || crop.contains(&0) {
            invalid_bail!(
                "{}: photos cannot be resized to {resize} or cropped to {}×{}",
                dir.display(),
                crop[0],
                crop[1]
            );
        }
        let color = pre.and_then(|p| p.color).or(meta.color).unwrap_or(if channels == Some(1) {
            Color::Gray
        } else {
            Color::Rgb
        });
        let interp = pre.map_or(Filter::Bilinear, |p| p.interp);
        Ok(PhotoFormat { resize, crop, color, interp })
    }

    /// Bytes per photo.
    pub fn len(&self) -> usize {
        self.crop[0] * self.crop[1] * self.color.channels()
    }

    /// Whether a photo is empty (never: crops are at least 1×1).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What is done to each photo, for notes.
    pub fn describe(&self) -> String {
        format!(
            "shorter side resized to {} ({} as Pillow), centre crop {}×{}, {}",
            self.resize,
            self.interp.name(),
            self.crop[0],
            self.crop[1],
            self.color.name()
        )
    }

    /// Decodes `path` into `out` (`self.len()` bytes, `H × W × C`).
    pub fn load(&self, path: &Path, out: &mut [u8]) -> Result<()> {
        let fail = |e: String| DataError::Invalid(format!("cannot decode {}: {e}", path.display()));
        let img = image::ImageReader::open(path)
            .map_err(|source| DataError::Io {
                what: format!("cannot read {}", path.display()),
                source,
            })?
            .with_guessed_format()
            .map_err(|e| fail(e.to_string()))?
            .decode()
            .map_err(|e| fail(e.to_string()))?;
        let rgb = img.into_rgb8();
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        let mut pixels = rgb.into_raw();
        let channels = self.color.channels();
        if self.color == Color::Gray {
            pixels = pixels.chunks_exact(3).map(luma).collect();
        }
        self.fit(&pixels, w, h, channels, out, path)
    }

    /// Resizes (shorter side) and centre-crops `pixels` (`w × h × channels`) into `out`,
    /// as `score.py` does with Pillow.
    fn fit(
        &self,
        pixels: &[u8],
        w: usize,
        h: usize,
        channels: usize,
        out: &mut [u8],
        path: &Path,
    ) -> Result<()> {
        let [ch, cw] = self.crop;
        if w == 0 || h == 0 {
            invalid_bail!("{}: the photo is empty ({w}×{h})", path.display());
        }
        // Python: s = r / min(w, h); nw, nh = max(c, round(w * s)), max(c, round(h * s)).
        let s = self.resize as f64 / w.min(h) as f64;
        let nw = cw.max((w as f64 * s).round_ties_even() as usize);
        let nh = ch.max((h as f64 * s).round_ties_even() as usize);
        let resized = resize(pixels, w, h, channels, nw, nh, self.interp);
        let (x0, y0) = ((nw - cw) / 2, (nh - ch) / 2);
        for (y, row) in out.chunks_exact_mut(cw * channels).enumerate() {
            let start = ((y0 + y) * nw + x0) * channels;
            row.copy_from_slice(&resized[start..start + cw * channels]);
        }
        if self.color == Color::Bgr {
            out.chunks_exact_mut(3).for_each(|p| p.swap(0, 2));
        }
        Ok(())
    }
}

/// Pillow's RGB → L: `(19595 R + 38470 G + 7471 B + 0x8000) >> 16`.
fn luma(p: &[u8]) -> u8 {
    ((19595 * p[0] as u32 + 38470 * p[1] as u32 + 7471 * p[2] as u32 + 0x8000) >> 16) as u8
}

/// A photo folder as a sample source: one input, `uint8 [N, H, W, C]`.
pub(crate) struct Photos {
    pub(crate) list: PhotoList,
    pub(crate) format: PhotoFormat,
    samples: usize,
}

impl Photos {
    pub(crate) fn new(list: PhotoList, format: PhotoFormat) -> Photos {
        Photos { samples: list.files.len(), list, format }
    }

    /// Photos `start..end` decoded in parallel into one `[n, H, W, C]` array.
    pub fn decode(&self, start: usize, end: usize) -> Result<Tensor> {
        let per = self.format.len();
        let mut buf = vec![0u8; (end - start) * per];
        buf.par_chunks_mut(per)
            .zip(&self.list.files[start..end])
            .try_for_each(|(out, path)| self.format.load(path, out))?;
        let [h, w] = self.format.crop;
        Ok(Tensor::from_vec(vec![end - start, h, w, self.format.color.channels()], buf)?)
    }
}

impl SampleSource for Photos {
    fn len(&self) -> usize {
        self.samples
    }

    fn stored_form(&self, _: usize) -> Option<(DType, Vec<usize>)> {
        let [h, w] = self.format.crop;
        Some((DType::U8, vec![self.samples, h, w, self.format.color.channels()]))
    }

    fn per_sample(&self, _: usize) -> bool {
        true
    }

    fn ranges(&self, batch: usize) -> Vec<(usize, usize)> {
        (0..self.samples).step_by(batch).map(|s| (s, (s + batch).min(self.samples))).collect()
    }

    fn row_label(&self, row: usize) -> String {
        format!("photo {row} ({})", self.list.files[row].display())
    }

    fn range_label(&self, start: usize, end: usize) -> String {
        let last = end.max(start + 1) - 1;
        format!(
            "photos {start}..{end} ({} to {})",
            self.list.files[start].display(),
            self.list.files[last].display()
        )
    }

    fn rows(&mut self, start: usize, end: usize) -> Result<Vec<Tensor>> {
        Ok(vec![self.decode(start, end)?])
    }

    fn truncate(&mut self, n: usize) -> Result<()> {
        self.samples = n;
        Ok(())
    }

    fn labels(&self) -> Option<Vec<usize>> {
        self.list.labels.as_ref().map(|l| l[..self.samples].to_vec())
    }

    fn notes(&self) -> Vec<String> {
        vec![format!(
            "photos: {} from {} ({}): {}",
            self.samples,
            self.list.dir.display(),
            self.list.origin,
            self.format.describe()
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
        img.save(path).unwrap();
    }

    #[test]
    fn image_folder_classes_are_sorted_sub_folders() {
        let dir = tempfile::tempdir().unwrap();
        for (class, n) in [("cat", 2), ("ant", 1)] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
            for i in 0..n {
                save_png(&dir.path().join(class).join(format!("{i}.png")), 4, 3, |_, _| [1, 2, 3]);
            }
        }
        std::fs::write(dir.path().join("README"), "not a photo").unwrap();
        assert!(is_photo_folder(dir.path()).unwrap());
        let list = PhotoList::read(dir.path()).unwrap();
        assert_eq!(list.labels, Some(vec![0, 1, 1]));
        assert_eq!(list.classes, Some(vec!["ant".to_string(), "cat".to_string()]));
        assert!(list.files[0].ends_with("ant/0.png"));
        // A .npy beside them makes it an array folder.
        std::fs::write(dir.path().join("x.npy"), b"").unwrap();
        assert!(!is_photo_folder(dir.path()).unwrap());
    }

    #[test]
    fn label_files_give_order_and_classes_and_name_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.png", "a b.png"] {
            save_png(&dir.path().join(f), 2, 2, |_, _| [0, 0, 0]);
        }
        std::fs::write(dir.path().join("labels.tsv"), "# file\tclass\nb.png\t7\na b.png\t3\n")
            .unwrap();
        let list = PhotoList::read(dir.path()).unwrap();
        assert_eq!(list.labels, Some(vec![7, 3]));
        assert!(list.files[1].ends_with("a b.png"));
        std::fs::write(dir.path().join("labels.tsv"), "b.png\tdog\na b.png\tcat\n").unwrap();
        let list = PhotoList::read(dir.path()).unwrap();
        assert_eq!(
            (list.labels, list.classes),
            (Some(vec![1, 0]), Some(vec!["cat".into(), "dog".into()]))
        );
        std::fs::write(dir.path().join("labels.tsv"), "b.png\t1\nmissing.png\t2\n").unwrap();
        let e = PhotoList::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("labels.tsv:2") && e.contains("missing.png"), "{e}");
    }

    #[test]
    fn photos_are_resized_on_the_shorter_side_and_centre_cropped() {
        let dir = tempfile::tempdir().unwrap();
        // 8 wide, 4 high; the column index as red.
        let p = dir.path().join("x.png");
        save_png(&p, 8, 4, |x, y| [x as u8 * 10, y as u8, 200]);
        let f =
            PhotoFormat { resize: 4, crop: [4, 4], color: Color::Rgb, interp: Filter::Bilinear };
        let mut out = vec![0u8; f.len()];
        f.load(&p, &mut out).unwrap();
        // No resize (shorter side already 4); columns 2..6 kept.
        assert_eq!(&out[..6], &[20, 0, 200, 30, 0, 200]);
        let bgr = PhotoFormat { color: Color::Bgr, ..f };
        bgr.load(&p, &mut out).unwrap();
        assert_eq!(&out[..3], &[200, 0, 20]);
        let gray = PhotoFormat { color: Color::Gray, crop: [2, 2], resize: 2, ..f };
        let mut g = vec![0u8; gray.len()];
        gray.load(&p, &mut g).unwrap();
        assert_eq!(g.len(), 4);
        // A file that is not an image names itself.
        std::fs::write(dir.path().join("bad.png"), b"nope").unwrap();
        let e = f.load(&dir.path().join("bad.png"), &mut out).unwrap_err().to_string();
        assert!(e.contains("bad.png"), "{e}");
    }
}
