//! Per-message CPU of the connector's document path, without the network: the answers of
//! `messages.get?format=raw` are fetched once from the simulator, then every round turns each
//! one into the bytes the sink sends (JSON answer → `RawMessage` → `build_document` → the
//! framework's `_source` serialization), on one thread.
//!
//! ```text
//! cargo xtask bench docs -- --users 10 --messages 1000 --rounds 5
//! ```
//!
//! Output: `key: value` lines; `ns_per_message` is the best round (the least disturbed by the
//! rest of the machine), `ns_per_message_rounds` lists them all. Figures: `docs/benchmarks.md`.
//!
//! `--dump PATH` also writes every document's `_source`, one per line in message order, to
//! compare what two builds make of the same mail (`diff` the files).

use std::{process::ExitCode, time::Instant};

use connector_framework::connector::{DocumentEncoder, EncodedDocument};
use connector_gmail::{
    api::RawMessage,
    auth::SCOPE_GMAIL,
    document::{DocOptions, DocWarning, build_document},
};
use google_workspace_sim::{QuotaConfig, SimConfig, Simulator};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (users, messages, rounds) = (
        opt("--users", 10),
        opt("--messages", 1000),
        opt("--rounds", 5),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("doc_bench: cannot start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dump = args
        .iter()
        .position(|a| a == "--dump")
        .and_then(|i| args.get(i + 1));
    match runtime.block_on(fetch_answers(users, messages)) {
        Ok(answers) => {
            if let Some(path) = dump
                && let Err(e) = write_dump(&answers, path)
            {
                eprintln!("doc_bench: {path}: {e}");
                return ExitCode::FAILURE;
            }
            measure(&answers, rounds);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("doc_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The simulator's answers (JSON bodies), as the connector receives them.
async fn fetch_answers(users: usize, messages: usize) -> Res<Vec<(String, String, Vec<u8>)>> {
    let sim = Simulator::start(SimConfig {
        users,
        messages_per_user: messages,
        seed: 1,
        quota: QuotaConfig::off(),
        shared_thread_ratio: 0.0,
        suspended_every: 0,
        ..SimConfig::default()
    })
    .await?;
    sim.prerender();
    let http = connector_gmail::api::http_client()?;
    let mut answers = Vec::new();
    for user in sim.users() {
        let token = sim.issue_token(Some(&user.primary_email), &[SCOPE_GMAIL])?;
        for m in sim.messages(&user.primary_email)? {
            let url = format!(
                "{}/gmail/v1/users/{}/messages/{}?format=raw",
                sim.base_url(),
                user.primary_email,
                m.id
            );
            let body = http
                .get(url)
                .bearer_auth(&token)
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            answers.push((user.primary_email.clone(), m.id.clone(), body.to_vec()));
        }
    }
    sim.shutdown().await;
    Ok(answers)
}

#[inline(never)]
fn measure(answers: &[(String, String, Vec<u8>)], rounds: usize) {
    let bytes: usize = answers.iter().map(|(_, _, b)| b.len()).sum();
    println!("messages: {}", answers.len());
    println!("answer_bytes_mean: {}", bytes / answers.len().max(1));
    // Encodes as a content sync with the default pipeline flags does.
    let encoder = DocumentEncoder::new(
        None,
        vec![
            ("_extract_binary_content", true),
            ("_reduce_whitespace", true),
            ("_run_ml_inference", true),
        ],
        1,
        0,
    );
    let mut per_round = Vec::new();
    let mut out_bytes = 0usize;
    for _ in 0..rounds.max(1) {
        out_bytes = 0;
        let started = Instant::now();
        for (user, id, body) in answers {
            out_bytes += one(&encoder, user, id, body);
        }
        per_round.push(started.elapsed().as_nanos() as f64 / answers.len().max(1) as f64);
    }
    let best = per_round.iter().copied().fold(f64::INFINITY, f64::min);
    println!("source_bytes_mean: {}", out_bytes / answers.len().max(1));
    println!(
        "ns_per_message_rounds: {}",
        per_round
            .iter()
            .map(|n| format!("{n:.0}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    println!("ns_per_message: {best:.0}");
}

fn write_dump(answers: &[(String, String, Vec<u8>)], path: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let encoder = DocumentEncoder::default();
    for (user, id, body) in answers {
        let (doc, warnings) = document(&encoder, user, id, body)
            .ok_or_else(|| std::io::Error::other(format!("{id}: unreadable answer")))?;
        if !warnings.is_empty() {
            writeln!(out, "warnings {id}: {warnings:?}")?;
        }
        if let Some(doc) = doc {
            out.write_all(doc.source())?;
        }
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// One message: what the connector does between the HTTP answer and the sink (documents are
/// encoded by the connector, as in a sync).
#[inline(never)]
fn one(encoder: &DocumentEncoder, user: &str, id: &str, body: &[u8]) -> usize {
    document(encoder, user, id, body)
        .and_then(|(doc, _)| doc)
        .map_or(0, |d| d.source().len())
}

/// The answer → `RawMessage` → document → `_source` steps; `None` if the answer is not JSON.
fn document(
    encoder: &DocumentEncoder,
    user: &str,
    id: &str,
    body: &[u8],
) -> Option<(Option<EncodedDocument>, Vec<DocWarning>)> {
    let meta = serde_json::from_slice::<RawMessage>(body).ok()?;
    Some(build_document(
        encoder,
        user,
        id,
        &meta,
        DocOptions::default(),
    ))
}
