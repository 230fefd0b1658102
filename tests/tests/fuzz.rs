//! Fuzz targets over mutated fixtures: the GGUF header, the safetensors header and config.json,
//! each mutated both structurally (a value set to an extreme: 0, 2^32, 2^63, u64::MAX, a
//! negative number, the wrong type) and as raw bytes, then read the way every command reads a
//! model (describe it, then load it). Nothing may panic or abort; errors are fine.
//!
//! proptest runs `CLO_FUZZ_CASES` cases per target (default 1000, a few seconds in all) and
//! keeps every failing input it ever found in `tests/tests/fuzz.proptest-regressions`, which is
//! committed and replayed first on every run. The process's memory limit is set to 2 GiB, so a
//! size that slips through a check is refused (or would abort), never swapped.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use clo_core::Pretrained;
use clo_core::gguf::{GgufFile, TensorOut, Value, write_gguf};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

fn cases() -> u32 {
    std::env::var("CLO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn config() -> Config {
    clo_core::limits::set_memory_limit(2 << 30);
    Config {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Numbers where size arithmetic breaks.
const EXTREMES: [u64; 12] = [
    0,
    1,
    2,
    3,
    255,
    1 << 16,
    u32::MAX as u64,
    1 << 32,
    1 << 40,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];

fn extreme() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => proptest::sample::select(EXTREMES.to_vec()),
        1 => any::<u64>(),
        1 => 0u64..4096,
    ]
}

/// Reads a model the way the commands do: its description (config and tokenizer), then the
/// whole model onto the CPU. Only panics fail the target.
fn read_model(path: &Path) {
    if Pretrained::summarize(path).is_ok() {
        let _ = Pretrained::load(path, &Device::flex());
    }
}

/// A raw change to a file: bytes overwritten at a position, or the file cut.
#[derive(Debug, Clone)]
enum Raw {
    Byte(usize, u8),
    Word(usize, u64),
    Cut(usize),
}

fn raw(len: usize) -> impl Strategy<Value = Raw> {
    prop_oneof![
        4 => (0..len, any::<u8>()).prop_map(|(i, b)| Raw::Byte(i, b)),
        4 => (0..len, extreme()).prop_map(|(i, w)| Raw::Word(i, w)),
        1 => (0..len).prop_map(Raw::Cut),
    ]
}

fn apply_raw(bytes: &mut Vec<u8>, changes: &[Raw]) {
    for c in changes {
        match *c {
            Raw::Byte(i, b) if i < bytes.len() => bytes[i] = b,
            Raw::Word(i, w) => {
                for (k, b) in w.to_le_bytes().into_iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(i + k) {
                        *slot = b;
                    }
                }
            }
            Raw::Cut(n) => bytes.truncate(n),
            _ => {}
        }
    }
}

// ---- GGUF ----

/// A structural change to a GGUF file.
#[derive(Debug, Clone)]
enum GgufEdit {
    /// Metadata key (by index) set to an integer, a float or a string.
    Int(usize, u64),
    Float(usize, f64),
    Text(usize),
    /// Tensor (by index): a dim, the type id, or the offset (through raw bytes, see below).
    Dim(usize, usize, u64),
    Dims(usize, Vec<u64>),
    Drop(usize),
}

fn gguf_edit() -> impl Strategy<Value = GgufEdit> {
    prop_oneof![
        3 => (any::<usize>(), extreme()).prop_map(|(k, v)| GgufEdit::Int(k, v)),
        1 => (any::<usize>(), prop_oneof![Just(f64::NAN), Just(-1.0), Just(1e300), Just(0.0)])
            .prop_map(|(k, v)| GgufEdit::Float(k, v)),
        1 => any::<usize>().prop_map(GgufEdit::Text),
        2 => (any::<usize>(), 0usize..4, extreme()).prop_map(|(t, d, v)| GgufEdit::Dim(t, d, v)),
        1 => (any::<usize>(), proptest::collection::vec(extreme(), 0..6))
            .prop_map(|(t, d)| GgufEdit::Dims(t, d)),
        1 => any::<usize>().prop_map(GgufEdit::Drop),
    ]
}

