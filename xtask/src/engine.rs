//! A real single-node search engine for development and tests, provisioned from Maven Central.
//!
//! The versions used are recorded here and nowhere else.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::paths;

/// Newest 8.x Elasticsearch whose test distribution resolves and runs on the machine's Java 17.
pub const ELASTICSEARCH_VERSION: &str = "8.19.9";
/// OpenSearch, the second target.
pub const OPENSEARCH_VERSION: &str = "2.19.6";
/// Java 17 is what both versions above run on.
pub const JAVA_HOME: &str = "/usr/lib/jvm/java-17-openjdk-amd64";
/// Heap of the development node.
pub const HEAP: &str = "-Xms512m -Xmx512m";
/// Unprivileged account the node runs as when xtask runs as root (both engines refuse root).
pub const NODE_USER: &str = "esnode";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Elasticsearch,
    Opensearch,
}

impl Engine {
    /// `--engine`, else `SEARCH_ENGINE`, else Elasticsearch.
    pub fn resolve(flag: Option<Engine>) -> Result<Engine> {
        if let Some(e) = flag {
            return Ok(e);
        }
        match std::env::var("SEARCH_ENGINE").ok().as_deref() {
            None | Some("") | Some("elasticsearch") => Ok(Engine::Elasticsearch),
            Some("opensearch") => Ok(Engine::Opensearch),
            Some(other) => bail!("SEARCH_ENGINE={other:?}: expected elasticsearch or opensearch"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::Elasticsearch => "elasticsearch",
            Engine::Opensearch => "opensearch",
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Engine::Elasticsearch => ELASTICSEARCH_VERSION,
            Engine::Opensearch => OPENSEARCH_VERSION,
        }
    }

    fn maven_coordinates(self) -> String {
        match self {
            Engine::Elasticsearch => format!(
                "org.elasticsearch.distribution.integ-test-zip:elasticsearch:{}:zip",
                self.version()
            ),
            Engine::Opensearch => format!(
                "org.opensearch.distribution.integ-test-zip:opensearch:{}:zip",
                self.version()
            ),
        }
    }

    /// Path of the zip inside the local Maven repository.
    fn maven_path(self) -> PathBuf {
        let (group, artifact) = match self {
            Engine::Elasticsearch => (
                "org/elasticsearch/distribution/integ-test-zip",
                "elasticsearch",
            ),
            Engine::Opensearch => ("org/opensearch/distribution/integ-test-zip", "opensearch"),
        };
        let v = self.version();
        paths::maven_repo().join(format!("{group}/{artifact}/{v}/{artifact}-{v}.zip"))
    }

    fn env_prefix(self) -> &'static str {
        match self {
            Engine::Elasticsearch => "ES",
            Engine::Opensearch => "OPENSEARCH",
        }
    }
}

/// What `es up` leaves for tests and other commands (`.state/es.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub engine: Engine,
    pub version: String,
    pub url: String,
    pub pid: u32,
    pub node_dir: PathBuf,
    pub log_file: PathBuf,
}

pub fn read_state() -> Option<NodeState> {
    let raw = fs::read_to_string(paths::state_file()).ok()?;
    serde_json::from_str(&raw).ok()
}

fn write_state(state: &NodeState) -> Result<()> {
    let file = paths::state_file();
    fs::create_dir_all(file.parent().context("state file has a parent")?)?;
    fs::write(&file, serde_json::to_string_pretty(state)?)?;
    Ok(())
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// `(distribution, version)` of the node at `url` when it answers. `GET /` first; the
/// Elasticsearch test distribution lacks the root endpoint, so `GET /_nodes/_local` after.
pub fn probe(url: &str) -> Option<(String, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3)))
        .build()
        .into();
    if let Some(body) = agent
        .get(url)
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_json::<serde_json::Value>().ok())
        && let Some(version) = body["version"]["number"].as_str()
    {
        let distribution = body["version"]["distribution"]
            .as_str()
            .unwrap_or("elasticsearch")
            .to_owned();
        return Some((distribution, version.to_owned()));
    }
    let body: serde_json::Value = agent
        .get(&format!(
            "{url}/_nodes/_local?filter_path=nodes.*.version,nodes.*.build_flavor"
        ))
        .call()
        .ok()?
        .body_mut()
        .read_json()
        .ok()?;
    let node = body["nodes"].as_object()?.values().next()?.clone();
    let version = node["version"].as_str()?.to_owned();
    // Only Elasticsearch reports a build flavour.
    let distribution = if node.get("build_flavor").is_some() {
        "elasticsearch"
    } else {
        "opensearch"
    };
    Some((distribution.to_owned(), version))
}

/// Development nodes of Elasticsearch run a trial licence, so licence-gated features (DLS) work
/// as on a production cluster with a platinum licence.
fn start_trial(url: &str) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let _ = agent
        .post(&format!("{url}/_license/start_trial?acknowledge=true"))
        .send_empty();
}

