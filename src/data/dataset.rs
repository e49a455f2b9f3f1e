//! Building the training and validation rows of a run: read every source, parse rows in their
//! format, tokenize with loss masks, truncate or drop long examples, hold out a validation
//! split, and pack. Every count is kept for `plan` and the run summary. Sources in the
//! `preference` format become tokenized pairs instead of rows (never packed).

use std::path::PathBuf;

use serde::Serialize;

use super::batch::{PackedRow, TokenizedExample};
use super::error::DataError;
use super::formats::{Example, FieldMap, Format, RoleMap, parse_example};
use super::order::permutation;
use super::pack::{pack, unpacked};
use super::preference::{self, PreferencePair};
use super::source::{Row, read_rows};
use super::tokenize::Tokenization;
use super::unpaired;
use crate::model::TokenizerBundle;

/// A dataset source resolved to local files.
#[derive(Debug, Clone, Default)]
pub struct LocalSource {
    pub files: Vec<PathBuf>,
    pub format: Option<Format>,
    pub fields: FieldMap,
    /// Role renames of conversation rows.
    pub roles: RoleMap,
    pub max_rows: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooLong {
    Truncate,
    Drop,
}

#[derive(Debug, Clone)]
pub enum Validation {
    None,
    Split(f64),
    Sources(Vec<LocalSource>),
}

/// What to build.
#[derive(Debug, Clone)]
pub struct DataPlan {
    pub train: Vec<LocalSource>,
    pub validation: Validation,
    pub seq_len: usize,
    pub packing: bool,
    pub train_on_inputs: bool,
    pub too_long: TooLong,
    pub chat_template: Option<String>,
    pub system_prompt: Option<String>,
    pub seed: u64,
    /// Largest valid token id + 1 (the model's vocabulary).
    pub vocab_size: usize,
    /// Read preference pairs as two unpaired rows each (KTO), as TRL does.
    pub unpair: bool,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DataStats {
    pub rows_read: usize,
    pub examples: usize,
    pub truncated: usize,
    pub dropped_too_long: usize,
    pub dropped_untrained: usize,
    pub train_examples: usize,
    pub validation_examples: usize,
    pub train_rows: usize,
    pub validation_rows: usize,
    /// Tokens in training rows (without padding).
    pub train_tokens: usize,
    /// Tokens that count towards the training loss.
    pub trained_tokens: usize,
}

pub struct PreparedData {
    pub train: Vec<PackedRow>,
    pub validation: Vec<PackedRow>,
    /// Preference data (format `preference`): its pairs, and no `train`/`validation` rows.
    pub train_pairs: Vec<PreferencePair>,
    pub validation_pairs: Vec<PreferencePair>,
    pub stats: DataStats,
    /// Formats used per training source (detected when not given).
    pub formats: Vec<Format>,
}

fn read_source(src: &LocalSource) -> Result<(Vec<Row>, Format), DataError> {
    let mut rows = Vec::new();
    for f in &src.files {
        rows.extend(read_rows(f)?);
        if src.max_rows.is_some_and(|m| rows.len() >= m) {
            break;
        }
    }
    if let Some(m) = src.max_rows {
        rows.truncate(m);
    }
    let first = rows.first().ok_or_else(|| DataError::Empty {
        path: src.files.first().cloned().unwrap_or_default(),
    })?;
    let format = match src.format {
        Some(f) => f,
        None => Format::detect(&first.value).ok_or_else(|| DataError::BadRow {
            at: first.at.clone(),
            message:
                "cannot tell the format from the first row's fields; set format: in the recipe"
                    .into(),
        })?,
    };
    Ok((rows, format))
}

struct Tokenized {
    examples: Vec<TokenizedExample>,
    pairs: Vec<PreferencePair>,
}

impl PreparedData {
    /// The longest example, in tokens (positions restart at 0 in every packed example).
    pub fn longest_example(&self) -> usize {
        let rows = self.train.iter().chain(&self.validation);
        let row_max = rows
            .flat_map(|r| r.positions.iter().map(|&p| p as usize + 1))
            .max()
            .unwrap_or(0);
        let pairs = self.train_pairs.iter().chain(&self.validation_pairs);
        row_max.max(pairs.map(PreferencePair::longest).max().unwrap_or(0))
    }

    /// Whether this is preference data (pairs rather than rows).
    pub fn is_preference(&self) -> bool {
        !self.train_pairs.is_empty()
    }

    /// Training items: pairs for preference data, else rows.
    pub fn train_len(&self) -> usize {
        if self.is_preference() {
            self.train_pairs.len()
        } else {
            self.train.len()
        }
    }

    pub fn has_validation(&self) -> bool {
        !(self.validation.is_empty() && self.validation_pairs.is_empty())
    }

