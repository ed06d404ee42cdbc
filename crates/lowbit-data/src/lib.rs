//! The data pipeline every lowbit front end shares: a model's inputs read from files, checked
//! against what the model declares, converted and cut into the batches runs are fed, and its
//! outputs written back. Nothing here prints: notes are returned ([`Dataset::notes`]) and the
//! caller drives the runs ([`Dataset::ranges`], [`Dataset::feeds`]), so a command line shows
//! progress bars and a Python module its own.
//!
//! | module | holds |
//! |---|---|
//! | [`dataset`] | [`Dataset`]: inputs checked against the model, batches, sample labels for messages |
//! | [`folder`] | finding each input's arrays: `--input` files, a `--data` folder of `.npy`/`.npz`, one `.npz` |
//! | [`npz_samples`] | per-sample `.npz` files, read as their turn comes |
//! | [`preprocess`] | `--preprocess`: integer images to the float tensors a model expects |
//! | [`trim`] | cutting a batch's padding to its `*mask*` input's longest real length |
//! | [`rows`] | slicing samples along axis 0 and joining batches back (dtype-generic) |
//! | [`outputs`] | collecting a model's outputs over runs and writing them as `.npy` |
//! | [`labels`] | one value per sample: class labels and gold scores |
//! | [`synthetic`] | inputs made up from declared shapes, for timing without data |
//! | [`rng`] | the fixed-seed generator synthetic data and example weights use |
//!
//! ```
//! use lowbit_data::{Dataset, FeedSource};
//! use lowbit_tensor::{npy, DType, Dim, InputSpec, Tensor};
//! let dir = std::env::temp_dir().join(format!("lowbit-data-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! npy::write_npy(&dir.join("x.npy"), &Tensor::from_vec(vec![5, 2], vec![0f32; 10])?)?;
//! let x = InputSpec { name: "x".into(), dtype: Some(DType::F32), dims: Some(vec![Dim::Unknown, Dim::Fixed(2)]) };
//! let mut data = Dataset::load(&[&x], &FeedSource::Data(dir.clone()), None)?;
//! assert_eq!(data.ranges(2), vec![(0, 2), (2, 4), (4, 5)]);
//! assert_eq!(data.feeds(4, 5, false)?[0].1.shape(), &[1, 2]);
//! std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod check;
pub mod dataset;
pub mod error;
pub mod folder;
pub mod labels;
pub mod npz_samples;
pub mod outputs;
pub mod preprocess;
pub mod rng;
pub mod rows;
pub mod synthetic;
pub mod trim;

pub use dataset::{Dataset, DEFAULT_BATCH};
pub use error::DataError;
pub use folder::FeedSource;
pub use preprocess::Preprocess;
pub use rng::Rng;
