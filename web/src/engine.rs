//! The in-browser engine: clo-core on the user's GPU through WebGPU (Burn's wgpu backend, WGSL).
//!
//! A model directory (config.json, safetensors, tokenizer.json, tokenizer_config.json or
//! chat_template.jinja) is downloaded from `clo serve` (`GET /api/models/NAME/files/FILE`) or
//! from any URL of such a directory, loaded onto the GPU, and answers chats with the KV cache,
//! every token read back with an awaited read (a blocking GPU read panics in a browser).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::rc::Rc;

use burn::module::Module;
use burn::tensor::Device;
use clo_core::Pretrained;
use clo_core::generate::{SamplingConfig, StopReason, TextStream, fit_to_context, generate_async};
use js_sys::{Function, Promise, Reflect};
use serde::{Deserialize, Serialize};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::types::ChatMessage;

mod files;

use self::files::{base_url, fetch_bytes, file_list};

/// A model on the GPU.
pub struct Loaded {
    pub name: String,
    pub lm: Pretrained,
    /// What it was loaded from: a model name of `clo serve`, a URL or a picked folder's name
    /// (the base a downloaded adapter names).
    pub base: String,
    /// The files of its directory other than the weights (config, tokenizer, template).
    pub files: BTreeMap<String, Vec<u8>>,
    /// The settings it was fine-tuned with in this page, if it was.
    pub tuned: Option<clo_core::train::RunConfig>,
}

thread_local! {
    static DEVICE: RefCell<Option<Device>> = const { RefCell::new(None) };
    static MODEL: RefCell<Option<Rc<Loaded>>> = const { RefCell::new(None) };
}

/// What `clo.load` resolves to.
#[derive(Debug, Clone, Serialize)]
pub struct LoadInfo {
    pub name: String,
    pub parameters: usize,
    pub vocab_size: usize,
    pub device: String,
}

fn js_err(e: JsValue) -> String {
    e.as_string()
        .or_else(|| {
            Reflect::get(&e, &"message".into())
                .ok()
                .and_then(|m| m.as_string())
        })
        .unwrap_or_else(|| format!("{e:?}"))
}

/// The WebGPU adapter's largest storage buffer binding, in bytes; an error that says so when
/// the browser has no WebGPU.
async fn storage_limit() -> Result<f64, String> {
    let window = web_sys::window().ok_or("no window")?;
    let navigator = window.navigator();
    let gpu = Reflect::get(&navigator, &"gpu".into()).map_err(js_err)?;
    if gpu.is_undefined() || gpu.is_null() {
        return Err("this browser has no WebGPU (navigator.gpu is missing): use a browser with WebGPU (Chrome/Edge 113+, Safari 26+, Firefox 141+ on Windows), or the server engine".into());
    }
    let request: Function = Reflect::get(&gpu, &"requestAdapter".into())
        .map_err(js_err)?
        .dyn_into()
        .map_err(|_| "navigator.gpu.requestAdapter is not a function".to_string())?;
    let promise: Promise = request
        .call0(&gpu)
        .map_err(js_err)?
        .dyn_into()
        .map_err(|_| "requestAdapter did not return a promise".to_string())?;
    let adapter = JsFuture::from(promise).await.map_err(js_err)?;
    if adapter.is_null() || adapter.is_undefined() {
        return Err("WebGPU found no GPU adapter (navigator.gpu.requestAdapter() gave null): the GPU may be blocklisted; use the server engine".into());
    }
    let limits = Reflect::get(&adapter, &"limits".into()).map_err(js_err)?;
    Reflect::get(&limits, &"maxStorageBufferBindingSize".into())
        .map_err(js_err)?
        .as_f64()
        .ok_or_else(|| "the adapter reports no maxStorageBufferBindingSize".to_string())
}

/// The WebGPU device (set up once, asynchronously).
pub async fn device() -> Result<Device, String> {
    if let Some(d) = DEVICE.with(|d| d.borrow().clone()) {
        return Ok(d);
    }
    storage_limit().await?;
    let device = Device::wgpu_options()
        .init_async()
        .await
        .map_err(|e| format!("setting up WebGPU: {e}"))?;
    DEVICE.with(|d| *d.borrow_mut() = Some(device.clone()));
    Ok(device)
}

