//! `/api/runs`: creating, streaming, cancelling, restarting and resuming runs.

use tower::ServiceExt;

use super::*;

/// A run created through the API trains in the background; its metrics arrive as SSE
/// events, one per step, then `end` with the final state; it is listed and exportable.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_trains_and_streams_its_metrics() {
    let (d, app) = app(None);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/data/quads.jsonl");
    std::fs::copy(&data, d.path().join("work/datasets/quads.jsonl")).unwrap();
    let (status, body) = call(&app, get("/api/datasets/quads?limit=2")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["records"].as_array().unwrap().len(), 2);
    let (status, body) = call(&app, post("/api/runs", serde_json::json!({"name": "r1", "model": "qwen2", "dataset": "quads", "config": {"steps": 3, "batch_size": 2, "lr": 1e-3}}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = call(&app, post("/api/runs", serde_json::json!({"name": "r2", "model": "qwen2", "dataset": "quads", "config": {"stepz": 3}}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("stepz"),
        "{body}"
    );
    // The typed config takes no model or data of its own: they are named by the request.
    let (status, body) = call(&app, post("/api/runs", serde_json::json!({"name": "r3", "model": "qwen2", "dataset": "quads", "config": {"model": "/elsewhere"}}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("config.model"),
        "{body}"
    );
    let (status, sse) = text(&app, get("/api/runs/r1/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = sse.lines().filter(|l| *l == "event: metric").count();
    assert_eq!(metrics, 3, "{sse}");
    assert!(sse.contains("event: end\ndata: \"finished\""), "{sse}");
    let (_, runs) = call(&app, get("/api/runs")).await;
    assert_eq!(runs[0]["state"], "finished");
    assert_eq!(runs[0]["steps_done"], 3);
    let (status, body) = call(
        &app,
        post(
            "/api/runs/r1/export",
            serde_json::json!({"model_name": "r1-merged"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, models) = call(&app, get("/api/models")).await;
    let names: Vec<&str> = models
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"r1-merged") && names.contains(&"run:r1"),
        "{names:?}"
    );
}

/// `GET /api/devices` names the server's device and this machine's; a run trains data-parallel
/// on the `devices` it names (here two replicas on the CPU), and a bad list is refused by name.
#[tokio::test(flavor = "multi_thread")]
async fn runs_take_a_device_list() {
    let (d, app) = app(None);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/data/quads.jsonl");
    std::fs::copy(&data, d.path().join("work/datasets/quads.jsonl")).unwrap();
    let (status, body) = call(&app, get("/api/devices")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["default"], "cpu");
    assert_eq!(body["available"][0], "cpu", "{body}");
    // What each device is, as `clo devices` lists it, in the same order.
    let details = body["details"].as_array().unwrap();
    assert_eq!(details.len(), body["available"].as_array().unwrap().len());
    assert_eq!(details[0]["backend"], "flex", "{body}");
    for (d, spec) in details.iter().zip(body["available"].as_array().unwrap()) {
        assert_eq!(&d["spec"], spec);
    }
    // An empty dataset is refused when the run is asked for, not failed when it starts.
    std::fs::write(d.path().join("work/datasets/empty.jsonl"), "\n  \n").unwrap();
    let (status, body) = call(
        &app,
        post(
            "/api/runs",
            serde_json::json!({"name": "e", "model": "qwen2", "dataset": "empty"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("holds no quadruples"),
        "{body}"
    );
    let (status, body) = call(&app, post("/api/runs", serde_json::json!({"name": "bad", "model": "qwen2", "dataset": "quads", "devices": "cpu,gpu9"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("devices: ") && message.contains("gpu9"),
        "{body}"
    );
    let (status, body) = call(&app, post("/api/runs", serde_json::json!({"name": "dp", "model": "qwen2", "dataset": "quads", "devices": "cpu,cpu", "config": {"steps": 2, "batch_size": 3, "lr": 1e-3}}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, sse) = text(&app, get("/api/runs/dp/metrics")).await;
    assert!(sse.contains("event: end\ndata: \"finished\""), "{sse}");
    assert_eq!(sse.lines().filter(|l| *l == "event: metric").count(), 2);
}

/// The settings schema the web form is built from is clo-core's table, its defaults are the
/// paper's (as `/api/run-config` gives them), and a form filled from it is a config the server
/// takes.
#[tokio::test]
async fn the_settings_schema_builds_a_form_the_server_takes() {
    let (_d, app) = app(None);
    let (status, d) = call(&app, get("/api/run-config")).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["method"], "clo");
    assert_eq!(d["trainable"], "attention");
    assert_eq!(d["beta"], 0.1);
    assert_eq!(d["lambda"], 0.5);
    assert_eq!(d["lr"], 5e-5);
    assert!(d.get("model").is_none() && d.get("data").is_none());

    let (status, s) = call(&app, get("/api/settings")).await;
    assert_eq!(status, StatusCode::OK, "{s}");
    let schema: Vec<clo_core::api::SettingInfo> = serde_json::from_value(s).unwrap();
    assert_eq!(schema, clo_core::train::config::schema());
    for f in &schema {
        if f.key != "model" && f.key != "data" {
            assert_eq!(d[&f.key], f.default, "{}", f.key);
        }
    }
    // Every choice of every field, sent as the form sends it, is a config.
    for f in schema.iter().filter(|f| !f.choices.is_empty()) {
        for n in &f.choices {
            let mut values = clo_web::form::default_values(&schema);
            values.insert(f.key.clone(), n.clone());
            let config = clo_web::form::config_from_form(&values, &schema);
            assert!(config.is_ok(), "{}={n}: {config:?}", f.key);
        }
    }
}

/// A running run stops on cancel (a queued one at once, before it starts); a finished one
/// cannot be cancelled; a restarted server lists the runs from disk, marks the one that was
/// running as interrupted and trains the queued one.
#[tokio::test(flavor = "multi_thread")]
async fn runs_cancel_and_survive_a_restart() {
    let (_dir, work) = work_with_quads();
    let app = router(state_in(&work), None);
    let new_run = |name: &str, steps: usize| {
        post(
            "/api/runs",
            serde_json::json!({"name": name, "model": "qwen2", "dataset": "quads",
                               "config": {"steps": steps, "batch_size": 2, "save_every": 1}}),
        )
    };
    let (status, _) = call(&app, new_run("long", 100_000)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = call(&app, new_run("waiting", 2)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = call(&app, new_run("long", 2)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // The queue runs one at a time: `waiting` waits behind `long` and is cancelled at once.
    wait_for_state(&app, "long", "running").await;
    let (_, info) = call(&app, get("/api/runs/waiting")).await;
    assert_eq!(info["state"], "queued");
    let (status, info) = call(
        &app,
        post("/api/runs/waiting/cancel", serde_json::json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["state"], "cancelled");
    // `long` stops after a step or two, keeping checkpoints.
    let (status, _) = call(&app, post("/api/runs/long/cancel", serde_json::json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    let info = wait_for_state(&app, "long", "cancelled").await;
    assert!(info["steps_done"].as_u64().unwrap() < 100_000);
    let (status, cps) = call(&app, get("/api/runs/long/checkpoints")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!cps.as_array().unwrap().is_empty(), "{cps}");
    let (status, body) = call(&app, post("/api/runs/long/cancel", serde_json::json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = call(&app, get("/api/runs/ghost/checkpoints")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Stop "the server" in the middle of things: one run marked running, one queued.
    for (name, state) in [("crashed", "running"), ("later", "queued")] {
        let d = work.join("runs").join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["run.toml", "request.json"] {
            std::fs::copy(work.join("runs/waiting").join(f), d.join(f)).unwrap();
        }
        std::fs::write(
            d.join("status.json"),
            format!(r#"{{"state": "{state}", "error": null}}"#),
        )
        .unwrap();
    }
    let restarted = router(state_in(&work), None);
    let (_, runs) = call(&restarted, get("/api/runs")).await;
    let states: BTreeMap<String, String> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().into(),
                r["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(states["long"], "cancelled");
    assert_eq!(states["waiting"], "cancelled");
    assert_eq!(states["crashed"], "interrupted");
    assert!(["queued", "running", "finished"].contains(&states["later"].as_str()));
    let info = wait_for_state(&restarted, "later", "finished").await;
    assert_eq!(info["steps_done"], 2);
    let (_, info) = call(&restarted, get("/api/runs/crashed")).await;
    assert!(info["error"].as_str().unwrap().contains("server stopped"));
}

/// A subscriber gets the steps already in metrics.jsonl, then the steps the run announces on
/// its in-process channel as they happen (a step in both is sent once), then `end`.
#[tokio::test(flavor = "multi_thread")]
async fn run_metrics_stream_from_the_channel_after_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let state = state_in(&work);
    let app = router(state.clone(), None);
    // A run the worker does not know (not queued): its channel is fed by hand.
    let run = work.join("runs/live");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("status.json"),
        r#"{"state": "running", "error": null}"#,
    )
    .unwrap();
    let line = |step: usize| format!(r#"{{"step":{step},"stage":"clo","loss":{step}.5}}"#);
    std::fs::write(
        run.join("metrics.jsonl"),
        format!("{}\n{}\n", line(0), line(1)),
    )
    .unwrap();
    let tx = state.jobs.channel("live");
    let res = app
        .clone()
        .oneshot(get("/api/runs/live/metrics"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = tokio::spawn(axum::body::to_bytes(res.into_body(), 1 << 20));
    // Step 1 again (the file has it), then two new ones that no file holds, then the end.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for step in [1, 2, 3] {
        tx.send(runs::Live::Metric(line(step))).unwrap();
    }
    tx.send(runs::Live::End(clo_core::api::RunState::Finished))
        .unwrap();
    let body = tokio::time::timeout(std::time::Duration::from_secs(10), body)
        .await
        .expect("the stream ends after `end`")
        .unwrap()
        .unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(
        data,
        vec![
            line(0).as_str(),
            line(1).as_str(),
            line(2).as_str(),
            line(3).as_str(),
            "\"finished\""
        ],
        "{text}"
    );
    assert!(text.contains("event: end"), "{text}");
}

/// A run cut short by a server stop (its status left `running`, checkpoints on disk) is
/// `interrupted` after a restart, resumes through `POST /api/runs/NAME/resume`, and ends with
/// the weights of the same run trained without a stop. A finished run does not resume.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_run_resumes_to_the_uninterrupted_weights() {
    let (_dir, work) = work_with_quads();
    let app = router(state_in(&work), None);
    let new_run = |name: &str| {
        post(
            "/api/runs",
            serde_json::json!({"name": name, "model": "qwen2", "dataset": "quads",
                               "config": {"steps": 6, "batch_size": 2, "save_every": 1}}),
        )
    };
    let (status, _) = call(&app, new_run("whole")).await;
    assert_eq!(status, StatusCode::CREATED);
    wait_for_state(&app, "whole", "finished").await;
    let (status, body) = call(&app, post("/api/runs/whole/resume", serde_json::json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let (status, _) = call(&app, new_run("cut")).await;
    assert_eq!(status, StatusCode::CREATED);
    // Stop it after two steps, then leave it as a crash would: `running` on disk.
    loop {
        let (_, info) = call(&app, get("/api/runs/cut")).await;
        if info["steps_done"].as_u64().unwrap() >= 2 || info["state"] == "finished" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    call(&app, post("/api/runs/cut/cancel", serde_json::json!({}))).await;
    let info = wait_for_state(&app, "cut", "cancelled").await;
    let done = info["steps_done"].as_u64().unwrap();
    assert!((2..6).contains(&done), "stopped after {done} steps");
    std::fs::write(
        work.join("runs/cut/status.json"),
        r#"{"state": "running", "error": null}"#,
    )
    .unwrap();

    let restarted = router(state_in(&work), None);
    let (_, info) = call(&restarted, get("/api/runs/cut")).await;
    assert_eq!(info["state"], "interrupted");
    let (status, info) = call(
        &restarted,
        post("/api/runs/cut/resume", serde_json::json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    let info = wait_for_state(&restarted, "cut", "finished").await;
    assert_eq!(info["steps_done"], 6);
    // The trained tensors of each run's last checkpoint.
    let weights = |run: &str| {
        let dir = work.join("runs").join(run);
        let config = clo_core::train::RunConfig::from_file(&dir.join("config.toml")).unwrap();
        let last = clo_core::train::checkpoint::RunDir::new(&dir)
            .latest_checkpoint()
            .unwrap();
        let lm =
            clo_core::train::checkpoint::load_trained(&config, &last, &Device::flex()).unwrap();
        let mut out = Vec::new();
        for t in burn::store::ModuleSnapshot::collect(&lm.model, None, None, false) {
            if t.name.contains("self_attn") {
                out.push((t.name.clone(), t.to_bytes().unwrap()));
            }
        }
        (last, out)
    };
    let ((cut_at, cut), (whole_at, whole)) = (weights("cut"), weights("whole"));
    assert_eq!(cut.len(), whole.len());
    for ((name, a), (_, b)) in cut.iter().zip(&whole) {
        assert!(
            a == b,
            "{name} differs: {} vs {}",
            cut_at.display(),
            whole_at.display()
        );
    }
    let (status, _) = call(
        &restarted,
        post("/api/runs/ghost/resume", serde_json::json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
