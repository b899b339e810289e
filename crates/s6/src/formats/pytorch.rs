//! PyTorch `pytorch_model.bin` reader: the zip format `torch.save` writes since torch 1.6.
//!
//! The archive holds `<prefix>/data.pkl` (a pickle of the state dict in which every storage is a
//! persistent id) and one `<prefix>/data/<key>` entry of raw little-endian bytes per storage. A
//! small pickle VM below runs only the opcodes and the few `torch` callables state dicts need;
//! it never executes arbitrary globals: unknown classes become opaque values, so optimizer state
//! or other extras next to the weights don't stop the load.
//!
//! Fuzz safety: every length read from the file is checked against the bytes that remain, the VM
//! is iterative (values reference mutable containers by index, so memo sharing can't blow up or
//! leak), and nested structures are walked with fixed depth limits.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::Path;
use std::rc::Rc;

use crate::formats::{DType, HostTensor};
use crate::{Error, Result};

/// Internal result: messages get the file name attached at the public boundary.
type Res<T> = std::result::Result<T, String>;

/// How deep `_rebuild_from_type_v2` may wrap another rebuild call.
const MAX_CALL_DEPTH: usize = 8;
/// How many levels of `{"model": {"state_dict": ...}}` nesting are searched for the tensors.
const MAX_NESTING: usize = 4;

/// Reads every tensor of a PyTorch zip checkpoint into memory, contiguous and little-endian.
///
/// Supports plain state dicts (`dict` or `OrderedDict` of tensors/parameters) and checkpoints
/// wrapping one (`{"state_dict": {...}}`, `{"model": {...}}`, ...); non-tensor entries of the
/// state dict are skipped. Views are honoured: storage offsets and strides are applied and
/// tensors sharing a storage each get their own contiguous copy. Tensors come back in the order
/// of the state dict. The legacy (pre-1.6) non-zip format is rejected with a clear error.
pub fn read_pytorch_bin(path: &Path) -> Result<Vec<(String, HostTensor)>> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut magic = [0u8; 4];
    let short = file.read_exact(&mut magic).is_err(); // under 4 bytes: not a zip either
    if magic[0] == 0x80 {
        // A bare pickle stream (PROTO opcode first) is what torch.save wrote before 1.6.
        let msg = "legacy (pre-1.6) torch.save format is not supported; re-save with torch>=1.6";
        return Err(Error::format(path, msg));
    }
    if short || magic != *b"PK\x03\x04" {
        let msg = "not a PyTorch checkpoint: expected a zip archive (torch.save >= 1.6)";
        return Err(Error::format(path, msg));
    }
    file.rewind().map_err(|e| Error::io(path, e))?;
    read_zip(std::io::BufReader::new(file), file_len).map_err(|msg| Error::format(path, msg))
}

/// Reads the checkpoint out of an opened archive; errors are completed with the path above.
fn read_zip<R: Read + Seek>(reader: R, file_len: u64) -> Res<Vec<(String, HostTensor)>> {
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| format!("truncated or corrupt zip archive: {e}"))?;
    let is_pkl = |n: &str| n == "data.pkl" || (n.ends_with("/data.pkl") && n.matches('/').count() == 1);
    let pkl_name = zip.file_names().filter_map(|n| n.ok()).find(|n| is_pkl(n));
    let pkl_name = pkl_name.ok_or("zip archive has no <prefix>/data.pkl: not a torch.save checkpoint")?;
    let pkl_name = pkl_name.into_owned();
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];

    // Files from torch < 1.9 lack `byteorder`; they were written little-endian.
    let byteorder = format!("{prefix}byteorder");
    if zip.index_for_name(&byteorder).is_some() {
        let order = read_entry(&mut zip, &byteorder, file_len)?;
        if order.trim_ascii() != b"little" {
            let order = String::from_utf8_lossy(&order);
            return Err(format!("byte order {order:?} is not supported (only \"little\")"));
        }
    }

    let pkl = read_entry(&mut zip, &pkl_name, file_len)?;
    let mut vm = Vm::new(&pkl);
    let top = vm.run().map_err(|e| format!("{pkl_name}: {e}"))?;
    let dict = find_state_dict(&vm, &top)?;

    // Keep Python dict semantics (a repeated key keeps its first position, takes the last value).
    let mut tensors: Vec<(Rc<str>, Rc<TensorRef>)> = Vec::new();
    let mut position: HashMap<Rc<str>, usize> = HashMap::new();
    for (key, value) in &vm.dicts[dict] {
        let Value::Tensor(t) = value else { continue };
        let Value::Str(name) = key else {
            return Err(format!("state dict key {} is not a string", key.kind()));
        };
        if let Some(&i) = position.get(name) {
            tensors[i].1 = t.clone();
        } else {
            position.insert(name.clone(), tensors.len());
            tensors.push((name.clone(), t.clone()));
        }
    }

    // Storages are read once and dropped after their last tensor, so peak memory stays near
    // one copy of the weights; a sole, dense user takes the bytes without copying.
    let mut uses: HashMap<Rc<str>, usize> = HashMap::new();
    for (_, t) in &tensors {
        *uses.entry(t.storage.key.clone()).or_default() += 1;
    }
    let mut storages: HashMap<Rc<str>, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let err = |msg: String| format!("tensor {name:?}: {msg}");
        let dtype = t.dtype.ok_or_else(|| err(format!("unsupported dtype {}", t.dtype_name)))?;
        let key = &t.storage.key;
        if !storages.contains_key(key) {
            let entry = format!("{prefix}data/{key}");
            if zip.index_for_name(&entry).is_none() {
                return Err(err(format!("storage entry {entry} is missing from the archive")));
            }
            let bytes = read_entry(&mut zip, &entry, file_len).map_err(err)?;
            storages.insert(key.clone(), bytes);
        }
        let n = uses.entry(key.clone()).or_default();
        *n = n.saturating_sub(1);
        let last_use = *n == 0;
        let src = storages.get(key).map(Vec::as_slice).unwrap_or_default();
        let data = match copy_strided(src, &t, dtype, file_len).map_err(err)? {
            Some(data) => data,
            // Whole-storage dense view: hand over the buffer (or copy it if others still need it).
            None if last_use => storages.remove(key).unwrap_or_default(),
            None => src.to_vec(),
        };
        if last_use {
            storages.remove(key);
        }
        let shape = t.shape.clone();
        out.push((name.to_string(), HostTensor { dtype, shape, data }));
    }
    Ok(out)
}

