//! Request and response types of `clo serve`'s JSON API, shared by the server and the web UI
//! (which depends on clo-core). Serde only: nothing here touches models or files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::eval::report::{Estimate, ReportTable};

/// Every error the API returns: `{"error": {"message", "type"}}` (OpenAI's shape, so OpenAI
/// clients show the message).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    /// `invalid_request`, `unauthorized`, `not_found`, `conflict`, `unsupported`,
    /// `payload_too_large`, `method_not_allowed`, `unavailable`, `internal`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// A model the server can use: a directory given with `--model`, one under `WORKDIR/models/`,
/// or a finished run (`run:NAME`, its best weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    /// `dir` or `run`.
    pub source: String,
    pub model_type: Option<String>,
    pub num_parameters: Option<usize>,
    /// Why the model cannot be used (its config, tokenizer or weights do not read), when it
    /// cannot; the model is still listed so that the others are not hidden.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A quadruple file under `WORKDIR/datasets/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub name: String,
    pub records: usize,
    pub bytes: u64,
    /// The `OUT.summary.json` of `clo prepare`, when beside the file.
    pub summary: Option<serde_json::Value>,
}

/// One quadruple with the language each side was identified as.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuadView {
    pub line: usize,
    pub id: String,
    pub lang: String,
    pub x_en: String,
    pub y_en: String,
    pub x_tgt: String,
    pub y_tgt: String,
    /// Detected language of x_en, y_en, x_tgt, y_tgt (`null`: undetermined or unsupported).
    pub detected: [Option<String>; 4],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetPage {
    pub name: String,
    pub offset: usize,
    pub total: usize,
    pub records: Vec<QuadView>,
}

/// `POST /api/runs`: a run to create. Omitted settings take the paper's defaults (those of
/// `clo train`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Run name (letters, digits, `-`, `_`, `.`); a fresh one is made when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// A model name from `GET /api/models`.
    pub model: String,
    /// A dataset name from `GET /api/datasets`.
    pub dataset: String,
    /// The run's settings, typed: any key of `clo train`'s `RUN/config.toml` (method,
    /// trainable, lr, steps, beta, ...); omitted keys take the paper's defaults, unknown keys are
    /// refused by name. `model` and `data` are not set here but by `model` and `dataset`.
    #[serde(default)]
    pub config: crate::train::RunConfig,
    /// Data parallelism: devices as `clo train --devices` takes them (`wgpu:0,wgpu:1`, `all`);
    /// absent: the server's `--device`. `GET /api/devices` lists this machine's devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<String>,
}

/// `GET /api/models/NAME/files`: a file of a model directory, as the browser engine fetches it
/// from `GET /api/models/NAME/files/FILE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    pub name: String,
    pub size: u64,
    /// Last modification, seconds since the Unix epoch: with the size, what tells a browser's
    /// cached copy from a newer file.
    #[serde(default)]
    pub modified: u64,
}

/// `GET /api/devices`: what a run may train on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceList {
    /// The server's `--device` (a run without `devices` trains there).
    pub default: String,
    /// Device specs of this machine (`cpu`, `wgpu:cpu`, `wgpu:0`, ...), as `devices` takes them.
    pub available: Vec<String>,
    /// What each device is (`clo devices`), in the order of `available`.
    #[serde(default)]
    pub details: Vec<DeviceInfo>,
}

/// One device of this machine as `clo devices` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The `--device` value that selects it (`cpu`, `wgpu:0`, `wgpu:integrated:0`, `wgpu:cpu`).
    pub spec: String,
    pub name: String,
    /// `cpu` (Burn's Flex backend), `discrete`, `integrated`, `software` (a CPU adapter such as
    /// lavapipe), `virtual` or `other`.
    pub kind: String,
    /// `flex` for the CPU; else the graphics API: `vulkan`, `metal`, `dx12`, `gl` or
    /// `browser-webgpu`.
    pub backend: String,
    /// The driver as the API names it (empty where it does not).
    #[serde(default)]
    pub driver: String,
    /// Memory in bytes where the API reports it: the CPU's usable memory (physical, cgroup or
    /// `ulimit -v`, the least); wgpu reports none for GPUs.
    pub memory_bytes: Option<u64>,
    /// Half-precision arithmetic in shaders (`--dtype f16` computes in it).
    pub shader_f16: bool,
    /// The largest buffer and storage binding in bytes (GPUs).
    pub max_buffer_bytes: Option<u64>,
    pub max_storage_binding_bytes: Option<u64>,
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Queued,
    Running,
    Finished,
    Failed,
    Cancelled,
    /// The server stopped while it ran; its newest checkpoint is kept.
    Interrupted,
}

impl RunState {
    pub fn is_done(self) -> bool {
        !matches!(self, RunState::Queued | RunState::Running)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub name: String,
    pub state: RunState,
    pub model: String,
    pub dataset: String,
    pub method: String,
    pub steps_done: usize,
    pub error: Option<String>,
    /// `RUN/summary.json` once finished.
    pub summary: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// `best` or `step-00000042`.
    pub name: String,
    pub step: Option<usize>,
}

/// `POST /api/runs/{name}/export`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// `best`, `last` or a checkpoint name [default: best].
    #[serde(default)]
    pub from: Option<String>,
    /// Also register the export as a model named this (under `WORKDIR/models/`).
    #[serde(default)]
    pub model_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportResponse {
    pub model: String,
    pub from: String,
}

/// One eval's `results.json` with where it lies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalInfo {
    /// Path under the work directory.
    pub path: String,
    pub results: serde_json::Value,
}

/// OpenAI chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// `POST /v1/chat/completions` (the subset clo honours; other fields are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default, alias = "max_completion_tokens")]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub seed: Option<u64>,
}

/// `POST /api/langid`: which language a text is in (the playground's reply badges).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LangIdRequest {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LangIdResponse {
    /// ISO 639-1 code (or `toy`); `null` when undetermined.
    pub lang: Option<String>,
}

/// `GET /api/evals/report`: the files of `clo eval report` over the work directory's evals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// `report.md` and the SVG charts it links, by file name; empty when there are no evals.
    pub files: BTreeMap<String, String>,
    /// Why the report is empty, when it is.
    pub message: Option<String>,
    /// The report's tables as typed numbers (what the evals page draws its charts from).
    #[serde(default)]
    pub tables: Vec<crate::eval::report::ReportTable>,
}

/// One line of `RUN/metrics.jsonl` (defined with training, whose log it is).
pub use crate::train::config::{Form as SettingForm, Section as SettingSection, SettingInfo};
pub use crate::train::metrics::StepMetrics;