/// The largest tensor of the safetensors files, in bytes once in f32 (what clo computes in), and
/// its name.
fn largest_tensor(files: &BTreeMap<String, Vec<u8>>, root: &Path) -> Result<(String, f64), String> {
    let mut best = (String::new(), 0f64);
    for (name, bytes) in files.iter().filter(|(n, _)| n.ends_with(".safetensors")) {
        let header =
            clo_core::weights::parse_header(&root.join(name), bytes).map_err(|e| e.to_string())?;
        for (tensor, (_, shape)) in header {
            let size = shape.iter().product::<usize>() as f64 * 4.0;
            if size > best.1 {
                best = (tensor, size);
            }
        }
    }
    Ok(best)
}

/// A byte count for messages (B, KiB, MiB, GiB).
fn bytes(n: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n:.0} B")
    } else {
        format!("{v:.1} {} ({n:.0} bytes)", UNITS[unit])
    }
}

/// The WebGPU device and the largest tensor a model may hold, in bytes: the adapter's
/// `maxStorageBufferBindingSize`, or `max_buffer_bytes` when lower, with the limit's name.
async fn gpu_and_limit(
    max_buffer_bytes: Option<f64>,
) -> Result<(Device, f64, &'static str), String> {
    let device = device().await?;
    let adapter_limit = storage_limit().await?;
    Ok(match max_buffer_bytes {
        Some(cap) if cap < adapter_limit => (device, cap, "maxBufferBytes given to clo.load"),
        _ => (
            device,
            adapter_limit,
            "this GPU's maxStorageBufferBindingSize",
        ),
    })
}

