//! Operating the service: `/metrics` agrees with the job documents, logs carry the job's ids and
//! never a secret, a sync's trace reaches an OTLP collector.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use connector_framework::{
    es::HttpMethod,
    telemetry::otel::{ENDPOINT_ENV, SDK_DISABLED_ENV},
};
use google_workspace_sim::{QuotaConfig, SimConfig, Simulator};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_connectors");

use test_support::{
    Cleanup,
    otlp::{Collector, SpanKind, Trace, int_attr, str_attr},
};

struct Service {
    child: Child,
}

impl Service {
    /// SIGTERM (a graceful stop), then the exit code once the process ended within `timeout`.
    async fn stop(mut self, timeout: Duration) -> Option<i32> {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM failed");
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
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
    cmd.arg("-c")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove(ENDPOINT_ENV)
        .env_remove(SDK_DISABLED_ENV);
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

/// `connectors --json sync start <id> --type full --wait`: the finished job as JSON.
fn full_sync(config: &Path, env: &[(&str, &str)], connector_id: &str) -> (Output, Value) {
    let out = cli(
        config,
        env,
        &[
            "--json",
            "sync",
            "start",
            connector_id,
            "--type",
            "full",
            "--wait",
            "--timeout",
            "120",
        ],
    );
    let job = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no job JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, job)
}

/// A full sync that must succeed.
fn completed_full_sync(config: &Path, env: &[(&str, &str)], connector_id: &str) -> Value {
    let (out, job) = full_sync(config, env, connector_id);
    ok(&out);
    assert_eq!(job["status"], "completed", "{job}");
    job
}

fn start(config: &Path, env: &[(&str, &str)], log: &Path) -> Service {
    let file = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("-c")
        .arg(config)
        .arg("run")
        .env_remove("RUST_LOG")
        .env_remove(ENDPOINT_ENV)
        .env_remove(SDK_DISABLED_ENV);
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
    jobs_index: String,
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
        jobs_index: jobs,
    }
}