/// Reads a whole zip entry, allocating up front no more than the file size (the declared size
/// is attacker-controlled) and insisting the entry delivers exactly the size it declares.
fn read_entry<R: Read + Seek>(zip: &mut zip::ZipArchive<R>, name: &str, file_len: u64) -> Res<Vec<u8>> {
    let mut entry = zip.by_name(name).map_err(|e| format!("cannot open zip entry {name}: {e}"))?;
    let size = entry.size();
    let mut buf = Vec::with_capacity(usize::try_from(size.min(file_len)).unwrap_or(0));
    (&mut entry)
        .take(size)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read zip entry {name} (truncated or corrupt archive?): {e}"))?;
    if buf.len() as u64 != size {
        return Err(format!("zip entry {name} is truncated: {} of {size} bytes", buf.len()));
    }
    Ok(buf)
}

/// Picks the state dict: the top-level dict if it holds tensors, else a nested dict, preferring
/// the `state_dict` and `model` keys, then the first dict value that directly holds tensors.
fn find_state_dict(vm: &Vm, top: &Value) -> Res<usize> {
    let has_tensors = |id: usize| vm.dicts[id].iter().any(|(_, v)| matches!(v, Value::Tensor(_)));
    let Value::Dict(mut id) = *top else {
        return Err(format!("data.pkl holds {}, expected a state dict", top.kind()));
    };
    for _ in 0..MAX_NESTING {
        if has_tensors(id) {
            return Ok(id);
        }
        let entries = &vm.dicts[id];
        let by_key = |k: &str| {
            entries.iter().find_map(|(key, v)| match (key, v) {
                (Value::Str(s), Value::Dict(d)) if &**s == k => Some(*d),
                _ => None,
            })
        };
        let any = || {
            entries.iter().find_map(|(_, v)| match v {
                Value::Dict(d) if has_tensors(*d) => Some(*d),
                _ => None,
            })
        };
        id = by_key("state_dict")
            .or_else(|| by_key("model"))
            .or_else(any)
            .ok_or("no tensors found in the checkpoint")?;
    }
    Err(format!("no tensors found within {MAX_NESTING} levels of nested dicts"))
}

