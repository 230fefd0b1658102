//! Models' files, datasets and eval results.

use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt;

use super::*;

/// The browser engine's downloads: a model's files are listed with their sizes and served
/// with Content-Length and byte ranges; nothing else of the directory is.
#[tokio::test(flavor = "multi_thread")]
async fn model_files_are_served_with_ranges() {
    let (_d, app) = app(None);
    let (status, body) = call(&app, get("/api/models/qwen2/files")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let names: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ],
        "{body}"
    );
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/qwen2");
    let bytes = std::fs::read(fixture.join("model.safetensors")).unwrap();
    assert_eq!(body[1]["size"], bytes.len() as u64);

    let res = app
        .clone()
        .oneshot(get("/api/models/qwen2/files/model.safetensors"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["content-length"].to_str().unwrap(),
        bytes.len().to_string()
    );
    let req = Request::get("/api/models/qwen2/files/model.safetensors")
        .header("range", "bytes=0-7")
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    let part = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(&part[..], &bytes[..8]);
    for uri in [
        "/api/models/qwen2/files/expected.json",
        "/api/models/qwen2/files/..%2Fllama%2Fconfig.json",
        "/api/models/nope/files/config.json",
    ] {
        let (status, _) = call(&app, get(uri)).await;
        assert!(status.is_client_error(), "{uri}: {status}");
    }
}