fn gguf_fixture() -> (Vec<(String, Value)>, Vec<TensorOut>, Vec<u8>) {
    let path = fixtures().join("gguf/spm-llama.gguf");
    let file = GgufFile::read(&path).unwrap();
    let meta = file
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let tensors = file
        .tensors
        .iter()
        .map(|t| TensorOut {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty,
            bytes: file.tensor_bytes(t).to_vec(),
        })
        .collect();
    (meta, tensors, std::fs::read(&path).unwrap())
}

fn edited_gguf(edits: &[GgufEdit]) -> Vec<u8> {
    let (mut meta, mut tensors, _) = gguf_fixture();
    for e in edits {
        match e {
            GgufEdit::Int(k, v) => {
                let i = k % meta.len();
                meta[i].1 = Value::U64(*v);
            }
            GgufEdit::Float(k, v) => {
                let i = k % meta.len();
                meta[i].1 = Value::F64(*v);
            }
            GgufEdit::Text(k) => {
                let i = k % meta.len();
                meta[i].1 = Value::String("\u{0}gguf".into());
            }
            GgufEdit::Dim(t, d, v) => {
                let n = tensors.len();
                if let Some(t) = tensors.get_mut(t % n.max(1))
                    && !t.dims.is_empty()
                {
                    let d = d % t.dims.len();
                    t.dims[d] = *v;
                }
            }
            GgufEdit::Dims(t, dims) => {
                let n = tensors.len();
                if let Some(t) = tensors.get_mut(t % n.max(1)) {
                    t.dims.clone_from(dims);
                }
            }
            GgufEdit::Drop(t) => {
                if !tensors.is_empty() {
                    let i = t % tensors.len();
                    tensors.remove(i);
                }
            }
        }
    }
    let mut bytes = Vec::new();
    write_gguf(&mut bytes, &meta, &tensors).unwrap();
    bytes
}

proptest! {
    #![proptest_config(config())]

    /// GGUF metadata and tensor descriptors set to extreme values.
    #[test]
    fn gguf_structure(edits in proptest::collection::vec(gguf_edit(), 1..4)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, edited_gguf(&edits)).unwrap();
        read_model(&path);
    }

    /// GGUF bytes overwritten or cut, in the header (the first 4 KiB, where the counts, the
    /// architecture's sizes and the first descriptors are) or anywhere.
    #[test]
    fn gguf_bytes(
        head in proptest::collection::vec(raw(4096), 1..6),
        any_place in proptest::collection::vec(raw(462_208), 0..3),
    ) {
        let (_, _, mut bytes) = gguf_fixture();
        apply_raw(&mut bytes, &head);
        apply_raw(&mut bytes, &any_place);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, &bytes).unwrap();
        let _ = GgufFile::parse(&path, bytes);
        read_model(&path);
    }
}

// ---- safetensors ----

/// A copy of fixture model `name`.
fn model_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixtures().join("models").join(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}