/// Copies a (possibly strided) view out of its storage into contiguous row-major bytes, after
/// checking the view fits. `None` means the view is the whole storage, already dense.
fn copy_strided(src: &[u8], t: &TensorRef, dtype: DType, file_len: u64) -> Res<Option<Vec<u8>>> {
    let es = dtype.size();
    let overflow = || "shape, stride and offset overflow".to_string();
    let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(overflow)?;
    if numel == 0 {
        return Ok(Some(Vec::new()));
    }
    let mut last = t.offset;
    for (&d, &s) in t.shape.iter().zip(&t.stride) {
        last = (d - 1).checked_mul(s).and_then(|x| x.checked_add(last)).ok_or_else(overflow)?;
    }
    let needed = last.checked_add(1).and_then(|n| n.checked_mul(es)).ok_or_else(overflow)?;
    let describe = || format!("{dtype} shape {:?} stride {:?} offset {}", t.shape, t.stride, t.offset);
    if needed > src.len() {
        return Err(format!(
            "storage {} has {} bytes but the view ({}) needs {needed}",
            t.storage.key,
            src.len(),
            describe()
        ));
    }
    let out_len = numel.checked_mul(es).ok_or_else(overflow)?;
    if out_len > src.len() && out_len as u64 > file_len {
        // Overlapping (stride-0) views can claim any size; don't let them allocate past the file.
        return Err(format!("expanded view ({}) is larger than the file; refusing to materialize it", describe()));
    }
    let mut dense = true;
    let mut expect = 1usize;
    for (&d, &s) in t.shape.iter().zip(&t.stride).rev() {
        dense &= d == 1 || s == expect;
        expect *= d;
    }
    if dense {
        if t.offset == 0 && out_len == src.len() {
            return Ok(None);
        }
        return Ok(Some(src[t.offset * es..t.offset * es + out_len].to_vec()));
    }
    // Odometer over the outer dims; the innermost dim is copied as one run when its stride is 1.
    let nd = t.shape.len(); // >= 1: a 0-d view is always dense
    let (inner, inner_stride) = (t.shape[nd - 1], t.stride[nd - 1]);
    let mut out = Vec::with_capacity(out_len);
    let mut idx = vec![0usize; nd - 1];
    for _ in 0..numel / inner {
        let base = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        if inner_stride == 1 {
            out.extend_from_slice(&src[base * es..(base + inner) * es]);
        } else {
            for j in 0..inner {
                let p = (base + j * inner_stride) * es;
                out.extend_from_slice(&src[p..p + es]);
            }
        }
        for d in (0..nd - 1).rev() {
            idx[d] += 1;
            if idx[d] < t.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(Some(out))
}

/// A storage named by a persistent id: `('storage', torch.FloatStorage, key, location, numel)`.
#[derive(Debug)]
struct Storage {
    key: Rc<str>,
    dtype: Option<DType>,
    type_name: Rc<str>,
}

/// A tensor view rebuilt by `torch._utils._rebuild_tensor*`; its bytes are read later, once
/// its name is known for error messages. The dtype is kept unresolved so that unsupported
/// dtypes only fail when such a tensor is actually part of the state dict.
#[derive(Debug)]
struct TensorRef {
    storage: Rc<Storage>,
    dtype: Option<DType>,
    dtype_name: Rc<str>,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// A pickled value. Lists and dicts live in the VM's arenas so that memo references share them
/// (as in Python) without reference cycles; everything else is immutable and cheap to clone.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<[Value]>),
    List(usize),
    Dict(usize),
    /// A class or function, `module.name`.
    Global(Rc<str>),
    Storage(Rc<Storage>),
    Tensor(Rc<TensorRef>),
    /// An instance of a class the reader does not model.
    Object(Rc<str>),
}

impl Value {
    /// A short description for error messages, with its article ("an int 3", "a tuple").
    fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("a bool {b}"),
            Value::Int(i) => format!("an int {i}"),
            Value::Float(f) => format!("a float {f}"),
            Value::Str(s) => format!("a str {:?}", s.chars().take(40).collect::<String>()),
            Value::Bytes(b) => format!("bytes of length {}", b.len()),
            Value::Tuple(_) => "a tuple".into(),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Global(g) => format!("the global {g}"),
            Value::Storage(_) => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
            Value::Object(c) => format!("a {c} object"),
        }
    }
}

/// A non-negative int (a size, stride or offset).
fn usize_of(v: &Value) -> Res<usize> {
    match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("is negative ({i})")),
        other => Err(format!("is {}, not an int", other.kind())),
    }
}

/// Maps `torch.<X>Storage` classes and `torch.<dtype>` globals to element types.
fn dtype_of(global: &str) -> Option<DType> {
    if !global.starts_with("torch.") {
        return None;
    }
    Some(match global.rsplit('.').next()? {
        "DoubleStorage" | "float64" | "double" => DType::F64,
        "FloatStorage" | "float32" | "float" => DType::F32,
        "HalfStorage" | "float16" | "half" => DType::F16,
        "BFloat16Storage" | "bfloat16" => DType::BF16,
        "LongStorage" | "int64" | "long" => DType::I64,
        "IntStorage" | "int32" | "int" => DType::I32,
        "ShortStorage" | "int16" | "short" => DType::I16,
        "CharStorage" | "int8" => DType::I8,
        "ByteStorage" | "UntypedStorage" | "uint8" => DType::U8,
        "BoolStorage" | "bool" => DType::Bool,
        "uint16" => DType::U16,
        _ => return None,
    })
}

/// The pickle machine: a value stack with MARK positions, a memo, and container arenas.
struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    lists: Vec<Vec<Value>>,
    dicts: Vec<Vec<(Value, Value)>>,
}

