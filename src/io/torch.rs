//! PyTorch files (`torch.save`, zip format) read without PyTorch: the SIMAT release ships its
//! embeddings, word vectors, OSCAR matrix and heads this way.
//!
//! A `torch.save` file is a zip archive holding `<prefix>/data.pkl` (a Python pickle of the saved
//! object) and one entry `<prefix>/data/<key>` per tensor storage (raw little-endian values).
//! The pickle refers to storages by *persistent ids* and rebuilds tensors by calling
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)`. [`TorchFile`] runs a
//! small pickle machine over the opcodes that `torch.save` emits (protocols 2 to 4) and turns
//! the calls it knows into values: tensors (with dtype, offset, shape and stride), ordered
//! dicts, sets; any other class or call becomes an [`Value::Object`] with its arguments and
//! state, which is how a pickled `nn.Linear` is read (its `_parameters`). Nothing is imported
//! or executed: an opcode outside that set is an error naming its byte offset in `data.pkl`.
//!
//! Why not a crate: the well-kept PyTorch readers in Rust (candle's `pickle` module, for one)
//! come with a whole tensor library, and their loaders flatten a dict of tensors — they do not
//! read a pickled `nn.Linear` module or a list of `(word, tensor)` pairs, which is what the
//! release's files are. The legacy (pre-1.6, non-zip) format is refused with a sentence.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::linalg::{LinearHead, Matrix};

/// Element type of a storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// `torch.float16`.
    F16,
    /// `torch.bfloat16`.
    BF16,
    /// `torch.float32`.
    F32,
    /// `torch.float64`.
    F64,
    /// `torch.int64`.
    I64,
    /// `torch.int32`.
    I32,
    /// `torch.int16`.
    I16,
    /// `torch.int8`.
    I8,
    /// `torch.uint8`.
    U8,
    /// `torch.bool`.
    Bool,
}

impl DType {
    fn of_storage(name: &str) -> Option<DType> {
        Some(match name {
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }
}

/// A tensor of the file: a view into one storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// The storage's key (its entry `data/<key>`).
    pub storage: String,
    /// Element type.
    pub dtype: DType,
    /// Elements in the storage.
    pub storage_len: u64,
    /// Offset of the first element, in elements.
    pub offset: u64,
    /// Shape.
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub stride: Vec<usize>,
}

/// A decoded pickle value.
#[derive(Debug, Clone)]
pub enum Value {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An int.
    Int(i64),
    /// A float.
    Float(f64),
    /// A str.
    Str(String),
    /// A bytes object.
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Rc<Vec<Value>>),
    /// A list (also a set).
    List(Rc<RefCell<Vec<Value>>>),
    /// A dict (also an `OrderedDict`), in insertion order.
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// A reference to a class or function, `module.name`.
    Global(String, String),
    /// A tensor.
    Tensor(Rc<TensorRef>),
    /// A storage (before a tensor is built over it).
    Storage(String, DType, u64),
    /// An instance of a class, or the result of a call that is not a tensor: the callable, its
    /// arguments and the state given to it (`BUILD`).
    Object(Rc<Object>),
    /// The stack marker.
    Mark,
}

/// An object of a class the reader does not know, e.g. `torch.nn.modules.linear.Linear`.
#[derive(Debug)]
pub struct Object {
    /// `module.name` of its class (or of the function called).
    pub class: String,
    /// The constructor's arguments.
    pub args: Vec<Value>,
    /// Its state (`__dict__`), set by `BUILD`.
    pub state: RefCell<Option<Value>>,
}

impl Value {
    /// The entries of a dict.
    pub fn dict_items(&self) -> Option<Vec<(Value, Value)>> {
        match self {
            Value::Dict(d) => Some(d.borrow().clone()),
            _ => None,
        }
    }

    /// The items of a list or tuple.
    pub fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::List(l) => Some(l.borrow().clone()),
            Value::Tuple(t) => Some(t.as_ref().clone()),
            _ => None,
        }
    }

    /// The value of `key` in a dict with string keys.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.dict_items()?
            .into_iter()
            .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
            .map(|(_, v)| v)
    }

    /// What kind of value this is, for messages.
    pub fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(t) => format!("a tuple of {}", t.len()),
            Value::List(l) => format!("a list of {}", l.borrow().len()),
            Value::Dict(d) => format!("a dict of {}", d.borrow().len()),
            Value::Global(m, n) => format!("the global {m}.{n}"),
            Value::Tensor(t) => format!("a tensor of shape {:?}", t.shape),
            Value::Storage(..) => "a storage".into(),
            Value::Object(o) => format!("a {} object", o.class),
            Value::Mark => "a mark".into(),
        }
    }

    /// A short rendering of a dict key or a scalar, for messages.
    pub fn show(&self) -> String {
        match self {
            Value::Int(i) => i.to_string(),
            Value::Str(s) => format!("{s:?}"),
            other => other.kind(),
        }
    }
}

/// The largest pickle read from an archive (the tensors' values are separate entries).
const MAX_PICKLE: u64 = 1 << 30;

/// A `torch.save` file, its pickle decoded; tensor values are read on demand.
#[derive(Debug)]
pub struct TorchFile {
    path: PathBuf,
    archive: zip::ZipArchive<BufReader<File>>,
    prefix: String,
    big_endian: bool,
    /// The saved object.
    pub root: Value,
}

/// Whether `path` starts like a zip archive (the format of `torch.save` since PyTorch 1.6).
pub fn is_torch_zip(path: &Path) -> bool {
    let mut head = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && head == *b"PK\x03\x04"
}

/// The file extensions simat reads as PyTorch files.
pub fn has_torch_extension(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| matches!(e.to_string_lossy().as_ref(), "pt" | "pth" | "ptd" | "bin"))
}

impl TorchFile {
    /// Open `path` and decode its pickle.
    pub fn open(path: &Path) -> Result<TorchFile> {
        let bad = |m: String| Error::data(path, m);
        let file = File::open(path).map_err(|e| Error::io("failed to open", path, e))?;
        let mut archive = match zip::ZipArchive::new(BufReader::new(file)) {
            Ok(a) => a,
            Err(e) => {
                let mut head = [0u8; 2];
                let legacy = File::open(path)
                    .and_then(|mut f| f.read_exact(&mut head))
                    .is_ok()
                    && head[0] == 0x80;
                return Err(bad(if legacy {
                    "a PyTorch file in the legacy (pre-1.6) format: load it and save it again with a recent PyTorch (torch.save(torch.load(f), f))".into()
                } else {
                    format!("not a PyTorch (torch.save) zip file: {e}")
                }));
            }
        };
        let pkl = (0..archive.len())
            .filter_map(|i| {
                archive
                    .name_for_index(i)
                    .and_then(|n| n.ok())
                    .map(|n| n.into_owned())
            })
            .find(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
            .ok_or_else(|| bad("no data.pkl in the archive: not a torch.save file".into()))?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        let read_entry = |archive: &mut zip::ZipArchive<BufReader<File>>, name: &str| {
            let mut entry = archive
                .by_name(name)
                .map_err(|e| bad(format!("entry `{name}`: {e}")))?;
            // The size is the archive's claim: reserve no more than a pickle needs, and read no
            // more than MAX_PICKLE bytes whatever the entry inflates to.
            let mut buf = Vec::with_capacity(entry.size().min(1 << 20) as usize);
            (&mut entry)
                .take(MAX_PICKLE)
                .read_to_end(&mut buf)
                .map_err(|e| bad(format!("entry `{name}`: {e}")))?;
            Ok::<_, Error>(buf)
        };
        let big_endian = match read_entry(&mut archive, &format!("{prefix}byteorder")) {
            Ok(b) => b.trim_ascii() == b"big",
            Err(_) => false,
        };
        let bytes = read_entry(&mut archive, &pkl)?;
        let root = Machine::new(&bytes)
            .run()
            .map_err(|(offset, m)| bad(format!("{pkl}, byte {offset}: {m}")))?;
        Ok(TorchFile {
            path: path.to_path_buf(),
            archive,
            prefix,
            big_endian,
            root,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The values of a float tensor as f32, in row-major order of its shape.
    pub fn tensor_f32(&mut self, t: &TensorRef) -> Result<Vec<f32>> {
        let path = self.path.clone();
        let bad = |m: String| Error::data(&path, m);
        if !t.dtype.is_float() {
            return Err(bad(format!(
                "tensor of shape {:?} holds {:?} values, not floats",
                t.shape, t.dtype
            )));
        }
        let name = format!("{}data/{}", self.prefix, t.storage);
        let mut entry = self
            .archive
            .by_name(&name)
            .map_err(|e| bad(format!("storage entry `{name}`: {e}")))?;
        let size = t.dtype.size();
        let too_large = || {
            bad(format!(
                "tensor of shape {:?} (offset {}, stride {:?}, storage of {} elements) is too large to exist",
                t.shape, t.offset, t.stride, t.storage_len
            ))
        };
        let need = usize::try_from(t.storage_len)
            .ok()
            .and_then(|n| n.checked_mul(size))
            .ok_or_else(too_large)?;
        if entry.size() < need as u64 {
            return Err(bad(format!(
                "storage entry `{name}` holds {} bytes, its {} elements need {need} (truncated file?)",
                entry.size(),
                t.storage_len
            )));
        }
        let numel = t
            .shape
            .iter()
            .try_fold(1usize, |a, &n| a.checked_mul(n))
            .ok_or_else(too_large)?;
        if numel > t.storage_len as usize {
            return Err(bad(format!(
                "tensor of shape {:?} has {numel} elements, more than its storage's {}: views that repeat their storage (stride 0) are not read",
                t.shape, t.storage_len
            )));
        }
        // The last element the view touches must lie inside the storage.
        if numel > 0 {
            let last = t
                .shape
                .iter()
                .zip(&t.stride)
                .try_fold(t.offset as usize, |a, (&n, &s)| {
                    a.checked_add((n - 1).checked_mul(s)?)
                })
                .ok_or_else(too_large)?;
            if last >= t.storage_len as usize {
                return Err(bad(format!(
                    "tensor of shape {:?} (offset {}, stride {:?}) reaches past its storage of {} elements",
                    t.shape, t.offset, t.stride, t.storage_len
                )));
            }
        }
        let mut raw = Vec::with_capacity(need);
        (&mut entry)
            .take(need as u64)
            .read_to_end(&mut raw)
            .map_err(|e| bad(format!("storage entry `{name}`: {e}")))?;
        if raw.len() < need {
            return Err(bad(format!(
                "storage entry `{name}` gave {} bytes, its {} elements need {need} (truncated file?)",
                raw.len(),
                t.storage_len
            )));
        }
        let be = self.big_endian;
        let value = |i: usize| -> f32 {
            let b = &raw[i * size..(i + 1) * size];
            match t.dtype {
                DType::F32 => {
                    let a = b.try_into().expect("4 bytes");
                    if be {
                        f32::from_be_bytes(a)
                    } else {
                        f32::from_le_bytes(a)
                    }
                }
                DType::F64 => {
                    let a = b.try_into().expect("8 bytes");
                    (if be {
                        f64::from_be_bytes(a)
                    } else {
                        f64::from_le_bytes(a)
                    }) as f32
                }
                DType::F16 | DType::BF16 => {
                    let a: [u8; 2] = b.try_into().expect("2 bytes");
                    let bits = if be {
                        u16::from_be_bytes(a)
                    } else {
                        u16::from_le_bytes(a)
                    };
                    if t.dtype == DType::F16 {
                        half::f16::from_bits(bits).to_f32()
                    } else {
                        half::bf16::from_bits(bits).to_f32()
                    }
                }
                _ => unreachable!("checked above"),
            }
        };
        let mut out = Vec::with_capacity(numel);
        let mut index = vec![0usize; t.shape.len()];
        for _ in 0..numel {
            let at = t.offset as usize
                + index
                    .iter()
                    .zip(&t.stride)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            out.push(value(at));
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < t.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        Ok(out)
    }

    /// A 2-D float tensor as a matrix.
    pub fn matrix(&mut self, t: &TensorRef, what: &str) -> Result<Matrix> {
        if t.shape.len() != 2 {
            return Err(Error::data(
                &self.path,
                format!("{what} is a tensor of shape {:?}, not a matrix", t.shape),
            ));
        }
        let data = self.tensor_f32(t)?;
        Matrix::new(t.shape[0], t.shape[1], data)
    }

    /// A 1-D float tensor (or a 2-D one with one row, as `encode_image` of one image gives).
    pub fn vector(&mut self, t: &TensorRef, what: &str) -> Result<Vec<f32>> {
        match t.shape.as_slice() {
            [_] | [1, _] => self.tensor_f32(t),
            other => Err(Error::data(
                &self.path,
                format!("{what} is a tensor of shape {other:?}, not a vector"),
            )),
        }
    }
}

/// The key of a keyed vector: an int (a region id) or a str (a word).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// An integer key.
    Int(i64),
    /// A string key.
    Str(String),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Int(i) => write!(f, "{i}"),
            Key::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// Vectors by key, in the file's order: a dict `{key: tensor}` (the release's
/// `simat_img_clip.pt`: region id → CLIP embedding) or a list of `(key, tensor)` pairs (its
/// `simat_words_clip.ptd`: word → embedding). Keys are ints or strs; a duplicate is an error.
pub fn read_keyed_vectors(path: &Path) -> Result<(Vec<Key>, Matrix)> {
    let mut f = TorchFile::open(path)?;
    let pairs: Vec<(Value, Value)> = match &f.root {
        Value::Dict(_) => f.root.dict_items().expect("dict"),
        Value::List(_) | Value::Tuple(_) => {
            let mut v = Vec::new();
            for (i, item) in f.root.items().expect("list").into_iter().enumerate() {
                match item.items().as_deref() {
                    Some([k, t]) => v.push((k.clone(), t.clone())),
                    _ => {
                        return Err(Error::data(
                            path,
                            format!("item {i} is {}, expected a (key, tensor) pair", item.kind()),
                        ))
                    }
                }
            }
            v
        }
        other => {
            return Err(Error::data(
                path,
                format!(
                    "holds {}, expected a dict of key → tensor or a list of (key, tensor) pairs",
                    other.kind()
                ),
            ))
        }
    };
    let mut keys = Vec::with_capacity(pairs.len());
    let mut seen: HashMap<Key, usize> = HashMap::new();
    let mut data = Vec::new();
    let mut dim = None;
    for (i, (k, v)) in pairs.into_iter().enumerate() {
        let key = match k {
            Value::Int(n) => Key::Int(n),
            Value::Str(s) => Key::Str(s),
            other => {
                return Err(Error::data(
                    path,
                    format!(
                        "entry {i}: the key is {}, expected an int or a str",
                        other.kind()
                    ),
                ))
            }
        };
        if let Some(first) = seen.insert(key.clone(), i) {
            return Err(Error::data(
                path,
                format!("key {key} appears twice (entries {first} and {i})"),
            ));
        }
        let Value::Tensor(t) = v else {
            return Err(Error::data(
                path,
                format!("key {key}: the value is {}, expected a tensor", v.kind()),
            ));
        };
        let values = f.vector(&t, &format!("the value of key {key}"))?;
        match dim {
            None => dim = Some(values.len()),
            Some(d) if d != values.len() => {
                return Err(Error::data(
                    path,
                    format!(
                        "key {key}: a vector of {} values after vectors of {d}",
                        values.len()
                    ),
                ))
            }
            _ => {}
        }
        data.extend(values);
        keys.push(key);
    }
    let m = Matrix::new(keys.len(), dim.unwrap_or(0), data)?;
    Ok((keys, m))
}

/// The one 2-D tensor a file holds (the release's `oscar_similarity_matrix.pt`).
pub fn read_matrix(path: &Path) -> Result<Matrix> {
    let mut f = TorchFile::open(path)?;
    match f.root.clone() {
        Value::Tensor(t) => f.matrix(&t, "the saved tensor"),
        other => Err(Error::data(
            path,
            format!("holds {}, expected one 2-D tensor", other.kind()),
        )),
    }
}

/// The image and text heads of a file like the release's `head_clip_t=0.1.pt`: a dict
/// `{"img_head": nn.Linear, "txt_head": nn.Linear}` of pickled modules (read by their
/// `_parameters`), or a state dict with `img_head.weight`, `img_head.bias`, `txt_head.weight`,
/// `txt_head.bias`.
pub fn read_heads(path: &Path) -> Result<(LinearHead, LinearHead)> {
    let mut f = TorchFile::open(path)?;
    let root = f.root.clone();
    if root.dict_items().is_none() {
        return Err(Error::data(
            path,
            format!(
                "holds {}, expected a dict with `img_head` and `txt_head`",
                root.kind()
            ),
        ));
    }
    let mut head = |which: &str| -> Result<LinearHead> {
        let params = |name: &str| -> Result<Rc<TensorRef>> {
            let found = match root.get(which) {
                Some(Value::Object(o)) => {
                    let state = o.state.borrow().clone().ok_or_else(|| {
                        Error::data(path, format!("`{which}` ({}) has no state", o.class))
                    })?;
                    state.get("_parameters").and_then(|p| p.get(name))
                }
                Some(d @ Value::Dict(_)) => d.get(name),
                Some(other) => {
                    return Err(Error::data(
                        path,
                        format!(
                            "`{which}` is {}, expected an nn.Linear module",
                            other.kind()
                        ),
                    ))
                }
                None => root.get(&format!("{which}.{name}")),
            };
            match found {
                Some(Value::Tensor(t)) => Ok(t),
                Some(other) => Err(Error::data(
                    path,
                    format!("`{which}.{name}` is {}, expected a tensor", other.kind()),
                )),
                None => Err(Error::data(
                    path,
                    format!("no `{which}` module nor `{which}.{name}` tensor: not a file of SIMAT heads"),
                )),
            }
        };
        let (w, b) = (params("weight")?, params("bias")?);
        let weight = f.matrix(&w, &format!("`{which}.weight`"))?;
        let bias = f.vector(&b, &format!("`{which}.bias`"))?;
        if bias.len() != weight.rows {
            return Err(Error::data(
                path,
                format!(
                    "`{which}.bias` has {} values, its weight {} output rows",
                    bias.len(),
                    weight.rows
                ),
            ));
        }
        Ok(LinearHead { weight, bias })
    };
    let img = head("img_head")?;
    let txt = head("txt_head")?;
    Ok((img, txt))
}

/// Error of the machine: the opcode's byte offset and what is wrong.
type Fail = (usize, String);

/// A pickle machine over the opcodes `torch.save` emits.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8]) -> Self {
        Machine {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| "unexpected end of the pickle (truncated file?)".to_string())?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> std::result::Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn line(&mut self) -> std::result::Result<String, String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| "unterminated line".to_string())?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> std::result::Result<String, String> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| "a string that is not UTF-8".to_string())
    }

    fn pop(&mut self) -> std::result::Result<Value, String> {
        self.stack
            .pop()
            .ok_or_else(|| "pop from an empty stack".to_string())
    }

    fn top(&mut self) -> std::result::Result<&mut Value, String> {
        self.stack
            .last_mut()
            .ok_or_else(|| "empty stack".to_string())
    }

    fn pop_mark(&mut self) -> std::result::Result<Vec<Value>, String> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| "no mark on the stack".to_string())?;
        if m + 1 > self.stack.len() {
            return Err("mark above the stack".into());
        }
        let items = self.stack.split_off(m + 1);
        // The MARK itself is a placeholder in `stack` too.
        match self.stack.pop() {
            Some(Value::Mark) => Ok(items),
            _ => Err("stack and marks disagree".into()),
        }
    }

    fn run(mut self) -> std::result::Result<Value, Fail> {
        loop {
            let at = self.pos;
            let op = self.u8().map_err(|m| (at, m))?;
            match self.step(op) {
                Ok(true) => {
                    return self.pop().map_err(|m| (at, m));
                }
                Ok(false) => {}
                Err(m) => return Err((at, format!("opcode {:?} (0x{op:02x}): {m}", op as char))),
            }
        }
    }

    /// One opcode; `true` at STOP.
    fn step(&mut self, op: u8) -> std::result::Result<bool, String> {
        match op {
            0x80 => {
                let proto = self.u8()?;
                if proto > 5 {
                    return Err(format!("pickle protocol {proto} is not supported"));
                }
            }
            0x95 => {
                self.take(8)?; // FRAME: its length; the frame's opcodes follow inline
            }
            b'.' => return Ok(true),
            b'(' => {
                self.marks.push(self.stack.len());
                self.stack.push(Value::Mark);
            }
            b'N' => self.stack.push(Value::None),
            0x88 => self.stack.push(Value::Bool(true)),
            0x89 => self.stack.push(Value::Bool(false)),
            b'J' => {
                let v = i32::from_le_bytes(self.take(4)?.try_into().expect("4"));
                self.stack.push(Value::Int(v as i64));
            }
            b'K' => {
                let v = self.u8()?;
                self.stack.push(Value::Int(v as i64));
            }
            b'M' => {
                let v = self.u16()?;
                self.stack.push(Value::Int(v as i64));
            }
            0x8a => {
                // LONG1: little-endian two's complement of n bytes.
                let n = self.u8()? as usize;
                let b = self.take(n)?;
                if n > 8 {
                    return Err(format!("an integer of {n} bytes"));
                }
                let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                    [0xffu8; 8]
                } else {
                    [0u8; 8]
                };
                buf[..n].copy_from_slice(b);
                self.stack.push(Value::Int(i64::from_le_bytes(buf)));
            }
            b'G' => {
                let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8"));
                self.stack.push(Value::Float(v));
            }
            b'X' => {
                let n = self.u32()? as usize;
                let s = self.utf8(n)?;
                self.stack.push(Value::Str(s));
            }
            0x8c => {
                let n = self.u8()? as usize;
                let s = self.utf8(n)?;
                self.stack.push(Value::Str(s));
            }
            b'B' => {
                let n = self.u32()? as usize;
                let b = self.take(n)?.to_vec();
                self.stack.push(Value::Bytes(b));
            }
            b'C' => {
                let n = self.u8()? as usize;
                let b = self.take(n)?.to_vec();
                self.stack.push(Value::Bytes(b));
            }
            b')' => self.stack.push(Value::Tuple(Rc::new(vec![]))),
            b't' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::Tuple(Rc::new(items)));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < n {
                    return Err("too few items for a tuple".into());
                }
                let items = self.stack.split_off(self.stack.len() - n);
                if items.iter().any(|v| matches!(v, Value::Mark)) {
                    return Err("a mark inside a tuple".into());
                }
                self.stack.push(Value::Tuple(Rc::new(items)));
            }
            b']' => self.stack.push(Value::List(Rc::new(RefCell::new(vec![])))),
            b'l' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::List(Rc::new(RefCell::new(items))));
            }
            b'}' => self.stack.push(Value::Dict(Rc::new(RefCell::new(vec![])))),
            b'd' => {
                let items = self.pop_mark()?;
                let d = pairs(items)?;
                self.stack.push(Value::Dict(Rc::new(RefCell::new(d))));
            }
            b'a' => {
                let v = self.pop()?;
                match self.top()? {
                    Value::List(l) => l.borrow_mut().push(v),
                    other => return Err(format!("APPEND to {}", other.kind())),
                }
            }
            b'e' => {
                let items = self.pop_mark()?;
                match self.top()? {
                    Value::List(l) => l.borrow_mut().extend(items),
                    other => return Err(format!("APPENDS to {}", other.kind())),
                }
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                set_items(self.top()?, vec![(k, v)])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let kv = pairs(items)?;
                set_items(self.top()?, kv)?;
            }
            b'q' => {
                let i = self.u8()? as u32;
                let v = self.top()?.clone();
                self.memo.insert(i, v);
            }
            b'r' => {
                let i = self.u32()?;
                let v = self.top()?.clone();
                self.memo.insert(i, v);
            }
            0x94 => {
                let i = self.memo.len() as u32;
                let v = self.top()?.clone();
                self.memo.insert(i, v);
            }
            b'h' => {
                let i = self.u8()? as u32;
                self.get(i)?;
            }
            b'j' => {
                let i = self.u32()?;
                self.get(i)?;
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.stack.push(Value::Global(module, name));
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                    _ => return Err("STACK_GLOBAL of non-strings".into()),
                }
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = persistent_load(&pid)?;
                self.stack.push(v);
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = reduce(callable, args)?;
                self.stack.push(v);
            }
            0x81 => {
                let args = self.pop()?;
                let class = self.pop()?;
                let (Value::Global(m, n), Value::Tuple(args)) = (class, args) else {
                    return Err("NEWOBJ needs a class and a tuple".into());
                };
                self.stack.push(Value::Object(Rc::new(Object {
                    class: format!("{m}.{n}"),
                    args: args.as_ref().clone(),
                    state: RefCell::new(None),
                })));
            }
            b'b' => {
                let state = self.pop()?;
                match self.top()? {
                    Value::Object(o) => *o.state.borrow_mut() = Some(state),
                    // Rebuilt tensors and parameters take no state that matters here.
                    Value::Tensor(_) => {}
                    Value::Dict(d) => {
                        let kv = state
                            .dict_items()
                            .ok_or_else(|| "BUILD of a dict with a non-dict state".to_string())?;
                        d.borrow_mut().extend(kv);
                    }
                    other => return Err(format!("BUILD on {}", other.kind())),
                }
            }
            0x8f => self.stack.push(Value::List(Rc::new(RefCell::new(vec![])))), // EMPTY_SET
            0x90 => {
                let items = self.pop_mark()?;
                match self.top()? {
                    Value::List(l) => l.borrow_mut().extend(items),
                    other => return Err(format!("ADDITEMS to {}", other.kind())),
                }
            }
            0x91 => {
                let items = self.pop_mark()?;
                self.stack.push(Value::List(Rc::new(RefCell::new(items))));
            }
            other => {
                return Err(format!(
                    "opcode 0x{other:02x} is not one that torch.save writes; this reader stops here rather than guess"
                ))
            }
        }
        Ok(false)
    }

    fn get(&mut self, i: u32) -> std::result::Result<(), String> {
        let v = self
            .memo
            .get(&i)
            .cloned()
            .ok_or_else(|| format!("memo entry {i} was never stored"))?;
        self.stack.push(v);
        Ok(())
    }
}

fn pairs(items: Vec<Value>) -> std::result::Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("an odd number of items for key/value pairs".into());
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn set_items(target: &mut Value, kv: Vec<(Value, Value)>) -> std::result::Result<(), String> {
    match target {
        Value::Dict(d) => {
            // Keys are compared without looking into containers: a key may be this very dict
            // (a pickle can say so; fuzzing found it), which is borrowed mutably here.
            let mut d = d.borrow_mut();
            for (k, v) in kv {
                // A key set twice keeps its first position and its last value, as in Python.
                match d.iter_mut().find(|(old, _)| same_key(old, &k)) {
                    Some(slot) => slot.1 = v,
                    None => d.push((k, v)),
                }
            }
            Ok(())
        }
        other => Err(format!("SETITEM(S) on {}", other.kind())),
    }
}

/// Whether two dict keys are the same: ints and strings by value; other keys never merge.
fn same_key(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Str(x), Value::Str(y)) => x == y,
        _ => false,
    }
}

/// `('storage', storage_type, key, location, numel)` → a storage.
fn persistent_load(pid: &Value) -> std::result::Result<Value, String> {
    let items = pid
        .items()
        .ok_or_else(|| format!("a persistent id that is {}", pid.kind()))?;
    match items.as_slice() {
        [Value::Str(tag), Value::Global(_, class), Value::Str(key), _location, Value::Int(numel)]
            if tag == "storage" =>
        {
            let dtype = DType::of_storage(class)
                .ok_or_else(|| format!("storage type {class} is not supported"))?;
            if *numel < 0 {
                return Err(format!("storage of {numel} elements"));
            }
            Ok(Value::Storage(key.clone(), dtype, *numel as u64))
        }
        _ => Err(format!(
            "persistent id {} is not a torch storage",
            items.iter().map(Value::kind).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn usizes(v: &Value, what: &str) -> std::result::Result<Vec<usize>, String> {
    v.items()
        .ok_or_else(|| format!("{what} is {}", v.kind()))?
        .into_iter()
        .map(|x| match x {
            Value::Int(i) if i >= 0 => Ok(i as usize),
            other => Err(format!("{what} holds {}", other.show())),
        })
        .collect()
}

/// A call: the tensor rebuilders and the containers `torch.save` uses, else an object.
fn reduce(callable: Value, args: Value) -> std::result::Result<Value, String> {
    let Value::Global(module, name) = &callable else {
        return Err(format!("REDUCE on {}", callable.kind()));
    };
    let args = args
        .items()
        .ok_or_else(|| format!("REDUCE with arguments that are {}", args.kind()))?;
    Ok(match (module.as_str(), name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            let (
                Some(Value::Storage(key, dtype, len)),
                Some(Value::Int(offset)),
                Some(size),
                Some(stride),
            ) = (args.first(), args.get(1), args.get(2), args.get(3))
            else {
                return Err(format!("{name} with unexpected arguments"));
            };
            let shape = usizes(size, "the tensor's size")?;
            let stride = usizes(stride, "the tensor's stride")?;
            if shape.len() != stride.len() {
                return Err("a tensor whose size and stride differ in length".into());
            }
            if *offset < 0 {
                return Err("a negative storage offset".into());
            }
            Value::Tensor(Rc::new(TensorRef {
                storage: key.clone(),
                dtype: *dtype,
                storage_len: *len,
                offset: *offset as u64,
                shape,
                stride,
            }))
        }
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state") => match args.first() {
            Some(t @ Value::Tensor(_)) => t.clone(),
            _ => return Err(format!("{name} of something that is not a tensor")),
        },
        ("collections", "OrderedDict") => {
            let items = match args.first() {
                None => vec![],
                Some(list) => list
                    .items()
                    .ok_or_else(|| "OrderedDict of a non-list".to_string())?
                    .into_iter()
                    .map(|p| match p.items().as_deref() {
                        Some([k, v]) => Ok((k.clone(), v.clone())),
                        _ => Err("OrderedDict item that is not a pair".to_string()),
                    })
                    .collect::<std::result::Result<_, _>>()?,
            };
            Value::Dict(Rc::new(RefCell::new(items)))
        }
        ("__builtin__", "set") | ("builtins", "set") => {
            let items = args.first().and_then(Value::items).unwrap_or_default();
            Value::List(Rc::new(RefCell::new(items)))
        }
        _ => Value::Object(Rc::new(Object {
            class: format!("{module}.{name}"),
            args,
            state: RefCell::new(None),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pickle of `{'a': [1, 2.5, 'x'], 'b': (True, None)}` at protocol 2, by hand.
    #[test]
    fn machine_reads_containers_and_the_memo() {
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        p.extend(b"X\x01\x00\x00\x00a");
        p.extend([b']', b'q', 1, b'(', b'K', 1]);
        p.push(b'G');
        p.extend(2.5f64.to_be_bytes());
        p.extend(b"X\x01\x00\x00\x00x");
        p.extend([b'e']);
        p.extend(b"X\x01\x00\x00\x00b");
        p.extend([0x88, b'N', 0x86]);
        p.extend([b'u', b'.']);
        let v = Machine::new(&p).run().unwrap();
        let a = v.get("a").unwrap().items().unwrap();
        assert!(matches!(a[0], Value::Int(1)));
        assert!(matches!(a[1], Value::Float(f) if f == 2.5));
        assert!(matches!(&a[2], Value::Str(s) if s == "x"));
        let b = v.get("b").unwrap().items().unwrap();
        assert!(matches!(b[0], Value::Bool(true)) && matches!(b[1], Value::None));
    }

    #[test]
    fn unknown_opcodes_and_truncation_name_the_byte() {
        let err = Machine::new(&[0x80, 2, b'i']).run().unwrap_err();
        assert_eq!(err.0, 2);
        assert!(err.1.contains("0x69"), "{}", err.1);
        let err = Machine::new(&[0x80, 2, b'X', 9, 0, 0, 0, b'a'])
            .run()
            .unwrap_err();
        assert!(err.1.contains("truncated"), "{}", err.1);
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/torch")
            .join(name)
    }

    fn expected() -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(fixture("expected.json")).unwrap()).unwrap()
    }

    fn floats(v: &serde_json::Value) -> Vec<f32> {
        fn walk(v: &serde_json::Value, out: &mut Vec<f32>) {
            match v {
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                x => out.push(x.as_f64().unwrap() as f32),
            }
        }
        let mut out = Vec::new();
        walk(v, &mut out);
        out
    }

    /// Files written by real `torch.save` (tests/data/make_torch_fixtures.py).
    #[test]
    fn reads_what_torch_save_writes() {
        let want = expected();
        let (keys, m) = read_keyed_vectors(&fixture("images_by_region.pt")).unwrap();
        let ids: Vec<Key> = want["images_by_region"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| Key::Int(k.as_i64().unwrap()))
            .collect();
        assert_eq!(keys, ids);
        assert_eq!(m.data, floats(&want["images_by_region"]["values"]));
        let (keys, m) = read_keyed_vectors(&fixture("words.ptd")).unwrap();
        assert_eq!(
            keys,
            vec![
                Key::Str("dog".into()),
                Key::Str("cat".into()),
                Key::Str("bench".into())
            ]
        );
        assert_eq!(m.data, floats(&want["words"]["values"]));
        for (file, key) in [
            ("matrix.pt", "matrix"),
            ("matrix_protocol4.pt", "matrix"),
            ("matrix_t_f64.pt", "matrix_t"),
            ("matrix_bf16.pt", "matrix_bf16"),
        ] {
            let m = read_matrix(&fixture(file)).unwrap();
            assert_eq!(m.data, floats(&want[key]), "{file}");
        }
        for file in ["heads_modules.pt", "heads_state_dict.pt"] {
            let (img, txt) = read_heads(&fixture(file)).unwrap();
            assert_eq!(img.weight.data, floats(&want["heads"]["img_head.weight"]));
            assert_eq!(img.bias, floats(&want["heads"]["img_head.bias"]));
            assert_eq!(txt.weight.data, floats(&want["heads"]["txt_head.weight"]));
            assert_eq!(txt.bias, floats(&want["heads"]["txt_head.bias"]));
            assert_eq!((img.weight.rows, img.weight.cols), (4, 6));
        }
    }

    #[test]
    fn wrong_contents_are_named() {
        let err = read_matrix(&fixture("ints.pt")).unwrap_err().to_string();
        assert!(
            err.contains("ints.pt") && err.contains("not floats"),
            "{err}"
        );
        let err = read_heads(&fixture("matrix.pt")).unwrap_err().to_string();
        assert!(err.contains("expected a dict with `img_head`"), "{err}");
        let err = read_keyed_vectors(&fixture("matrix.pt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected a dict of key"), "{err}");
        let err = read_matrix(&fixture("expected.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a PyTorch"), "{err}");
        // A storage cut short.
        let dir = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(fixture("matrix.pt")).unwrap();
        let cut = dir.path().join("cut.pt");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        assert!(read_matrix(&cut).is_err());
    }

    /// The release's own pickles equal the `.npy` files converted from them.
    #[test]
    fn the_release_files_equal_their_npy_values() {
        let release = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/simat-release");
        for tau in ["0.1", "0.01"] {
            let (img, txt) =
                read_heads(&release.join(format!("original/head_clip_t={tau}.pt"))).unwrap();
            for (head, which) in [(&img, "img"), (&txt, "txt")] {
                let w = crate::io::store::read_matrix(
                    &release.join(format!("head_tau{tau}_{which}_head_weight.npy")),
                )
                .unwrap();
                let b = crate::io::store::read_vector(
                    &release.join(format!("head_tau{tau}_{which}_head_bias.npy")),
                )
                .unwrap();
                assert_eq!(head.weight, w, "τ = {tau} {which}");
                assert_eq!(head.bias, b, "τ = {tau} {which}");
            }
        }
        let (keys, m) = read_keyed_vectors(&release.join("original/simat_words_clip.ptd")).unwrap();
        let words: Vec<Key> = std::fs::read_to_string(release.join("clip_vitb32_words.txt"))
            .unwrap()
            .lines()
            .map(|w| Key::Str(w.to_string()))
            .collect();
        assert_eq!(keys, words);
        let npy =
            crate::io::store::read_matrix(&release.join("clip_vitb32_word_vectors.npy")).unwrap();
        assert_eq!(m, npy);
    }

    #[test]
    fn long1_is_twos_complement() {
        let v = Machine::new(&[0x80, 2, 0x8a, 2, 0x00, 0xff, b'.'])
            .run()
            .unwrap();
        assert!(matches!(v, Value::Int(-256)), "{v:?}");
        let v = Machine::new(&[0x80, 2, 0x8a, 5, 0, 0, 0, 0, 1, b'.'])
            .run()
            .unwrap();
        assert!(matches!(v, Value::Int(4294967296)), "{v:?}");
    }
}
