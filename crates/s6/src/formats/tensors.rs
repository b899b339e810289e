//! Named tensors from checkpoint files: safetensors (memory-mapped, single or sharded with
//! `model.safetensors.index.json`) and PyTorch `pytorch_model.bin`; conversion of f32/f16/bf16
//! to f32; atomic safetensors writing.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, SafeTensors};

use super::{DType, HostTensor};
use crate::{Error, Result};

/// Where a tensor's bytes live.
enum Bytes {
    /// `mmaps[file][start..end]`.
    Mapped { file: usize, start: usize, end: usize },
    /// Read into memory (PyTorch `.bin`).
    Owned(Vec<u8>),
}

struct Entry {
    dtype: DType,
    shape: Vec<usize>,
    bytes: Bytes,
    path: PathBuf,
}

/// The tensors of one checkpoint, by name.
pub struct TensorFile {
    mmaps: Vec<Mmap>,
    entries: BTreeMap<String, Entry>,
    /// What was opened, for messages.
    pub source: PathBuf,
}

fn st_dtype(d: StDtype, path: &Path, name: &str) -> Result<DType> {
    Ok(match d {
        StDtype::F64 => DType::F64,
        StDtype::F32 => DType::F32,
        StDtype::F16 => DType::F16,
        StDtype::BF16 => DType::BF16,
        StDtype::I64 => DType::I64,
        StDtype::I32 => DType::I32,
        StDtype::I16 => DType::I16,
        StDtype::I8 => DType::I8,
        StDtype::U8 => DType::U8,
        StDtype::U16 => DType::U16,
        StDtype::BOOL => DType::Bool,
        other => return Err(Error::format(path, format!("tensor '{name}' has unsupported dtype {other:?}"))),
    })
}

impl TensorFile {
    /// Opens the weights of a model directory: `model.safetensors`, else
    /// `model.safetensors.index.json` and its shards, else `pytorch_model.bin`.
    pub fn open_model_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let bin = dir.join("pytorch_model.bin");
        if single.is_file() {
            Self::open_safetensors(&[single])
        } else if index.is_file() {
            Self::open_sharded(&index)
        } else if bin.is_file() {
            Self::open_pytorch(&bin)
        } else {
            Err(Error::format(
                dir,
                "no weights found: expected model.safetensors, model.safetensors.index.json (sharded) or pytorch_model.bin",
            ))
        }
    }

    /// Opens one file by its extension (`.safetensors` or a PyTorch `.bin`/`.pt`).
    pub fn open(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("bin") | Some("pt") | Some("pth") => Self::open_pytorch(path),
            _ => Self::open_safetensors(&[path.to_path_buf()]),
        }
    }

    /// Reads a sharded checkpoint's index (`weight_map`: tensor name → shard file).
    pub fn open_sharded(index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(index, format!("not valid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::format(index, "missing object 'weight_map'"))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shards: Vec<PathBuf> = Vec::new();
        for (name, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| Error::format(index, format!("weight_map entry '{name}' is not a file name")))?;
            let p = dir.join(file);
            if !shards.contains(&p) {
                shards.push(p);
            }
        }
        shards.sort();
        let mut tf = Self::open_safetensors(&shards)?;
        tf.source = index.to_path_buf();
        for name in map.keys() {
            if !tf.entries.contains_key(name) {
                return Err(Error::format(index, format!("tensor '{name}' is listed in weight_map but in no shard")));
            }
        }
        Ok(tf)
    }

    /// Memory-maps safetensors files (several = shards of one checkpoint).
    pub fn open_safetensors(paths: &[PathBuf]) -> Result<Self> {
        let mut tf = TensorFile {
            mmaps: Vec::new(),
            entries: BTreeMap::new(),
            source: paths.first().cloned().unwrap_or_default(),
        };
        for path in paths {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the map is read-only; a checkpoint rewritten under us while loaded is outside
            // what any loader can defend against (we write ours atomically via rename).
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let (header_len, meta) =
                SafeTensors::read_metadata(&mmap).map_err(|e| diagnose_safetensors(path, &mmap, e))?;
            let data_start = 8 + header_len;
            let data_len = mmap.len() - data_start.min(mmap.len());
            let file_idx = tf.mmaps.len();
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                if e > data_len || s > e {
                    return Err(Error::format(
                        path,
                        format!("tensor '{name}' lies outside the file (bytes {s}..{e} of {data_len}): truncated?"),
                    ));
                }
                let dtype = st_dtype(info.dtype, path, &name)?;
                let numel: usize = info.shape.iter().product();
                if numel * dtype.size() != e - s {
                    return Err(Error::format(
                        path,
                        format!("tensor '{name}': shape {:?} does not match its {} bytes", info.shape, e - s),
                    ));
                }
                let entry = Entry {
                    dtype,
                    shape: info.shape.clone(),
                    bytes: Bytes::Mapped { file: file_idx, start: data_start + s, end: data_start + e },
                    path: path.clone(),
                };
                if tf.entries.insert(name.clone(), entry).is_some() {
                    return Err(Error::format(path, format!("tensor '{name}' appears in more than one shard")));
                }
            }
            tf.mmaps.push(mmap);
        }
        Ok(tf)
    }

    /// Reads a PyTorch zip checkpoint into memory.
    pub fn open_pytorch(path: &Path) -> Result<Self> {
        let tensors = super::pytorch::read_pytorch_bin(path)?;
        let entries = tensors
            .into_iter()
            .map(|(name, t)| {
                let e = Entry { dtype: t.dtype, shape: t.shape, bytes: Bytes::Owned(t.data), path: path.to_path_buf() };
                (name, e)
            })
            .collect();
        Ok(TensorFile { mmaps: Vec::new(), entries, source: path.to_path_buf() })
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Dtype and shape of a tensor.
    pub fn info(&self, name: &str) -> Option<(DType, &[usize])> {
        self.entries.get(name).map(|e| (e.dtype, e.shape.as_slice()))
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries.get(name).ok_or_else(|| Error::weights(&self.source, format!("missing tensor '{name}'")))
    }

    fn bytes<'a>(&'a self, e: &'a Entry) -> &'a [u8] {
        match &e.bytes {
            Bytes::Mapped { file, start, end } => &self.mmaps[*file][*start..*end],
            Bytes::Owned(v) => v,
        }
    }

    /// A floating-point tensor converted to f32, with its shape.
    pub fn f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let e = self.entry(name)?;
        let b = self.bytes(e);
        let v: Vec<f32> = match e.dtype {
            DType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            DType::F16 => b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::BF16 => b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::F64 => {
                b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect()
            }
            other => {
                return Err(Error::format(
                    &e.path,
                    format!("tensor '{name}' has dtype {other}; expected a float type (f32, f16, bf16 or f64)"),
                ))
            }
        };
        Ok((v, e.shape.clone()))
    }

    /// An integer tensor (i64, i32, u16, u8...) converted to i64, with its shape.
    pub fn i64(&self, name: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        let e = self.entry(name)?;
        let b = self.bytes(e);
        let v: Vec<i64> = match e.dtype {
            DType::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect(),
            DType::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect(),
            DType::I16 => b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i64).collect(),
            DType::U16 => b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i64).collect(),
            DType::U8 => b.iter().map(|&x| x as i64).collect(),
            DType::I8 => b.iter().map(|&x| x as i8 as i64).collect(),
            other => {
                return Err(Error::format(
                    &e.path,
                    format!("tensor '{name}' has dtype {other}; expected an integer type (int64 or int32)"),
                ))
            }
        };
        Ok((v, e.shape.clone()))
    }

    /// A tensor's raw bytes as an owned [`HostTensor`].
    pub fn host(&self, name: &str) -> Result<HostTensor> {
        let e = self.entry(name)?;
        Ok(HostTensor { dtype: e.dtype, shape: e.shape.clone(), data: self.bytes(e).to_vec() })
    }
}

