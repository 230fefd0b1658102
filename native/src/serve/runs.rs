//! Training runs as background jobs: one at a time on the server's device, queued in order,
//! persisted in `WORKDIR/runs/NAME/` so that a restarted server lists them (a run that was
//! running when the server stopped becomes `interrupted`; queued ones are queued again).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use clo_core::api::{
    CheckpointInfo, DeviceList, ExportRequest, ExportResponse, RunInfo, RunRequest, RunState,
};
use clo_core::train::checkpoint::RunDir;
use clo_core::train::{Outcome, Progress, RunConfig, TrainOptions, train};
use futures_util::stream::Stream;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult, JsonBody, Shared, check_name};

#[derive(Default)]
pub struct Jobs {
    inner: Mutex<Inner>,
    wake: Condvar,
    /// Per queued or running run, the channel its steps are announced on as they happen.
    live: Mutex<HashMap<String, tokio::sync::broadcast::Sender<Live>>>,
}

/// What a run announces to its SSE subscribers.
#[derive(Debug, Clone)]
pub enum Live {
    /// A `metrics.jsonl` line (without its newline), sent once it is written.
    Metric(String),
    /// The run ended (finished, cancelled, failed).
    End(RunState),
}

impl Jobs {
    /// The channel of a queued or running run (made on first use).
    pub fn channel(&self, name: &str) -> tokio::sync::broadcast::Sender<Live> {
        self.live
            .lock()
            .expect("live lock")
            .entry(name.to_string())
            .or_insert_with(|| tokio::sync::broadcast::channel(4096).0)
            .clone()
    }

    /// A subscription to a run's channel, when the run is queued or running.
    fn subscribe(&self, name: &str) -> Option<tokio::sync::broadcast::Receiver<Live>> {
        let live = self.live.lock().expect("live lock");
        live.get(name).map(|tx| tx.subscribe())
    }

    /// Announces the end of a run and closes its channel.
    fn end(&self, name: &str, state: RunState) {
        if let Some(tx) = self.live.lock().expect("live lock").remove(name) {
            let _ = tx.send(Live::End(state));
        }
    }
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<String>,
    cancel: HashMap<String, Arc<AtomicBool>>,
}

/// `RUN/status.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Status {
    state: RunState,
    error: Option<String>,
}

fn run_dir(s: &Shared, name: &str) -> PathBuf {
    s.workdir.join("runs").join(name)
}

fn write_status(dir: &Path, state: RunState, error: Option<String>) {
    let _ =
        clo_core::fsutil::write_json_atomically(&dir.join("status.json"), &Status { state, error });
}

fn read_status(dir: &Path) -> Option<Status> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("status.json")).ok()?).ok()
}