fn cluster_ready(url: &str) -> bool {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let Ok(mut resp) = agent
        .get(&format!(
            "{url}/_cluster/health?wait_for_status=yellow&timeout=2s"
        ))
        .call()
    else {
        return false;
    };
    if resp.status() != 200 {
        return false;
    }
    let Ok(body) = resp.body_mut().read_json::<serde_json::Value>() else {
        return false;
    };
    matches!(body["status"].as_str(), Some("green" | "yellow"))
}

/// The running node started by xtask, if it answers.
pub fn running() -> Option<NodeState> {
    let state = read_state()?;
    (pid_alive(state.pid) && probe(&state.url).is_some()).then_some(state)
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("no free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

fn run(cmd: &mut Command) -> Result<std::process::Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    Ok(out)
}

fn is_root() -> bool {
    run(Command::new("id").arg("-u"))
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn ensure_node_user() -> Result<()> {
    if run(Command::new("id").args(["-u", NODE_USER]))?
        .status
        .success()
    {
        return Ok(());
    }
    let out = run(Command::new("useradd").args([
        "--system",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        NODE_USER,
    ]))?;
    if !out.status.success() {
        bail!(
            "cannot create user {NODE_USER}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Downloads (once, through Maven) and unpacks (once) the distribution; returns its home.
pub fn ensure_distribution(engine: Engine) -> Result<PathBuf> {
    let dist_root = paths::cache_dir().join("dist");
    let home = dist_root.join(format!("{}-{}", engine.name(), engine.version()));
    if home.join(".complete").exists() {
        return Ok(home);
    }
    let zip = engine.maven_path();
    if !zip.exists() {
        eprintln!("downloading {} through maven", engine.maven_coordinates());
        let out = run(Command::new("mvn").args([
            "-q",
            "-B",
            "dependency:get",
            &format!("-Dartifact={}", engine.maven_coordinates()),
            "-Dtransitive=false",
        ]))?;
        if !out.status.success() || !zip.exists() {
            bail!(
                "maven could not resolve {}:\n{}{}",
                engine.maven_coordinates(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let staging = dist_root.join(format!(".staging-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    let out = run(Command::new("unzip")
        .arg("-q")
        .arg(&zip)
        .arg("-d")
        .arg(&staging))?;
    if !out.status.success() {
        bail!(
            "cannot unzip {}: {}",
            zip.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let inner = fs::read_dir(&staging)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .context("the distribution zip has no top-level directory")?;
    let _ = fs::remove_dir_all(&home);
    fs::rename(&inner, &home)?;
    let _ = fs::remove_dir_all(&staging);
    // World-readable so the unprivileged node user can run it.
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(&home))?;
    fs::write(home.join(".complete"), engine.maven_coordinates())?;
    Ok(home)
}

fn node_config(engine: Engine, http_port: u16, transport_port: u16, dir: &Path) -> String {
    let mut yml = format!(
        "cluster.name: connectors-dev\n\
         node.name: node-1\n\
         network.host: 127.0.0.1\n\
         http.port: {http_port}\n\
         transport.port: {transport_port}\n\
         discovery.type: single-node\n\
         path.data: {data}\n\
         path.logs: {logs}\n\
         action.destructive_requires_name: false\n\
         cluster.routing.allocation.disk.threshold_enabled: false\n",
        data = dir.join("data").display(),
        logs = dir.join("logs").display(),
    );
    if engine == Engine::Elasticsearch {
        // The test distribution ships x-pack-security; development nodes run without it.
        yml.push_str("xpack.security.enabled: false\n");
    }
    yml
}

/// Starts a node unless one started by xtask already answers. Returns its state.
pub fn up(engine: Engine) -> Result<NodeState> {
    if let Some(state) = running() {
        if state.engine != engine {
            bail!(
                "a {} node started by xtask is already running at {} (pid {}); `cargo xtask es down` first",
                state.engine.name(),
                state.url,
                state.pid
            );
        }
        eprintln!(
            "{} {} already running (pid {})",
            engine.name(),
            state.version,
            state.pid
        );
        return Ok(state);
    }
    if let Some(stale) = read_state() {
        if pid_alive(stale.pid) {
            bail!(
                "process {} from the state file is alive but {} does not answer; see `cargo xtask es logs`, or stop it with `cargo xtask es down`",
                stale.pid,
                stale.url
            );
        }
        let _ = fs::remove_file(paths::state_file());
    }
    let home = ensure_distribution(engine)?;
    let node_dir = paths::node_dir(engine.name());
    let conf = node_dir.join("config");
    let _ = fs::remove_dir_all(&conf);
    fs::create_dir_all(node_dir.join("data"))?;
    fs::create_dir_all(node_dir.join("logs"))?;
    copy_dir(&home.join("config"), &conf)?;
    let http_port = free_port()?;
    let mut transport_port = free_port()?;
    while transport_port == http_port {
        transport_port = free_port()?;
    }
    let config_file = match engine {
        Engine::Elasticsearch => "elasticsearch.yml",
        Engine::Opensearch => "opensearch.yml",
    };
    fs::write(
        conf.join(config_file),
        node_config(engine, http_port, transport_port, &node_dir),
    )?;
    // jvm.options points GC logs, error files and heap dumps at paths relative to the
    // distribution, which the node user cannot write: point them into the node directory.
    let jvm_options = conf.join("jvm.options");
    if let Ok(options) = fs::read_to_string(&jvm_options) {
        let logs = node_dir.join("logs");
        let data = node_dir.join("data");
        let options = options
            .replace("logs/", &format!("{}/", logs.display()))
            .replace(
                "HeapDumpPath=data",
                &format!("HeapDumpPath={}", data.display()),
            );
        fs::write(&jvm_options, options)?;
    }
    let pid_file = node_dir.join("node.pid");
    let _ = fs::remove_file(&pid_file);
    let console = node_dir.join("logs").join("console.log");
    let root = is_root();
    if root {
        ensure_node_user()?;
        run(Command::new("chown")
            .arg("-R")
            .arg(format!("{NODE_USER}:{NODE_USER}"))
            .arg(&node_dir))?;
    }
    let prefix = engine.env_prefix();
    let bin = home.join("bin").join(engine.name());
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", NODE_USER, "--"]);
        c.arg("env");
        c
    } else {
        Command::new("env")
    };
    cmd.arg(format!("{prefix}_JAVA_HOME={}", java_home()))
        .arg(format!("{prefix}_PATH_CONF={}", conf.display()))
        .arg(format!("{prefix}_JAVA_OPTS={HEAP}"))
        .arg(format!("JAVA_HOME={}", java_home()))
        .arg(&bin)
        .arg("-d")
        .arg("-p")
        .arg(&pid_file);
    let log = fs::File::create(&console)?;
    if root {
        run(Command::new("chown")
            .arg(format!("{NODE_USER}:{NODE_USER}"))
            .arg(&console))?;
    }
    eprintln!(
        "starting {} {} on 127.0.0.1:{http_port}",
        engine.name(),
        engine.version()
    );
    // jvm.options writes GC logs and heap dumps relative to the working directory.
    let status = cmd
        .current_dir(&node_dir)
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(std::process::Stdio::null())
        .status()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let url = format!("http://127.0.0.1:{http_port}");
    let deadline = Instant::now() + Duration::from_secs(240);
    let pid = loop {
        if let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break pid;
        }
        if Instant::now() > deadline || (!status.success() && !pid_file.exists()) {
            bail!(
                "{} did not start (exit {status}); last lines of {}:\n{}",
                engine.name(),
                console.display(),
                tail(&console, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let state = NodeState {
        engine,
        version: engine.version().to_owned(),
        url: url.clone(),
        pid,
        node_dir: node_dir.clone(),
        log_file: node_dir.join("logs").join("connectors-dev.log"),
    };
    write_state(&state)?;
    while !cluster_ready(&url) {
        if !pid_alive(pid) || Instant::now() > deadline {
            let _ = fs::remove_file(paths::state_file());
            bail!(
                "{} exited or did not become ready; last log lines:\n{}\n{}",
                engine.name(),
                tail(&console, 20),
                tail(&state.log_file, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, version) = probe(&url).context("node answered health but not its version")?;
    if engine == Engine::Elasticsearch {
        start_trial(&url);
    }
    eprintln!("{} {version} ready at {url} (pid {pid})", engine.name());
    Ok(state)
}

fn java_home() -> String {
    std::env::var("CONNECTORS_JAVA_HOME").unwrap_or_else(|_| JAVA_HOME.to_owned())
}

/// Stops the node started by xtask (by its pid, nothing else).
pub fn down() -> Result<()> {
    let Some(state) = read_state() else {
        eprintln!("no node started by xtask");
        return Ok(());
    };
    if pid_alive(state.pid) {
        eprintln!("stopping {} (pid {})", state.engine.name(), state.pid);
        run(Command::new("kill").args(["-TERM", &state.pid.to_string()]))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while pid_alive(state.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        if pid_alive(state.pid) {
            run(Command::new("kill").args(["-KILL", &state.pid.to_string()]))?;
        }
    }
    fs::remove_file(paths::state_file())?;
    eprintln!("stopped");
    Ok(())
}

pub fn status() -> Result<bool> {
    match read_state() {
        None => {
            println!("no node started by xtask");
            Ok(false)
        }
        Some(state) => {
            let alive = pid_alive(state.pid);
            let answer = probe(&state.url);
            println!("engine:   {} {}", state.engine.name(), state.version);
            println!("url:      {}", state.url);
            println!(
                "pid:      {} ({})",
                state.pid,
                if alive { "alive" } else { "gone" }
            );
            println!("data:     {}", state.node_dir.display());
            match &answer {
                Some((dist, v)) => println!("answers:  {dist} {v}"),
                None => println!("answers:  no"),
            }
            Ok(alive && answer.is_some())
        }
    }
}

pub fn logs(lines: usize) -> Result<()> {
    let state = read_state().context("no node started by xtask")?;
    let console = state.node_dir.join("logs").join("console.log");
    println!("== {} ==\n{}", console.display(), tail(&console, lines));
    println!(
        "== {} ==\n{}",
        state.log_file.display(),
        tail(&state.log_file, lines)
    );
    Ok(())
}

fn tail(path: &Path, n: usize) -> String {
    let Ok(text) = fs::read_to_string(path) else {
        return format!("({} not readable)", path.display());
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
