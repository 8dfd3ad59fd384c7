//! The `connectors` binary as processes against the real node: two workers, crashes, SIGTERM,
//! cancellation, and the CLI.
// Helpers of tests unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use connector_framework::{
    es::HttpMethod,
    model::{ConnectorStatus, JobStatus, JobType, TriggerMethod},
    protocol::{IndexNames, Store, new_connector_document},
    sync::index::index_exists,
};
use serde_json::{Map, Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_connectors");

use test_support::Cleanup;

/// One test's world: unique system indices, a record index, a config file.
struct World {
    store: Store,
    record_index: String,
    dir: tempfile::TempDir,
    config: PathBuf,
    _cleanup: Cleanup,
}

async fn world(es: &test_support::TestEs, extra_service: &str) -> World {
    let names = IndexNames {
        connectors: es.unique_name("conn"),
        jobs: es.unique_name("jobs"),
    };
    let record_index = es.unique_name("record");
    let cleanup = Cleanup::new(vec![
        format!("{}*", names.connectors),
        format!("{}*", names.jobs),
        // The record index and the content indices named after it.
        format!("{record_index}*"),
    ]);
    let store = Store::detect(es.client.clone(), names.clone(), true)
        .await
        .unwrap();
    store.ensure_indices().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    let yaml = format!(
        "elasticsearch:\n  host: {host}\n  request_timeout: 30\n  retry_interval: 0.2\n  max_retries: 3\n  \
         max_wait_duration: 10\nservice:\n  idling: 1\n  heartbeat: 300\n  service_types: [test-sleeper]\n  \
         connectors_index: {c}\n  jobs_index: {j}\n  log_level: info\n{extra_service}",
        host = test_support::es_url().unwrap(),
        c = names.connectors,
        j = names.jobs,
    );
    std::fs::write(&config, yaml).unwrap();
    World {
        store,
        record_index,
        dir,
        config,
        _cleanup: cleanup,
    }
}

/// A running `connectors run`; SIGKILLed when dropped.
struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn start(world: &World, name: &str) -> Worker {
        let log = world.dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(["-c", world.config.to_str().unwrap(), "run"])
            .env("CONNECTORS_TEST_CONNECTORS", "1")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Worker { child, log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; its exit code.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                panic!("worker did not exit in {timeout:?}; logs:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli(world: &World, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["-c", world.config.to_str().unwrap()])
        .args(args)
        .env("CONNECTORS_TEST_CONNECTORS", "1")
        .output()
        .unwrap()
}

fn sleeper_config(
    world: &World,
    sleep_ms: u64,
    step_ms: u64,
    checkpoint_every: u64,
) -> Map<String, Value> {
    let field = |v: Value| {
        json!({"label": "", "order": 1, "type": "int", "display": "numeric",
        "required": false, "sensitive": false, "value": v, "default_value": null, "depends_on": [],
        "tooltip": null, "ui_restrictions": [], "validations": [], "options": []})
    };
    json!({
        "sleep_ms": field(json!(sleep_ms)),
        "step_ms": field(json!(step_ms)),
        "checkpoint_every": field(json!(checkpoint_every)),
        "fail": field(json!(false)),
        "record_index": field(json!(world.record_index)),
    })
    .as_object()
    .cloned()
    .unwrap()
}

async fn create_connector(world: &World, id: &str, configuration: Map<String, Value>) {
    let raw = new_connector_document(
        &format!("{}-content", world.record_index),
        "test-sleeper",
        id,
        configuration,
        &Default::default(),
        ConnectorStatus::Connected,
    );
    world.store.create_connector(Some(id), &raw).await.unwrap();
}

async fn create_job(world: &World, connector: &str) -> String {
    let c = world.store.connector(connector).await.unwrap();
    world
        .store
        .create_job(&c, JobType::Full, TriggerMethod::OnDemand)
        .await
        .unwrap()
}

async fn wait_for(
    what: &str,
    timeout: Duration,
    worker_logs: impl Fn() -> String,
    mut check: impl AsyncFnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; worker logs:\n{}",
                worker_logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The connector once its `last_sync_status` no longer says `in_progress` (the connector side
/// is written right after the job's end).
async fn connector_after_job(
    world: &World,
    id: &str,
) -> connector_framework::protocol::ConnectorDoc {
    for _ in 0..50 {
        let c = world.store.connector(id).await.unwrap();
        if c.last_sync_status(JobType::Full) != Some(JobStatus::InProgress) {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("connector {id} still records a running job");
}

async fn status(world: &World, job: &str) -> JobStatus {
    world.store.job(job).await.unwrap().status().unwrap()
}

/// Documents of the record index with `kind`, grouped by job id.
async fn records(
    es: &test_support::TestEs,
    index: &str,
    kind: &str,
) -> std::collections::HashMap<String, Vec<Value>> {
    es.client
        .send(HttpMethod::Post, &format!("/{index}/_refresh"), &[], None)
        .await
        .unwrap();
    let body = json!({"size": 10000, "query": {"term": {"kind.keyword": kind}}});
    let page = es
        .client
        .json(
            HttpMethod::Post,
            &format!("/{index}/_search"),
            &[],
            Some(&body),
        )
        .await
        .unwrap();
    let mut out: std::collections::HashMap<String, Vec<Value>> = Default::default();
    for hit in page["hits"]["hits"].as_array().unwrap() {
        let src = hit["_source"].clone();
        out.entry(src["job_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(src);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_run_each_of_100_jobs_exactly_once() {
    let es = test_support::es().await;
    let w = world(&es, "  max_concurrent_content_syncs: 4\n").await;
    let mut jobs = Vec::new();
    for c in 0..20 {
        let id = format!("c{c:02}");
        create_connector(&w, &id, sleeper_config(&w, 50, 25, 100)).await;
        for _ in 0..5 {
            jobs.push(create_job(&w, &id).await);
        }
    }
    assert_eq!(jobs.len(), 100);
    let t = Instant::now();
    let a = Worker::start(&w, "a");
    let b = Worker::start(&w, "b");
    let logs = || format!("--- a ---\n{}\n--- b ---\n{}", a.logs(), b.logs());
    wait_for(
        "100 completed jobs",
        Duration::from_secs(90),
        logs,
        async || {
            w.store.refresh().await.unwrap();
            let done = w
                .store
                .list_jobs(json!({"term": {"status": "completed"}}), None)
                .await
                .unwrap();
            done.len() == 100
        },
    )
    .await;
    eprintln!("100 jobs on 2 workers in {:?}", t.elapsed());
    let starts = records(&es, &w.record_index, "start").await;
    let dones = records(&es, &w.record_index, "done").await;
    assert_eq!(dones.len(), 100);
    assert_eq!(starts.len(), 100);
    for job in &jobs {
        assert_eq!(starts[job].len(), 1, "job {job} started more than once");
        assert_eq!(dones[job].len(), 1);
    }
    let workers: std::collections::HashSet<String> = w
        .store
        .list_jobs(json!({"match_all": {}}), None)
        .await
        .unwrap()
        .iter()
        .map(|j| j.worker_hostname().unwrap_or_default().to_owned())
        .collect();
    assert!(!workers.contains(""));
    let mut a = a;
    let mut b = b;
    a.sigterm();
    b.sigterm();
    assert_eq!(a.wait(Duration::from_secs(20)), Some(0), "{}", a.logs());
    assert_eq!(b.wait(Duration::from_secs(20)), Some(0), "{}", b.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_suspends_and_a_new_worker_resumes_from_the_checkpoint() {
    let es = test_support::es().await;
    let w = world(&es, "").await;
    create_connector(&w, "long", sleeper_config(&w, 3000, 100, 5)).await;
    let job = create_job(&w, "long").await;
    let mut a = Worker::start(&w, "a");
    wait_for(
        "a checkpoint",
        Duration::from_secs(30),
        || a.logs(),
        async || {
            let j = w.store.job(&job).await.unwrap();
            j.checkpoint().and_then(|c| c["step"].as_u64()).unwrap_or(0) >= 5
        },
    )
    .await;
    a.sigterm();
    assert_eq!(a.wait(Duration::from_secs(20)), Some(0), "{}", a.logs());
    let j = w.store.job(&job).await.unwrap();
    assert_eq!(j.status().unwrap(), JobStatus::Suspended, "{}", a.logs());
    let saved = j.checkpoint().unwrap()["step"].as_u64().unwrap();
    assert!(saved >= 5);
    let c = w.store.connector("long").await.unwrap();
    assert_eq!(
        c.last_sync_status(JobType::Full),
        Some(JobStatus::Suspended)
    );

    let b = Worker::start(&w, "b");
    wait_for(
        "the resumed job to complete",
        Duration::from_secs(30),
        || b.logs(),
        async || status(&w, &job).await == JobStatus::Completed,
    )
    .await;
    let starts = records(&es, &w.record_index, "start").await;
    let runs = &starts[&job];
    assert_eq!(runs.len(), 2, "{runs:?}");
    let resumed_from: Vec<u64> = runs
        .iter()
        .filter_map(|r| r["checkpoint"]["step"].as_u64())
        .collect();
    assert_eq!(
        resumed_from,
        vec![saved],
        "the second run got the stored checkpoint"
    );
    assert_eq!(
        w.store.job(&job).await.unwrap().indexed_document_count(),
        30
    );
}

/// `service.worker_threads` sizes the service's runtime (the start-up line reports it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_size_the_runtime() {
    let es = test_support::es().await;
    for n in [1, 3] {
        let w = world(&es, &format!("  worker_threads: {n}\n")).await;
        let worker = Worker::start(&w, "a");
        wait_for(
            "the service to start",
            Duration::from_secs(30),
            || worker.logs(),
            async || worker.logs().contains("connectors service started"),
        )
        .await;
        let logs = worker.logs();
        let line = logs
            .lines()
            .find(|l| l.contains("connectors service started"))
            .unwrap_or_default();
        assert!(line.contains(&format!("worker_threads={n}")), "{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_leaves_no_job_stuck_in_progress() {
    let es = test_support::es().await;
    let w = world(&es, "  job_stale_threshold: 3\n  job_cleanup_interval: 1\n").await;
    create_connector(&w, "victim", sleeper_config(&w, 60_000, 100, 10)).await;
    let job = create_job(&w, "victim").await;
    let mut a = Worker::start(&w, "a");
    wait_for(
        "the job to run",
        Duration::from_secs(30),
        || a.logs(),
        async || status(&w, &job).await == JobStatus::InProgress,
    )
    .await;
    a.child.kill().unwrap(); // SIGKILL
    a.wait(Duration::from_secs(5));
    let t = Instant::now();
    let b = Worker::start(&w, "b");
    wait_for(
        "cleanup of the dead worker's job",
        Duration::from_secs(20),
        || b.logs(),
        async || status(&w, &job).await == JobStatus::Error,
    )
    .await;
    eprintln!("dead job cleaned up {:?} after the kill", t.elapsed());
    let j = w.store.job(&job).await.unwrap();
    assert_eq!(
        j.error(),
        Some(connector_framework::service::cleanup::STALE_JOB_ERROR)
    );
    let c = connector_after_job(&w, "victim").await;
    assert_eq!(c.last_sync_status(JobType::Full), Some(JobStatus::Error));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_the_cli() {
    let es = test_support::es().await;
    // Port 0: the system picks a free one and the service logs where it listens (a fixed
    // port was once taken by another process of the suite).
    let w = world(&es, "  metrics_address: 127.0.0.1:0\n").await;
    create_connector(&w, "x", sleeper_config(&w, 60_000, 100, 10)).await;

    // Pending job: canceled at once, no worker needed (W9).
    let out = cli(&w, &["--json", "sync", "start", "x", "--type", "full"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = cli(&w, &["job", "cancel", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(status(&w, &id).await, JobStatus::Canceled);
    // A finished job cannot be canceled: non-zero exit, one line.
    let out = cli(&w, &["job", "cancel", &id]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("illegal job status transition"), "{err}");

    // Running job: canceled within 10 s.
    let running = create_job(&w, "x").await;
    let worker = Worker::start(&w, "a");
    wait_for(
        "the job to run",
        Duration::from_secs(30),
        || worker.logs(),
        async || status(&w, &running).await == JobStatus::InProgress,
    )
    .await;
    let t = Instant::now();
    let out = cli(&w, &["job", "cancel", &running]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "cancellation",
        Duration::from_secs(10),
        || worker.logs(),
        async || status(&w, &running).await == JobStatus::Canceled,
    )
    .await;
    eprintln!("running job canceled in {:?}", t.elapsed());
    let c = connector_after_job(&w, "x").await;
    assert_eq!(c.last_sync_status(JobType::Full), Some(JobStatus::Canceled));

    // The health and metrics endpoint of the worker, where its log says it listens.
    let logs = worker.logs();
    let address = logs
        .lines()
        .find(|l| l.contains("serving /metrics"))
        .and_then(|l| l.split("address=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .unwrap_or_else(|| panic!("no metrics address in the worker's log:\n{logs}"))
        .to_owned();
    let get = |path: &str| {
        let out = Command::new("curl")
            .args(["-s", &format!("http://{address}{path}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(get("/readyz"), "ready", "{}", worker.logs());
    assert_eq!(get("/healthz"), "ok");
    let metrics = get("/metrics");
    assert!(metrics.contains("connectors_jobs_running"), "{metrics}");

    // The canceled job gave its slot back (one content slot by default): a new job runs.
    create_connector(&w, "y", sleeper_config(&w, 100, 50, 10)).await;
    let next = create_job(&w, "y").await;
    wait_for(
        "the next job",
        Duration::from_secs(15),
        || worker.logs(),
        async || status(&w, &next).await == JobStatus::Completed,
    )
    .await;
    let metrics = get("/metrics");
    assert!(
        metrics.contains("connectors_jobs_finished_total{job_type=\"full\",status=\"canceled\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_manages_connectors_and_waits_for_syncs() {
    let es = test_support::es().await;
    let w = world(&es, "").await;
    let index = format!("{}-content", w.record_index);
    let out = cli(
        &w,
        &[
            "--json",
            "connector",
            "create",
            "--id",
            "cli-1",
            "--index-name",
            &index,
            "--service-type",
            "test-sleeper",
            "--set",
            "sleep_ms=200",
            "--set",
            &format!("record_index={}", w.record_index),
            "--schedule",
            "full=0 0 0 1 1 ?",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["id"], "cli-1");
    assert_eq!(created["status"], "configured");
    assert_eq!(created["index_name"], index.as_str());
    assert_eq!(created["index_created"], true);
    let c = w.store.connector("cli-1").await.unwrap();
    assert_eq!(c.configuration()["sleep_ms"]["value"], 200);
    assert_eq!(
        c.schedule(JobType::Full),
        (true, Some("0 0 0 1 1 ?".into()))
    );

    // As Elastic's `connector create`: the content index is created with the connector's
    // mappings, and an index that exists or that another connector writes is refused.
    let store_es = w.store.es();
    let es_ok = |method, path: String| async move {
        let resp = store_es.send(method, &path, &[], None).await.unwrap();
        assert!(resp.is_success(), "{path}: {}", resp.body);
        resp
    };
    let mapping = es_ok(HttpMethod::Get, format!("/{index}/_mapping")).await;
    assert_eq!(
        mapping.body[&index]["mappings"]["dynamic_templates"][0]["data"]["match_mapping_type"],
        "string",
        "{}",
        mapping.body
    );
    let other = format!("{}-other", w.record_index);
    es_ok(HttpMethod::Put, format!("/{other}")).await;
    let create_json = |id: &'static str, index: &str, extra: &[&'static str]| {
        let mut args = vec![
            "--json",
            "connector",
            "create",
            "--id",
            id,
            "--index-name",
            index,
            "--service-type",
            "test-sleeper",
        ];
        args.extend_from_slice(extra);
        cli(&w, &args)
    };
    let create = |id: &'static str, index: &str, extra: &[&'static str]| {
        let out = create_json(id, index, extra);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = create("cli-2", &index, &["--from-index"]);
    assert!(
        !ok && err.contains("content index of connector cli-1"),
        "{err}"
    );
    let (ok, err) = create("cli-2", &other, &[]);
    assert!(!ok && err.contains("--from-index"), "{err}");
    let missing = format!("{}-missing", w.record_index);
    let (ok, err) = create("cli-2", &missing, &["--from-index"]);
    assert!(!ok && err.contains("does not exist"), "{err}");
    let (ok, err) = create("cli-2", &missing, &["--index-language", "xx"]);
    assert!(!ok && err.contains("--index-language"), "{err}");
    let es = w.store.es();
    assert!(
        !index_exists(es, &missing).await.unwrap(),
        "a refused create made no index"
    );
    // An id that is taken: the index made for it is removed again.
    let (ok, _) = create("cli-1", &missing, &[]);
    assert!(!ok);
    assert!(!index_exists(es, &missing).await.unwrap());
    let out = create_json("cli-2", &other, &["--from-index"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["index_created"], false, "{created}");
    assert_eq!(
        w.store.connector("cli-2").await.unwrap().index_name(),
        Some(other.as_str())
    );

    // Bad inputs: one-line errors, non-zero exit.
    for args in [
        vec!["connector", "configure", "cli-1", "--set", "nope=1"],
        vec![
            "connector",
            "configure",
            "cli-1",
            "--schedule",
            "full=every day",
        ],
        vec!["connector", "show", "missing"],
        vec!["sync", "start", "cli-1", "--type", "weekly"],
    ] {
        let out = cli(&w, &args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(!String::from_utf8_lossy(&out.stderr).trim().is_empty());
    }

    let out = cli(&w, &["connector", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("cli-1") && table.contains("test-sleeper"),
        "{table}"
    );

    let worker = Worker::start(&w, "a");
    let out = cli(&w, &["sync", "start", "cli-1", "--wait", "--timeout", "30"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        worker.logs()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("completed"));

    let out = cli(
        &w,
        &["connector", "configure", "cli-1", "--set", "fail=true"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&w, &["sync", "start", "cli-1", "--wait", "--timeout", "30"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed on demand"));

    let out = cli(&w, &["--json", "job", "list", "--connector", "cli-1"]);
    let jobs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 2);
    assert_eq!(jobs[0]["status"], "completed");
    assert_eq!(jobs[1]["status"], "error");

    let out = cli(&w, &["connector", "delete", "cli-1"]);
    assert!(out.status.success());
    assert!(w.store.connector("cli-1").await.unwrap().is_deleted());
}

fn check(config: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["-c", config.to_str().unwrap(), "config", "check"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn config_check_exit_codes_and_key_paths() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yml");
    std::fs::write(
        &file,
        "elasticsearch:\n  host: http://es:9200\nconnectors:\n  - connector_id: abc\n    service_type: gmail\n",
    )
    .unwrap();
    let out = check(&file, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("configuration is valid") && stdout.contains("abc"),
        "{stdout}"
    );

    // Environment override is applied.
    let out = Command::new(BIN)
        .args(["--json", "-c", file.to_str().unwrap(), "config", "check"])
        .env("CONNECTORS_ELASTICSEARCH__HOST", "http://other:9201")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["elasticsearch"], "http://other:9201");

    let out = check(&file, &[("CONNECTORS_SERVICE__IDLING", "soon")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("service.idling"), "{err}");
    assert!(err.contains("CONNECTORS_SERVICE__IDLING"), "{err}");

    std::fs::write(&file, "elasticsearch:\n  bulk:\n    chunk_sise: 10\n").unwrap();
    let out = check(&file, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("elasticsearch.bulk.chunk_sise") && err.contains("unknown key"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    std::fs::write(&file, "service:\n  max_concurrent_content_syncs: many\n").unwrap();
    let out = check(&file, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("service.max_concurrent_content_syncs"),
        "{err}"
    );

    let out = check(&dir.path().join("missing.yml"), &[]);
    assert!(!out.status.success());
}

/// `service.worker_threads: 18446744073709551615` (or any count the runtime cannot be built
/// with) panicked the binary in tokio's builder before the configuration error was reported.
#[test]
fn a_huge_worker_thread_count_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yml");
    for n in ["18446744073709551615", "1000000000000"] {
        std::fs::write(&file, format!("service:\n  worker_threads: {n}\n")).unwrap();
        let out = check(&file, &[]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains("service.worker_threads"), "{err}");
    }
}
