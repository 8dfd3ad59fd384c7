//! Gmail full-sync benchmark: the Google Workspace simulator in a process of its own, the
//! connector run through the framework exactly as the service runs it (`erase(connector())` +
//! `run_job`), into a fresh index on the Elasticsearch node at `ES_URL`.
//!
//! ```text
//! cargo xtask bench gmail -- --users 50 --messages 2000 --quota on --seed 1
//! cargo xtask bench gmail -- --users 50 --messages 2000 --quota off   # + raw _bulk ceiling
//! cargo xtask bench gmail -- --growth                                 # 10 then 50 users x 2,000
//! cargo xtask bench gmail -- --quota off --split-cores   # node on CPU 0, this on CPU 1 (xtask)
//! ```
//!
//! Quota off lifts both the simulator's quota and the connector's own per-mailbox limiter.
//! `RUST_LOG=<level>` prints the service's log lines on stderr. Figures and how to read them:
//! `docs/benchmarks.md`.
//!
//! Options: `--users N` (50), `--messages M` per mailbox (2000), `--quota on|off` (on),
//! `--seed S` (1), `--growth` (phases of `--growth-users 10,50` users x `--messages`),
//! `--sim-threads T` (2: worker threads of the simulator's own runtime), `--worker-threads N`
//! (the connector's runtime workers, as `service.worker_threads` sets them in the service; one
//! per CPU when not given), `--batch B` (the
//! connector's `messages_per_batch_request`; default 1 with the quota on — the connector's
//! default —, 8 with it off), `--mailboxes N` and `--requests N` (the connector's
//! `max_concurrent_mailboxes` and `max_concurrent_requests`; every mailbox and 8 requests per
//! mailbox within 64 ..= 1024), `--paced-ceiling` (after the ceiling runs, one more run paced at
//! the sync's rate: what the node spends per document at the sync's pace, `paced_ceiling_*`
//! keys), `--no-ceiling`, `--warmup W` (10: before a single run, quota on
//! or off, quota-off syncs of W mailboxes × `--messages` into scratch indices, until the node
//! has been up for 4 minutes; keys prefixed `warmup_`, `warmup2_`, …; 0 = none; not before
//! `--growth`).
//!
//! Why a warm-up: the ceiling runs after the sync, on a node whose JIT has compiled the indexing
//! path; a sync on a node that has just started ran on a cold one (measured: the first sync after
//! a start spent 0.84 ms of the node's CPU per document, the next one 0.26, the ceiling 0.26 –
//! 0.36). One warm-up sync is not enough: after a warm-up of 10 mailboxes, and after one of all
//! 50 (91,906 messages), the first round still cost a node started minutes before 0.54 – 0.71 ms
//! per document, the following rounds 0.29 – 0.32; over ten warm-up syncs of 10 mailboxes its
//! cost went 1.38, 0.78, 0.59, 0.49, 0.55, 0.57, 0.53, 0.39, 0.38, 0.37 ms. Sync and ceiling are
//! compared on a node that has been up, and busy, for `WARM_NODE_UPTIME` (4 minutes).
//!
//! `--rounds R` (3 with a ceiling, else 1): the sync and its ceiling are measured R times in
//! turn, each round from a fresh simulator and fresh indices (keys prefixed `roundN_`);
//! `rounds_sync_percent_of_bulk_ceiling` lists each round's percentage and
//! `median_sync_percent_of_bulk_ceiling` is their median. On two shared cores the node's CPU
//! per document drifts by ±15 % over minutes, and it is the largest term of both rates: one
//! sync against one ceiling measures the drift as much as the connector. Each round's
//! percentage divides one sync by the faster of its two ceiling runs, which errs low by the
//! spread between runs; `median_sync_percent_of_median_bulk_ceiling_run` applies the same
//! estimator to both sides: the median sync rate of the rounds against the median of every
//! ceiling run. `rounds_cpu_ms_per_message_connector`, `rounds_es_cpu_ms_per_document` and
//! `drift_correlation_connector_node_cpu` show that drift: every round syncs the same messages,
//! so the connector's CPU per message moves only with the machine, and a correlation near 1
//! with the node's CPU per document means the whole machine was slower in some syncs.
//!
//! The sync writes into an index made before its clock starts, as `connectors connector create`
//! makes a connector's index (and as each ceiling run's index is made before its clock): the
//! sync's time is that of every sync of a connector, not the index creation of the first one.
//! The sync's time ends when its documents are searchable (the job refreshes the index before
//! it completes, as Elastic's does before counting); the raw ceiling ends at the last `_bulk`
//! answer. `bulk_ceiling_refresh_seconds` times a `_refresh` right after each ceiling run, and
//! `sync_percent_of_searchable_ceiling` (with its rounds and median) compares the sync with
//! the ceiling including it. `sync_until_last_ack_percent_of_bulk_ceiling` (with its rounds and
//! median) stops the sync's clock where the raw ceiling's stops, at the last acknowledged
//! `_bulk` (`last_document_seconds`): the like-for-like raw comparison. The headline figure
//! stays the first one (the sync with its refresh and completion against the raw ceiling),
//! which favours the ceiling.
//!
//! Where the node shares this process's CPUs (not with `--split-cores`), the CPU costs measured
//! in the sync give a bound: `cpu_split_bound_messages_per_second` is the rate the machine's
//! CPUs allow, all busy, at the node's CPU per document plus the connector's and the
//! simulator's per message. `sync_percent_of_cpu_split_bound` shows what the pipeline left idle,
//! and `cpu_split_bound_percent_of_bulk_ceiling` (with its rounds and median) shows what the
//! CPU split alone allows against the ceiling. Only a cheaper client raises that bound.
//!
//! Output: plain `key: value` lines on stdout (in `--growth` mode every key of a phase is
//! prefixed with `phaseN_`). Auth for the node: `ES_API_KEY`, or `ES_USERNAME` + `ES_PASSWORD`.
//!
//! The simulator runs in a process of its own (this binary started again with
//! `--serve-simulator`), with every mailbox built and every message rendered before the sync
//! starts, as Google serves stored mail. CPU and memory figures of "the connector" are this
//! process's (connector, framework, Elasticsearch client); the simulator's CPU is read from its
//! `/proc` entry, and with `ES_PID` (set by xtask for the local node) the node's too.