/// `--toy`'s kit: the model is listed, its quadruples are paged with the language each
/// side was identified as, and the playground's language endpoint tells toy from English.
#[tokio::test(flavor = "multi_thread")]
async fn datasets_are_paged_with_the_language_of_each_side() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    clo_core::toy::shipped::write_toy_kit(
        &work.join("models/toy"),
        &work.join("datasets/toy.jsonl"),
        30,
    )
    .unwrap();
    let app = router(state_in(&work), None);
    let (_, list) = call(&app, get("/api/datasets")).await;
    assert_eq!(list[0]["name"], "toy", "{list}");
    assert_eq!(list[0]["records"], 30);
    let (status, page) = call(&app, get("/api/datasets/toy?offset=5&limit=3")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 30);
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0]["line"], 6);
    for r in records {
        assert_eq!(r["lang"], "toy");
        assert_eq!(r["detected"][0], "en", "{r}");
        assert_eq!(r["detected"][2], "toy", "{r}");
    }
    let (status, body) = call(&app, get("/api/datasets/toy?limit=0")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = call(&app, get("/api/datasets/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("GET /api/datasets")
    );

    let (_, models) = call(&app, get("/api/models")).await;
    let toy = models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "toy")
        .unwrap_or_else(|| panic!("{models}"));
    assert_eq!(toy["model_type"], "llama");
    let (status, info) = call(&app, get("/api/models/toy")).await;
    assert_eq!(status, StatusCode::OK, "{info}");

    let x_tgt = records[0]["x_tgt"].as_str().unwrap();
    for (text, lang) in [
        (x_tgt, serde_json::json!("toy")),
        (
            "The weather was cold, so we stayed at home and read our books.",
            serde_json::json!("en"),
        ),
        ("42 + 7", serde_json::Value::Null),
    ] {
        let (status, body) =
            call(&app, post("/api/langid", serde_json::json!({"text": text}))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["lang"], lang, "{text}");
    }
    let (status, _) = call(&app, post("/api/langid", serde_json::json!({"text": 3}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// The evals page's report is `clo eval report` over the work directory; with no evals it
/// says why.
#[tokio::test]
async fn eval_results_are_listed_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let app = router(state_in(&work), None);
    let (status, report) = call(&app, get("/api/evals/report")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["files"], serde_json::json!({}));
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("no eval results")
    );
    let run = work.join("runs/r1");
    std::fs::create_dir_all(run.join("eval/gen")).unwrap();
    std::fs::write(
        run.join("summary.json"),
        r#"{"method": "clo", "train_quadruples": 40}"#,
    )
    .unwrap();
    let stats = clo_core::eval::generated::GenStats {
        n: 10,
        fidelity: clo_core::eval::Accuracy {
            n: 10,
            correct: 7,
            accuracy: 0.7,
            stderr: 0.14,
        },
        detected: BTreeMap::from([("sw".to_string(), 7), ("en".to_string(), 3)]),
        s_index_mean: Some(0.1),
        s_index_n: 10,
        code_switched: Some(0.2),
        choice_accuracy: None,
        unextracted: None,
    };
    clo_core::eval::EvalResults::Gen {
        model: clo_core::eval::ModelRef {
            dir: "models/m".into(),
            weights_sha256: "00".into(),
        },
        config: serde_json::json!({}),
        per_language: BTreeMap::from([("sw".to_string(), stats.clone())]),
        overall: stats,
    }
    .write(&run.join("eval/gen/results.json"))
    .unwrap();
    // Another JSON file named results.json (the quickstart's table) is not an eval result.
    std::fs::create_dir_all(run.join("other")).unwrap();
    std::fs::write(run.join("other/results.json"), r#"{"rows": []}"#).unwrap();
    let (_, evals) = call(&app, get("/api/evals")).await;
    assert_eq!(evals.as_array().unwrap().len(), 1, "{evals}");
    assert_eq!(evals[0]["path"], "runs/r1/eval/gen/results.json", "{evals}");
    assert_eq!(evals[0]["results"]["task"], "gen");
    let (_, report) = call(&app, get("/api/evals/report")).await;
    let md = report["files"]["report.md"]
        .as_str()
        .unwrap_or_else(|| panic!("{report}"));
    assert!(md.contains("clo") && md.contains("0.70"), "{md}");
    assert!(
        report["files"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.ends_with(".svg")),
        "{report}"
    );
    // Two runs of one method and size: the page's tables keep them apart, by run name; the
    // report's files pool them (seeds of a study).
    let run2 = work.join("runs/r2");
    std::fs::create_dir_all(run2.join("eval/gen")).unwrap();
    std::fs::copy(run.join("summary.json"), run2.join("summary.json")).unwrap();
    std::fs::copy(
        run.join("eval/gen/results.json"),
        run2.join("eval/gen/results.json"),
    )
    .unwrap();
    let (_, report) = call(&app, get("/api/evals/report")).await;
    let rows = report["tables"][0]["rows"].as_object().unwrap();
    assert_eq!(rows.keys().collect::<Vec<_>>(), ["r1", "r2"], "{report}");
    let md = report["files"]["report.md"].as_str().unwrap();
    assert!(md.contains("| clo |"), "{md}");
}

fn put(uri: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::put(uri)
        .header("content-type", content_type)
        .body(body.into())
        .unwrap()
}

/// A dataset uploaded from the Data page: checked as `clo train` reads it (a bad line named,
/// with the upload's name, not the server's path), listed once stored, never replaced unless
/// asked; nothing is kept of a refused upload, and a page's simple POST-like type is refused.
#[tokio::test(flavor = "multi_thread")]
async fn datasets_upload_checked_and_listed() {
    let (d, app) = app(None);
    let quads = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/data/quads.jsonl"),
    )
    .unwrap();
    let n = String::from_utf8_lossy(&quads)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    let ndjson = "application/x-ndjson";
    let (status, body) = call(&app, put("/api/datasets/mine", ndjson, quads.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["name"].as_str(), body["records"].as_u64()),
        (Some("mine"), Some(n as u64))
    );
    let (_, list) = call(&app, get("/api/datasets")).await;
    assert!(
        list.as_array().unwrap().iter().any(|d| d["name"] == "mine"),
        "{list}"
    );
    let (status, body) = call(&app, put("/api/datasets/mine", ndjson, quads.clone())).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = call(&app, put("/api/datasets/mine?replace=true", ndjson, quads)).await;
    assert_eq!(status, StatusCode::OK);

    let bad = "{\"id\": \"1\", \"lang\": \"sw\", \"x_en\": \"a\", \"y_en\": \"b\", \"x_tgt\": \"c\", \"y_tgt\": \"d\"}\n{\"x_en\": 1}\n";
    let (status, body) = call(&app, put("/api/datasets/broken", ndjson, bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("broken.jsonl:2"), "{message}");
    assert!(!message.contains(".upload-"), "{message}");
    let (status, body) = call(&app, put("/api/datasets/empty", ndjson, "\n")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = call(&app, put("/api/datasets/..%2Fx", ndjson, "{}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(&app, put("/api/datasets/plain", "text/plain", "{}")).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let left: Vec<String> = std::fs::read_dir(d.path().join("work/datasets"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["mine.jsonl"], "{left:?}");
}
