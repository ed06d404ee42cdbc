//! Raw text: sentences read from a `.txt` (one a line), `.jsonl`, `.csv` or `.tsv` file (a
//! field or column), tokenized by a Hugging Face `tokenizer.json` through the `tokenizers`
//! crate, each sentence at its own length (the file's padding is switched off; its truncation
//! is kept), and fed to the graph inputs by name:
//!
//! | graph input named like | gets |
//! |---|---|
//! | `*mask*` | the attention mask (1 for every token) |
//! | `*type*`, `*segment*` | the token type ids |
//! | `*position*` | 0, 1, 2, … along the sequence |
//! | `*ids*`, `*input*`, `*token*` | the token ids |
//!
//! A batch is right-padded with 0 to its longest sentence (to the model's fixed length when it
//! fixes one), as the corpus's tokenized arrays are; trimming ([`crate::trim`]) then cuts it
//! back. Sentence pairs (`fields` a and b) give two samples per record, a then b; a gold field
//! gives each sample its record's score ([`crate::Dataset::gold`]).

use crate::check::needs;
use crate::dataset::{Input, SampleSource};
use crate::error::{invalid_bail, usage_bail, DataError, Result};
use lowbit_tensor::{DType, Dim, InputSpec, Tensor};
use std::path::{Path, PathBuf};

/// File extensions read as text (compared case-insensitively).
pub const EXTENSIONS: [&str; 4] = ["txt", "jsonl", "csv", "tsv"];

/// Whether `path` names a text file by its extension.
pub fn is_text_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Where sentences come from and how they are tokenized.
#[derive(Clone, Debug, PartialEq)]
pub struct TextSpec {
    /// The `.txt`, `.jsonl`, `.csv` or `.tsv` file.
    pub path: PathBuf,
    /// The `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// The fields (columns) holding text: none (a `.txt` file, or the default field: `text`,
    /// else `sentence`, else the only one), one, or a pair (two samples per record, a then b).
    pub fields: Vec<String>,
    /// The field holding each record's gold score.
    pub gold_field: Option<String>,
}

/// One record of the file: its line number and its texts (one per field).
struct Record {
    line: usize,
    texts: Vec<String>,
    gold: Option<f64>,
}

fn extension(path: &Path) -> String {
    path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase()
}

/// The records of `spec.path` and the names of the fields read.
fn read_records(spec: &TextSpec) -> Result<(Vec<Record>, Vec<String>)> {
    let path = &spec.path;
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        what: format!("cannot read {}", path.display()),
        source,
    })?;
    let ext = extension(path);
    if ext == "txt" {
        if !spec.fields.is_empty() || spec.gold_field.is_some() {
            usage_bail!(
                "{}: a .txt file holds one sentence a line and has no fields; --text-field, \
                 --pair-fields and --gold-field need .jsonl, .csv or .tsv",
                path.display()
            );
        }
        let records = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| Record { line: i + 1, texts: vec![l.to_string()], gold: None })
            .collect();
        return Ok((records, vec!["line".into()]));
    }
    // Field names and rows as strings (JSON values kept as they are for the gold score).
    let mut rows: Vec<(usize, Vec<(String, serde_json::Value)>)> = Vec::new();
    match ext.as_str() {
        "jsonl" => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value =
                    serde_json::from_str(line).map_err(|source| DataError::Json {
                        what: format!("{}:{}: not valid JSON", path.display(), i + 1),
                        source,
                    })?;
                let Some(obj) = v.as_object() else {
                    invalid_bail!("{}:{}: expected a JSON object per line", path.display(), i + 1);
                };
                rows.push((i + 1, obj.iter().map(|(k, v)| (k.clone(), v.clone())).collect()));
            }
        }
        "csv" | "tsv" => {
            let mut reader = csv::ReaderBuilder::new()
                .delimiter(if ext == "tsv" { b'\t' } else { b',' })
                .quoting(ext == "csv")
                .from_reader(text.as_bytes());
            let csv_error = |e: csv::Error| {
                let at = e.position().map_or(String::new(), |p| format!(":{}", p.line()));
                DataError::Invalid(format!("{}{at}: {e}", path.display()))
            };
            let header: Vec<String> =
                reader.headers().map_err(csv_error)?.iter().map(str::to_string).collect();
            for rec in reader.records() {
                let rec = rec.map_err(csv_error)?;
                let line = rec.position().map_or(0, |p| p.line() as usize);
                let fields = header
                    .iter()
                    .zip(rec.iter())
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.to_string())))
                    .collect();
                rows.push((line, fields));
            }
        }
        _ => invalid_bail!("{}: text data must be .txt, .jsonl, .csv or .tsv", path.display()),
    }
    let Some((_, first)) = rows.first() else {
        invalid_bail!("{}: no records", path.display());
    };
    let names: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
    let fields: Vec<String> = if spec.fields.is_empty() {
        let strings: Vec<&str> =
            first.iter().filter(|(_, v)| v.is_string()).map(|(k, _)| k.as_str()).collect();
        let pick = ["text", "sentence"].into_iter().find(|f| names.contains(f));
        match (pick, strings.as_slice()) {
            (Some(f), _) => vec![f.to_string()],
            (None, [only]) => vec![only.to_string()],
            _ => usage_bail!(
                "{}: which field holds the text? pass --text-field NAME (fields: {})",
                path.display(),
                names.join(", ")
            ),
        }
    } else {
        spec.fields.clone()
    };
    let value_of = |row: &[(String, serde_json::Value)], name: &str, line: usize| {
        row.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).ok_or_else(|| {
            DataError::Invalid(format!(
                "{}:{line}: no field '{name}' (fields: {})",
                path.display(),
                row.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })
    };
    let mut records = Vec::with_capacity(rows.len());
    for (line, row) in &rows {
        let mut texts = Vec::with_capacity(fields.len());
        for f in &fields {
            match value_of(row, f, *line)? {
                serde_json::Value::String(s) => texts.push(s),
                other => {
                    invalid_bail!("{}:{line}: field '{f}' holds {other}, not text", path.display())
                }
            }
        }
        let gold = match &spec.gold_field {
            None => None,
            Some(g) => {
                let v = value_of(row, g, *line)?;
                let x = v.as_f64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()));
                match x {
                    Some(x) if x.is_finite() => Some(x),
                    _ => invalid_bail!(
                        "{}:{line}: gold field '{g}' holds {v}, not a finite number",
                        path.display()
                    ),
                }
            }
        };
        records.push(Record { line: *line, texts, gold });
    }
    Ok((records, fields))
}