/// Re-queues queued runs, marks running ones interrupted, and starts the worker.
pub fn start(s: &Shared) -> anyhow::Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(s.workdir.join("runs"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    {
        let mut inner = s.jobs.inner.lock().expect("jobs lock");
        for name in names {
            let dir = run_dir(s, &name);
            match read_status(&dir).map(|st| st.state) {
                Some(RunState::Queued) => {
                    s.jobs.channel(&name);
                    inner.queue.push_back(name)
                }
                Some(RunState::Running) => write_status(
                    &dir,
                    RunState::Interrupted,
                    Some("the server stopped during the run; its newest checkpoint is kept".into()),
                ),
                _ => {}
            }
        }
    }
    let state = s.clone();
    std::thread::Builder::new()
        .name("clo-runs".into())
        .spawn(move || worker(state))?;
    Ok(())
}

fn worker(s: Shared) {
    loop {
        let (name, cancel) = {
            let mut inner = s.jobs.inner.lock().expect("jobs lock");
            while inner.queue.is_empty() {
                inner = s.jobs.wake.wait(inner).expect("jobs lock");
            }
            let name = inner.queue.pop_front().expect("non-empty");
            let flag = inner.cancel.entry(name.clone()).or_default().clone();
            (name, flag)
        };
        let dir = run_dir(&s, &name);
        let live = s.jobs.channel(&name);
        let result = (|| -> anyhow::Result<RunState> {
            let config = RunConfig::from_file(&dir.join("run.toml"))?;
            let request: RunRequest = std::fs::read_to_string(dir.join("request.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            let (device, replicas) = run_devices(&s, &request)?;
            write_status(&dir, RunState::Running, None);
            let mut opts = TrainOptions::new(&dir, s.workdir.join("cache"));
            opts.replicas = replicas;
            opts.cancel = Some(cancel);
            opts.resume = dir.join("config.toml").exists();
            // Each step goes to the subscribers as soon as metrics.jsonl has it.
            let mut announce = |p: Progress| {
                if let Progress::Step(m) = p
                    && let Ok(line) = serde_json::to_string(m)
                {
                    let _ = live.send(Live::Metric(line));
                }
            };
            Ok(match train(&config, &opts, &device, &mut announce)? {
                Outcome::Finished(_) => RunState::Finished,
                Outcome::Cancelled { .. } => RunState::Cancelled,
            })
        })();
        let state = match result {
            Ok(state) => {
                write_status(&dir, state, None);
                state
            }
            Err(e) => {
                tracing::warn!(run = %name, "run failed: {e:#}");
                write_status(&dir, RunState::Failed, Some(format!("{e:#}")));
                RunState::Failed
            }
        };
        s.jobs.end(&name, state);
        s.jobs.inner.lock().expect("jobs lock").cancel.remove(&name);
    }
}

/// Names of finished runs (their best weights serve as models `run:NAME`).
pub fn finished_runs(s: &Shared) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(s.workdir.join("runs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| read_status(&e.path()).is_some_and(|st| st.state == RunState::Finished))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

fn info(s: &Shared, name: &str) -> Result<RunInfo, ApiError> {
    check_name("run", name)?;
    let dir = run_dir(s, name);
    let status = read_status(&dir)
        .ok_or_else(|| ApiError::not_found(format!("no run {name:?}; GET /api/runs lists them")))?;
    let request: RunRequest = std::fs::read_to_string(dir.join("request.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let method = RunConfig::from_file(&dir.join("run.toml"))
        .map(|c| c.method.name().to_string())
        .unwrap_or_default();
    let steps_done = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0);
    let summary = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    Ok(RunInfo {
        name: name.into(),
        state: status.state,
        model: request.model,
        dataset: request.dataset,
        method,
        steps_done,
        error: status.error,
        summary,
    })
}

pub async fn list(State(s): State<Shared>) -> ApiResult<Vec<RunInfo>> {
    let mut names: Vec<String> = std::fs::read_dir(s.workdir.join("runs"))
        .map_err(ApiError::internal)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(Json(
        names.iter().filter_map(|n| info(&s, n).ok()).collect(),
    ))
}

pub async fn status(State(s): State<Shared>, UrlPath(name): UrlPath<String>) -> ApiResult<RunInfo> {
    info(&s, &name).map(Json)
}

/// `GET /api/run-config`: the settings a run takes, with `clo train`'s defaults (the paper's).
pub async fn defaults() -> ApiResult<serde_json::Map<String, serde_json::Value>> {
    let value = serde_json::to_value(RunConfig::default()).map_err(ApiError::internal)?;
    let mut obj = value
        .as_object()
        .cloned()
        .expect("a struct serializes to an object");
    obj.remove("model");
    obj.remove("data");
    Ok(Json(obj))
}

/// `GET /api/settings`: every run setting (key, label, help, kind, choices, default, section,
/// where the form shows it, the `clo train` flag), from clo-core's table; the web form is
/// built from it.
pub async fn settings() -> ApiResult<Vec<clo_core::api::SettingInfo>> {
    Ok(Json(clo_core::train::config::schema()))
}

/// The run's config: the request's typed settings (defaults filled, unknown keys refused when
/// the body was read), with the model and data of the names it gives.
fn resolve(s: &Shared, req: &RunRequest) -> Result<RunConfig, ApiError> {
    let mut config = req.config.clone();
    for (key, given, field) in [
        ("model", &config.model, "model"),
        ("data", &config.data, "dataset"),
    ] {
        if !given.as_os_str().is_empty() {
            return Err(ApiError::bad(format!(
                "config.{key}: give the run's {key} by name in the request's `{field}` field"
            )));
        }
    }
    config.model = s.model_dir(&req.model)?;
    config.data = s.dataset_path(&req.dataset)?;
    if !has_a_record(&config.data) {
        return Err(ApiError::bad(format!(
            "dataset: {} holds no quadruples; prepare it first (clo prepare, or upload a JSONL file with one quadruple per line)",
            req.dataset
        )));
    }
    // Checked now, not when the run starts: the settings and what needs the model's config.json
    // (the layer range).
    config.validate_for_model()?;
    if let Some(list) = &req.devices {
        crate::device::parse_devices(list).map_err(|e| {
            ApiError::bad(format!(
                "devices: {e:#} (GET /api/devices lists this machine's devices)"
            ))
        })?;
    }
    Ok(config)
}

/// Whether a dataset file has a line that is not blank (a run of an empty file can only fail).
fn has_a_record(path: &std::path::Path) -> bool {
    use std::io::BufRead;
    std::fs::File::open(path).is_ok_and(|f| {
        std::io::BufReader::new(f)
            .split(b'\n')
            .take(10_000)
            .map_while(Result::ok)
            .any(|line| !line.trim_ascii().is_empty())
    })
}

/// `GET /api/devices`: the server's device and every device a run may train on, with what
/// each one is (as `clo devices` lists them).
pub async fn devices(State(s): State<Shared>) -> ApiResult<DeviceList> {
    let default = s.device_spec.clone();
    let details = tokio::task::spawn_blocking(crate::device::describe_devices)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(DeviceList {
        default,
        available: details.iter().map(|d| d.spec.clone()).collect(),
        details,
    }))
}

/// The replicas' devices of a run request (its `devices` after the first), and its main device.
fn run_devices(
    s: &Shared,
    req: &RunRequest,
) -> anyhow::Result<(burn::tensor::Device, Vec<burn::tensor::Device>)> {
    match &req.devices {
        Some(list) => {
            let mut all = crate::device::parse_devices(list)?;
            let main = all.remove(0);
            Ok((main, all))
        }
        None => Ok((s.device.clone(), Vec::new())),
    }
}

pub async fn create(
    State(s): State<Shared>,
    JsonBody(req): JsonBody<RunRequest>,
) -> Result<(StatusCode, Json<RunInfo>), ApiError> {
    let config = resolve(&s, &req)?;
    let name = match &req.name {
        Some(n) => {
            check_name("run", n)?;
            n.clone()
        }
        None => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            format!("{}-{stamp}", config.method.name().replace('+', "-"))
        }
    };
    let dir = run_dir(&s, &name);
    if dir.exists() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("run {name:?} exists; choose another name"),
        ));
    }
    std::fs::create_dir_all(&dir).map_err(ApiError::internal)?;
    clo_core::fsutil::write_atomically(&dir.join("run.toml"), config.to_toml().as_bytes())
        .map_err(ApiError::internal)?;
    clo_core::fsutil::write_json_atomically(
        &dir.join("request.json"),
        &RunRequest {
            name: Some(name.clone()),
            ..req
        },
    )
    .map_err(ApiError::internal)?;
    write_status(&dir, RunState::Queued, None);
    {
        let mut inner = s.jobs.inner.lock().expect("jobs lock");
        s.jobs.channel(&name);
        inner.queue.push_back(name.clone());
        s.jobs.wake.notify_one();
    }
    Ok((StatusCode::CREATED, Json(info(&s, &name)?)))
}

pub async fn cancel(State(s): State<Shared>, UrlPath(name): UrlPath<String>) -> ApiResult<RunInfo> {
    let current = info(&s, &name)?;
    let dir = run_dir(&s, &name);
    let mut inner = s.jobs.inner.lock().expect("jobs lock");
    if let Some(pos) = inner.queue.iter().position(|n| *n == name) {
        inner.queue.remove(pos);
        write_status(&dir, RunState::Cancelled, None);
        s.jobs.end(&name, RunState::Cancelled);
    } else if let Some(flag) = inner.cancel.get(&name) {
        // The run stops after its current step, with a checkpoint.
        flag.store(true, Ordering::Relaxed);
    } else if current.state.is_done() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("run {name:?} is already {:?}", current.state).to_lowercase(),
        ));
    }
    drop(inner);
    info(&s, &name).map(Json)
}

