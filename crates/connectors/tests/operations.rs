//! Operating the service: `/metrics` agrees with the job documents, logs carry the job's ids and
//! never a secret.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_connectors");

use test_support::Cleanup;

struct Service {
    child: Child,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn cli(config: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("-c").arg(config).args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start(config: &Path, env: &[(&str, &str)], log: &Path) -> Service {
    let file = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("-c").arg(config).arg("run").env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.stdout(Stdio::null()).stderr(file).spawn().unwrap();
    Service { child }
}

async fn http_get(url: &str) -> Option<(u16, String)> {
    let client = reqwest::Client::new();
    let resp = client
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

/// The value of one sample of the Prometheus text, e.g. `name{label="v"}`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.trim().split(' ').next()?.parse().ok())
    })
}

struct World {
    dir: tempfile::TempDir,
    config: PathBuf,
    _cleanup: Cleanup,
    content_index: String,
}

fn world(es: &test_support::TestEs, service_type: &str, extra: &str) -> World {
    let connectors = es.unique_name("conn");
    let jobs = es.unique_name("jobs");
    let content_index = es.unique_name("content");
    let cleanup = Cleanup::new(vec![
        format!("{connectors}*"),
        format!("{jobs}*"),
        content_index.clone(),
        format!(".search-acl-filter-{content_index}"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "elasticsearch:\n  host: {host}\n  request_timeout: 30\n  max_wait_duration: 10\n{extra}\
             service:\n  idling: 1\n  service_types: [{service_type}]\n  connectors_index: {connectors}\n  \
             jobs_index: {jobs}\n",
            host = test_support::es_url().unwrap(),
        ),
    )
    .unwrap();
    World {
        dir,
        config,
        _cleanup: cleanup,
        content_index,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_match_the_job_document() {
    let es = test_support::es().await;
    let port = free_port();
    let w = world(&es, "generator", "");
    let env = [
        ("CONNECTORS_TEST_CONNECTORS", "1"),
        (
            "CONNECTORS_SERVICE__METRICS_ADDRESS",
            &*format!("127.0.0.1:{port}"),
        ),
    ];
    let connector_id = es.unique_name("gen");
    ok(&cli(
        &w.config,
        &env,
        &[
            "connector",
            "create",
            "--id",
            &connector_id,
            "--index-name",
            &w.content_index,
            "--service-type",
            "generator",
            "--set",
            "count=750",
        ],
    ));
    let log = w.dir.path().join("service.log");
    let _service = start(&w.config, &env, &log);
    let job: Value = serde_json::from_str(&ok(&cli(
        &w.config,
        &env,
        &[
            "--json",
            "sync",
            "start",
            &connector_id,
            "--type",
            "full",
            "--wait",
            "--timeout",
            "120",
        ],
    )))
    .unwrap();
    assert_eq!(job["status"], "completed", "{job}");
    let indexed = job["indexed_document_count"].as_u64().unwrap();
    assert_eq!(indexed, 750);

    let base = format!("http://127.0.0.1:{port}");
    let (status, text) = http_get(&format!("{base}/metrics"))
        .await
        .expect("metrics endpoint answers");
    assert_eq!(status, 200);
    let series = format!("connectors_documents_indexed_total{{connector_id=\"{connector_id}\"}}");
    assert_eq!(sample(&text, &series), Some(indexed as f64), "{text}");
    let deleted = format!("connectors_documents_deleted_total{{connector_id=\"{connector_id}\"}}");
    assert_eq!(
        sample(&text, &deleted),
        Some(job["deleted_document_count"].as_f64().unwrap())
    );
    assert_eq!(
        sample(
            &text,
            "connectors_jobs_finished_total{job_type=\"full\",status=\"completed\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(sample(&text, "connectors_bulk_request_duration_seconds_count").unwrap_or(0.0) >= 1.0);
    assert_eq!(
        http_get(&format!("{base}/healthz")).await.map(|r| r.0),
        Some(200)
    );
    assert_eq!(
        http_get(&format!("{base}/readyz")).await.map(|r| r.0),
        Some(200)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_appear_in_logs_and_job_lines_carry_ids() {
    test_support::init();
    let sim = google_workspace_sim::Simulator::start(google_workspace_sim::SimConfig {
        users: 2,
        messages_per_user: 5,
        quota: google_workspace_sim::QuotaConfig::off(),
        ..Default::default()
    })
    .await
    .unwrap();
    let key_json = sim.service_account_key_json();
    let key: Value = serde_json::from_str(&key_json).unwrap();
    let private_key = key["private_key"].as_str().unwrap().to_owned();
    // A line from the middle of the PEM body: any leak of the key contains it.
    let pem_line = private_key.lines().nth(5).unwrap().to_owned();
    assert!(pem_line.len() > 40);
    let api_key = "bG9nLXRlc3Qta2V5OnNob3VsZC1uZXZlci1iZS1sb2dnZWQ=";

    let es = test_support::es().await;
    let w = world(&es, "gmail", &format!("  api_key: {api_key}\n"));
    let env = [
        ("RUST_LOG", "trace"),
        ("CONNECTORS_SERVICE__LOG_FORMAT", "json"),
    ];
    let connector_id = es.unique_name("gmail");
    let create = cli(
        &w.config,
        &env,
        &[
            "connector",
            "create",
            "--id",
            &connector_id,
            "--index-name",
            &w.content_index,
            "--service-type",
            "gmail",
            "--set",
            &format!(
                "service_account_credentials={}",
                serde_json::to_string(&key_json).unwrap()
            ),
            "--set",
            &format!("subject={}", sim.admin_email()),
            "--set",
            &format!("customer_id={}", sim.customer_id()),
            "--set",
            &format!("google_api_base_url={}", sim.base_url()),
        ],
    );
    ok(&create);
    let log = w.dir.path().join("service.log");
    let service = start(&w.config, &env, &log);
    let full = cli(
        &w.config,
        &env,
        &[
            "sync",
            "start",
            &connector_id,
            "--type",
            "full",
            "--wait",
            "--timeout",
            "120",
        ],
    );
    ok(&full);
    let show = cli(
        &w.config,
        &env,
        &["--json", "connector", "show", &connector_id],
    );
    ok(&show);
    drop(service);

    let service_log = std::fs::read_to_string(&log).unwrap();
    let mut all = service_log.clone();
    for out in [&create, &full, &show] {
        all.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    assert!(
        service_log.lines().count() > 10 && service_log.contains("\"log.level\":\"debug\""),
        "trace logging produced output:\n{service_log}\n{}",
        String::from_utf8_lossy(&full.stderr)
    );
    for (what, secret) in [("api key", api_key), ("private key", pem_line.as_str())] {
        assert!(!all.contains(secret), "the {what} appears in the logs");
    }
    // `connector show` prints the configuration; the private key must be masked there too.
    assert!(
        !String::from_utf8_lossy(&show.stdout).contains(&pem_line),
        "private key shown"
    );

    // Every JSON line inside the job span names the job.
    let job_lines: Vec<Value> = service_log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["labels"]["job_id"].is_string())
        .collect();
    assert!(!job_lines.is_empty(), "no job lines in:\n{service_log}");
    for line in &job_lines {
        assert_eq!(
            line["labels"]["connector_id"],
            connector_id.as_str(),
            "{line}"
        );
        assert_eq!(line["labels"]["service_type"], "gmail", "{line}");
        assert!(line["labels"]["job_type"].is_string(), "{line}");
    }
    sim.shutdown().await;
}