/// What a graph input gets from tokenized text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Ids,
    Mask,
    Types,
    Positions,
}

impl Role {
    fn of(name: &str) -> Option<Role> {
        let n = name.to_ascii_lowercase();
        Some(if n.contains("mask") {
            Role::Mask
        } else if n.contains("type") || n.contains("segment") {
            Role::Types
        } else if n.contains("position") {
            Role::Positions
        } else if n.contains("ids") || n.contains("input") || n.contains("token") {
            Role::Ids
        } else {
            return None;
        })
    }
}

/// One tokenized sentence.
struct Tokens {
    ids: Vec<u32>,
    types: Vec<u32>,
}

/// Tokenized sentences as a sample source: one `[n, L]` integer array per graph input.
pub(crate) struct Texts {
    path: PathBuf,
    fields: Vec<String>,
    tokens: Vec<Tokens>,
    /// Per sample: the record's line and field index.
    origin: Vec<(usize, usize)>,
    gold: Option<Vec<f64>>,
    /// Per input: its role and element type.
    inputs: Vec<(Role, DType)>,
    /// The model's fixed sequence length, when it fixes one.
    pad_to: Option<usize>,
    samples: usize,
    truncation: Option<usize>,
    tokenizer: PathBuf,
}

impl Texts {
    /// Reads and tokenizes `spec` for `inputs` (their roles checked here).
    pub(crate) fn new(specs: &[&InputSpec], spec: &TextSpec) -> Result<(Texts, Vec<Input>)> {
        let mut inputs = Vec::with_capacity(specs.len());
        let mut roles = Vec::with_capacity(specs.len());
        let mut pad_to: Option<(usize, &str)> = None;
        for s in specs {
            let fail = |msg: String| DataError::Input { input: s.name.clone(), at: None, msg };
            let Some(role) = Role::of(&s.name) else {
                return Err(DataError::MissingInput {
                    input: s.name.clone(),
                    needs: needs(s),
                    hint: format!(
                        "raw text ({}) feeds inputs named like input_ids, attention_mask, \
                         token_type_ids and position_ids only",
                        spec.path.display()
                    ),
                });
            };
            let dtype = s.dtype.unwrap_or(DType::I64);
            if !dtype.is_integer() {
                return Err(fail(format!(
                    "{}; raw text gives integer token ids, not {dtype}",
                    needs(s)
                )));
            }
            if let Some(d) = &s.dims {
                if d.len() != 2 {
                    return Err(fail(format!(
                        "{}; raw text gives [batch, sequence] arrays",
                        needs(s)
                    )));
                }
                if let Dim::Fixed(l) = d[1] {
                    match pad_to {
                        Some((p, other)) if p != l => invalid_bail!(
                            "inputs '{other}' and '{}' fix different sequence lengths ({p} and {l})",
                            s.name
                        ),
                        _ => pad_to = Some((l, &s.name)),
                    }
                }
            }
            roles.push((role, dtype));
            inputs.push(Input { spec: (*s).clone(), batched: true });
        }
        let (records, fields) = read_records(spec)?;
        let mut tok = tokenizers::Tokenizer::from_file(&spec.tokenizer).map_err(|e| {
            DataError::Invalid(format!(
                "{}: cannot load the tokenizer: {e}",
                spec.tokenizer.display()
            ))
        })?;
        // The corpus's tokenizer.json pads to 128; each sentence keeps its own length.
        tok.with_padding(None);
        let truncation = tok.get_truncation().map(|t| t.max_length);
        let mut texts = Vec::with_capacity(records.len() * fields.len());
        let mut origin = Vec::with_capacity(texts.capacity());
        let mut gold = spec.gold_field.as_ref().map(|_| Vec::with_capacity(texts.capacity()));
        for r in &records {
            for (k, t) in r.texts.iter().enumerate() {
                texts.push(t.as_str());
                origin.push((r.line, k));
                if let (Some(g), Some(x)) = (gold.as_mut(), r.gold) {
                    g.push(x);
                }
            }
        }
        let encodings = tok.encode_batch(texts, true).map_err(|e| {
            DataError::Invalid(format!(
                "{}: tokenizing {} failed: {e}",
                spec.tokenizer.display(),
                spec.path.display()
            ))
        })?;
        let tokens: Vec<Tokens> = encodings
            .into_iter()
            .map(|e| Tokens { ids: e.get_ids().to_vec(), types: e.get_type_ids().to_vec() })
            .collect();
        if let Some((l, name)) = pad_to {
            if let Some(i) = tokens.iter().position(|t| t.ids.len() > l) {
                invalid_bail!(
                    "{}:{}: {} tokens, but input '{name}' fixes the sequence at {l} (set the \
                     tokenizer's truncation max_length to {l})",
                    spec.path.display(),
                    origin[i].0,
                    tokens[i].ids.len()
                );
            }
        }
        let samples = tokens.len();
        let texts = Texts {
            path: spec.path.clone(),
            fields,
            tokens,
            origin,
            gold,
            inputs: roles,
            pad_to: pad_to.map(|(l, _)| l),
            samples,
            truncation,
            tokenizer: spec.tokenizer.clone(),
        };
        Ok((texts, inputs))
    }