/// `POST /api/runs/NAME/resume`: queues an interrupted, cancelled or failed run again; it
/// continues from its newest checkpoint (as `clo train --resume` does), so it ends with the
/// weights an uninterrupted run would have. A queued, running or finished run answers 409.
pub async fn resume(State(s): State<Shared>, UrlPath(name): UrlPath<String>) -> ApiResult<RunInfo> {
    let current = info(&s, &name)?;
    if !matches!(
        current.state,
        RunState::Interrupted | RunState::Cancelled | RunState::Failed
    ) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "run {name:?} is {:?}; only an interrupted, cancelled or failed run resumes",
                current.state
            )
            .to_lowercase(),
        ));
    }
    let dir = run_dir(&s, &name);
    {
        let mut inner = s.jobs.inner.lock().expect("jobs lock");
        if inner.queue.contains(&name) || inner.cancel.contains_key(&name) {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("run {name:?} is already queued or running"),
            ));
        }
        write_status(&dir, RunState::Queued, None);
        s.jobs.channel(&name);
        inner.queue.push_back(name.clone());
    }
    s.jobs.wake.notify_all();
    info(&s, &name).map(Json)
}

/// Server-Sent Events: every line of `metrics.jsonl` as a `metric` event, and an `end` event
/// with the final state. A subscriber first gets the lines already written (the file is the
/// replay log), then the run's steps from its in-process channel as they happen; steps it has
/// seen in the file are not sent twice. A subscriber that falls behind the channel catches up
/// from the file.
pub async fn metrics(
    State(s): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    info(&s, &name)?;
    let dir = run_dir(&s, &name);
    // Subscribed before the file is read, so that no step falls between the two.
    let live = s.jobs.subscribe(&name);
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(256);
    tokio::spawn(async move {
        let metric = |line: &str| Event::default().event("metric").data(line);
        let mut seen: Option<usize> = None; // the last step sent
        let mut offset = 0u64;
        // Sends the whole lines of metrics.jsonl from `offset` whose step is new.
        let replay = async |offset: &mut u64, seen: &mut Option<usize>| -> bool {
            let fresh = read_from(&dir.join("metrics.jsonl"), *offset);
            let Some(end) = fresh.rfind('\n') else {
                return true;
            };
            *offset += end as u64 + 1;
            for line in fresh[..end].lines() {
                let step = step_of(line);
                if step.is_some() && step <= *seen {
                    continue;
                }
                *seen = step.or(*seen);
                if tx.send(metric(line)).await.is_err() {
                    return false;
                }
            }
            true
        };
        if !replay(&mut offset, &mut seen).await {
            return;
        }
        let final_state = match live {
            Some(mut rx) => loop {
                match rx.recv().await {
                    Ok(Live::Metric(line)) => {
                        let step = step_of(&line);
                        if step.is_some() && step <= seen {
                            continue;
                        }
                        seen = step.or(seen);
                        if tx.send(metric(&line)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Live::End(state)) => break Some(state),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if !replay(&mut offset, &mut seen).await {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break None,
                }
            },
            None => None,
        };
        // Lines written after the last announcement (or by a run with no channel) and the end.
        if !replay(&mut offset, &mut seen).await {
            return;
        }
        let state = final_state.or_else(|| read_status(&dir).map(|st| st.state));
        if state.is_some_and(RunState::is_done) {
            let data = serde_json::to_string(&state).unwrap_or_default();
            let _ = tx.send(Event::default().event("end").data(data)).await;
        }
    });
    let stream =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The `step` of a metrics line.
fn step_of(line: &str) -> Option<usize> {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()?
        .get("step")?
        .as_u64()
        .map(|s| s as usize)
}

/// The text of a file from byte `offset` on (empty when missing or shorter).
fn read_from(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path)
        && f.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = f.read_to_string(&mut text);
    }
    text
}

pub async fn checkpoints(
    State(s): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Vec<CheckpointInfo>> {
    info(&s, &name)?;
    let run = RunDir::new(run_dir(&s, &name));
    let mut out: Vec<CheckpointInfo> = run
        .list_checkpoints()
        .into_iter()
        .map(|(step, p)| CheckpointInfo {
            name: p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            step: Some(step),
        })
        .collect();
    if run.best().join("trainable.bpk").is_file() {
        out.push(CheckpointInfo {
            name: "best".into(),
            step: None,
        });
    }
    Ok(Json(out))
}

pub async fn export(
    State(s): State<Shared>,
    UrlPath(name): UrlPath<String>,
    JsonBody(req): JsonBody<ExportRequest>,
) -> ApiResult<ExportResponse> {
    let current = info(&s, &name)?;
    if current.state == RunState::Running || current.state == RunState::Queued {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "run {name:?} is {:?}; export it when it has stopped",
                current.state
            )
            .to_lowercase(),
        ));
    }
    let from = req.from.clone().unwrap_or_else(|| "best".into());
    let dir = run_dir(&s, &name);
    let from_path = match from.as_str() {
        "best" | "last" => from.clone(),
        other => {
            check_name("checkpoint", other)?;
            dir.join("checkpoints").join(other).display().to_string()
        }
    };
    let model = req.model_name.clone().unwrap_or_else(|| name.clone());
    check_name("model", &model)?;
    let out = s.workdir.join("models").join(&model);
    if out.exists() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("model {model:?} exists; give another model_name"),
        ));
    }
    let weights = tokio::task::spawn_blocking(move || {
        clo_core::export::export_merged(
            &dir,
            &from_path,
            &out,
            &burn::tensor::Device::flex(),
            false,
        )
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(ExportResponse {
        model,
        from: weights.display().to_string(),
    }))
}
