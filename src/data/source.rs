//! Reading dataset files into JSON rows: `.jsonl` (one object per line), `.json` (an array of
//! objects, or an object with a list under `data`/`rows`) and `.parquet`.

use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::Value;

use super::error::{DataError, LocationKind, RowLocation};

/// One row of a dataset, with where it came from.
#[derive(Debug, Clone)]
pub struct Row {
    pub value: Value,
    pub at: RowLocation,
}

pub fn read_rows(path: &Path) -> Result<Vec<Row>, DataError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let rows = match ext.as_str() {
        "jsonl" | "ndjson" => read_jsonl(path)?,
        "json" => read_json(path)?,
        "parquet" => read_parquet(path)?,
        _ => {
            return Err(DataError::UnsupportedFile {
                path: path.to_path_buf(),
            });
        }
    };
    if rows.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(rows)
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_jsonl(path: &Path) -> Result<Vec<Row>, DataError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut rows = Vec::new();
    // Lines as bytes, so invalid UTF-8 is reported with its line rather than as a bare I/O error.
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(io_err(path))?;
        let at = RowLocation {
            file: path.to_path_buf(),
            kind: LocationKind::Line,
            index: i + 1,
        };
        let line = String::from_utf8(line).map_err(|e| DataError::BadRow {
            at: at.clone(),
            message: format!(
                "not valid UTF-8 (byte {} of the line); save the file as UTF-8",
                e.utf8_error().valid_up_to() + 1
            ),
        })?;
        let line = line.strip_suffix('\r').unwrap_or(&line);
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| DataError::BadRow {
            at: at.clone(),
            message: format!("invalid JSON: {e}"),
        })?;
        if !value.is_object() {
            return Err(DataError::BadRow {
                at,
                message: "expected a JSON object per line".into(),
            });
        }
        rows.push(Row { value, at });
    }
    Ok(rows)
}

fn read_json(path: &Path) -> Result<Vec<Row>, DataError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..valid]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        DataError::BadFile {
            path: path.to_path_buf(),
            message: format!("line {line}: not valid UTF-8; save the file as UTF-8"),
        }
    })?;
    let value: Value = serde_json::from_str(&text).map_err(|e| DataError::BadFile {
        path: path.to_path_buf(),
        message: format!(
            "invalid JSON at line {}, column {}: {e}",
            e.line(),
            e.column()
        ),
    })?;
    let list = match value {
        Value::Array(list) => list,
        Value::Object(mut map) => match map.remove("data").or_else(|| map.remove("rows")) {
            Some(Value::Array(list)) => list,
            _ => {
                return Err(DataError::BadFile {
                    path: path.to_path_buf(),
                    message: "expected a JSON array of objects (or an object with a 'data' array)"
                        .into(),
                });
            }
        },
        _ => {
            return Err(DataError::BadFile {
                path: path.to_path_buf(),
                message: "expected a JSON array of objects".into(),
            });
        }
    };
    list.into_iter()
        .enumerate()
        .map(|(i, value)| {
            let at = RowLocation {
                file: path.to_path_buf(),
                kind: LocationKind::Row,
                index: i,
            };
            if value.is_object() {
                Ok(Row { value, at })
            } else {
                Err(DataError::BadRow {
                    at,
                    message: "expected a JSON object".into(),
                })
            }
        })
        .collect()
}

fn read_parquet(path: &Path) -> Result<Vec<Row>, DataError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let bad = |e: parquet::errors::ParquetError| DataError::BadFile {
        path: path.to_path_buf(),
        message: format!("cannot read parquet: {e}"),
    };
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    let mut rows = Vec::new();
    for (i, row) in reader.get_row_iter(None).map_err(bad)?.enumerate() {
        let row = row.map_err(bad)?;
        rows.push(Row {
            value: row.to_json_value(),
            at: RowLocation {
                file: path.to_path_buf(),
                kind: LocationKind::Row,
                index: i,
            },
        });
    }
    Ok(rows)
}
