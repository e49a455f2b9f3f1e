//! The GGUF v3 container (ggml's docs/gguf.md): magic, version, counts, typed key/value
//! metadata, tensor infos (name, dims innermost first, ggml type, offset), then the tensor data,
//! each tensor starting on a 32-byte boundary. The header is written first with offsets computed
//! from the tensor sizes, so tensor data can be streamed afterwards one tensor at a time.

use std::io::{self, Write};

use super::types::GgmlType;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const VERSION: u32 = 3;
/// `general.alignment` default; burnish never changes it.
pub const ALIGNMENT: u64 = 32;

/// A metadata value, with the GGUF type it is stored as.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArray(Vec<String>),
    I32Array(Vec<i32>),
    F32Array(Vec<f32>),
    BoolArray(Vec<bool>),
}

/// `gguf_type` ids.
mod tag {
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
}

/// One tensor's entry in the header.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (the last dimension of the PyTorch shape).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorInfo {
    pub fn n_values(&self) -> u64 {
        self.dims.iter().product()
    }

    pub fn n_bytes(&self) -> u64 {
        let (values, bytes) = self.ty.block();
        self.n_values() / values as u64 * bytes as u64
    }
}

pub fn align(n: u64) -> u64 {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// Writes a GGUF file front to back, tracking the position for padding.
pub struct GgufWriter<W: Write> {
    out: W,
    pos: u64,
}

impl<W: Write> GgufWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out, pos: 0 }
    }

    fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn u32(&mut self, v: u32) -> io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }

    fn u64(&mut self, v: u64) -> io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }

    fn string(&mut self, s: &str) -> io::Result<()> {
        self.u64(s.len() as u64)?;
        self.bytes(s.as_bytes())
    }

    fn value(&mut self, v: &Value) -> io::Result<()> {
        match v {
            Value::U32(x) => {
                self.u32(tag::U32)?;
                self.u32(*x)
            }
            Value::I32(x) => {
                self.u32(tag::I32)?;
                self.bytes(&x.to_le_bytes())
            }
            Value::F32(x) => {
                self.u32(tag::F32)?;
                self.bytes(&x.to_le_bytes())
            }
            Value::Bool(x) => {
                self.u32(tag::BOOL)?;
                self.bytes(&[u8::from(*x)])
            }
            Value::Str(s) => {
                self.u32(tag::STRING)?;
                self.string(s)
            }
            Value::StrArray(items) => {
                self.array_head(tag::STRING, items.len())?;
                items.iter().try_for_each(|s| self.string(s))
            }
            Value::I32Array(items) => {
                self.array_head(tag::I32, items.len())?;
                let raw: Vec<u8> = items.iter().flat_map(|x| x.to_le_bytes()).collect();
                self.bytes(&raw)
            }
            Value::F32Array(items) => {
                self.array_head(tag::F32, items.len())?;
                let raw: Vec<u8> = items.iter().flat_map(|x| x.to_le_bytes()).collect();
                self.bytes(&raw)
            }
            Value::BoolArray(items) => {
                self.array_head(tag::BOOL, items.len())?;
                let raw: Vec<u8> = items.iter().map(|&b| u8::from(b)).collect();
                self.bytes(&raw)
            }
        }
    }

    fn array_head(&mut self, elem: u32, len: usize) -> io::Result<()> {
        self.u32(tag::ARRAY)?;
        self.u32(elem)?;
        self.u64(len as u64)
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (align(self.pos) - self.pos) as usize;
        self.bytes(&[0u8; ALIGNMENT as usize][..n])
    }

    /// Header, metadata and tensor infos, padded so the data section starts aligned. Tensor
    /// data must then be written with [`GgufWriter::tensor_data`] in the order of `tensors`.
    pub fn header(
        &mut self,
        metadata: &[(String, Value)],
        tensors: &[TensorInfo],
    ) -> io::Result<()> {
        self.bytes(MAGIC)?;
        self.u32(VERSION)?;
        self.u64(tensors.len() as u64)?;
        self.u64(metadata.len() as u64)?;
        for (key, value) in metadata {
            self.string(key)?;
            self.value(value)?;
        }
        let mut offset = 0u64;
        for t in tensors {
            self.string(&t.name)?;
            self.u32(t.dims.len() as u32)?;
            for &d in &t.dims {
                self.u64(d)?;
            }
            self.u32(t.ty.id())?;
            self.u64(offset)?;
            offset = align(offset + t.n_bytes());
        }
        self.pad()
    }

    /// One tensor's bytes, followed by padding to the next boundary.
    pub fn tensor_data(&mut self, data: &[u8]) -> io::Result<()> {
        self.bytes(data)?;
        self.pad()
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_and_little_endian() {
        let mut w = GgufWriter::new(Vec::new());
        let t = TensorInfo {
            name: "a".into(),
            dims: vec![3],
            ty: GgmlType::F32,
        };
        w.header(&[("k".into(), Value::U32(7))], std::slice::from_ref(&t))
            .unwrap();
        let start = w.position();
        assert_eq!(start % ALIGNMENT, 0);
        w.tensor_data(&[1u8; 12]).unwrap();
        let bytes = w.into_inner();
        assert_eq!(&bytes[..4], b"GGUF");
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 3);
        assert_eq!(bytes.len() as u64, start + ALIGNMENT);
        // key "k": length 1, then type 4 (u32), value 7
        assert_eq!(&bytes[24..33], &[1, 0, 0, 0, 0, 0, 0, 0, b'k']);
        assert_eq!(&bytes[33..41], &[4, 0, 0, 0, 7, 0, 0, 0]);
    }
}
