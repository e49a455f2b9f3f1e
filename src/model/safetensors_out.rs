//! Writing small f32 safetensors files (adapters, optimizer state) byte for byte the same on
//! every run: the `safetensors` crate takes its metadata as a `HashMap`, whose order changes
//! from process to process, so two identical runs would write different files and checksums.
//! The format: an 8-byte little-endian header length, a JSON header (`__metadata__`, then each
//! tensor's dtype, shape and byte range) padded with spaces to 8 bytes, then the data.

use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value, json};

/// One f32 tensor to write: name, shape and values.
pub struct F32Tensor<'a> {
    pub name: &'a str,
    pub shape: Vec<usize>,
    pub values: &'a [f32],
}

/// Write `tensors` (in name order, as the crate does) with `metadata` (in key order) to `path`,
/// and flush it to disk.
pub fn write_f32(
    path: &Path,
    tensors: &[F32Tensor<'_>],
    metadata: &[(&str, &str)],
) -> Result<(), String> {
    let mut order: Vec<&F32Tensor<'_>> = tensors.iter().collect();
    order.sort_by(|a, b| a.name.cmp(b.name));
    let mut header = Map::new();
    if !metadata.is_empty() {
        let mut meta: Vec<(&str, &str)> = metadata.to_vec();
        meta.sort();
        let meta: Map<String, Value> = meta
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        header.insert("__metadata__".into(), Value::Object(meta));
    }
    let mut offset = 0usize;
    for t in &order {
        let n: usize = t.shape.iter().product();
        if n != t.values.len() {
            return Err(format!(
                "{}: shape {:?} holds {n} values, got {}",
                t.name,
                t.shape,
                t.values.len()
            ));
        }
        let end = offset + 4 * n;
        header.insert(
            t.name.to_string(),
            json!({"dtype": "F32", "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    // serde_json's Map keeps insertion order (the `preserve_order` feature): metadata first,
    // then the tensors by name.
    let mut text = serde_json::to_string(&Value::Object(header)).map_err(|e| e.to_string())?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut bytes = Vec::with_capacity(8 + text.len() + offset);
    bytes.extend_from_slice(&(text.len() as u64).to_le_bytes());
    bytes.extend_from_slice(text.as_bytes());
    for t in &order {
        for v in t.values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    let mut file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(&bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The crate's reader accepts the file and sees the same tensors and metadata; writing twice
    /// gives the same bytes.
    #[test]
    fn readable_and_stable() {
        let dir = std::env::temp_dir().join(format!("burnish-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], vec![-1.5f32]);
        let tensors = [
            F32Tensor {
                name: "z.weight",
                shape: vec![2, 3],
                values: &a,
            },
            F32Tensor {
                name: "a.weight",
                shape: vec![1],
                values: &b,
            },
        ];
        let meta = [
            ("step", "7"),
            ("format", "pt"),
            ("burnish_version", "0.1.0"),
        ];
        let (p1, p2) = (dir.join("one.safetensors"), dir.join("two.safetensors"));
        write_f32(&p1, &tensors, &meta).unwrap();
        write_f32(&p2, &tensors, &meta).unwrap();
        let bytes = std::fs::read(&p1).unwrap();
        assert_eq!(bytes, std::fs::read(&p2).unwrap());
        let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let md = m.metadata().clone().unwrap();
        assert_eq!(md.get("step").map(String::as_str), Some("7"));
        assert_eq!(md.len(), 3);
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let z = st.tensor("z.weight").unwrap();
        assert_eq!(z.shape(), &[2, 3]);
        let vals: Vec<f32> = z
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(vals, a);
        assert!(
            write_f32(
                &p1,
                &[F32Tensor {
                    name: "x",
                    shape: vec![2],
                    values: &b
                }],
                &[]
            )
            .is_err()
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