use std::{
    collections::HashSet,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use connector_framework::{
    EsClient, EsConnection, Secret,
    es::{EsAuth, HttpMethod},
    job::{JobContext, JobCounters, JobOutcome, JobReporter, JobSpec, ReportError},
    model::{FilteringRules, JobType, Pipeline},
    sink::BulkOptions,
    sync::index::prepare_content_index,
};
use futures::StreamExt as _;
use google_workspace_sim::{ExpectedDoc, QuotaConfig, SimConfig, Simulator};
use serde_json::{Value, json};

/// The same allocator as the `connectors` binary, so the figures are the service's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

/// Gmail's per-user quota (250 units/s) over the cost of `messages.get` (5 units).
const QUOTA_MESSAGES_PER_USER_PER_SEC: f64 = 250.0 / 5.0;
/// `/proc` reports CPU times in USER_HZ, 100 on every Linux architecture we run on.
const USER_HZ: f64 = 100.0;
/// Page size of the read-back scan.
const SCAN_PAGE: usize = 1000;

#[derive(Debug, Clone)]
struct Args {
    users: usize,
    messages: usize,
    quota: bool,
    seed: u64,
    growth: bool,
    growth_users: Vec<usize>,
    sim_threads: usize,
    ceiling: bool,
    batch: Option<u32>,
    warmup_users: usize,
    rounds: Option<usize>,
    /// The connector's runtime workers, as the service's `service.worker_threads` sets them
    /// (`None`: one per CPU).
    worker_threads: Option<usize>,
    /// `max_concurrent_mailboxes` and `max_concurrent_requests` (`None`: every mailbox at once,
    /// 8 requests per mailbox within 64 ..= 1024).
    mailboxes: Option<usize>,
    requests: Option<usize>,
    /// After the ceiling runs, one more run paced at the sync's rate.
    paced_ceiling: bool,
}

const USAGE: &str = "usage: gmail_bench [--users N] [--messages M] [--quota on|off] [--seed S] \
[--growth] [--growth-users 10,50] [--sim-threads T] [--batch B] [--no-ceiling] [--warmup W] \
[--rounds R] [--worker-threads N] [--mailboxes N] [--requests N] [--paced-ceiling]";

impl Args {
    /// `--batch`, else the connector's default (1) with the quota on and 8 with it off: under
    /// Gmail's per-user quota batches only add bursts, without it they save CPU.
    fn batch_size(&self) -> u32 {
        self.batch.unwrap_or(if self.quota { 1 } else { 8 })
    }

    /// `--mailboxes`, else every one of `users` at once (each has its own quota).
    fn mailboxes_for(&self, users: usize) -> usize {
        self.mailboxes.unwrap_or(users)
    }

    /// `--requests`, else 8 per mailbox within 64 ..= 1024.
    fn requests_for(&self, users: usize) -> usize {
        self.requests.unwrap_or((users * 8).clamp(64, 1024))
    }
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        users: 50,
        messages: 2000,
        quota: true,
        seed: 1,
        growth: false,
        growth_users: vec![10, 50],
        sim_threads: 2,
        ceiling: true,
        batch: None,
        warmup_users: 10,
        rounds: None,
        worker_threads: None,
        mailboxes: None,
        requests: None,
        paced_ceiling: false,
    };
    let mut it = std::env::args().skip(1);
    fn num<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse()
            .map_err(|_| format!("{flag}: {v:?} is not a number"))
    }
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--users" => a.users = num("--users", it.next())?,
            "--messages" => a.messages = num("--messages", it.next())?,
            "--seed" => a.seed = num("--seed", it.next())?,
            "--sim-threads" => a.sim_threads = num("--sim-threads", it.next())?,
            "--quota" => {
                a.quota = match it.next().as_deref() {
                    Some("on") => true,
                    Some("off") => false,
                    other => return Err(format!("--quota takes on|off, not {other:?}")),
                }
            }
            "--growth" => a.growth = true,
            "--growth-users" => {
                let v = it.next().ok_or("--growth-users needs a value")?;
                a.growth_users = v
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| format!("--growth-users: {v:?} is not a list of numbers"))?;
            }
            "--no-ceiling" => a.ceiling = false,
            "--batch" => a.batch = Some(num("--batch", it.next())?),
            "--warmup" => a.warmup_users = num("--warmup", it.next())?,
            "--rounds" => a.rounds = Some(num("--rounds", it.next())?),
            "--worker-threads" => a.worker_threads = Some(num("--worker-threads", it.next())?),
            "--mailboxes" => a.mailboxes = Some(num("--mailboxes", it.next())?),
            "--requests" => a.requests = Some(num("--requests", it.next())?),
            "--paced-ceiling" => a.paced_ceiling = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if a.users == 0
        || a.messages == 0
        || a.sim_threads == 0
        || a.worker_threads == Some(0)
        || a.mailboxes == Some(0)
        || a.requests == Some(0)
        || a.growth_users.contains(&0)
    {
        return Err(
            "--users, --messages, --sim-threads, --worker-threads, --mailboxes, --requests and \
             --growth-users must be > 0"
                .into(),
        );
    }
    Ok(a)
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(SERVE_FLAG) {
        return serve_simulator();
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    connector_framework::install_crypto_provider();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.worker_threads {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // `RUST_LOG=debug` (or any level): the service's log lines on stderr, to see where time goes.
    if let Ok(level) = std::env::var("RUST_LOG") {
        let _ = connector_framework::telemetry::logging::init_with_writer(
            connector_framework::telemetry::logging::LogFormat::Human,
            &level,
            std::io::stderr,
        );
    }
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!(
                "error: at least one sync did not complete or did not match the ground truth"
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// First argument of the simulator process: this binary started again by [`SimProcess`].
const SERVE_FLAG: &str = "--serve-simulator";

/// The simulator process: `--serve-simulator <users> <messages> <seed> <on|off> <threads>`.
/// Builds every mailbox, prints one JSON line (base URL, key, admin, customer, corpus size
/// and build time), serves until its stdin closes (the benchmark ended or died).
fn serve_simulator() -> ExitCode {
    let a: Vec<String> = std::env::args().skip(2).collect();
    let num = |i: usize| a.get(i).and_then(|v| v.parse::<u64>().ok());
    let (Some(users), Some(messages), Some(seed), Some(threads)) = (num(0), num(1), num(2), num(4))
    else {
        eprintln!("usage: gmail_bench {SERVE_FLAG} <users> <messages> <seed> <on|off> <threads>");
        return ExitCode::from(2);
    };
    let quota = if a.get(3).map(String::as_str) == Some("on") {
        QuotaConfig::default()
    } else {
        QuotaConfig::off()
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1) as usize)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("simulator: cannot start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async move {
        let sim = Simulator::start(SimConfig {
            users: users as usize,
            messages_per_user: messages as usize,
            seed,
            quota,
            shared_thread_ratio: 0.0,
            suspended_every: 0,
            ..SimConfig::default()
        })
        .await?;
        // Google has the mailboxes ready and serves stored mail; the simulator builds mailboxes
        // on first use and generates each message on request. Build and render them all
        // before the sync starts, so neither the sync nor the simulator's CPU figure is
        // charged for generating the corpus.
        let built = Instant::now();
        let corpus = sim.prerender();
        println!(
            "{}",
            json!({
                "baseUrl": sim.base_url(),
                "keyJson": sim.service_account_key_json(),
                "admin": sim.admin_email(),
                "customer": sim.customer_id(),
                "corpusMessages": corpus,
                "corpusSeconds": built.elapsed().as_secs_f64(),
            })
        );
        let _ = tokio::task::spawn_blocking(|| {
            std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())
        })
        .await;
        sim.shutdown().await;
        Ok::<_, BoxError>(())
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simulator: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The simulator in a process of its own, so the benchmark's CPU and memory figures are the
/// connector's (the simulator's CPU is read from its `/proc` entry). Killed on drop.
struct SimProcess {
    child: tokio::process::Child,
    pid: u32,
    base_url: String,
    key_json: String,
    admin: String,
    customer: String,
    corpus_messages: u64,
    corpus_seconds: f64,
    http: reqwest::Client,
}

impl SimProcess {
    async fn start(p: &Phase, threads: usize) -> Res<SimProcess> {
        use tokio::io::AsyncBufReadExt as _;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg(SERVE_FLAG)
            .args([
                p.users.to_string(),
                p.messages.to_string(),
                p.seed.to_string(),
                if p.quota { "on" } else { "off" }.to_owned(),
                threads.to_string(),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().ok_or("the simulator exited at once")?;
        let stdout = child.stdout.take().ok_or("no simulator stdout")?;
        let mut line = String::new();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await?;
        let hello: Value = serde_json::from_str(&line)
            .map_err(|e| format!("the simulator did not start ({e}): {line:?}"))?;
        let text = |k: &str| hello[k].as_str().unwrap_or_default().to_owned();
        Ok(SimProcess {
            pid,
            base_url: text("baseUrl"),
            key_json: text("keyJson"),
            admin: text("admin"),
            customer: text("customer"),
            corpus_messages: hello["corpusMessages"].as_u64().unwrap_or(0),
            corpus_seconds: hello["corpusSeconds"].as_f64().unwrap_or(0.0),
            http: reqwest::Client::new(),
            child,
        })
    }

    async fn admin<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Option<Value>,
    ) -> Res<T> {
        let url = format!("{}/__admin/{path}", self.base_url);
        let request = match body {
            Some(b) => self.http.post(url).json(&b),
            None => self.http.get(url),
        };
        let response = request.send().await?.error_for_status()?;
        Ok(response.json().await?)
    }

    async fn stats(&self) -> Res<google_workspace_sim::Stats> {
        self.admin("stats", None).await
    }

    async fn expected_docs(&self, include_spam_and_trash: bool) -> Res<Vec<ExpectedDoc>> {
        self.admin(
            "expected-docs",
            Some(json!({"includeSpamAndTrash": include_spam_and_trash, "rules": []})),
        )
        .await
    }

    /// Users with a mailbox that are not suspended.
    async fn active_users(&self) -> Res<usize> {
        let tenant: Value = self.admin("tenant", None).await?;
        Ok(tenant["users"].as_array().map_or(0, |users| {
            users
                .iter()
                .filter(|u| u["suspended"] != json!(true) && u["isMailboxSetup"] != json!(false))
                .count()
        }))
    }

    /// Ends the process (closing its stdin) and waits for it.
    async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

async fn run(args: Args) -> Res<bool> {
    let es = es_client()?;
    let info = es.info().await.map_err(|e| format!("elasticsearch: {e}"))?;
    out("", "es_url", es.url());
    out("", "es_version", &info.version);
    out("", "quota", if args.quota { "on" } else { "off" });
    out("", "seed", args.seed);
    out(
        "",
        "cpus",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    out("", "sim_threads", args.sim_threads);
    out("", "worker_threads", {
        // What the runtime started with, not a re-derivation of tokio's default.
        let n = tokio::runtime::Handle::current().metrics().num_workers();
        match args.worker_threads {
            Some(_) => n.to_string(),
            None => format!("{n} (one per CPU)"),
        }
    });
    // The first Ctrl-C interrupts the running sync like a service shutdown (its indices are still
    // deleted); a second one exits at once.
    // The template of every job's context; its token is the process-wide stop signal.
    let base = JobContext {
        es: es.clone(),
        cancel: Default::default(),
        reporter: Arc::new(Recorder::default()),
    };
    let stop = base.cancel.clone();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                if stop.is_cancelled() {
                    std::process::exit(130);
                }
                eprintln!("interrupted: stopping the sync (Ctrl-C again to exit now)");
                stop.cancel();
            }
        }
    });
    let mut ok = true;
    if args.growth {
        out("", "mode", "growth");
        for (i, users) in args.growth_users.iter().enumerate() {
            let prefix = format!("phase{}_", i + 1);
            let phase = Phase {
                users: *users,
                messages: args.messages,
                quota: args.quota,
                seed: args.seed,
                ceiling: false,
                batch: args.batch_size(),
                sim_threads: args.sim_threads,
                mailboxes: args.mailboxes_for(*users),
                requests: args.requests_for(*users),
                paced_ceiling: false,
            };
            ok &= run_phase(&es, &phase, &prefix, &base).await?.matches;
            if stop.is_cancelled() {
                break;
            }
        }
        out("", "rss_end_mb", mb(status_kb("VmRSS")));
        out("", "peak_rss_end_mb", mb(status_kb("VmHWM")));
    } else {
        out("", "mode", "single");
        // With the quota on too: a cold node cannot keep up with 2,500 messages/s (a quota-on
        // run on a node started a minute before reached 86.8 % of the ceiling, the next 94.8 %).
        if args.warmup_users > 0 {
            let warmup = Phase {
                users: args.warmup_users.min(args.users),
                messages: args.messages,
                quota: false,
                seed: args.seed.wrapping_add(1),
                ceiling: false,
                // Quota off: batches of 8 (or --batch), whatever the measured run uses.
                batch: args.batch.unwrap_or(8),
                sim_threads: args.sim_threads,
                mailboxes: args.mailboxes_for(args.warmup_users.min(args.users)),
                requests: args.requests_for(args.warmup_users.min(args.users)),
                paced_ceiling: false,
            };
            // A node that has just started gets cheaper per document over its first few hundred
            // thousand documents (JIT compilation competing for the two cores; measured 1.38,
            // 0.78, 0.59, … 0.37 ms per document over ten warm-up syncs): warm-up syncs run
            // until it has been up for WARM_NODE_UPTIME (at most MAX_WARMUP_PHASES).
            let mut phases = 0;
            loop {
                phases += 1;
                let prefix = if phases == 1 {
                    "warmup_".to_owned()
                } else {
                    format!("warmup{phases}_")
                };
                ok &= run_phase(&es, &warmup, &prefix, &base).await?.matches;
                if stop.is_cancelled() {
                    return Ok(false);
                }
                let uptime = node_uptime(&es).await;
                if uptime.is_none_or(|u| u >= WARM_NODE_UPTIME) || phases >= MAX_WARMUP_PHASES {
                    if let Some(u) = uptime {
                        out("", "node_uptime_seconds", format!("{:.0}", u.as_secs_f64()));
                    }
                    break;
                }
            }
            out("", "warmup_phases", phases);
        }
        let phase = Phase {
            users: args.users,
            messages: args.messages,
            quota: args.quota,
            seed: args.seed,
            ceiling: !args.quota && args.ceiling,
            batch: args.batch_size(),
            sim_threads: args.sim_threads,
            mailboxes: args.mailboxes_for(args.users),
            requests: args.requests_for(args.users),
            paced_ceiling: args.paced_ceiling,
        };
        let rounds = args
            .rounds
            .unwrap_or(if phase.ceiling { 3 } else { 1 })
            .max(1);
        let mut percents = Vec::new();
        let mut searchable = Vec::new();
        let mut until_last_ack = Vec::new();
        let mut bounds = Vec::new();
        let (mut sync_rates, mut ceiling_rates) = (Vec::new(), Vec::new());
        let (mut connector_cpu, mut node_cpu) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let prefix = if rounds == 1 {
                String::new()
            } else {
                format!("round{round}_")
            };
            let result = run_phase(&es, &phase, &prefix, &base).await?;
            ok &= result.matches;
            percents.extend(result.percent_of_ceiling);
            searchable.extend(result.percent_of_searchable_ceiling);
            until_last_ack.extend(result.percent_until_last_ack);
            bounds.extend(result.bound_percent_of_ceiling);
            sync_rates.push(result.sync_rate);
            ceiling_rates.extend(result.ceiling_rates);
            connector_cpu.push(result.connector_ms_per_message);
            node_cpu.extend(result.node_ms_per_document);
            if stop.is_cancelled() {
                return Ok(false);
            }
        }
        if rounds > 1 && !percents.is_empty() {
            for (what, values) in [
                ("sync_percent_of_bulk_ceiling", &mut percents),
                ("sync_percent_of_searchable_ceiling", &mut searchable),
                (
                    "sync_until_last_ack_percent_of_bulk_ceiling",
                    &mut until_last_ack,
                ),
                ("cpu_split_bound_percent_of_bulk_ceiling", &mut bounds),
            ] {
                if values.is_empty() {
                    continue;
                }
                let list: Vec<String> = values.iter().map(|p| format!("{p:.1}")).collect();
                out("", &format!("rounds_{what}"), list.join(","));
                let m = median(values);
                out("", &format!("median_{what}"), format!("{m:.1}"));
            }
            // The same estimator on both sides: the median of the syncs against the median of
            // every ceiling run (each round's percentage above divides one sync by the faster
            // of two ceiling runs, which errs low by the spread between runs).
            let sync = median(&mut sync_rates);
            let ceiling = median(&mut ceiling_rates);
            out("", "median_sync_messages_per_second", format!("{sync:.1}"));
            out(
                "",
                "median_bulk_ceiling_run_documents_per_second",
                format!("{ceiling:.1}"),
            );
            out(
                "",
                "median_sync_percent_of_median_bulk_ceiling_run",
                format!("{:.1}", 100.0 * sync / ceiling.max(1e-9)),
            );
        }
        if rounds > 1 {
            // The machine's drift: every round syncs the same messages, so the connector's CPU
            // per message changes only with the machine; when it moves with the node's CPU per
            // document (a correlation near 1), the whole machine was slower during those syncs.
            let list = |v: &[f64]| v.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>();
            out(
                "",
                "rounds_cpu_ms_per_message_connector",
                list(&connector_cpu).join(","),
            );
            if node_cpu.len() == connector_cpu.len() {
                out(
                    "",
                    "rounds_es_cpu_ms_per_document",
                    list(&node_cpu).join(","),
                );
                if let Some(r) = correlation(&connector_cpu, &node_cpu) {
                    out(
                        "",
                        "drift_correlation_connector_node_cpu",
                        format!("{r:.2}"),
                    );
                }
            }
        }
    }
    Ok(ok)
}

fn es_client() -> Res<EsClient> {
    let url = std::env::var("ES_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .ok_or("ES_URL is not set (run through `cargo xtask bench gmail`)")?;
    let mut conn = EsConnection::new(url.parse().map_err(|e| format!("ES_URL {url:?}: {e}"))?);
    if let Ok(key) = std::env::var("ES_API_KEY") {
        conn.auth = EsAuth::ApiKey(Secret::new(key));
    } else if let (Ok(username), Ok(password)) =
        (std::env::var("ES_USERNAME"), std::env::var("ES_PASSWORD"))
    {
        conn.auth = EsAuth::Basic {
            username,
            password: Secret::new(password),
        };
    }
    Ok(EsClient::new(&conn)?)
}

struct Phase {
    users: usize,
    messages: usize,
    quota: bool,
    seed: u64,
    ceiling: bool,
    batch: u32,
    sim_threads: usize,
    mailboxes: usize,
    requests: usize,
    paced_ceiling: bool,
}

/// Records what the sync reports, like the executor does.
#[derive(Default)]
struct Recorder {
    last: Mutex<JobCounters>,
    /// (when, indexed documents) of every counter report: the job's timeline.
    timeline: Mutex<Vec<(Instant, u64)>>,
    reports: AtomicU64,
    checkpoints: AtomicU64,
}

#[async_trait::async_trait]
impl JobReporter for Recorder {
    fn counters(&self, counters: JobCounters) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = counters;
        self.timeline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((Instant::now(), counters.indexed_document_count));
        self.reports.fetch_add(1, Ordering::Relaxed);
    }
    async fn checkpoint(&self, _checkpoint: Value) -> Result<(), ReportError> {
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The indices a phase created; deleted at the end of the phase (also after an error). Warns
/// about any left behind.
struct Cleanup {
    es: EsClient,
    indices: Vec<String>,
}

impl Cleanup {
    async fn delete_all(&mut self) {
        for index in self.indices.drain(..) {
            let q = [("ignore_unavailable", "true".to_owned())];
            if let Err(e) = self
                .es
                .send(HttpMethod::Delete, &format!("/{index}"), &q, None)
                .await
            {
                eprintln!("warning: cannot delete index {index}: {e}");
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.indices.is_empty() {
            eprintln!(
                "warning: benchmark indices left behind: {}",
                self.indices.join(", ")
            );
        }
    }
}

fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("gmail-bench-{}-{nanos:x}-{name}", std::process::id())
}

/// What a phase shows: whether the index matched the ground truth, and with a ceiling the
/// sync's rate as a percentage of it.
struct PhaseResult {
    matches: bool,
    percent_of_ceiling: Option<f64>,
    /// Against the ceiling including a final `_refresh`.
    percent_of_searchable_ceiling: Option<f64>,
    /// The sync until its last acknowledged document against the raw ceiling.
    percent_until_last_ack: Option<f64>,
    /// The sync's CPU-split bound (see [`cpu_split_bound`]) against the raw ceiling.
    bound_percent_of_ceiling: Option<f64>,
    /// The sync's messages per second, and each ceiling run's documents per second.
    sync_rate: f64,
    ceiling_rates: Vec<f64>,
    /// CPU per message of this process (the connector) and per document of the node, in the
    /// sync.
    connector_ms_per_message: f64,
    node_ms_per_document: Option<f64>,
}

async fn run_phase(es: &EsClient, p: &Phase, prefix: &str, base: &JobContext) -> Res<PhaseResult> {
    let mut cleanup = Cleanup {
        es: es.clone(),
        indices: Vec::new(),
    };
    let result = phase_inner(es, p, prefix, base, &mut cleanup).await;
    cleanup.delete_all().await;
    result
}

async fn phase_inner(
    es: &EsClient,
    p: &Phase,
    prefix: &str,
    base: &JobContext,
    cleanup: &mut Cleanup,
) -> Res<PhaseResult> {
    let o = |k: &str, v: &dyn std::fmt::Display| out(prefix, k, v);
    let sim_started = Instant::now();
    let sim = SimProcess::start(p, p.sim_threads).await?;
    o("users", &p.users);
    o("messages_per_batch_request", &p.batch);
    o("max_concurrent_mailboxes", &p.mailboxes);
    o("max_concurrent_requests", &p.requests);
    o("messages_per_user", &p.messages);
    o("simulator_pid", &sim.pid);
    o("simulator_start_seconds", &secs(sim_started.elapsed()));
    o("simulator_corpus_messages", &sim.corpus_messages);
    o(
        "simulator_corpus_seconds",
        &format!("{:.3}", sim.corpus_seconds),
    );

    let index = unique("content");
    cleanup.indices.push(index.clone());
    o("index", &index);
    // Made as `connector create` makes it, before the clock (as the ceiling's index is).
    prepare_content_index(es, &index, None).await?;

    // Quota off: the simulator enforces no quota and the connector's own per-mailbox limiter is
    // lifted too, so the figure is the pipeline's (fetch, parse, index), not Gmail's quota.
    let connector = if p.quota {
        connector_gmail::connector()
    } else {
        connector_gmail::GmailConnector::with_options(connector_gmail::api::ApiOptions {
            units_per_second: 1_000_000,
            ..Default::default()
        })
    };
    let gmail_stats = connector.stats();
    let connector = connector_framework::sync::erase(connector);
    let mut configuration = connector.default_configuration();
    for (key, value) in [
        ("service_account_credentials", sim.key_json.clone()),
        ("subject", sim.admin.clone()),
        ("customer_id", sim.customer.clone()),
        ("google_api_base_url", sim.base_url.clone()),
        // Every mailbox in parallel: each has its own quota, so the ceiling scales with them.
        ("max_concurrent_mailboxes", p.mailboxes.to_string()),
        ("max_concurrent_requests", p.requests.to_string()),
        ("messages_per_batch_request", p.batch.to_string()),
    ] {
        let field = configuration
            .get_mut(key)
            .and_then(Value::as_object_mut)
            .ok_or_else(|| format!("the gmail configuration has no field {key:?}"))?;
        field.insert("value".into(), Value::from(value));
    }
    let spec = JobSpec {
        job_id: unique("job"),
        connector_id: "gmail-bench".into(),
        job_type: JobType::Full,
        service_type: connector.service_type().into(),
        index_name: index.clone(),
        language: None,
        pipeline: Pipeline::default(),
        configuration,
        filtering: FilteringRules::default(),
        features: connector.features(),
        sync_cursor: None,
        checkpoint: None,
    };
    let recorder = Arc::new(Recorder::default());
    let cancel = base.cancel.clone();
    let ctx = JobContext {
        reporter: recorder.clone(),
        ..base.clone()
    };

    // The node starts the sync as it starts each ceiling run: idle.
    wait_for_idle_node().await;
    // The peak RSS is the sync's: the high-water mark of what ran before (a previous round's
    // read-back holds every document) is reset (Linux 4.0+; on failure the peak is the process's).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = status_kb("VmRSS");
    let cpu_before = Cpu::now(Some(sim.pid));
    let faults_before = minor_faults();
    let started = Instant::now();
    // When the simulator served the first `messages.get`: the sync's start-up cost (Directory,
    // tokens, profiles, first list pages).
    let first_get = async {
        loop {
            let gets = sim.stats().await.map_or(0, |st| {
                st.methods
                    .get("gmail.users.messages.get")
                    .map_or(0, |m| m.requests)
            });
            if gets > 0 {
                break started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (outcome, first_get) = tokio::join!(connector.run_job(spec, ctx), async {
        tokio::time::timeout(Duration::from_secs(120), first_get)
            .await
            .ok()
    });
    let elapsed = started.elapsed();
    let cpu = Cpu::now(Some(sim.pid)).since(&cpu_before);
    let faults = minor_faults().zip(faults_before).map(|(a, b)| a - b);
    let rss_after = status_kb("VmRSS");
    let hwm = status_kb("VmHWM");

    let (completed, counters) = match &outcome {
        JobOutcome::Completed { counters, .. } => {
            o("job_outcome", &"completed");
            (true, *counters)
        }
        JobOutcome::Failed { counters, error } => {
            o("job_outcome", &"failed");
            o("job_error", &error.replace('\n', " "));
            (false, *counters)
        }
        JobOutcome::Interrupted { counters } => {
            o("job_outcome", &"interrupted");
            (false, *counters)
        }
    };
    let indexed = counters.indexed_document_count;
    let s = elapsed.as_secs_f64();
    let rate = indexed as f64 / s.max(1e-9);
    o("messages", &indexed);
    o("seconds", &format!("{s:.3}"));
    o("messages_per_second", &format!("{rate:.1}"));
    o(
        "indexed_mib",
        &format!(
            "{:.1}",
            counters.indexed_document_volume_bytes as f64 / 1048576.0
        ),
    );
    o("counter_reports", &recorder.reports.load(Ordering::Relaxed));
    if let Some(t) = first_get {
        o("first_get_seconds", &secs(t));
    }
    // Where the time went: before the first acknowledged document (Directory, tokens, profiles,
    // first pages), between the first and the last, and after the last (final flush, refresh,
    // stale-document scan, completion).
    let mut until_last_ack_rate = None;
    {
        let timeline = recorder.timeline.lock().unwrap_or_else(|p| p.into_inner());
        let first = timeline.iter().find(|(_, n)| *n > 0);
        let last = timeline.iter().find(|(_, n)| *n >= indexed);
        if let (Some((t0, n0)), Some((t1, n1))) = (first, last) {
            let since = |t: &Instant| t.duration_since(started).as_secs_f64();
            o("first_document_seconds", &format!("{:.3}", since(t0)));
            o("last_document_seconds", &format!("{:.3}", since(t1)));
            // Where the raw ceiling's clock stops: the last `_bulk` answered.
            let r = indexed as f64 / since(t1).max(1e-9);
            o("until_last_ack_messages_per_second", &format!("{r:.1}"));
            until_last_ack_rate = Some(r);
            let span = since(t1) - since(t0);
            if span > 0.0 {
                o(
                    "steady_messages_per_second",
                    &format!("{:.1}", (n1 - n0) as f64 / span),
                );
            }
        }
    }
    o("checkpoints", &recorder.checkpoints.load(Ordering::Relaxed));
    o("cpu_seconds", &format!("{:.2}", cpu.total + cpu.sim));
    o("cpu_seconds_simulator", &format!("{:.2}", cpu.sim));
    o("cpu_seconds_connector", &format!("{:.2}", cpu.total));
    // CPU seconds of the sync as milliseconds per indexed message.
    let per_message = |seconds: f64| 1000.0 * seconds / (indexed.max(1) as f64);
    let connector_ms_per_message = per_message(cpu.total);
    o(
        "cpu_ms_per_message_connector",
        &format!("{connector_ms_per_message:.3}"),
    );
    let node_ms_per_document = cpu.es.map(per_message);
    if let (Some(es_cpu), Some(per_doc)) = (cpu.es, node_ms_per_document) {
        o("es_cpu_seconds", &format!("{es_cpu:.2}"));
        o("es_cpu_ms_per_document", &format!("{per_doc:.3}"));
    }
    machine_noise(&o, cpu.machine, cpu.total + cpu.sim + cpu.es.unwrap_or(0.0));
    // Only where the node runs on this process's CPUs (not with `--split-cores`).
    let bound = node_ms_per_document
        .filter(|_| shares_cpus_with_node())
        .map(|node| cpu_split_bound(node, connector_ms_per_message, per_message(cpu.sim)));
    if let Some(bound) = bound {
        o(
            "cpu_split_bound_messages_per_second",
            &format!("{bound:.1}"),
        );
        o(
            "sync_percent_of_cpu_split_bound",
            &format!("{:.1}", 100.0 * rate / bound.max(1e-9)),
        );
    }
    if let Some(faults) = faults {
        o("minor_page_faults_connector", &faults);
    }
    o("rss_before_sync_mb", &mb(rss_before));
    o("rss_after_sync_mb", &mb(rss_after));
    o(
        "rss_sync_growth_mb",
        &match (rss_before, rss_after) {
            (Some(b), Some(a)) => format!("{:.1}", (a as f64 - b as f64) / 1024.0),
            _ => "n/a".into(),
        },
    );
    o("peak_rss_mb", &mb(hwm));

    let g = gmail_stats.snapshot();
    o("failed_documents_source", &g.messages_failed);
    o("google_api_calls", &g.api_calls);
    o("google_api_retries", &g.api_retries);
    o("google_batch_requests", &g.batch_requests);
    o("google_rate_limited", &g.rate_limited);
    o("google_pace_reductions", &g.pace_reductions);
    o("google_server_errors", &g.server_errors);
    o("google_quota_units", &g.quota_units);
    o("google_tokens_minted", &g.tokens_minted);
    o("messages_fetched", &g.messages_fetched);
    o("messages_vanished", &g.messages_vanished);
    o("mime_warnings", &g.mime_warnings);
    o("mailboxes_synced", &g.mailboxes_synced);
    o("mailboxes_skipped", &g.mailboxes_skipped);

    let st = sim.stats().await?;
    let sum = |f: fn(&google_workspace_sim::MethodCounters) -> u64| -> u64 {
        st.methods.values().map(f).sum()
    };
    o("sim_requests", &sum(|m| m.requests));
    o(
        "sim_messages_get",
        &st.methods
            .get("gmail.users.messages.get")
            .map_or(0, |m| m.requests),
    );
    o(
        "sim_messages_list",
        &st.methods
            .get("gmail.users.messages.list")
            .map_or(0, |m| m.requests),
    );
    o("sim_units", &sum(|m| m.units));
    o("sim_throttled", &sum(|m| m.throttled));
    o("sim_concurrency_rejected", &sum(|m| m.concurrency_rejected));
    o("sim_errors", &sum(|m| m.errors));
    o("sim_batch_calls", &st.batch_calls);
    o("sim_tokens_minted", &st.tokens_minted.values().sum::<u64>());
    o(
        "sim_peak_concurrency_per_user",
        &st.peak_concurrency.values().max().copied().unwrap_or(0),
    );

    if cancel.is_cancelled() {
        return Ok(PhaseResult {
            matches: false,
            percent_of_ceiling: None,
            percent_of_searchable_ceiling: None,
            percent_until_last_ack: None,
            bound_percent_of_ceiling: None,
            sync_rate: rate,
            ceiling_rates: Vec::new(),
            connector_ms_per_message,
            node_ms_per_document,
        });
    }

    // Ground truth, computed after the sync so it does not weigh on the memory figures.
    let expected: HashSet<String> = sim
        .expected_docs(false)
        .await?
        .into_iter()
        .map(|d| format!("{}:{}", d.user.to_ascii_lowercase(), d.id))
        .collect();
    let mailbox_messages = sim.expected_docs(true).await?.len();
    // The quota is per mailbox, so no sync can end before the largest mailbox's messages have
    // been fetched at 50/s: that bounds the job's duration whatever the total.
    let mut per_mailbox: std::collections::HashMap<&str, usize> = Default::default();
    for id in &expected {
        if let Some((mailbox, _)) = id.split_once(':') {
            *per_mailbox.entry(mailbox).or_default() += 1;
        }
    }
    let largest_mailbox = per_mailbox.values().max().copied().unwrap_or(0);
    let active_users = sim.active_users().await?;
    sim.stop().await;

    // How the node wrote the index during the sync (before the read-back refreshes it).
    index_stats(es, &index, &|k, v| o(k, v)).await;
    refresh(es, &index).await?;
    let count = count(es, &index).await?;
    o("index_documents", &count);
    o("expected_documents", &expected.len());
    // Spam and trash are not synced by default, so fewer documents than messages are expected.
    o("mailbox_messages_incl_spam_trash", &mailbox_messages);
    let with_source = p.ceiling;
    let scan_started = Instant::now();
    let scanned = scan(es, &index, with_source).await?;
    let missing = expected
        .iter()
        .filter(|id| !scanned.ids.contains(*id))
        .count();
    let unexpected = scanned
        .ids
        .iter()
        .filter(|id| !expected.contains(*id))
        .count();
    o("missing_documents", &missing);
    o("unexpected_documents", &unexpected);
    let matches = completed && missing == 0 && unexpected == 0 && count as usize == expected.len();
    o("matches_ground_truth", &matches);

    if p.quota {
        let ceiling = QUOTA_MESSAGES_PER_USER_PER_SEC * active_users as f64;
        o(
            "quota_ceiling_messages_per_second",
            &format!("{ceiling:.0}"),
        );
        o(
            "quota_ceiling_percent",
            &format!("{:.1}", 100.0 * rate / ceiling.max(1e-9)),
        );
        // The same ceiling taken per mailbox: the largest mailbox at 50 messages/s is the
        // shortest possible job.
        let bound = largest_mailbox as f64 / QUOTA_MESSAGES_PER_USER_PER_SEC;
        o("largest_mailbox_messages", &largest_mailbox);
        o("quota_bound_seconds", &format!("{bound:.3}"));
        o(
            "quota_bound_percent",
            &format!("{:.1}", 100.0 * bound / s.max(1e-9)),
        );
    }
    let mut percent_of_ceiling = None;
    let mut percent_of_searchable_ceiling = None;
    let mut percent_until_last_ack = None;
    let mut bound_percent_of_ceiling = None;
    let mut runs = Vec::new();
    if p.ceiling {
        o(
            "readback_seconds",
            &format!("{:.3}", scan_started.elapsed().as_secs_f64()),
        );
        // The node's indexing rate varies from run to run (segment merges of the index the sync
        // just wrote may still be running): the ceiling is the best of CEILING_RUNS runs, each
        // into a fresh index, so the percentage below errs on the low side.
        let bulk = BulkOptions::default();
        let docs = scanned.ids.len();
        let mut best: Option<(f64, u64, usize, Option<f64>, f64)> = None;
        let chunks: Vec<Vec<u8>> = chunk_bodies(&scanned.docs, &bulk);
        drop(scanned);
        // The sync's index is no longer needed: without it the node cannot still be merging
        // it while the ceiling is measured.
        let _ = es
            .send(HttpMethod::Delete, &format!("/{index}"), &[], None)
            .await;
        for _ in 0..CEILING_RUNS {
            let target = unique("ceiling");
            cleanup.indices.push(target.clone());
            prepare_content_index(es, &target, None).await?;
            wait_for_idle_node().await;
            let cpu_before = Cpu::now(None);
            let (secs, failed) = bulk_run(es, &target, &chunks, bulk.max_concurrency, None).await?;
            let cpu = Cpu::now(None).since(&cpu_before);
            // Then what the sync also waits for before it completes: the documents searchable.
            let refresh_started = Instant::now();
            refresh(es, &target).await?;
            let refresh_secs = refresh_started.elapsed().as_secs_f64();
            let es_cpu = cpu.es;
            let ceiling_o = |k: &str, v: &dyn std::fmt::Display| o(&format!("ceiling_{k}"), v);
            machine_noise(&ceiling_o, cpu.machine, cpu.total + es_cpu.unwrap_or(0.0));
            index_stats(es, &target, &ceiling_o).await;
            let _ = es
                .send(HttpMethod::Delete, &format!("/{target}"), &[], None)
                .await;
            runs.push(docs as f64 / secs.max(1e-9));
            if best.is_none_or(|(b, _, _, _, _)| secs < b) {
                best = Some((secs, failed, chunks.len(), es_cpu, refresh_secs));
            }
        }
        if p.paced_ceiling {
            // The same documents fed no faster than the sync fed them: what the node spends per
            // document at the sync's pace, without the connector and the simulator beside it.
            let target = unique("paced");
            cleanup.indices.push(target.clone());
            prepare_content_index(es, &target, None).await?;
            wait_for_idle_node().await;
            let cpu_before = Cpu::now(None);
            let interval =
                Duration::from_secs_f64(docs as f64 / chunks.len().max(1) as f64 / rate.max(1.0));
            let (secs, _) =
                bulk_run(es, &target, &chunks, bulk.max_concurrency, Some(interval)).await?;
            let cpu = Cpu::now(None).since(&cpu_before);
            o(
                "paced_ceiling_documents_per_second",
                &format!("{:.1}", docs as f64 / secs.max(1e-9)),
            );
            if let Some(es_cpu) = cpu.es {
                o(
                    "paced_ceiling_es_cpu_ms_per_document",
                    &format!("{:.3}", 1000.0 * es_cpu / (docs.max(1) as f64)),
                );
            }
            let paced_o = |k: &str, v: &dyn std::fmt::Display| o(&format!("paced_ceiling_{k}"), v);
            index_stats(es, &target, &paced_o).await;
            let _ = es
                .send(HttpMethod::Delete, &format!("/{target}"), &[], None)
                .await;
        }
        let (bulk_secs, failed, requests, es_cpu, refresh_secs) = best.ok_or("no ceiling run")?;
        if let Some(es_cpu) = es_cpu {
            // What the node spends per document when nothing else competes for the CPUs.
            o(
                "bulk_ceiling_es_cpu_ms_per_document",
                &format!("{:.3}", 1000.0 * es_cpu / (docs.max(1) as f64)),
            );
        }
        let bulk_rate = docs as f64 / bulk_secs.max(1e-9);
        let list: Vec<String> = runs.iter().map(|r| format!("{r:.1}")).collect();
        o("bulk_ceiling_runs_documents_per_second", &list.join(","));
        o("bulk_ceiling_documents", &docs);
        o("bulk_ceiling_failed", &failed);
        o("bulk_ceiling_concurrency", &bulk.max_concurrency);
        o("bulk_ceiling_requests", &requests);
        o("bulk_ceiling_max_docs_per_request", &(bulk.chunk_size / 2));
        o("bulk_ceiling_seconds", &format!("{bulk_secs:.3}"));
        o(
            "bulk_ceiling_documents_per_second",
            &format!("{bulk_rate:.1}"),
        );
        let percent = 100.0 * rate / bulk_rate.max(1e-9);
        o("sync_percent_of_bulk_ceiling", &format!("{percent:.1}"));
        percent_of_ceiling = Some(percent);
        let searchable_rate = docs as f64 / (bulk_secs + refresh_secs).max(1e-9);
        o(
            "bulk_ceiling_refresh_seconds",
            &format!("{refresh_secs:.3}"),
        );
        o(
            "bulk_ceiling_searchable_documents_per_second",
            &format!("{searchable_rate:.1}"),
        );
        let percent = 100.0 * rate / searchable_rate.max(1e-9);
        o(
            "sync_percent_of_searchable_ceiling",
            &format!("{percent:.1}"),
        );
        percent_of_searchable_ceiling = Some(percent);
        if let Some(r) = until_last_ack_rate {
            let percent = 100.0 * r / bulk_rate.max(1e-9);
            o(
                "sync_until_last_ack_percent_of_bulk_ceiling",
                &format!("{percent:.1}"),
            );
            percent_until_last_ack = Some(percent);
        }
        if let Some(bound) = bound {
            let percent = 100.0 * bound / bulk_rate.max(1e-9);
            o(
                "cpu_split_bound_percent_of_bulk_ceiling",
                &format!("{percent:.1}"),
            );
            bound_percent_of_ceiling = Some(percent);
        }
    }
    Ok(PhaseResult {
        matches,
        percent_of_ceiling,
        percent_of_searchable_ceiling,
        percent_until_last_ack,
        bound_percent_of_ceiling,
        sync_rate: rate,
        ceiling_rates: runs,
        connector_ms_per_message,
        node_ms_per_document,
    })
}

/// Pearson's correlation of two series of the same length; `None` under 3 values or without
/// variance.
fn correlation(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len();
    if n < 3 || y.len() != n {
        return None;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / n as f64;
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// The median (of an even count, the mean of the two middle values).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// A bound on the warm-up syncs (a warm-up sync of 10 mailboxes takes about 6 s; thirty, the
/// bound until session 11, ended at 191 – 206 s of uptime).
const MAX_WARMUP_PHASES: usize = 100;

/// How long the node must have been up before a measured sync (see the warm-up above). Its
/// JIT compiler is still busy after 4 minutes, but 6 did not show a warmer node: the quota-on
/// run after a warm-up to 242 s and the one after 363 s both cost the node 0.473 ms per
/// document (90.5 % of the quota ceiling with 33 rate-limit answers, 93.5 % with none).
const WARM_NODE_UPTIME: Duration = Duration::from_secs(240);

/// The node's JVM uptime (the first node's), if the node answers.
async fn node_uptime(es: &EsClient) -> Option<Duration> {
    let stats = es
        .json(HttpMethod::Get, "/_nodes/_local/stats/jvm", &[], None)
        .await
        .ok()?;
    let ms = stats["nodes"]
        .as_object()?
        .values()
        .next()?
        .get("jvm")?
        .get("uptime_in_millis")?
        .as_u64()?;
    Some(Duration::from_millis(ms))
}

/// How many times the raw `_bulk` ceiling is measured (the best run counts).
const CEILING_RUNS: usize = 2;

/// Sends `bodies` to `/<index>/_bulk`, `concurrency` at a time, the `i`-th no sooner than
/// `i × interval` after the first when an interval is given: (seconds, failed items).
async fn bulk_run(
    es: &EsClient,
    index: &str,
    bodies: &[Vec<u8>],
    concurrency: usize,
    interval: Option<Duration>,
) -> Res<(f64, u64)> {
    let mut failed = 0u64;
    let path = format!("/{index}/_bulk");
    // The sink's answer filter, so the node does the same work per request as in the sync.
    let query = [(
        "filter_path",
        connector_framework::sink::BULK_FILTER_PATH.to_owned(),
    )];
    let started = Instant::now();
    let mut results = std::pin::pin!(
        futures::stream::iter(bodies.iter().zip(0u32..))
            .then(|(body, i)| async move {
                if let Some(every) = interval {
                    tokio::time::sleep_until((started + every * i).into()).await;
                }
                body
            })
            .map(|body| {
                es.send_bytes(
                    HttpMethod::Post,
                    &path,
                    &query,
                    Some(body.clone().into()),
                    true,
                )
            })
            .buffer_unordered(concurrency.max(1))
    );
    while let Some(r) = results.next().await {
        let r = r?;
        if !r.is_success() {
            return Err(format!("bulk answered {}: {}", r.status, r.body).into());
        }
        if r.body["errors"] == json!(true) {
            failed += r.body["items"].as_array().map_or(0, |items| {
                items
                    .iter()
                    .filter(|i| i["index"]["status"].as_u64().is_none_or(|s| s >= 300))
                    .count()
            }) as u64;
        }
    }
    Ok((started.elapsed().as_secs_f64(), failed))
}

/// Result of a scan: every `_id`, and with `_source` the documents as `(id, source json)`.
struct Scanned {
    ids: HashSet<String>,
    docs: Vec<(String, Vec<u8>)>,
}

/// Reads the whole index back through a point in time and `search_after`.
async fn scan(es: &EsClient, index: &str, with_source: bool) -> Res<Scanned> {
    let pit = es
        .json(
            HttpMethod::Post,
            &format!("/{index}/_pit"),
            &[("keep_alive", "2m".to_owned())],
            None,
        )
        .await?;
    let mut pit_id = pit["id"]
        .as_str()
        .ok_or("no point-in-time id in the answer")?
        .to_owned();
    let mut out = Scanned {
        ids: HashSet::new(),
        docs: Vec::new(),
    };
    let mut after: Option<Value> = None;
    let result: Res<()> = async {
        loop {
            let mut body = json!({
                "size": SCAN_PAGE,
                "_source": with_source,
                "track_total_hits": false,
                "pit": {"id": pit_id, "keep_alive": "2m"},
                "sort": [{"_shard_doc": "asc"}],
            });
            if let Some(a) = &after {
                body["search_after"] = a.clone();
            }
            let page = es
                .json(HttpMethod::Post, "/_search", &[], Some(&body))
                .await?;
            if let Some(id) = page["pit_id"].as_str() {
                pit_id = id.to_owned();
            }
            let hits = page["hits"]["hits"]
                .as_array()
                .ok_or("search answer without hits")?;
            if hits.is_empty() {
                return Ok(());
            }
            for h in hits {
                let id = h["_id"].as_str().ok_or("hit without _id")?.to_owned();
                if with_source {
                    out.docs
                        .push((id.clone(), serde_json::to_vec(&h["_source"])?));
                }
                out.ids.insert(id);
            }
            after = hits.last().map(|h| h["sort"].clone());
        }
    }
    .await;
    let _ = es
        .send(
            HttpMethod::Delete,
            "/_pit",
            &[],
            Some(&json!({ "id": pit_id })),
        )
        .await;
    result.map(|()| out)
}

/// NDJSON `_bulk` bodies (for `/<index>/_bulk`) cut like the sink cuts them: at most `opts.chunk_size` lines (an index
/// operation is 2) and at most `opts.chunk_max_mem_size` bytes per request.
fn chunk_bodies(docs: &[(String, Vec<u8>)], opts: &BulkOptions) -> Vec<Vec<u8>> {
    let max_lines = opts.chunk_size.max(2);
    let max_bytes = opts.chunk_max_mem_size.max(1);
    let mut chunks = Vec::new();
    let (mut body, mut lines) = (Vec::new(), 0usize);
    for (id, source) in docs {
        let action = json!({"index": {"_id": id}}).to_string();
        let size = action.len() + source.len() + 2;
        if lines > 0 && (lines + 2 > max_lines || body.len() + size > max_bytes) {
            chunks.push(std::mem::take(&mut body));
            lines = 0;
        }
        body.extend_from_slice(action.as_bytes());
        body.push(b'\n');
        body.extend_from_slice(source);
        body.push(b'\n');
        lines += 2;
    }
    if lines > 0 {
        chunks.push(body);
    }
    chunks
}

/// Waits (at most 30 s) until the local node (`ES_PID`) uses less than 10 % of a CPU over
/// half a second: merges and refreshes left from what ran before are over. Without `ES_PID`,
/// waits 2 s.
async fn wait_for_idle_node() {
    let Some(pid) = std::env::var("ES_PID").ok() else {
        tokio::time::sleep(Duration::from_secs(2)).await;
        return;
    };
    let path = format!("/proc/{}/stat", pid.trim());
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Some(before) = stat_cpu(&path) else {
            return;
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(after) = stat_cpu(&path) else {
            return;
        };
        if after - before < 0.05 {
            return;
        }
    }
}

/// Refreshes, flushes and merges the node did on `index` so far (diagnostics; best effort).
async fn index_stats(es: &EsClient, index: &str, o: &dyn Fn(&str, &dyn std::fmt::Display)) {
    let path = format!("/{index}/_stats/refresh,merge,flush,segments");
    let Ok(stats) = es.json(HttpMethod::Get, &path, &[], None).await else {
        return;
    };
    let total = &stats["_all"]["primaries"];
    for (key, value) in [
        ("index_refreshes", &total["refresh"]["total"]),
        (
            "index_refresh_ms",
            &total["refresh"]["total_time_in_millis"],
        ),
        ("index_flushes", &total["flush"]["total"]),
        ("index_merges", &total["merges"]["total"]),
        ("index_merge_ms", &total["merges"]["total_time_in_millis"]),
        ("index_segments", &total["segments"]["count"]),
    ] {
        o(key, value);
    }
}

async fn refresh(es: &EsClient, index: &str) -> Res<()> {
    es.json(HttpMethod::Post, &format!("/{index}/_refresh"), &[], None)
        .await?;
    Ok(())
}

async fn count(es: &EsClient, index: &str) -> Res<u64> {
    let body = es
        .json(HttpMethod::Get, &format!("/{index}/_count"), &[], None)
        .await?;
    Ok(body["count"].as_u64().ok_or("no count in the answer")?)
}

fn out(prefix: &str, key: &str, value: impl std::fmt::Display) {
    println!("{prefix}{key}: {value}");
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

fn mb(kb: Option<u64>) -> String {
    kb.map_or("n/a".into(), |kb| format!("{:.1}", kb as f64 / 1024.0))
}

/// A `kB` line of `/proc/self/status` (`VmRSS`, `VmHWM`).
fn status_kb(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// utime + stime of a `/proc/.../stat` file, in seconds.
fn stat_cpu(path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may contain spaces: count fields after its closing paren.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the paren, field 3 (state) is index 0: utime (14) is 11, stime (15) is 12.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// Minor page faults of this process so far (each one a page the kernel had to map, and with
/// transparent huge pages to zero, 4 KiB or 2 MiB of it).
fn minor_faults() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    // minflt is field 10, index 7 after the paren.
    rest.split_whitespace().nth(7)?.parse().ok()
}

/// CPU seconds of the process and of the simulator's threads.
struct Cpu {
    /// This process: the connector, the framework, the Elasticsearch client.
    total: f64,
    /// The simulator process.
    sim: f64,
    /// The node's CPU time, when it runs on this machine (`ES_PID`, set by xtask).
    es: Option<f64>,
    /// The whole machine (`/proc/stat`).
    machine: Option<MachineCpu>,
}

/// Machine-wide CPU seconds, all cores together.
#[derive(Clone, Copy)]
struct MachineCpu {
    /// Busy in any process (user, nice, system, interrupts).
    busy: f64,
    /// Wanted but given to other virtual machines by the hypervisor.
    steal: f64,
    /// Everything, idle included.
    all: f64,
}

impl MachineCpu {
    fn now() -> Option<MachineCpu> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let line = text.lines().find(|l| l.starts_with("cpu "))?;
        let f: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|v| v.parse::<f64>().map(|t| t / USER_HZ))
            .collect::<Result<_, _>>()
            .ok()?;
        // user nice system idle iowait irq softirq steal
        let [user, nice, system, idle, iowait, irq, softirq, steal] = f[..] else {
            return None;
        };
        let busy = user + nice + system + irq + softirq;
        Some(MachineCpu {
            busy,
            steal,
            all: busy + idle + iowait + steal,
        })
    }

    fn since(&self, before: &MachineCpu) -> MachineCpu {
        MachineCpu {
            busy: self.busy - before.busy,
            steal: self.steal - before.steal,
            all: self.all - before.all,
        }
    }
}

/// The rate the sync's measured CPU costs allow when every CPU of the machine is busy with them:
/// the node's CPU per document plus the connector's and the simulator's per message, spread
/// over all CPUs. On shared cores the sync cannot beat it whatever its pipeline does; how close
/// it comes (`sync_percent_of_cpu_split_bound`) shows what the pipeline leaves idle, and the
/// bound against the ceiling shows what the CPU split alone allows.
fn cpu_split_bound(node_ms: f64, connector_ms: f64, simulator_ms: f64) -> f64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    cpus * 1000.0 / (node_ms + connector_ms + simulator_ms).max(1e-9)
}

/// Whether the node (`ES_PID`) may run on exactly the CPUs this process may run on.
fn shares_cpus_with_node() -> bool {
    let allowed = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|v| v.trim().to_owned())
    };
    let node = std::env::var("ES_PID").ok();
    match (
        allowed("self"),
        node.as_deref().and_then(|pid| allowed(pid.trim())),
    ) {
        (Some(ours), Some(node)) => ours == node,
        _ => false,
    }
}

/// What the machine did besides the measured processes (`ours`: their CPU seconds): the
/// hypervisor's steal and other processes' CPU, in percent of the machine's time. Either
/// makes a round slower without saying anything about the connector.
fn machine_noise(o: &dyn Fn(&str, &dyn std::fmt::Display), m: Option<MachineCpu>, ours: f64) {
    if let Some(m) = m.filter(|m| m.all > 0.0) {
        o(
            "machine_steal_percent",
            &format!("{:.1}", 100.0 * m.steal / m.all),
        );
        o(
            "machine_other_cpu_percent",
            &format!("{:.1}", 100.0 * (m.busy - ours).max(0.0) / m.all),
        );
    }
}

impl Cpu {
    fn now(sim_pid: Option<u32>) -> Cpu {
        let es = std::env::var("ES_PID")
            .ok()
            .and_then(|pid| stat_cpu(&format!("/proc/{}/stat", pid.trim())));
        let sim = sim_pid
            .and_then(|pid| stat_cpu(&format!("/proc/{pid}/stat")))
            .unwrap_or(0.0);
        let total = stat_cpu("/proc/self/stat").unwrap_or(0.0);
        Cpu {
            total,
            sim,
            es,
            machine: MachineCpu::now(),
        }
    }

    fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            total: self.total - before.total,
            sim: self.sim - before.sim,
            es: self.es.zip(before.es).map(|(now, then)| now - then),
            machine: self
                .machine
                .zip(before.machine)
                .map(|(now, then)| now.since(&then)),
        }
    }
}