/// Downloads a model and puts it on the GPU; `on_progress(bytes done, bytes total)`.
/// `max_buffer_bytes` caps the largest tensor below the adapter's own limit (a page that keeps
/// GPU memory for other work).
pub async fn load(
    source: &str,
    max_buffer_bytes: Option<f64>,
    on_progress: impl Fn(f64, f64),
) -> Result<LoadInfo, String> {
    let (device, limit, limit_name) = gpu_and_limit(max_buffer_bytes).await?;
    let base = base_url(source);
    let list = file_list(source, &base).await?;
    let total: f64 = list.iter().filter_map(|f| f.size).map(|s| s as f64).sum();
    let mut files = BTreeMap::new();
    let mut done = 0f64;
    for want in &list {
        let url = format!("{base}/{}", want.name);
        let key = match &want.version {
            Some(v) => format!("{url}?v={v}"),
            None => url.clone(),
        };
        match fetch_bytes(&url, Some(&key)).await? {
            Some(bytes) => {
                done += want.size.map_or(bytes.len() as f64, |s| s as f64);
                on_progress(done, total.max(done));
                files.insert(want.name.clone(), bytes);
            }
            None if want.needed => return Err(format!("{url} is missing (HTTP 404)")),
            None => {}
        }
    }
    // Shards named by an index (another host: fetched now).
    if !files.contains_key("model.safetensors")
        && let Some(index) = files.get("model.safetensors.index.json")
    {
        let index: serde_json::Value = serde_json::from_slice(index)
            .map_err(|e| format!("{base}/model.safetensors.index.json: {e}"))?;
        let mut shards: Vec<String> = index["weight_map"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        shards.retain(|s| !files.contains_key(s));
        for shard in shards {
            let url = format!("{base}/{shard}");
            let bytes = fetch_bytes(&url, Some(&url))
                .await?
                .ok_or(format!("{url} is missing (HTTP 404)"))?;
            done += bytes.len() as f64;
            on_progress(done, total.max(done));
            files.insert(shard, bytes);
        }
    }
    install(source, &base, files, limit, limit_name, &device)
}

/// The bytes of a file the user picked.
pub async fn file_bytes(file: &web_sys::File) -> Result<Vec<u8>, String> {
    let buffer = JsFuture::from(file.array_buffer())
        .await
        .map_err(|e| format!("reading {}: {}", file.name(), js_err(e)))?;
    Ok(js_sys::Uint8Array::new(&buffer).to_vec())
}

/// Loads a model directory the user picked on disk (`<input type=file webkitdirectory>`): the
/// model files at its top level are read, the rest left; the folder's name names the model.
pub async fn load_files(
    files: &[web_sys::File],
    max_buffer_bytes: Option<f64>,
) -> Result<LoadInfo, String> {
    let mut read = BTreeMap::new();
    let mut folder = String::from("local model");
    for file in files {
        let path = Reflect::get(file, &"webkitRelativePath".into())
            .ok()
            .and_then(|p| p.as_string())
            .unwrap_or_default();
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() > 2 {
            continue;
        }
        if let [dir, _] = parts[..] {
            folder = dir.to_string();
        }
        if clo_core::load::files::is_model_file(&file.name()) {
            read.insert(file.name(), file_bytes(file).await?);
        }
    }
    load_picked(&folder, read, max_buffer_bytes).await
}

/// Loads a model directory whose files are in memory (`name`: the folder's name).
async fn load_picked(
    name: &str,
    files: BTreeMap<String, Vec<u8>>,
    max_buffer_bytes: Option<f64>,
) -> Result<LoadInfo, String> {
    let (device, limit, limit_name) = gpu_and_limit(max_buffer_bytes).await?;
    for needed in ["config.json", "tokenizer.json"] {
        if !files.contains_key(needed) {
            return Err(format!(
                "the picked folder {name} has no {needed}: pick a Hugging Face model directory (config.json, model.safetensors, tokenizer.json)"
            ));
        }
    }
    install(name, name, files, limit, limit_name, &device)
}

/// Puts a model directory's files on the GPU as the loaded model, once its largest tensor is
/// known to fit the GPU's buffers.
fn install(
    name: &str,
    base: &str,
    mut files: BTreeMap<String, Vec<u8>>,
    limit: f64,
    limit_name: &str,
    device: &Device,
) -> Result<LoadInfo, String> {
    let root = Path::new(base);
    let (tensor, size) = largest_tensor(&files, root)?;
    if size > limit {
        return Err(format!(
            "tensor {tensor} takes {} in f32, more than the largest GPU buffer allowed ({limit_name}: {}): this model cannot run in this browser; use the server engine",
            bytes(size),
            bytes(limit)
        ));
    }
    let lm = Pretrained::from_memory(root, &files, device).map_err(|e| e.to_string())?;
    let info = LoadInfo {
        name: name.to_string(),
        parameters: lm.config.decoder.num_parameters(),
        vocab_size: lm.config.decoder.vocab_size,
        device: "webgpu".into(),
    };
    files.retain(|f, _| !f.ends_with(".safetensors") && !f.ends_with(".safetensors.index.json"));
    MODEL.with(|m| {
        *m.borrow_mut() = Some(Rc::new(Loaded {
            name: name.to_string(),
            lm,
            base: name.to_string(),
            files,
            tuned: None,
        }))
    });
    Ok(info)
}

/// The loaded model, if any.
pub fn loaded() -> Option<Rc<Loaded>> {
    MODEL.with(|m| m.borrow().clone())
}

/// A chat request of `clo.chat.completions.create` (OpenAI's fields clo honours).
#[derive(Debug, Clone, Deserialize)]
pub struct ChatCall {
    pub messages: Vec<ChatMessage>,
    #[serde(default, alias = "max_completion_tokens")]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
}

/// A finished answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub text: String,
    pub ids: Vec<u32>,
    pub stop: StopReason,
    pub prompt_tokens: usize,
    pub model: String,
}