/// `connector create` of a gmail connector reading the simulator's Workspace.
fn create_gmail_connector(
    w: &World,
    env: &[(&str, &str)],
    connector_id: &str,
    sim: &Simulator,
) -> Output {
    cli(
        &w.config,
        env,
        &[
            "connector",
            "create",
            "--id",
            connector_id,
            "--index-name",
            &w.content_index,
            "--service-type",
            "gmail",
            "--set",
            &format!(
                "service_account_credentials={}",
                serde_json::to_string(&sim.service_account_key_json()).unwrap()
            ),
            "--set",
            &format!("subject={}", sim.admin_email()),
            "--set",
            &format!("customer_id={}", sim.customer_id()),
            "--set",
            &format!("google_api_base_url={}", sim.base_url()),
        ],
    )
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
    let job = completed_full_sync(&w.config, &env, &connector_id);
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
    let sim = Simulator::start(SimConfig {
        users: 2,
        messages_per_user: 5,
        quota: QuotaConfig::off(),
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
    let create = create_gmail_connector(&w, &env, &connector_id, &sim);
    ok(&create);
    let log = w.dir.path().join("service.log");
    let service = start(&w.config, &env, &log);
    // Its stderr (trace-level client logs) is searched for secrets too.
    let (full, job) = full_sync(&w.config, &env, &connector_id);
    ok(&full);
    assert_eq!(job["status"], "completed", "{job}");
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

#[tokio::test(flavor = "multi_thread")]
async fn a_gmail_sync_exports_its_trace_over_otlp() {
    test_support::init();
    let (collector, addr) = Collector::start().await;
    let sim = Simulator::start(SimConfig {
        users: 4,
        messages_per_user: 6,
        quota: QuotaConfig::off(),
        shared_thread_ratio: 0.0,
        suspended_every: 0,
        // A user without a mailbox: listed by the Directory, no mailbox span.
        users_without_mailbox: vec![3],
        ..Default::default()
    })
    .await
    .unwrap();
    let es = test_support::es().await;
    let w = world(&es, "gmail", "");
    let connector_id = es.unique_name("traced");
    ok(&create_gmail_connector(&w, &[], &connector_id, &sim));

    // Only the service exports; the command-line invocations run without an endpoint.
    let endpoint = format!("http://{addr}");
    let log = w.dir.path().join("service.log");
    let service = start(&w.config, &[(ENDPOINT_ENV, &endpoint)], &log);
    let job = completed_full_sync(&w.config, &[], &connector_id);
    let indexed = job["indexed_document_count"].as_i64().unwrap();
    assert!(indexed > 0);
    // A graceful stop flushes the spans still batched.
    let code = service.stop(Duration::from_secs(60)).await;
    assert_eq!(
        code,
        Some(0),
        "service did not stop cleanly:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // The job's id as stored in Elasticsearch.
    es.client
        .json(
            HttpMethod::Post,
            &format!("/{}/_refresh", w.jobs_index),
            &[],
            None,
        )
        .await
        .unwrap();
    let found = es
        .client
        .json(
            HttpMethod::Post,
            &format!("/{}/_search", w.jobs_index),
            &[],
            Some(&json!({"query": {"term": {"connector.id": connector_id}}})),
        )
        .await
        .unwrap();
    let hits = found["hits"]["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{found}");
    let job_id = hits[0]["_id"].as_str().unwrap();
    assert_eq!(job["id"], job_id);

    let spans = collector.spans();
    let names: Vec<&str> = spans.iter().map(|r| r.span.name.as_str()).collect();
    let job_span = spans
        .iter()
        .map(|r| &r.span)
        .find(|s| s.name == "job" && str_attr(&s.attributes, "job_id") == Some(job_id))
        .unwrap_or_else(|| panic!("no job span for {job_id} among {names:?}"));
    let a = &job_span.attributes;
    assert_eq!(str_attr(a, "connector_id"), Some(connector_id.as_str()));
    assert_eq!(str_attr(a, "service_type"), Some("gmail"));
    assert_eq!(str_attr(a, "job_type"), Some("full"));
    assert!(job_span.parent_span_id.is_empty(), "the job is a root span");
    let trace = Trace::new(&spans, &job_span.trace_id);

    // Every mailbox and bulk span belongs to the job's trace (one job ran in this process), and
    // so does every request to Google except the connector's validation by the scheduler, which
    // runs outside any job (each such request is a trace of its own).
    let of_job = |s: &&test_support::otlp::Span| s.trace_id == job_span.trace_id;
    let all: Vec<_> = spans.iter().map(|r| &r.span).collect();
    for s in &all {
        if matches!(s.name.as_str(), "mailbox" | "bulk") {
            assert!(of_job(s), "{} outside the job's trace", s.name);
        }
        if of_job(s) && s.span_id != job_span.span_id {
            assert!(
                trace.descends_from(s, job_span),
                "{} not under the job",
                s.name
            );
        }
        if s.kind == SpanKind::Client as i32 && !of_job(s) {
            assert!(s.parent_span_id.is_empty(), "{} in another trace", s.name);
        }
    }
    let sync_spans: Vec<_> = all.iter().copied().filter(of_job).collect();

    // One mailbox span per user with mail; together they produced every document.
    let expected: BTreeSet<String> = sim
        .users()
        .into_iter()
        .filter(|u| u.is_mailbox_setup && !u.suspended)
        .map(|u| u.primary_email.to_ascii_lowercase())
        .collect();
    assert_eq!(expected.len(), 3);
    let mailboxes: Vec<_> = sync_spans.iter().filter(|s| s.name == "mailbox").collect();
    let got: BTreeSet<String> = mailboxes
        .iter()
        .map(|s| str_attr(&s.attributes, "mailbox").unwrap().to_owned())
        .collect();
    assert_eq!(got, expected);
    assert_eq!(mailboxes.len(), expected.len());
    let documents: i64 = mailboxes
        .iter()
        .map(|s| int_attr(&s.attributes, "documents").unwrap())
        .sum();
    assert_eq!(documents, indexed);

    // Bulk requests into the content index, all applied.
    let bulks: Vec<_> = sync_spans.iter().filter(|s| s.name == "bulk").collect();
    assert!(!bulks.is_empty(), "no bulk span among {names:?}");
    let mut operations = 0;
    for b in &bulks {
        let a = &b.attributes;
        assert_eq!(str_attr(a, "index_name"), Some(w.content_index.as_str()));
        assert_eq!(int_attr(a, "http.response.status_code"), Some(200));
        assert_eq!(int_attr(a, "failed_items"), Some(0));
        operations += int_attr(a, "operations").unwrap();
    }
    assert!(
        operations >= indexed,
        "{operations} operations for {indexed} documents"
    );

    // Outbound requests to Google: client spans with their status, never a query string.
    let requests: Vec<_> = sync_spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    for r in all.iter().filter(|s| s.kind == SpanKind::Client as i32) {
        let path = str_attr(&r.attributes, "url.path").unwrap();
        assert!(!path.contains('?'), "query string in url.path: {path}");
    }
    let token_url = sim.token_url();
    let token_path = token_url.strip_prefix(&sim.base_url()).unwrap();
    let (mut tokens, mut directory, mut gmail) = (0, 0, 0);
    for r in &requests {
        let a = &r.attributes;
        let method = str_attr(a, "http.request.method").unwrap();
        let path = str_attr(a, "url.path").unwrap();
        assert_eq!(r.name, method);
        assert!(!path.contains('?'), "query string in url.path: {path}");
        assert!(str_attr(a, "url.full").is_none() && str_attr(a, "url.query").is_none());
        assert_eq!(str_attr(a, "server.address"), Some("127.0.0.1"));
        assert_eq!(
            int_attr(a, "http.response.status_code"),
            Some(200),
            "{path}"
        );
        let mailbox = trace
            .ancestor_named(r, "mailbox")
            .and_then(|m| str_attr(&m.attributes, "mailbox"));
        if method == "POST" && path == token_path {
            tokens += 1;
        } else if path.starts_with("/admin/directory/") {
            directory += 1;
            assert_eq!(mailbox, None, "the directory is listed for the job");
        } else {
            // `/gmail/v1/users/{mailbox}/…`, made for that mailbox.
            gmail += 1;
            let user = path.split('/').nth(4).unwrap_or_default();
            assert_eq!(mailbox, Some(user), "{path}");
        }
    }
    eprintln!(
        "job trace: {} mailbox, {} bulk, {} http spans ({tokens} token, {directory} directory, \
         {gmail} gmail requests); {} spans received in all",
        mailboxes.len(),
        bulks.len(),
        requests.len(),
        spans.len()
    );
    assert!(
        tokens >= 4,
        "one token per mailbox plus the directory's: {tokens}"
    );
    assert!(directory >= 1);
    // At least a profile, a listing and one message per mailbox.
    assert!(gmail >= 3 * 3, "{gmail} gmail requests");
    sim.shutdown().await;
}

/// Domain-wide delegation revoked while the service runs: the next sync fails, the connector
/// document says which field to fix, the service keeps running, and once the grant is back the
/// next sync completes and the error is cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_delegation_is_shown_on_the_connector_and_the_service_keeps_running() {
    test_support::init();
    let sim = Simulator::start(SimConfig {
        users: 3,
        messages_per_user: 5,
        quota: QuotaConfig::off(),
        ..Default::default()
    })
    .await
    .unwrap();
    let es = test_support::es().await;
    let metrics_port = free_port();
    let w = world(&es, "gmail", "");
    let connector_id = es.unique_name("revoked");
    ok(&create_gmail_connector(&w, &[], &connector_id, &sim));
    let log = w.dir.path().join("service.log");
    let metrics = format!("127.0.0.1:{metrics_port}");
    let mut service = start(
        &w.config,
        &[("CONNECTORS_SERVICE__METRICS_ADDRESS", &metrics)],
        &log,
    );
    let show = || -> Value {
        let shown: Value = serde_json::from_str(&ok(&cli(
            &w.config,
            &[],
            &["--json", "connector", "show", &connector_id],
        )))
        .unwrap();
        shown["connector"].clone()
    };

    completed_full_sync(&w.config, &[], &connector_id);

    // The Workspace admin removes the grant; tokens already issued stop working too.
    sim.set_delegation(&sim.client_id(), Vec::new());
    sim.revoke_tokens(None);
    let (_, job) = full_sync(&w.config, &[], &connector_id);
    assert_eq!(job["status"], "error", "{job}");
    let connector = show();
    let error = connector["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains("service_account_credentials"),
        "the connector's error names the field to fix: {connector}"
    );
    assert!(
        error.to_ascii_lowercase().contains("delegation"),
        "and says what is wrong: {error}"
    );
    assert_eq!(connector["status"], "error", "{connector}");
    // Still serving: the process runs and its probes answer.
    assert!(
        service.child.try_wait().unwrap().is_none(),
        "the service exited"
    );
    let (status, _) = http_get(&format!("http://127.0.0.1:{metrics_port}/healthz"))
        .await
        .expect("healthz answers");
    assert_eq!(status, 200);

    // Grant restored: the next sync completes and the connector's error is cleared.
    sim.set_delegation(
        &sim.client_id(),
        vec![
            google_workspace_sim::SCOPE_GMAIL_READONLY.to_owned(),
            google_workspace_sim::SCOPE_DIRECTORY_READONLY.to_owned(),
        ],
    );
    completed_full_sync(&w.config, &[], &connector_id);
    let connector = show();
    assert!(connector["error"].is_null(), "{connector}");
    assert_eq!(connector["status"], "connected", "{connector}");
    let code = service.stop(Duration::from_secs(60)).await;
    assert_eq!(
        code,
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