/// Explains why a safetensors file failed to parse, recognizing the common case of a truncated
/// file (an interrupted download or copy) by comparing the header's claims with the file size.
fn diagnose_safetensors(path: &Path, bytes: &[u8], e: safetensors::SafeTensorError) -> Error {
    let len = bytes.len();
    if len < 8 {
        return Error::format(path, format!("truncated: {len} bytes, not even the 8-byte header length"));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8])) as usize;
    if n > 100_000_000 {
        return Error::format(path, format!("not a valid safetensors file (header length {n} is implausible): {e}"));
    }
    if 8 + n > len {
        return Error::format(path, format!("truncated: the header needs {} bytes, the file has {len}", 8 + n));
    }
    if let Ok(serde_json::Value::Object(h)) = serde_json::from_slice::<serde_json::Value>(&bytes[8..8 + n]) {
        let end = h.values().filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64()).max().unwrap_or(0) as usize;
        if 8 + n + end > len {
            return Error::format(
                path,
                format!(
                    "truncated: the tensors need {} bytes, the file has {len} (an interrupted download or copy?)",
                    8 + n + end
                ),
            );
        }
    }
    Error::format(path, format!("not a valid safetensors file: {e}"))
}

/// Element type used when writing tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDType {
    F32,
    BF16,
    F16,
}

impl std::str::FromStr for SaveDType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" | "fp32" => Ok(SaveDType::F32),
            "bf16" | "bfloat16" => Ok(SaveDType::BF16),
            "f16" | "float16" | "fp16" => Ok(SaveDType::F16),
            other => Err(Error::input(format!("unknown dtype '{other}'; expected f32, bf16 or f16"))),
        }
    }
}

/// A tensor to write: encoded bytes plus metadata.
pub struct OutTensor {
    dtype: StDtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl OutTensor {
    /// Encodes f32 values in the given dtype.
    pub fn from_f32(values: &[f32], shape: &[usize], dtype: SaveDType) -> Self {
        let (dtype, data) = match dtype {
            SaveDType::F32 => (StDtype::F32, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            SaveDType::BF16 => (StDtype::BF16, values.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect()),
            SaveDType::F16 => (StDtype::F16, values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect()),
        };
        OutTensor { dtype, shape: shape.to_vec(), data }
    }
    /// Integer tensor (i64).
    pub fn from_i64(values: &[i64], shape: &[usize]) -> Self {
        OutTensor {
            dtype: StDtype::I64,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

impl safetensors::tensor::View for &OutTensor {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes tensors as safetensors, atomically (see [`write_atomic`]).
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, OutTensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes = safetensors::tensor::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), metadata)
        .map_err(|e| Error::format(path, format!("cannot serialize: {e}")))?;
    write_atomic(path, &bytes)
}

/// Writes a file so that a crash at any moment leaves either the old file or the complete new one:
/// write a temp file beside it, fsync it, rename it over the target, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}