/// A change to one entry of the safetensors header.
#[derive(Debug, Clone)]
enum HeaderEdit {
    Shape(usize, Vec<u64>),
    Offsets(usize, u64, u64),
    Dtype(usize, &'static str),
    Junk(usize),
}

fn header_edit() -> impl Strategy<Value = HeaderEdit> {
    prop_oneof![
        2 => (any::<usize>(), proptest::collection::vec(extreme(), 0..5))
            .prop_map(|(e, s)| HeaderEdit::Shape(e, s)),
        2 => (any::<usize>(), extreme(), extreme()).prop_map(|(e, a, b)| HeaderEdit::Offsets(e, a, b)),
        1 => (any::<usize>(), proptest::sample::select(vec!["F32", "F16", "BF16", "I64", "U8", "Q4", ""]))
            .prop_map(|(e, d)| HeaderEdit::Dtype(e, d)),
        1 => any::<usize>().prop_map(HeaderEdit::Junk),
    ]
}

/// The fixture's safetensors file with its JSON header edited (the data as it was).
fn edited_safetensors(bytes: &[u8], edits: &[HeaderEdit]) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let names: Vec<String> = header
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    for e in edits {
        let pick = |i: &usize| names[i % names.len()].clone();
        if let HeaderEdit::Shape(i, _) | HeaderEdit::Offsets(i, _, _) | HeaderEdit::Dtype(i, _) = e
            && !header[&pick(i)].is_object()
        {
            header[&pick(i)] = serde_json::json!({});
        }
        match e {
            HeaderEdit::Shape(i, shape) => {
                header[&pick(i)]["shape"] = serde_json::json!(shape);
            }
            HeaderEdit::Offsets(i, a, b) => {
                header[&pick(i)]["data_offsets"] = serde_json::json!([a, b]);
            }
            HeaderEdit::Dtype(i, d) => header[&pick(i)]["dtype"] = serde_json::json!(d),
            HeaderEdit::Junk(i) => header[&pick(i)] = serde_json::json!([1, "x", null]),
        }
    }
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

proptest! {
    #![proptest_config(config())]

    /// safetensors header entries with extreme shapes, offsets and dtypes.
    #[test]
    fn safetensors_structure(edits in proptest::collection::vec(header_edit(), 1..4)) {
        let dir = model_copy("qwen2");
        let path = dir.path().join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, edited_safetensors(&bytes, &edits)).unwrap();
        let _ = clo_core::weights::read_header(&path);
        read_model(dir.path());
    }

    /// safetensors bytes overwritten or cut: the header length and the JSON header.
    #[test]
    fn safetensors_bytes(changes in proptest::collection::vec(raw(2048), 1..6)) {
        let dir = model_copy("qwen2");
        let path = dir.path().join("model.safetensors");
        let mut bytes = std::fs::read(&path).unwrap();
        apply_raw(&mut bytes, &changes);
        std::fs::write(&path, &bytes).unwrap();
        let _ = clo_core::weights::read_header(&path);
        let _ = clo_core::weights::parse_header(&path, &bytes);
        read_model(dir.path());
    }
}

// ---- config.json ----

/// The fields of config.json that become sizes or choices.
const FIELDS: [&str; 22] = [
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "sliding_window",
    "max_window_layers",
    "use_sliding_window",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "model_type",
    "hidden_act",
    "sliding_window_pattern",
    "layer_types",
    "query_pre_attn_scalar",
];

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        4 => extreme().prop_map(|v| json!(v)),
        1 => any::<i64>().prop_map(|v| json!(v)),
        1 => prop_oneof![Just(-1.0), Just(0.0), Just(1e300), Just(0.5)].prop_map(|v| json!(v)),
        1 => Just(json!(null)),
        1 => Just(json!("gemma2")),
        1 => Just(json!({"rope_type": "llama3", "factor": 0, "low_freq_factor": 1, "high_freq_factor": 1, "original_max_position_embeddings": 0})),
        1 => Just(json!([0, 1, 2])),
        1 => Just(json!(["sliding_attention"])),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// config.json fields set to extreme values and wrong types, for every family.
    #[test]
    fn config_json(
        family in proptest::sample::select(vec!["llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text"]),
        edits in proptest::collection::vec((proptest::sample::select(FIELDS.to_vec()), json_value()), 1..4),
    ) {
        let dir = model_copy(family);
        let path = dir.path().join("config.json");
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (field, value) in &edits {
            c[*field] = value.clone();
        }
        std::fs::write(&path, c.to_string()).unwrap();
        let _ = clo_core::models::ModelConfig::from_value(&path, c);
        read_model(dir.path());
    }
}