    /// The width samples `start..end` are padded to: their longest, or the model's fixed length.
    fn padded(&self, start: usize, end: usize) -> usize {
        self.pad_to.unwrap_or_else(|| {
            self.tokens[start..end].iter().map(|t| t.ids.len()).max().unwrap_or(0).max(1)
        })
    }
}

impl SampleSource for Texts {
    fn len(&self) -> usize {
        self.samples
    }

    fn stored_form(&self, i: usize) -> Option<(DType, Vec<usize>)> {
        Some((self.inputs[i].1, vec![self.samples, self.padded(0, self.samples)]))
    }

    fn per_sample(&self, _: usize) -> bool {
        false
    }

    fn ranges(&self, batch: usize) -> Vec<(usize, usize)> {
        (0..self.samples).step_by(batch).map(|s| (s, (s + batch).min(self.samples))).collect()
    }

    fn row_label(&self, row: usize) -> String {
        let (line, k) = self.origin[row];
        format!("sentence {row} ({}:{line}, {})", self.path.display(), self.fields[k])
    }

    fn range_label(&self, start: usize, end: usize) -> String {
        let last = end.max(start + 1) - 1;
        format!(
            "sentences {start}..{end} ({} lines {} to {})",
            self.path.display(),
            self.origin[start].0,
            self.origin[last].0
        )
    }

    fn rows(&mut self, start: usize, end: usize) -> Result<Vec<Tensor>> {
        let width = self.padded(start, end);
        let n = end - start;
        let mut out = Vec::with_capacity(self.inputs.len());
        for &(role, dtype) in &self.inputs {
            let mut v = vec![0i64; n * width];
            for (row, t) in v.chunks_exact_mut(width).zip(&self.tokens[start..end]) {
                let len = t.ids.len();
                match role {
                    Role::Ids => row.iter_mut().zip(&t.ids).for_each(|(o, &x)| *o = x.into()),
                    Role::Types => row.iter_mut().zip(&t.types).for_each(|(o, &x)| *o = x.into()),
                    Role::Mask => row[..len].fill(1),
                    Role::Positions => row.iter_mut().enumerate().for_each(|(j, o)| *o = j as i64),
                }
            }
            let t = Tensor::from_vec(vec![n, width], v)?;
            out.push(if dtype == DType::I64 { t } else { t.cast(dtype)? });
        }
        Ok(out)
    }

    fn truncate(&mut self, n: usize) -> Result<()> {
        self.samples = n;
        self.tokens.truncate(n);
        Ok(())
    }

    fn gold(&self) -> Option<Vec<f64>> {
        self.gold.as_ref().map(|g| g[..self.samples].to_vec())
    }

    fn notes(&self) -> Vec<String> {
        let longest = self.tokens.iter().map(|t| t.ids.len()).max().unwrap_or(0);
        let fields = if self.fields.len() == 2 {
            format!("fields '{}' and '{}' (a then b per record)", self.fields[0], self.fields[1])
        } else {
            format!("'{}'", self.fields[0])
        };
        vec![format!(
            "text: {} sentence{} from {} {fields}, tokenized by {} ({}; longest {longest} tokens)",
            self.samples,
            if self.samples == 1 { "" } else { "s" },
            self.path.display(),
            self.tokenizer.display(),
            match self.truncation {
                Some(l) => format!("truncated at {l}"),
                None => "no truncation".into(),
            }
        )]
    }
}
