//! `cargo xtask …`: development tasks.

mod demo;
mod deploy;
mod engine;
mod paths;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use engine::Engine;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Development tasks for the connectors workspace"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A real local search engine for development and tests.
    Es {
        #[command(subcommand)]
        action: EsAction,
    },
    /// fmt --check, clippy -D warnings and the whole test suite against a real node (started if
    /// none runs, stopped afterwards).
    Test {
        /// Engine to test against (default: $SEARCH_ENGINE, else elasticsearch).
        #[arg(long, value_enum)]
        engine: Option<Engine>,
        /// Extra arguments for `cargo test`.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Lints deploy/Dockerfile (hadolint) and validates deploy/kubernetes (Kubernetes schemas).
    LintDeploy,
    /// Writes each connector's JSON Schema and default configuration under config/schema/.
    Schema,
    /// The end-to-end demo against a local node and the Google Workspace simulator.
    Demo,
    /// Benchmarks (release builds): `sim` (simulator messages.get throughput), `sync` (framework
    /// full sync of generated documents: docs/s, peak RSS), `gmail` (Gmail connector against the
    /// simulator). Arguments after `--` go to the benchmark.
    Bench {
        #[arg(value_enum)]
        what: Bench,
        #[arg(last = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum EsAction {
    /// Start a node (idempotent) and print its URL.
    Up {
        #[arg(long, value_enum)]
        engine: Option<Engine>,
    },
    /// Stop the node started by `up` (by its pid).
    Down,
    /// Show the node's state.
    Status,
    /// Print the node's last log lines.
    Logs {
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Es { action } => match action {
            EsAction::Up { engine } => {
                let state = engine::up(Engine::resolve(engine)?)?;
                println!("{}", state.url);
                Ok(ExitCode::SUCCESS)
            }
            EsAction::Down => engine::down().map(|_| ExitCode::SUCCESS),
            EsAction::Status => Ok(if engine::status()? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }),
            EsAction::Logs { lines } => engine::logs(lines).map(|_| ExitCode::SUCCESS),
        },
        Cmd::Test { engine, cargo_args } => test(Engine::resolve(engine)?, &cargo_args),
        Cmd::LintDeploy => Ok(if deploy::lint()? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Cmd::Schema => {
            for (name, content) in connectors::generated_files() {
                let path = paths::root().join(&name);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(&path, content)?;
                eprintln!("wrote {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo => demo::run().map(|_| ExitCode::SUCCESS),
        Cmd::Bench { what, args } => bench(what, &args),
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Bench {
    Sim,
    Sync,
    Gmail,
    /// The Gmail document path alone (answer → document → `_source` bytes), one thread.
    Docs,
}

fn bench(what: Bench, args: &[String]) -> Result<ExitCode> {
    if matches!(what, Bench::Sim) && which("wrk").is_some() {
        return bench_sim_wrk(args);
    }
    // `--split-cores`: the local node on CPU 0, the benchmark (connector and simulator) on CPU 1,
    // for both the sync and the raw `_bulk` ceiling: the node gets the same CPU in both, as a
    // cluster on its own machines would, instead of competing with the client for two cores.
    let split = args.iter().any(|a| a == "--split-cores");
    let args: Vec<String> = args
        .iter()
        .filter(|a| *a != "--split-cores")
        .cloned()
        .collect();
    let args = &args[..];
    let (package, example, needs_node) = match what {
        Bench::Sim => ("google-workspace-sim", "load", false),
        Bench::Sync => ("connector-framework", "full_sync_bench", true),
        Bench::Gmail => ("connector-gmail", "gmail_bench", true),
        Bench::Docs => ("connector-gmail", "doc_bench", false),
    };
    let mut started = false;
    let mut cmd = if split {
        let mut c = Command::new("taskset");
        c.current_dir(paths::root())
            .arg("0x2")
            .arg(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        scrub_cargo_run_env(&mut c);
        c
    } else {
        cargo()
    };
    cmd.args([
        "run",
        "--release",
        "--quiet",
        "-p",
        package,
        "--example",
        example,
        "--",
    ])
    .args(args);
    if needs_node {
        let url = match std::env::var("ES_URL").ok().filter(|u| !u.is_empty()) {
            Some(url) => url,
            None => match engine::running() {
                Some(state) => state.url,
                None => {
                    started = true;
                    engine::up(Engine::resolve(None)?)?.url
                }
            },
        };
        let (distribution, version) =
            engine::probe(&url).with_context(|| format!("no search engine answers at {url}"))?;
        eprintln!("==> benchmarking against {distribution} {version} at {url}");
        cmd.env("ES_URL", &url);
        // The local node's pid, so the benchmark can report the node's CPU time too.
        if let Some(state) =
            engine::running().filter(|s| s.url.trim_end_matches('/') == url.trim_end_matches('/'))
        {
            cmd.env("ES_PID", state.pid.to_string());
        }
    }
    let pinned = if split {
        let state =
            engine::running().context("--split-cores needs the local node (cargo xtask es up)")?;
        let pinned = Command::new("taskset")
            .args(["-a", "-p", "0x1", &state.pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .context("taskset (util-linux) is needed for --split-cores")?;
        anyhow::ensure!(pinned.success(), "cannot pin the node to CPU 0");
        eprintln!("==> node (pid {}) on CPU 0, benchmark on CPU 1", state.pid);
        Some(state.pid)
    } else {
        None
    };
    let ok = step(&format!("bench {what:?}"), &mut cmd);
    if let Some(pid) = pinned {
        let all = format!(
            "0x{:x}",
            (1u64
                << std::thread::available_parallelism()
                    .map_or(2, |n| n.get())
                    .min(63))
                - 1
        );
        let _ = Command::new("taskset")
            .args(["-a", "-p", &all, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status();
    }
    if started && let Err(e) = engine::down() {
        eprintln!("xtask: could not stop the node: {e:#}");
    }
    Ok(if ok? {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `bench sim` with `wrk` on PATH: `gws-sim --quota off` in its own process and `wrk` as the
/// load generator (prepared by the `load` example), so neither the simulator nor the generator
/// shares a runtime with the other. Arguments go to the `load` example (`--clients`, `--seconds`,
/// `--users`, …) except `--sim-users`/`--sim-messages` which size the simulator.
fn bench_sim_wrk(args: &[String]) -> Result<ExitCode> {
    use std::io::BufRead as _;
    let mut sim_users = "20".to_owned();
    let mut sim_messages = "500".to_owned();
    let mut load_args = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--sim-users" => sim_users = it.next().context("--sim-users N")?.clone(),
            "--sim-messages" => sim_messages = it.next().context("--sim-messages N")?.clone(),
            _ => load_args.push(a.clone()),
        }
    }
    let built = step(
        "build gws-sim and the load example",
        cargo().args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "google-workspace-sim",
            "--bin",
            "gws-sim",
            "--example",
            "load",
        ]),
    )?;
    if !built {
        return Ok(ExitCode::FAILURE);
    }
    let bin = paths::target_dir().join("release");
    let mut sim = Command::new(bin.join("gws-sim"))
        .args(["--port", "0", "--quota", "off", "--users", &sim_users])
        .args(["--messages-per-user", &sim_messages])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("cannot start gws-sim")?;
    let url = {
        let stdout = sim.stdout.take().context("gws-sim stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        line.trim().to_owned()
    };
    let ok = if url.starts_with("http") {
        eprintln!("==> gws-sim (pid {}) at {url}", sim.id());
        step(
            "bench sim (wrk)",
            Command::new(bin.join("examples").join("load"))
                .args(["--url", &url, "--wrk"])
                .args(&load_args),
        )
    } else {
        eprintln!("==> gws-sim did not start (printed {url:?})");
        Ok(false)
    };
    let _ = sim.kill();
    let _ = sim.wait();
    Ok(if ok? {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The path of `program` when it is on PATH.
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(paths::root());
    scrub_cargo_run_env(&mut c);
    c
}

/// Removes the variables `cargo run` sets for xtask itself (`CARGO_MANIFEST_DIR`,
/// `CARGO_PKG_*`, …) from a nested cargo invocation. Build scripts track some of them (ring's
/// tracks `CARGO_MANIFEST_DIR`), so inheriting xtask's values made every `cargo xtask demo` and
/// `cargo xtask test` rebuild ring and everything above it (~40 s).
fn scrub_cargo_run_env(c: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_PKG_")
            || matches!(
                key,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_BIN_NAME"
                    | "CARGO_CRATE_NAME"
            )
        {
            c.env_remove(key);
        }
    }
}

fn step(name: &str, cmd: &mut Command) -> Result<bool> {
    eprintln!("\n==> {name}");
    let status = cmd.status().with_context(|| format!("cannot run {name}"))?;
    if !status.success() {
        eprintln!("==> {name}: FAILED ({status})");
    }
    Ok(status.success())
}

fn test(engine: Engine, cargo_args: &[String]) -> Result<ExitCode> {
    // A node: ES_URL if given, else ours if it runs, else start one (and stop it afterwards).
    let (url, started) = match std::env::var("ES_URL").ok().filter(|u| !u.is_empty()) {
        Some(url) => (url, false),
        None => match engine::running() {
            Some(state) if state.engine == engine => (state.url, false),
            Some(state) => bail!(
                "a {} node started by xtask runs at {}; stop it (`cargo xtask es down`) to test against {}",
                state.engine.name(),
                state.url,
                engine.name()
            ),
            None => (engine::up(engine)?.url, true),
        },
    };
    let result = (|| -> Result<bool> {
        let (distribution, version) =
            engine::probe(&url).with_context(|| format!("no search engine answers at {url}"))?;
        eprintln!("==> testing against {distribution} {version} at {url}");
        let mut ok = step(
            "cargo fmt --check",
            cargo().args(["fmt", "--all", "--check"]),
        )?;
        ok &= step(
            "cargo clippy",
            cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
        eprintln!("\n==> deploy: hadolint + kubernetes schemas");
        let deploy_ok = deploy::lint()?;
        if !deploy_ok {
            eprintln!("==> deploy lint: FAILED");
        }
        ok &= deploy_ok;
        ok &= step(
            "cargo test",
            cargo()
                .args(["test", "--workspace", "--no-fail-fast"])
                .args(cargo_args)
                .env("ES_URL", &url)
                .env("SEARCH_ENGINE", engine.name()),
        )?;
        Ok(ok)
    })();
    if started && let Err(e) = engine::down() {
        eprintln!("xtask: could not stop the node: {e:#}");
    }
    if result? {
        eprintln!("\n==> all checks passed");
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}
