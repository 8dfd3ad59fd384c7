//! `cargo xtask demo`: the main job, end to end on this machine.
//!
//! A local Elasticsearch, the Google Workspace simulator with a seeded tenant, a Gmail connector
//! configured with the simulator's service-account key, the `connectors` service, a full sync with
//! progress, a few mailbox changes and an incremental sync, an access-control sync, then counts, a
//! sample search and a DLS check.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{cargo, engine, paths};

const CONNECTOR_ID: &str = "demo-gmail";
const INDEX: &str = "search-demo-gmail";
const USERS: u32 = 8;
const MESSAGES_PER_USER: u32 = 150;

struct Guard(Vec<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        for child in &mut self.0 {
            // SIGTERM first: the service suspends its jobs on it.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into()
}

fn get_json(url: &str) -> Result<Value> {
    let mut resp = agent()
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body: Value = resp
        .body_mut()
        .read_json()
        .with_context(|| format!("GET {url}: body"))?;
    if !status.is_success() {
        bail!("GET {url}: {status} {body}");
    }
    Ok(body)
}

fn post_json(url: &str, body: &Value) -> Result<Value> {
    let mut resp = agent()
        .post(url)
        .send_json(body)
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let answer: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST {url}: {status} {answer}");
    }
    Ok(answer)
}

/// `connectors sync start <demo connector> --type <job_type> --wait` (a progress line on stderr).
fn sync(bin: &Path, config: &Path, job_type: &str) -> Result<()> {
    connectors(
        bin,
        config,
        &[
            "sync",
            "start",
            CONNECTOR_ID,
            "--type",
            job_type,
            "--wait",
            "--timeout",
            "300",
        ],
    )
}