/// Answers `call` with the loaded model; `on_text` gets each new piece of text (decoded from
/// all ids so far, so a character split across tokens goes out once complete).
pub async fn chat(call: &ChatCall, mut on_text: impl FnMut(&str)) -> Result<Answer, String> {
    let loaded = loaded().ok_or("no model is loaded: call clo.load(...) first")?;
    let lm = &loaded.lm;
    if !call.messages.iter().any(|m| m.role == "user") {
        return Err("messages holds no user message".into());
    }
    let mut config =
        SamplingConfig::from_request(call.temperature, call.top_p, call.seed, call.max_tokens)
            .map_err(|e| e.to_string())?;
    let conversation: Vec<(&str, &str)> = call
        .messages
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect();
    let prompt = lm
        .tokenizer
        .chat_ids(&conversation)
        .map_err(|e| e.to_string())?;
    config.max_new_tokens = fit_to_context(
        "messages",
        prompt.len(),
        config.max_new_tokens,
        lm.context(),
        None,
    )
    .map_err(|e| e.to_string())?;
    let mut stream = TextStream::default();
    let out = generate_async(
        &lm.model,
        &prompt,
        lm.tokenizer.eos_ids(),
        &config,
        &lm.device,
        |t| {
            if let Some(piece) = stream.push(&lm.tokenizer, t) {
                on_text(&piece);
            }
            ControlFlow::Continue(())
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let (text, rest) = stream.finish(&lm.tokenizer, &out.ids);
    if let Some(piece) = rest {
        on_text(&piece);
    }
    Ok(Answer {
        text,
        ids: out.ids,
        stop: out.stop,
        prompt_tokens: prompt.len(),
        model: loaded.name.clone(),
    })
}

/// `clo.train`'s options: the run settings a browser training takes (`clo train`'s names and
/// defaults), and the data: quadruples, or the URL of a JSONL file of them.
#[derive(Debug, Clone, Deserialize)]
pub struct TrainCall {
    pub data: serde_json::Value,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub trainable: Option<String>,
    #[serde(default)]
    pub steps: Option<usize>,
    #[serde(default)]
    pub lr: Option<f64>,
    #[serde(default)]
    pub batch_size: Option<usize>,
    #[serde(default)]
    pub beta: Option<f64>,
    #[serde(default)]
    pub lambda: Option<f64>,
    #[serde(default)]
    pub lora_rank: Option<usize>,
    #[serde(default)]
    pub val_fraction: Option<f64>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub max_len: Option<usize>,
}

/// The quadruples of `data`: an array of them, or a URL of a JSONL file.
async fn quadruples(
    data: &serde_json::Value,
) -> Result<Vec<clo_core::train::data::Quadruple>, String> {
    use clo_core::train::data::{quadruple_of, quadruples_from_text};
    match data {
        serde_json::Value::String(url) => {
            let bytes = fetch_bytes(url, None)
                .await?
                .ok_or(format!("{url} is missing (HTTP 404)"))?;
            let text = String::from_utf8(bytes).map_err(|_| format!("{url} is not UTF-8 text"))?;
            quadruples_from_text(Path::new(url), &text).map_err(|e| e.to_string())
        }
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                quadruple_of(Path::new("data"), i + 1, v.clone()).map_err(|e| e.to_string())
            })
            .collect(),
        _ => Err("data: give an array of quadruples or the URL of a JSONL file of them".into()),
    }
}

/// Fine-tunes the loaded model in this browser: the reference pass, then every step with its
/// `metrics.jsonl` line passed to `on_step`. The trained model replaces the loaded one (chat
/// then answers with it). Resolves to the last line.
pub async fn train(
    call: &TrainCall,
    mut on_step: impl FnMut(&clo_core::train::StepMetrics),
    cancelled: impl Fn() -> bool,
) -> Result<clo_core::train::StepMetrics, String> {
    use clo_core::train::RunConfig;
    let loaded = loaded().ok_or("no model is loaded: call clo.load(...) first")?;
    let quads = quadruples(&call.data).await?;
    let mut config = RunConfig {
        model: loaded.name.clone().into(),
        data: "data".into(),
        ..RunConfig::default()
    };
    if let Some(m) = &call.method {
        config.method = m.parse().map_err(|e: clo_core::CoreError| e.to_string())?;
    }
    if let Some(t) = &call.trainable {
        config.trainable = t.parse().map_err(|e: clo_core::CoreError| e.to_string())?;
    }
    config.steps = call.steps.or(config.steps);
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = call.$f { config.$f = v; } )* };
    }
    set!(
        lr,
        batch_size,
        beta,
        lambda,
        lora_rank,
        val_fraction,
        seed,
        max_len
    );
    let lm = &loaded.lm;
    let mut session = clo_core::train::session::Session::new(
        &lm.model,
        &lm.tokenizer,
        &quads,
        config.clone(),
        &lm.device,
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut last = None;
    while !cancelled() {
        let started = js_sys::Date::now();
        let Some(mut line) = session.step().await.map_err(|e| e.to_string())? else {
            break;
        };
        let seconds = (js_sys::Date::now() - started) / 1000.0;
        line.tokens_per_s = line.tokens as f64 / seconds.max(1e-3);
        on_step(&line);
        last = Some(line);
    }
    let tuned = Pretrained {
        dir: lm.dir.clone(),
        config: lm.config.clone(),
        model: session.model().valid(),
        tokenizer: lm.tokenizer.clone(),
        device: lm.device.clone(),
    };
    let name = format!("{}+{}", loaded.name, config.method.name());
    MODEL.with(|m| {
        *m.borrow_mut() = Some(Rc::new(Loaded {
            name,
            lm: tuned,
            base: loaded.base.clone(),
            files: loaded.files.clone(),
            tuned: Some(config.clone()),
        }))
    });
    last.ok_or_else(|| "the training had no step (steps = 0?)".to_string())
}