impl<'a> Vm<'a> {
    fn new(data: &'a [u8]) -> Self {
        let (stack, marks, memo, lists, dicts) = Default::default();
        Vm { data, pos: 0, stack, marks, memo, lists, dicts }
    }

    /// Runs to STOP and returns the unpickled object.
    fn run(&mut self) -> Res<Value> {
        loop {
            let at = self.pos;
            match self.step() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => return Err(format!("{e} (at offset {at})")),
            }
        }
    }

    fn step(&mut self) -> Res<Option<Value>> {
        let op = self.u8()?;
        let v = match op {
            0x80 => return self.take(1).map(|_| None), // PROTO
            0x95 => return self.take(8).map(|_| None), // FRAME: only a read-ahead hint
            b'.' => return self.pop().map(Some),       // STOP
            b'(' => {
                self.marks.push(self.stack.len()); // MARK
                return Ok(None);
            }
            b'0' => return self.pop().map(|_| None),      // POP
            b'1' => return self.pop_mark().map(|_| None), // POP_MARK
            b'2' => self.top()?.clone(),                  // DUP
            b'}' => self.new_dict(),                      // EMPTY_DICT
            b']' => {
                self.lists.push(Vec::new());
                Value::List(self.lists.len() - 1)
            }
            b')' => Value::Tuple(Rc::new([])),
            0x85..=0x87 => {
                let n = usize::from(op - 0x84); // TUPLE1..TUPLE3
                let at = self.stack.len().checked_sub(n).filter(|&at| at >= self.mark()).ok_or("stack underflow")?;
                Value::Tuple(self.stack.split_off(at).into())
            }
            b't' => Value::Tuple(self.pop_mark()?.into()),
            b'q' | b'r' | 0x94 => {
                // BINPUT, LONG_BINPUT, MEMOIZE (next free index)
                let i = match op {
                    b'q' => u32::from(self.u8()?),
                    b'r' => self.u32()?,
                    _ => self.memo.len() as u32,
                };
                let v = self.top()?.clone();
                self.memo.insert(i, v);
                return Ok(None);
            }
            b'h' | b'j' => {
                let i = if op == b'h' { u32::from(self.u8()?) } else { self.u32()? };
                self.memo.get(&i).cloned().ok_or_else(|| format!("memo key {i} is not defined"))?
            }
            b'J' => Value::Int(i64::from(self.u32()? as i32)),
            b'K' => Value::Int(i64::from(self.u8()?)),
            b'M' => Value::Int(i64::from(self.u8()?) | i64::from(self.u8()?) << 8),
            0x8a => {
                // LONG1: little-endian two's complement of n bytes.
                let n = usize::from(self.u8()?);
                let b = self.take(n)?;
                if n > 8 {
                    return Err(format!("integer of {n} bytes is too large"));
                }
                let negative = b.last().is_some_and(|&x| x & 0x80 != 0);
                let mut le = [if negative { 0xff } else { 0 }; 8];
                le[..n].copy_from_slice(b);
                Value::Int(i64::from_le_bytes(le))
            }
            b'X' | 0x8c | 0x8d | b'U' | b'T' | b'B' | b'C' => {
                let n = match op {
                    0x8c | b'U' | b'C' => u64::from(self.u8()?),
                    0x8d => u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "bad length")?),
                    b'T' => u64::try_from(self.u32()? as i32).map_err(|_| "negative string length")?,
                    _ => u64::from(self.u32()?),
                };
                let b = self.take(usize::try_from(n).map_err(|_| "string length too large")?)?;
                match (op, std::str::from_utf8(b)) {
                    (b'B' | b'C', _) => Value::Bytes(b.into()),
                    (_, Ok(s)) => Value::Str(s.into()),
                    (b'U' | b'T', Err(_)) => Value::Bytes(b.into()), // py2 byte strings
                    (_, Err(e)) => return Err(format!("invalid UTF-8 in string: {e}")),
                }
            }
            0x88 => Value::Bool(true),
            0x89 => Value::Bool(false),
            b'N' => Value::None,
            b'G' => Value::Float(f64::from_be_bytes(self.take(8)?.try_into().map_err(|_| "bad float")?)),
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                Value::Global(format!("{module}.{name}").into())
            }
            0x93 => match (self.pop()?, self.pop()?) {
                (Value::Str(name), Value::Str(module)) => Value::Global(format!("{module}.{name}").into()),
                (n, m) => return Err(format!("STACK_GLOBAL needs two strings, got {} and {}", m.kind(), n.kind())),
            },
            b'R' | 0x81 => {
                // REDUCE / NEWOBJ: only a few torch callables are modelled.
                let args = self.pop()?;
                let f = self.pop()?;
                self.call(&f, &args, 0)?
            }
            b'b' => {
                // BUILD sets instance state (e.g. an OrderedDict's `_metadata`): not needed.
                self.pop()?;
                return self.top().map(|_| None);
            }
            b'Q' => {
                let pid = self.pop()?;
                self.persistent_load(&pid)?
            }
            b's' | b'u' => {
                let items = if op == b's' {
                    let v = self.pop()?;
                    vec![self.pop()?, v] // key below value
                } else {
                    self.pop_mark()?
                };
                if items.len() % 2 != 0 {
                    return Err("SETITEMS with an odd number of items".into());
                }
                match self.top()?.clone() {
                    Value::Dict(id) => {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            self.dicts[id].push((k, v));
                        }
                    }
                    Value::Object(_) => {} // a dict subclass we don't model
                    other => return Err(format!("SETITEM on {}", other.kind())),
                }
                return Ok(None);
            }
            b'a' | b'e' => {
                let items = if op == b'a' { vec![self.pop()?] } else { self.pop_mark()? };
                match self.top()?.clone() {
                    Value::List(id) => self.lists[id].extend(items),
                    Value::Object(_) => {}
                    other => return Err(format!("APPEND on {}", other.kind())),
                }
                return Ok(None);
            }
            _ => return Err(format!("unsupported pickle opcode 0x{op:02x} ({:?})", op as char)),
        };
        self.stack.push(v);
        Ok(None)
    }

    /// Calls a global: the rebuild functions and dict classes torch state dicts use.
    fn call(&mut self, f: &Value, args: &Value, depth: usize) -> Res<Value> {
        let Value::Global(name) = f else {
            return Err(format!("cannot call {}", f.kind()));
        };
        let Value::Tuple(args) = args else {
            return Err(format!("arguments of {name} are {}, not a tuple", args.kind()));
        };
        match &**name {
            "collections.OrderedDict" | "builtins.dict" | "__builtin__.dict" => Ok(self.new_dict()),
            "torch._utils._rebuild_tensor" | "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor_v3" => {
                let Some(Value::Storage(storage)) = args.first() else {
                    return Err(format!("{name}: first argument is not a storage"));
                };
                let (mut dtype, mut dtype_name) = (storage.dtype, storage.type_name.clone());
                if name.ends_with("_v3") {
                    // v3 (new dtypes) pairs an untyped byte storage with an explicit dtype.
                    match args.get(6) {
                        Some(Value::Global(g)) => (dtype, dtype_name) = (dtype_of(g), g.clone()),
                        _ => return Err(format!("{name}: argument 7 is not a dtype")),
                    }
                }
                let ints = |i: usize, what: &str| {
                    let items: &[Value] = match args.get(i) {
                        Some(Value::Tuple(t)) => t,
                        Some(Value::List(id)) => &self.lists[*id],
                        _ => return Err(format!("{name}: {what} is not a tuple")),
                    };
                    let ints: Res<Vec<usize>> = items.iter().map(usize_of).collect();
                    ints.map_err(|e| format!("{name}: {what} {e}"))
                };
                let (shape, stride) = (ints(2, "size")?, ints(3, "stride")?);
                if shape.len() != stride.len() {
                    return Err(format!("{name}: size {shape:?} and stride {stride:?} differ in rank"));
                }
                let offset = args
                    .get(1)
                    .ok_or_else(|| "is missing".to_string())
                    .and_then(usize_of)
                    .map_err(|e| format!("{name}: storage offset {e}"))?;
                Ok(Value::Tensor(Rc::new(TensorRef {
                    storage: storage.clone(),
                    dtype,
                    dtype_name,
                    offset,
                    shape,
                    stride,
                })))
            }
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => Err(format!("{name}: first argument is not a tensor")),
            },
            "torch._tensor._rebuild_from_type_v2" if depth < MAX_CALL_DEPTH => match (args.first(), args.get(2)) {
                (Some(f), Some(a)) => self.call(f, a, depth + 1),
                _ => Err(format!("{name}: expected (func, type, args, state)")),
            },
            _ => Ok(Value::Object(name.clone())),
        }
    }

    /// Resolves `('storage', storage_type, key, location, numel)`.
    fn persistent_load(&self, pid: &Value) -> Res<Value> {
        let Value::Tuple(t) = pid else {
            return Err(format!("persistent id is {}, not a tuple", pid.kind()));
        };
        match (t.first(), t.get(1), t.get(2)) {
            (Some(Value::Str(tag)), Some(Value::Global(ty)), Some(key)) if &**tag == "storage" => {
                let key: Rc<str> = match key {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string().into(),
                    other => return Err(format!("storage key is {}", other.kind())),
                };
                Ok(Value::Storage(Rc::new(Storage { key, dtype: dtype_of(ty), type_name: ty.clone() })))
            }
            _ => Err("persistent id is not ('storage', <type>, <key>, ...)".into()),
        }
    }

    fn new_dict(&mut self) -> Value {
        self.dicts.push(Vec::new());
        Value::Dict(self.dicts.len() - 1)
    }

    /// Stack index where the innermost MARK's frame begins: values below it are out of reach.
    fn mark(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn top(&self) -> Res<&Value> {
        self.stack.get(self.mark()..).and_then(|s| s.last()).ok_or_else(|| "stack underflow".into())
    }

    fn pop(&mut self) -> Res<Value> {
        if self.stack.len() <= self.mark() {
            return Err("stack underflow".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }

    fn pop_mark(&mut self) -> Res<Vec<Value>> {
        let m = self.marks.pop().ok_or("no MARK on the stack")?;
        Ok(self.stack.split_off(m))
    }

    fn take(&mut self, n: usize) -> Res<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| format!("unexpected end of pickle data (wanted {n} bytes)"))?;
        let b = &self.data[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    fn u8(&mut self) -> Res<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Res<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "bad u32")?))
    }

    /// A newline-terminated ASCII line (GLOBAL's module and name).
    fn line(&mut self) -> Res<String> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or("unterminated GLOBAL name")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "GLOBAL name is not UTF-8")?.to_string();
        self.pos += n + 1;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::PathBuf;

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
    }

    fn tiny_bin() -> PathBuf {
        fixture("mamba-tiny-original/pytorch_model.bin")
    }

    /// A file in the temp dir, unique per test and process.
    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("s6-pytorch-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn zip_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (name, data) in entries {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn err_of(path: &Path) -> String {
        let e = read_pytorch_bin(path).expect_err("expected an error");
        assert!(matches!(e, Error::Format { .. }), "{e:?}");
        e.to_string()
    }

    /// Minimal protocol-2 pickle writer, emitting what torch.save emits.
    #[derive(Default)]
    struct Pickle(Vec<u8>);

    impl Pickle {
        fn op(&mut self, ops: &[u8]) -> &mut Self {
            self.0.extend_from_slice(ops);
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.op(b"X").op(&(s.len() as u32).to_le_bytes()).op(s.as_bytes())
        }
        fn int(&mut self, i: u32) -> &mut Self {
            self.op(b"J").op(&i.to_le_bytes())
        }
        fn global(&mut self, module: &str, name: &str) -> &mut Self {
            self.op(format!("c{module}\n{name}\n").as_bytes())
        }
        fn ints(&mut self, xs: &[u32]) -> &mut Self {
            self.op(b"(");
            xs.iter().for_each(|&x| {
                self.int(x);
            });
            self.op(b"t")
        }
        /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`, or v3 with
        /// an untyped storage and `dtype` when given.
        fn tensor(
            &mut self,
            ty: &str,
            key: &str,
            offset: u32,
            shape: &[u32],
            stride: &[u32],
            v3: Option<&str>,
        ) -> &mut Self {
            let f = if v3.is_some() { "_rebuild_tensor_v3" } else { "_rebuild_tensor_v2" };
            self.global("torch._utils", f)
                .op(b"((")
                .str("storage")
                .global("torch", ty)
                .str(key)
                .str("cpu")
                .int(0)
                .op(b"tQ");
            self.int(offset).ints(shape).ints(stride).op(b"\x89").global("collections", "OrderedDict").op(b")R");
            if let Some(dtype) = v3 {
                self.global("torch", dtype);
            }
            self.op(b"tR")
        }
    }

    fn f32_bytes(xs: impl IntoIterator<Item = f32>) -> Vec<u8> {
        xs.into_iter().flat_map(f32::to_le_bytes).collect()
    }

    fn as_f32(t: &HostTensor) -> Vec<f32> {
        assert_eq!(t.dtype, DType::F32);
        t.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    #[test]
    fn fixture_loads_with_config_shapes() {
        let tensors = read_pytorch_bin(&tiny_bin()).unwrap();
        let map: HashMap<_, _> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        assert_eq!(map.len(), tensors.len(), "duplicate names");
        let shape = |n: &str| map.get(n).unwrap_or_else(|| panic!("missing {n}")).shape.clone();
        assert_eq!(shape("backbone.embedding.weight"), [1000, 64]);
        assert_eq!(shape("backbone.norm_f.weight"), [64]);
        for l in 0..3 {
            let p = format!("backbone.layers.{l}");
            assert_eq!(shape(&format!("{p}.norm.weight")), [64]);
            assert_eq!(shape(&format!("{p}.mixer.in_proj.weight")), [256, 64]);
            assert_eq!(shape(&format!("{p}.mixer.conv1d.weight")), [128, 1, 4]);
            assert_eq!(shape(&format!("{p}.mixer.conv1d.bias")), [128]);
            assert_eq!(shape(&format!("{p}.mixer.x_proj.weight")), [4 + 2 * 16, 128]);
            assert_eq!(shape(&format!("{p}.mixer.dt_proj.weight")), [128, 4]);
            assert_eq!(shape(&format!("{p}.mixer.dt_proj.bias")), [128]);
            assert_eq!(shape(&format!("{p}.mixer.A_log")), [128, 16]);
            assert_eq!(shape(&format!("{p}.mixer.D")), [128]);
            assert_eq!(shape(&format!("{p}.mixer.out_proj.weight")), [64, 128]);
        }
        for (name, t) in &tensors {
            assert_eq!(t.dtype, DType::F32, "{name}");
            assert_eq!(t.data.len(), t.numel() * 4, "{name}");
        }
        // Tied embeddings: lm_head shares the embedding's storage.
        if let Some(head) = map.get("lm_head.weight") {
            assert_eq!(head.data, map["backbone.embedding.weight"].data);
        }
    }

    #[test]
    fn fixture_matches_safetensors_bit_for_bit() {
        let tensors = read_pytorch_bin(&tiny_bin()).unwrap();
        let bytes = std::fs::read(fixture("mamba-tiny/model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut compared = 0;
        for (name, t) in &tensors {
            let hf = if name == "backbone.embedding.weight" { "backbone.embeddings.weight" } else { name };
            let Ok(view) = st.tensor(hf) else {
                assert_eq!(name, "lm_head.weight", "{name} missing from safetensors");
                continue;
            };
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            assert_eq!(view.shape(), t.shape.as_slice(), "{name}");
            assert!(view.data() == t.data.as_slice(), "{name}: bytes differ");
            compared += 1;
        }
        assert_eq!(compared, st.len());
    }

    #[test]
    fn truncated_file_is_rejected() {
        let bytes = std::fs::read(tiny_bin()).unwrap();
        let path = temp_file("truncated.bin", &bytes[..bytes.len() / 2]);
        let msg = err_of(&path);
        std::fs::remove_file(&path).ok();
        assert!(msg.contains("truncated or corrupt zip"), "{msg}");
        assert!(msg.contains("truncated.bin"), "{msg}");
    }

    #[test]
    fn non_zip_and_legacy_files_are_rejected() {
        let path = temp_file("garbage.bin", b"this is not a checkpoint at all");
        let msg = err_of(&path);
        std::fs::remove_file(&path).ok();
        assert!(msg.contains("expected a zip archive"), "{msg}");
        let path = temp_file("legacy.bin", b"\x80\x02\x8a\x0alegacy magic");
        let msg = err_of(&path);
        std::fs::remove_file(&path).ok();
        assert!(msg.contains("legacy (pre-1.6) torch.save format is not supported"), "{msg}");
        let path = temp_file("nopkl.bin", &zip_bytes(&[("m/byteorder", b"little")]));
        let msg = err_of(&path);
        std::fs::remove_file(&path).ok();
        assert!(msg.contains("no <prefix>/data.pkl"), "{msg}");
    }

    #[test]
    fn missing_storage_entry_is_reported() {
        let mut p = Pickle::default();
        p.op(b"\x80\x02}(").str("w").tensor("FloatStorage", "7", 0, &[2], &[1], None).op(b"u.");
        let path = temp_file("missing.bin", &zip_bytes(&[("m/data.pkl", &p.0), ("m/byteorder", b"little")]));
        let msg = err_of(&path);
        std::fs::remove_file(&path).ok();
        assert!(msg.contains("tensor \"w\"") && msg.contains("m/data/7 is missing"), "{msg}");
    }

    #[test]
    fn strided_views_and_shared_storage_become_contiguous() {
        let mut p = Pickle::default();
        p.op(b"\x80\x02}q\x00(");
        p.str("full").tensor("FloatStorage", "0", 0, &[3, 4], &[4, 1], None);
        p.str("transposed").tensor("FloatStorage", "0", 0, &[4, 3], &[1, 4], None);
        p.str("block").tensor("FloatStorage", "0", 5, &[2, 2], &[4, 1], None);
        p.str("column").tensor("FloatStorage", "0", 1, &[3], &[4], None);
        p.str("scalar").tensor("FloatStorage", "0", 7, &[], &[], None);
        p.str("broadcast").tensor("FloatStorage", "0", 0, &[2, 3], &[0, 1], None);
        p.str("empty").tensor("FloatStorage", "0", 99, &[0, 3], &[3, 1], None);
        p.str("half").tensor("HalfStorage", "1", 1, &[2], &[1], None);
        p.op(b"u.");
        let storage = f32_bytes((0..12).map(|i| i as f32));
        let half: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
        let zip = zip_bytes(&[("archive/data.pkl", &p.0), ("archive/data/0", &storage), ("archive/data/1", &half)]);
        let path = temp_file("strided.bin", &zip);
        let tensors = read_pytorch_bin(&path).unwrap();
        std::fs::remove_file(&path).ok();
        let names: Vec<_> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["full", "transposed", "block", "column", "scalar", "broadcast", "empty", "half"]);
        let t = |i: usize| &tensors[i].1;
        assert_eq!(as_f32(t(0)), (0..12).map(|i| i as f32).collect::<Vec<_>>());
        assert_eq!(as_f32(t(1)), [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
        assert_eq!(t(1).shape, [4, 3]);
        assert_eq!(as_f32(t(2)), [5., 6., 9., 10.]);
        assert_eq!(as_f32(t(3)), [1., 5., 9.]);
        assert_eq!((as_f32(t(4)), t(4).shape.len()), (vec![7.], 0));
        assert_eq!(as_f32(t(5)), [0., 1., 2., 0., 1., 2.]);
        assert_eq!((t(6).shape.clone(), t(6).data.len()), (vec![0, 3], 0));
        assert_eq!((t(7).dtype, t(7).data.clone()), (DType::F16, half[2..].to_vec()));
    }

    #[test]
    fn v3_untyped_storage_in_nested_checkpoint() {
        let mut p = Pickle::default();
        p.op(b"\x80\x02}(").str("epoch").int(3).str("state_dict").op(b"}(");
        p.str("w").global("torch._utils", "_rebuild_parameter").op(b"(");
        p.tensor("UntypedStorage", "0", 1, &[2], &[1], Some("bfloat16"))
            .op(b"\x89")
            .global("collections", "OrderedDict")
            .op(b")Rt");
        p.op(b"R").op(b"uu.");
        let bytes: Vec<u8> = (0u8..8).collect();
        let path = temp_file("v3.bin", &zip_bytes(&[("x/data.pkl", &p.0), ("x/data/0", &bytes)]));
        let tensors = read_pytorch_bin(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(tensors.len(), 1);
        let (name, t) = &tensors[0];
        assert_eq!(
            (name.as_str(), t.dtype, t.shape.as_slice(), t.data.as_slice()),
            ("w", DType::BF16, &[2][..], &[2, 3, 4, 5][..])
        );
    }

    #[test]
    fn bad_views_and_byte_order_are_reported() {
        let mut p = Pickle::default();
        p.op(b"\x80\x02}(").str("too.big").tensor("FloatStorage", "0", 2, &[3, 4], &[4, 1], None).op(b"u.");
        let storage = f32_bytes((0..12).map(|i| i as f32));
        let path = temp_file("small.bin", &zip_bytes(&[("a/data.pkl", &p.0), ("a/data/0", &storage)]));
        let msg = err_of(&path);
        std::fs::remove_file(&path).ok();
        assert!(msg.contains("tensor \"too.big\"") && msg.contains("has 48 bytes but the view"), "{msg}");
        let path = temp_file("big-endian.bin", &zip_bytes(&[("a/data.pkl", &p.0), ("a/byteorder", b"big")]));
        let msg = err_of(&path);
        std::fs::remove_file(&path).ok();
        assert!(msg.contains("byte order \"big\" is not supported"), "{msg}");
    }

    fn run_vm(data: &[u8]) -> Res<Value> {
        let mut vm = Vm::new(data);
        let top = vm.run()?;
        find_state_dict(&vm, &top)?;
        Ok(top)
    }

    #[test]
    fn unknown_opcode_names_byte_and_offset() {
        let msg = run_vm(b"\x80\x02}\xff").unwrap_err();
        assert!(msg.contains("opcode 0xff") && msg.contains("offset 3"), "{msg}");
        let msg = run_vm(b"\x80\x02t.").unwrap_err();
        assert!(msg.contains("no MARK"), "{msg}");
        let msg = run_vm(b"\x80\x02(}1R.").unwrap_err();
        assert!(msg.contains("stack underflow"), "{msg}");
    }

    #[test]
    fn corrupt_pickles_fail_without_panicking() {
        let mut zip = zip::ZipArchive::new(std::fs::File::open(tiny_bin()).unwrap()).unwrap();
        let pkl = read_entry(&mut zip, "pytorch_model/data.pkl", u64::MAX).unwrap();
        assert!(run_vm(&pkl).is_ok());
        for n in 0..pkl.len() {
            assert!(run_vm(&pkl[..n]).is_err(), "prefix of {n} bytes");
        }
        // Deterministic byte flips: any outcome but a panic is fine.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3000 {
            let mut bad = pkl.clone();
            for _ in 0..3 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let i = (state as usize) % bad.len();
                bad[i] = (state >> 32) as u8;
            }
            let _ = run_vm(&bad);
        }
    }
}