fn connectors(bin: &Path, config: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(bin)
        .arg("--config")
        .arg(config)
        .args(args)
        .status()
        .with_context(|| format!("connectors {}", args.join(" ")))?;
    if !status.success() {
        bail!("`connectors {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn count(es: &str, index: &str) -> Result<u64> {
    agent()
        .post(&format!("{es}/{index}/_refresh"))
        .send_empty()
        .with_context(|| format!("refresh {index}"))?;
    let body = get_json(&format!("{es}/{index}/_count"))?;
    body["count"].as_u64().context("no count")
}

/// Documents in the content index and in the simulator's ground truth; printed.
fn compare(es: &str, sim_url: &str) -> Result<(u64, u64)> {
    let expected: Value = post_json(
        &format!("{sim_url}/__admin/expected-docs"),
        &json!({"includeSpamAndTrash": false}),
    )?;
    let expected = expected.as_array().map_or(0, Vec::len) as u64;
    let indexed = count(es, INDEX)?;
    eprintln!("    index: {indexed} documents, simulator ground truth: {expected}");
    Ok((indexed, expected))
}

pub fn run() -> Result<()> {
    let started = Instant::now();
    // 1. Binaries (debug: the demo is small, a release build would take longer than the demo).
    eprintln!("==> building connectors and gws-sim");
    let status = cargo()
        .args([
            "build",
            "--quiet",
            "-p",
            "connectors",
            "-p",
            "google-workspace-sim",
        ])
        .status()?;
    if !status.success() {
        bail!("build failed");
    }
    let target = paths::target_dir();
    let bin = target.join("debug").join("connectors");
    let sim_bin = target.join("debug").join("gws-sim");

    // 2. A node.
    let es = match std::env::var("ES_URL").ok().filter(|u| !u.is_empty()) {
        Some(url) => url,
        None => engine::up(engine::Engine::resolve(None)?)?.url,
    };
    let work = paths::root().join(".state").join("demo");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;

    // 3. The simulator, seeded.
    eprintln!(
        "==> starting the Google Workspace simulator ({USERS} users x {MESSAGES_PER_USER} messages)"
    );
    let key_file = work.join("service-account.json");
    let mut sim = Command::new(&sim_bin)
        .args(["--port", "0", "--users", &USERS.to_string()])
        .args([
            "--messages-per-user",
            &MESSAGES_PER_USER.to_string(),
            "--seed",
            "7",
        ])
        .args(["--quota", "on", "--key-out"])
        .arg(&key_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("gws-sim")?;
    let mut line = String::new();
    BufReader::new(sim.stdout.take().context("sim stdout")?).read_line(&mut line)?;
    let sim_url = line.trim().trim_end_matches('/').to_owned();
    let mut guard = Guard(vec![sim]);
    let tenant = get_json(&format!("{sim_url}/__admin/tenant"))?;
    let admin = tenant["adminEmail"]
        .as_str()
        .context("adminEmail")?
        .to_owned();
    let customer = tenant["customerId"]
        .as_str()
        .context("customerId")?
        .to_owned();
    eprintln!("    simulator at {sim_url}, admin {admin}, customer {customer}");

    // 4. Service configuration and the connector.
    let config = work.join("config.yml");
    fs::write(
        &config,
        format!(
            "elasticsearch:\n  host: {es}\nservice:\n  idling: 1\n  heartbeat: 10\n  job_cleanup_interval: 30\n\
             connectors:\n  - connector_id: {CONNECTOR_ID}\n    service_type: gmail\n"
        ),
    )?;
    // A fresh demo each run.
    let _ = agent().delete(&format!("{es}/{INDEX}")).call();
    let _ = agent()
        .delete(&format!("{es}/.search-acl-filter-{INDEX}"))
        .call();
    let _ = agent()
        .delete(&format!("{es}/.elastic-connectors/_doc/{CONNECTOR_ID}"))
        .call();
    let key = fs::read_to_string(&key_file).context("service-account key")?;
    eprintln!("==> creating the gmail connector {CONNECTOR_ID}");
    connectors(
        &bin,
        &config,
        &[
            "connector",
            "create",
            "--id",
            CONNECTOR_ID,
            "--index-name",
            INDEX,
            "--service-type",
            "gmail",
            "--name",
            "Gmail (demo)",
            "--set",
            &format!(
                "service_account_credentials={}",
                serde_json::to_string(&key)?
            ),
            "--set",
            &format!("subject={admin}"),
            "--set",
            &format!("customer_id={customer}"),
            "--set",
            &format!("google_api_base_url={sim_url}"),
            "--set",
            "use_document_level_security=true",
        ],
    )?;

    // 5. The service.
    eprintln!(
        "==> starting `connectors run` (logs in {})",
        work.join("service.log").display()
    );
    let log = fs::File::create(work.join("service.log"))?;
    let service = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("connectors run")?;
    guard.0.insert(0, service);

    // 6. Full sync with progress.
    eprintln!("==> full sync");
    sync(&bin, &config, "full")?;
    let (after_full, expected_full) = compare(&es, &sim_url)?;

    // 7. Mailbox changes, then an incremental sync.
    let users: Vec<String> = tenant["users"]
        .as_array()
        .map(|u| {
            u.iter()
                .filter(|u| u["suspended"] != json!(true))
                .filter_map(|u| u["primaryEmail"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut mutations = Vec::new();
    for user in users.iter().take(3) {
        let msgs = get_json(&format!("{sim_url}/__admin/users/{user}/messages"))?;
        let ids: Vec<String> = msgs
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|m| m["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if ids.len() < 3 {
            continue;
        }
        mutations.push(json!({"op": "addMessage", "user": user, "labels": ["INBOX"]}));
        mutations.push(json!({"op": "delete", "user": user, "id": ids[0]}));
        mutations.push(json!({"op": "trash", "user": user, "id": ids[1]}));
    }
    post_json(
        &format!("{sim_url}/__admin/mutations"),
        &Value::Array(mutations.clone()),
    )?;
    eprintln!(
        "==> {} mailbox changes applied; incremental sync",
        mutations.len()
    );
    sync(&bin, &config, "incremental")?;
    let (after_incr, expected_incr) = compare(&es, &sim_url)?;

    // 8. Identities for DLS.
    eprintln!("==> access-control sync");
    sync(&bin, &config, "access_control")?;

    // 9. Results.
    let acl_index = format!(".search-acl-filter-{INDEX}");
    let identities = count(&es, &acl_index)?;
    let sample = post_json(
        &format!("{es}/{INDEX}/_search"),
        &json!({"size": 3, "query": {"match": {"subject": "meeting"}}, "_source": ["subject", "from", "mailbox"]}),
    )?;
    println!("\n==> results");
    println!("documents after full sync:        {after_full} (ground truth {expected_full})");
    println!("documents after incremental sync: {after_incr} (ground truth {expected_incr})");
    println!("identities in {acl_index}: {identities}");
    println!(
        "sample search `subject: meeting`: {} hits",
        sample["hits"]["total"]["value"]
    );
    for hit in sample["hits"]["hits"].as_array().into_iter().flatten() {
        println!("  - {}", hit["_source"]);
    }

    // DLS: the role query of user A's identity document filters the content index.
    let user_a = users.first().context("no active user")?;
    let identity = get_json(&format!("{es}/{acl_index}/_doc/{user_a}"))?;
    // Render the identity's role-query template (the `{{#toJson}}` section Elasticsearch's
    // mustache would render), exactly as a search application applies it.
    let template = &identity["_source"]["query"]["template"];
    let source = template["source"]
        .as_str()
        .context("identity has no query template")?;
    let rendered = source.replace(
        "{{#toJson}}access_control{{/toJson}}",
        &template["params"]["access_control"].to_string(),
    );
    let dls_query: Value = serde_json::from_str(&rendered).context("rendered role query")?;
    let filtered = post_json(
        &format!("{es}/{INDEX}/_search"),
        &json!({"size": 1000, "query": dls_query, "_source": ["_allow_access_control", "mailbox"]}),
    )?;
    let hits = filtered["hits"]["hits"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let foreign = hits
        .iter()
        .filter(|h| {
            !h["_source"]["_allow_access_control"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(user_a)))
        })
        .count();
    println!(
        "DLS check for {user_a}: {} documents visible, {foreign} of them not {user_a}'s",
        filtered["hits"]["total"]["value"]
    );
    drop(guard);
    println!(
        "\ndone in {:.0} s; the node keeps running at {es} (`cargo xtask es down` stops it)",
        started.elapsed().as_secs_f64()
    );
    if after_full != expected_full || after_incr != expected_incr || foreign != 0 || identities == 0
    {
        bail!("the demo's checks failed (see above)");
    }
    Ok(())
}