/// The PEFT adapter of the model tuned in this page with `trainable: "lora"`: the contents of
/// `adapter_config.json` and the bytes of `adapter_model.safetensors`, as `clo export --peft`
/// writes them (native `clo` reads them with `--adapter`).
pub async fn export_adapter() -> Result<(serde_json::Value, Vec<u8>), String> {
    use clo_core::load::peft::{AdapterConfig, adapter_safetensors};
    let loaded = loaded().ok_or("no model is loaded: call clo.load(...) first")?;
    let config = loaded.tuned.as_ref().ok_or(
        "the loaded model was not fine-tuned in this page: call clo.train({trainable: \"lora\", ...}) first",
    )?;
    if config.trainable != clo_core::train::TrainableKind::Lora {
        return Err(format!(
            "the model was tuned with trainable \"{}\": a PEFT adapter needs trainable \"lora\"; download the whole model instead (clo.exportModel())",
            config.trainable.name()
        ));
    }
    let host = clo_core::export::copy_to_device(&loaded.lm.model, &Device::flex())
        .await
        .map_err(|e| e.to_string())?;
    let tensors = clo_core::export::lora_tensors(&host, Path::new(&loaded.name))
        .map_err(|e| e.to_string())?;
    let bytes = adapter_safetensors(&tensors).map_err(|e| e.to_string())?;
    let adapter = AdapterConfig {
        base: loaded.base.clone(),
        rank: config.lora_rank,
        alpha: config.lora_alpha,
        rslora: false,
        targets: config.lora_targets.clone(),
    };
    Ok((adapter.to_json(), bytes))
}

/// The loaded model (LoRA merged) as a Hugging Face model directory, file name to bytes:
/// `model.safetensors` (f32), `config.json` and the tokenizer files it was loaded with.
pub async fn export_model() -> Result<BTreeMap<String, Vec<u8>>, String> {
    let loaded = loaded().ok_or("no model is loaded: call clo.load(...) first")?;
    let host = clo_core::export::copy_to_device(&loaded.lm.model, &Device::flex())
        .await
        .map_err(|e| e.to_string())?
        .materialize();
    let weights = clo_core::export::safetensors_bytes(&host, &loaded.lm.config.decoder)
        .map_err(|e| e.to_string())?;
    let mut config: serde_json::Value = loaded
        .files
        .get("config.json")
        .and_then(|b| serde_json::from_slice(b).ok())
        .ok_or("the loaded model's config.json is not JSON")?;
    clo_core::export::as_f32_config(&mut config);
    let mut out = BTreeMap::new();
    out.insert("model.safetensors".to_string(), weights);
    out.insert(
        "config.json".to_string(),
        serde_json::to_vec_pretty(&config).map_err(|e| e.to_string())?,
    );
    for name in clo_core::export::TOKENIZER_FILES {
        if let Some(bytes) = loaded.files.get(name) {
            out.insert(name.to_string(), bytes.clone());
        }
    }
    Ok(out)
}

/// Log-probabilities of responses under the loaded model, as `clo score` computes them (its
/// output lines, in order); `chat`: text prompts in the chat template.
pub async fn score(
    records: &[clo_core::score::ScoreRecord],
    chat: bool,
) -> Result<Vec<clo_core::score::Score>, String> {
    let loaded = loaded().ok_or("no model is loaded: call clo.load(...) first")?;
    let lm = &loaded.lm;
    let vocab = lm.config.decoder.vocab_size;
    let mut pairs = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        let pair = record
            .to_pair(&lm.tokenizer, chat, vocab)
            .map_err(|e| format!("record {i}: {e}"))?;
        if pair.prompt.len() + pair.response.len() > lm.context() {
            return Err(format!(
                "record {i}: prompt and response take {} tokens, more than the model's context of {}",
                pair.prompt.len() + pair.response.len(),
                lm.context()
            ));
        }
        pairs.push(pair);
    }
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(8) {
        out.extend(
            clo_core::score::score_batch_async(&lm.model, chunk, &lm.device)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(out)
}
