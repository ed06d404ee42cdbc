//! How a `--data` path is read, from the options every front end shares: `--preprocess` for
//! image arrays and photo folders, a tokenizer and fields for raw text. [`DataFormat::source`]
//! turns a path into the [`FeedSource`] [`crate::Dataset::load`] reads.

use crate::error::{usage_bail, Result};
use crate::folder::FeedSource;
use crate::preprocess::Preprocess;
use crate::text::{is_text_file, TextSpec};
use std::path::{Path, PathBuf};

/// The data options, checked.
#[derive(Clone, Debug, Default)]
pub struct DataFormat {
    pub preprocess: Option<Preprocess>,
    tokenizer: Option<PathBuf>,
    /// The text field (one) or the pair's fields (two).
    fields: Vec<String>,
    gold_field: Option<String>,
}

impl DataFormat {
    /// Checks the options as a person gives them: `preprocess` is a `--preprocess` spec,
    /// `pair_fields` is `A,B`. Bad values are usage errors.
    pub fn new(
        preprocess: Option<&str>,
        tokenizer: Option<&Path>,
        text_field: Option<&str>,
        pair_fields: Option<&str>,
        gold_field: Option<&str>,
    ) -> Result<DataFormat> {
        let preprocess = preprocess.map(Preprocess::parse).transpose()?;
        let fields = match (text_field, pair_fields) {
            (Some(_), Some(_)) => usage_bail!("--text-field and --pair-fields exclude each other"),
            (Some(f), None) => vec![f.to_string()],
            (None, Some(p)) => {
                let Some((a, b)) = p.split_once(',').filter(|(a, b)| {
                    !a.trim().is_empty() && !b.trim().is_empty() && !b.contains(',')
                }) else {
                    usage_bail!("--pair-fields '{p}': expected two field names, A,B");
                };
                vec![a.trim().to_string(), b.trim().to_string()]
            }
            (None, None) => Vec::new(),
        };
        if preprocess.is_some() && tokenizer.is_some() {
            usage_bail!("--preprocess converts images; raw text (--tokenizer) takes none");
        }
        if tokenizer.is_none() && (!fields.is_empty() || gold_field.is_some()) {
            usage_bail!(
                "--text-field, --pair-fields and --gold-field read raw text: pass --tokenizer"
            );
        }
        Ok(DataFormat {
            preprocess,
            tokenizer: tokenizer.map(Path::to_path_buf),
            fields,
            gold_field: gold_field.map(str::to_string),
        })
    }

    /// The pair's field names, when each record is a sentence pair.
    pub fn pair_fields(&self) -> Option<(&str, &str)> {
        match self.fields.as_slice() {
            [a, b] => Some((a, b)),
            _ => None,
        }
    }

    /// The field holding each record's gold score.
    pub fn gold_field(&self) -> Option<&str> {
        self.gold_field.as_deref()
    }

    /// `path` as a feed source: a text file through the tokenizer, else a folder (arrays,
    /// per-sample files or photos) or `.npz` file.
    pub fn source(&self, path: &Path) -> Result<FeedSource> {
        self.source_fields(path, self.fields.clone())
    }

    /// Side `k` (0: a, 1: b) of a sentence pair alone.
    pub fn side(&self, path: &Path, k: usize) -> Result<FeedSource> {
        self.source_fields(path, self.fields.get(k).cloned().into_iter().collect())
    }

    fn source_fields(&self, path: &Path, fields: Vec<String>) -> Result<FeedSource> {
        let text = path.is_file() && is_text_file(path);
        match (&self.tokenizer, text) {
            (Some(t), true) => Ok(FeedSource::Text(TextSpec {
                path: path.to_path_buf(),
                tokenizer: t.clone(),
                fields,
                gold_field: self.gold_field.clone(),
            })),
            (None, true) => usage_bail!(
                "--data {} is raw text: pass --tokenizer tokenizer.json to turn it into token ids",
                path.display()
            ),
            (Some(_), false) => usage_bail!(
                "--tokenizer applies to raw text --data (.txt, .jsonl, .csv, .tsv), not {}",
                path.display()
            ),
            (None, false) => Ok(FeedSource::Data(path.to_path_buf())),
        }
    }
}