    /// Tokens of the longest training row (one side of a pair for preference data).
    pub fn longest_row(&self) -> usize {
        let rows = self.train.iter().map(PackedRow::len);
        let pairs = self.train_pairs.iter().map(PreferencePair::longest);
        rows.chain(pairs).max().unwrap_or(0)
    }
}

/// A source's pair, checked against the vocabulary and `seq_len`; `None` when dropped.
fn pair_of(
    row: &Row,
    src: &LocalSource,
    plan: &DataPlan,
    tok: &Tokenization<'_>,
    stats: &mut DataStats,
) -> Result<Option<PreferencePair>, DataError> {
    let bad = |message: String| DataError::BadRow {
        at: row.at.clone(),
        message,
    };
    let example = preference::parse(row, &src.fields, &src.roles)?;
    let pair = preference::tokenize(tok, &example).map_err(bad)?;
    checked(pair, row, plan, stats)
}

/// A tokenized pair (or unpaired row) checked against the vocabulary, and cut to `seq_len`
/// or dropped as `truncation` says.
fn checked(
    mut pair: PreferencePair,
    row: &Row,
    plan: &DataPlan,
    stats: &mut DataStats,
) -> Result<Option<PreferencePair>, DataError> {
    let ids = pair.prompt.iter().chain(&pair.chosen).chain(&pair.rejected);
    if let Some(id) = ids.copied().find(|&id| id as usize >= plan.vocab_size) {
        return Err(DataError::BadRow {
            at: row.at.clone(),
            message: format!(
                "token id {id} is outside the model's vocabulary ({})",
                plan.vocab_size
            ),
        });
    }
    if pair.longest() > plan.seq_len {
        match plan.too_long {
            TooLong::Drop => {
                stats.dropped_too_long += 1;
                return Ok(None);
            }
            TooLong::Truncate => {
                pair.truncate(plan.seq_len);
                stats.truncated += 1;
            }
        }
    }
    Ok(Some(pair))
}

/// A block of a source's `unpaired` rows, or of its pairs made unpaired rows (the block's
/// chosen completions, then its rejected ones, as TRL's `unpair_preference_dataset`), each
/// checked against the vocabulary and `seq_len`.
fn unpaired_rows(
    block: &[Row],
    format: Format,
    src: &LocalSource,
    plan: &DataPlan,
    tok: &Tokenization<'_>,
    stats: &mut DataStats,
) -> Result<Vec<PreferencePair>, DataError> {
    let mut parsed = Vec::with_capacity(block.len());
    if format == Format::Unpaired {
        for row in block {
            parsed.push((row, unpaired::parse(row, &src.fields, &src.roles)?));
        }
    } else {
        let mut rejected = Vec::with_capacity(block.len());
        for row in block {
            let [c, r] = unpaired::unpair(preference::parse(row, &src.fields, &src.roles)?);
            parsed.push((row, c));
            rejected.push((row, r));
        }
        parsed.extend(rejected);
    }
    let mut out = Vec::with_capacity(parsed.len());
    for (row, example) in parsed {
        let bad = |message: String| DataError::BadRow {
            at: row.at.clone(),
            message,
        };
        let item = unpaired::tokenize(tok, &example).map_err(bad)?;
        out.extend(checked(item, row, plan, stats)?);
    }
    Ok(out)
}

fn tokenize_sources(
    sources: &[LocalSource],
    plan: &DataPlan,
    tok: &Tokenization<'_>,
    stats: &mut DataStats,
    formats: &mut Vec<Format>,
) -> Result<Tokenized, DataError> {
    let mut examples = Vec::new();
    let mut pairs = Vec::new();
    for src in sources {
        let (rows, format) = read_source(src)?;
        formats.push(format);
        stats.rows_read += rows.len();
        let is_pairs = matches!(format, Format::Preference | Format::Unpaired);
        if let Some(first) = rows.first()
            && (is_pairs && !examples.is_empty() || !is_pairs && !pairs.is_empty())
        {
            return Err(DataError::BadRow {
                at: first.at.clone(),
                message: "preference pairs and single examples cannot be mixed in one run (they train with different objectives)".into(),
            });
        }
        if is_pairs && (format == Format::Unpaired || plan.unpair) {
            for block in rows.chunks(unpaired::UNPAIR_BLOCK) {
                pairs.extend(unpaired_rows(block, format, src, plan, tok, stats)?);
            }
            continue;
        }
        for row in &rows {
            if is_pairs {
                pairs.extend(pair_of(row, src, plan, tok, stats)?);
                continue;
            }
            let example = parse_example(row, format, &src.fields, &src.roles)?;
            let conversation = match &example {
                Example::Chat(..) => true,
                Example::PromptCompletion { prompt, .. } => {
                    matches!(prompt, preference::Side::Messages(_))
                }
                _ => false,
            };
            if conversation && !tok.has_template() {
                return Err(DataError::BadRow {
                    at: row.at.clone(),
                    message: "conversations need a chat template, and this tokenizer has none; set data.chat_template".into(),
                });
            }
            let mut t = tok
                .tokenize(&example)
                .map_err(|message| DataError::BadRow {
                    at: row.at.clone(),
                    message,
                })?;
            if let Some(bad) = t.ids.iter().find(|&&id| id as usize >= plan.vocab_size) {
                return Err(DataError::BadRow {
                    at: row.at.clone(),
                    message: format!(
                        "token id {bad} is outside the model's vocabulary ({})",
                        plan.vocab_size
                    ),
                });
            }
            if t.len() > plan.seq_len {
                match plan.too_long {
                    TooLong::Drop => {
                        stats.dropped_too_long += 1;
                        continue;
                    }
                    TooLong::Truncate => {
                        t.ids.truncate(plan.seq_len);
                        t.labels.truncate(plan.seq_len);
                        stats.truncated += 1;
                    }
                }
            }
            if t.trained_tokens() == 0 {
                stats.dropped_untrained += 1;
                continue;
            }
            examples.push(t);
        }
    }
    Ok(Tokenized { examples, pairs })
}

/// Hold out `ceil(n * fraction)` items (at least one, never all), chosen by a seeded
/// permutation; the rest keep their order.
fn split_off<T>(items: Vec<T>, fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    let n = items.len();
    let k = if n >= 2 {
        ((n as f64 * fraction).ceil() as usize).clamp(1, n - 1)
    } else {
        0
    };
    let order = permutation(n, seed, "validation-split");
    let held: std::collections::HashSet<usize> = order[..k].iter().copied().collect();
    let mut tr = Vec::with_capacity(n - k);
    let mut va = Vec::with_capacity(k);
    for (i, e) in items.into_iter().enumerate() {
        if held.contains(&i) {
            va.push(e);
        } else {
            tr.push(e);
        }
    }
    (tr, va)
}

pub fn prepare(
    plan: &DataPlan,
    tokenizer: Option<&TokenizerBundle>,
) -> Result<PreparedData, DataError> {
    let tok = Tokenization::new(
        tokenizer,
        plan.chat_template.as_deref(),
        plan.train_on_inputs,
        plan.system_prompt.clone(),
    )?;
    let mut stats = DataStats::default();
    let mut formats = Vec::new();
    let Tokenized {
        examples: train,
        pairs: train_pairs,
    } = tokenize_sources(&plan.train, plan, &tok, &mut stats, &mut formats)?;
    let (train, validation, train_pairs, validation_pairs) = match &plan.validation {
        Validation::None => (train, Vec::new(), train_pairs, Vec::new()),
        Validation::Split(fraction) => {
            let (tr, va) = split_off(train, *fraction, plan.seed);
            let (trp, vap) = split_off(train_pairs, *fraction, plan.seed);
            (tr, va, trp, vap)
        }
        Validation::Sources(sources) => {
            let mut unused = Vec::new();
            let va = tokenize_sources(sources, plan, &tok, &mut stats, &mut unused)?;
            if va.pairs.is_empty() != train_pairs.is_empty()
                && !(va.pairs.is_empty() && va.examples.is_empty())
            {
                return Err(DataError::BadFile {
                    path: sources
                        .first()
                        .and_then(|s| s.files.first().cloned())
                        .unwrap_or_default(),
                    message: "validation data must be of the training data's kind (preference pairs or single examples)".into(),
                });
            }
            (train, va.examples, train_pairs, va.pairs)
        }
    };
    if !train_pairs.is_empty() {
        return Ok(pair_data(train_pairs, validation_pairs, stats, formats));
    }
    stats.examples = train.len() + validation.len();
    stats.train_examples = train.len();
    stats.validation_examples = validation.len();
    if train.is_empty() {
        return Err(DataError::Empty {
            path: plan
                .train
                .first()
                .and_then(|s| s.files.first().cloned())
                .unwrap_or_default(),
        });
    }
    let train_rows = if plan.packing {
        pack(&train, plan.seq_len)
    } else {
        unpacked(&train)
    };
    // Validation rows are never packed differently from training ones: same rule.
    let validation_rows = if plan.packing {
        pack(&validation, plan.seq_len)
    } else {
        unpacked(&validation)
    };
    stats.train_rows = train_rows.len();
    stats.validation_rows = validation_rows.len();
    stats.train_tokens = train_rows.iter().map(PackedRow::len).sum();
    stats.trained_tokens = train.iter().map(TokenizedExample::trained_tokens).sum();
    Ok(PreparedData {
        train: train_rows,
        validation: validation_rows,
        train_pairs: Vec::new(),
        validation_pairs: Vec::new(),
        stats,
        formats,
    })
}

/// Preference data: two rows (chosen, rejected) per pair, trained on their completions.
fn pair_data(
    train: Vec<PreferencePair>,
    validation: Vec<PreferencePair>,
    mut stats: DataStats,
    formats: Vec<Format>,
) -> PreparedData {
    stats.examples = train.len() + validation.len();
    stats.train_examples = train.len();
    stats.validation_examples = validation.len();
    stats.train_rows = 2 * train.len();
    stats.validation_rows = 2 * validation.len();
    stats.train_tokens = train.iter().map(PreferencePair::tokens).sum();
    stats.trained_tokens = train.iter().map(PreferencePair::completion_tokens).sum();
    PreparedData {
        train: Vec::new(),
        validation: Vec::new(),
        train_pairs: train,
        validation_pairs: validation,
        stats,
        formats,
    }
}
