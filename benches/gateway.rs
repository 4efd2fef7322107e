//! The performance bar, measured: what llm-router adds to an LLM call, what it costs, how many
//! streams it holds, and how precisely its timers fire, against the cheapest possible
//! tonic-to-HTTP forwarder measured the same way in the same run.
//!
//!   cargo bench --bench gateway                 # everything (about six minutes)
//!   cargo bench --bench gateway -- --only timers
//!   cargo bench --bench gateway -- --only overhead --rates 1000 --seconds 5
//!
//! `--rates` (comma-separated) and `--seconds` set the unary load, `--stream-rate` the streams
//! (0: none), `--streams` how many `scale` holds open. `--security key|tls|mtls` runs
//! llm-router with a caller identified by an API key (with limits it never reaches), with TLS
//! on its port, or with mTLS and a caller identified by its certificate; default `plain`, no
//! callers (the baseline forwarder stays plaintext either way). `--redis` starts a
//! `redis-server` on a free port (stopped at the end) and has llm-router share its state
//! through it (`router_settings.redis_url`). `--upstream tls-h2` puts the upstream behind TLS
//! and HTTP/2 with at most 100 streams per connection, as providers are reached, and
//! `--upstream tls-h1` behind TLS and HTTP/1.1 (`benches/gateway/front.rs`); every path goes
//! through the same front. `--slow-stream-guard` turns the slow-stream guard on for every
//! group (`stream_min_tokens_per_s: 1`, which no stream here falls below), to measure what a
//! guarded stream pays per chunk. For profiling, `LLMROUTER_BENCH_WRAP` is
//! a command that both measured processes are started under, such as
//! `valgrind --tool=callgrind --callgrind-out-file=/tmp/cg-{name}` (with low `--rates`), where
//! `{name}` becomes `llm-router` or `baseline`. The tiny run under `cargo test` fails if any
//! call failed or any held stream did not complete.
//!
//! Parts: `overhead` (added latency at fixed rates, unary and time to first chunk, with CPU per
//! call against the baseline), `scale` (10,000 open streams: memory per stream), `timers`
//! (first-chunk and total deadlines under load). Results go to stdout as Markdown tables,
//! ready for BENCHMARKS.md.
//!
//! llm-router (the release binary) and the baseline forwarder run as their own processes, so
//! their CPU time is read from /proc alone; the upstream and the load generator share this one.
//! Under `cargo test` (no `--bench` flag) it runs a tiny configuration, to show it still works.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream};
use llm_router::proto::{
    ChatMessage, CompleteRequest, CompleteResponse, ListModelsRequest, ListModelsResponse, Role,
    StreamCompleteRequest, StreamCompleteResponse,
    router_service_client::RouterServiceClient,
    router_service_server::{RouterService, RouterServiceServer},
};
use tonic::transport::Channel;

const ROLE_ENV: &str = "LLMROUTER_BENCH_ROLE";

fn main() {
    if std::env::var(ROLE_ENV).as_deref() == Ok("forwarder") {
        return forwarder::main();
    }
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let only: Option<Vec<String>> = args
        .windows(2)
        .find(|w| w[0] == "--only")
        .map(|w| w[1].split(',').map(String::from).collect());
    let wants = |part: &str| only.as_ref().is_none_or(|o| o.iter().any(|p| p == part));
    let mut scale = if full { Scale::full() } else { Scale::tiny() };
    // Shorter or different runs, for profiling: `--rates 200 --seconds 3`.
    let flag = |name: &str| args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone());
    if let Some(r) = flag("--rates") {
        scale.rates = r
            .split(',')
            .map(|n| {
                n.parse()
                    .expect("--rates: calls per second, comma-separated")
            })
            .collect();
    }
    if let Some(r) = flag("--stream-rate") {
        scale.stream_rate = r
            .parse()
            .expect("--stream-rate: streams per second, 0 for none");
    }
    if let Some(n) = flag("--streams") {
        scale.held_streams = n.parse().expect("--streams: how many streams to hold open");
    }
    if let Some(s) = flag("--seconds") {
        scale.seconds = s.parse().expect("--seconds: a number");
    }
    let security = match flag("--security").as_deref() {
        None | Some("plain") => Security::Plain,
        Some("key") => Security::Key,
        Some("tls") => Security::Tls,
        Some("mtls") => Security::Mtls,
        Some(other) => panic!("--security: plain, key, tls or mtls, not {other}"),
    };
    let _ = SECURITY.set(SecuritySetup::new(security));
    // A redis-server of this run's own, on a free port, stopped (by its PID) when dropped.
    let redis = args
        .iter()
        .any(|a| a == "--redis")
        .then(redis_server::RedisServer::start);
    let _ = REDIS_URL.set(redis.as_ref().map(|r| r.url()));
    let _ = GUARD.set(args.iter().any(|a| a == "--slow-stream-guard"));
    let front_kind = match flag("--upstream").as_deref() {
        None | Some("plain") => None,
        Some("tls-h2") => Some(front::Kind::H2 { max_streams: 100 }),
        Some("tls-h1") => Some(front::Kind::H1),
        Some(other) => panic!("--upstream: plain, tls-h2 or tls-h1, not {other}"),
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let upstream = Upstream::start().await;
        set_upstream(&upstream, scale.latency, scale.chunks);
        let front = match front_kind {
            Some(kind) => Some(front::Front::start(kind, &upstream).await),
            None => None,
        };
        let _ = FRONT.set(front);
        println!(
            "# llm-router gateway benchmark ({})\n",
            if full { "full" } else { "tiny" }
        );
        println!("{}\n", machine());
        println!(
            "Upstream: {}.\n",
            tls_front().map_or("plaintext HTTP/1.1".to_string(), front::Front::describe)
        );
        if wants("overhead") {
            overhead(&upstream, &scale).await;
        }
        if wants("timers") {
            timers(&upstream, &scale).await;
        }
        if wants("scale") {
            streams_held(&upstream, &scale).await;
        }
    });
    drop(redis);
    let problems = PROBLEMS.lock().unwrap();
    if !problems.is_empty() {
        // Under `cargo test` this is the check that every path still works end to end; a
        // full run reports and goes on, since its numbers are still worth reading.
        let all = problems.join("\n  ");
        if full {
            eprintln!("calls that failed or did not complete:\n  {all}");
        } else {
            panic!("calls that failed or did not complete:\n  {all}");
        }
    }
}

/// The `redis_url` llm-router shares its state through, under `--redis`.
static REDIS_URL: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
/// `--slow-stream-guard`: every stream carries the guard's meter.
static GUARD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Rows whose calls failed or did not complete.
static PROBLEMS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn problem_if(what: impl std::fmt::Display, bad: usize) {
    if bad > 0 {
        PROBLEMS.lock().unwrap().push(format!("{what}: {bad}"));
    }
}

/// How much of everything to do.
struct Scale {
    rates: Vec<u32>,
    seconds: f64,
    /// Upstream latency for unary calls and to the first chunk.
    latency: Duration,
    stream_rate: u32,
    chunks: usize,
    timer_calls: usize,
    concurrent_deadlines: usize,
    held_streams: usize,
}

impl Scale {
    fn full() -> Self {
        Scale {
            rates: vec![1000, 5000],
            seconds: 10.0,
            latency: Duration::from_millis(5),
            stream_rate: 500,
            chunks: 20,
            timer_calls: 1000,
            concurrent_deadlines: 1000,
            held_streams: 10_000,
        }
    }

    fn tiny() -> Self {
        Scale {
            rates: vec![100],
            seconds: 0.5,
            latency: Duration::from_millis(5),
            stream_rate: 50,
            chunks: 3,
            timer_calls: 10,
            concurrent_deadlines: 20,
            held_streams: 50,
        }
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "Machine: {cpu}, {cores} cores. The upstream and the load generator share the benchmark's own process, beside the measured ones."
    )
}

// ---------------------------------------------------------------------------------------------
// The upstream: the tests' fault-injecting OpenAI-compatible upstream, the project's one fake
// upstream, here only ever well-behaved.

#[path = "../tests/it/common/upstream.rs"]
mod upstream;
use upstream::{Behaviour, Upstream};

// Under `--upstream tls-h2|tls-h1`: the upstream behind TLS.
#[path = "gateway/front.rs"]
mod front;

/// The TLS front every path goes through, under `--upstream tls-h2|tls-h1`.
static FRONT: std::sync::OnceLock<Option<front::Front>> = std::sync::OnceLock::new();

fn tls_front() -> Option<&'static front::Front> {
    FRONT.get().and_then(Option::as_ref)
}

/// Where calls to the upstream go: the TLS front when there is one.
fn upstream_base(up: &Upstream) -> String {
    tls_front().map_or_else(|| up.base(), front::Front::base)
}

/// A direct HTTP client, trusting the front's CA.
fn direct_client() -> reqwest::Client {
    let mut b = reqwest::Client::builder().pool_max_idle_per_host(20_000);
    if let Some(f) = tls_front() {
        let pem = std::fs::read(&f.ca_file).unwrap();
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

// Under `--redis`: the tests' redis-server, started the same way.
#[path = "../tests/it/common/redis_server.rs"]
mod redis_server;

/// Time between a `bench-stream` answer's chunks.
const CHUNK_INTERVAL: Duration = Duration::from_millis(1);

/// What each model of the upstream does. `latency` is the wait before the answer's headers.
/// `bench`: a whole unary answer of 20 words; `bench-stream`: `chunks` chunks `CHUNK_INTERVAL`
/// apart; `fast`: one word at once; `hang`: never answers; `slow-stream`: three chunks, one a
/// second.
fn set_upstream(up: &Upstream, latency: Duration, chunks: usize) {
    let answer = |latency, chunks, chunk_interval| Behaviour::Answer {
        headers_after: latency,
        first_chunk_after: Duration::ZERO,
        chunks: vec!["word ".to_string(); chunks],
        chunk_interval,
    };
    up.set("bench", answer(latency, 20, Duration::ZERO));
    up.set("bench-stream", answer(latency, chunks, CHUNK_INTERVAL));
    up.set("fast", answer(Duration::ZERO, 1, Duration::ZERO));
    up.set("hang", Behaviour::Hang);
    up.set("slow-stream", answer(latency, 3, Duration::from_secs(1)));
}

// ---------------------------------------------------------------------------------------------
// How llm-router is called: plaintext, an API key, TLS, mTLS.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Security {
    Plain,
    Key,
    Tls,
    Mtls,
}

/// The run's security mode with its key and certificates (made here, in a temporary folder).
struct SecuritySetup {
    mode: Security,
    dir: std::path::PathBuf,
    ca_pem: String,
    client: (String, String),
}

static SECURITY: std::sync::OnceLock<SecuritySetup> = std::sync::OnceLock::new();
const BENCH_KEY: &str = "sk-bench-0123456789abcdef0123456789";
const BENCH_SPIFFE: &str = "spiffe://bench/caller";

fn security() -> &'static SecuritySetup {
    SECURITY.get_or_init(|| SecuritySetup::new(Security::Plain))
}

impl SecuritySetup {
    fn new(mode: Security) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
        let dir = std::env::temp_dir().join(format!("llm-router-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca.self_signed(&ca_key).unwrap();
        let issue = |san: SanType| {
            let mut p = CertificateParams::default();
            p.subject_alt_names = vec![san];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let server = issue(SanType::DnsName("localhost".try_into().unwrap()));
        let client = issue(SanType::URI(BENCH_SPIFFE.try_into().unwrap()));
        std::fs::write(dir.join("server.pem"), &server.0).unwrap();
        std::fs::write(dir.join("server.key"), &server.1).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        SecuritySetup {
            mode,
            dir,
            ca_pem: ca.pem(),
            client,
        }
    }

    fn tls(&self) -> bool {
        matches!(self.mode, Security::Tls | Security::Mtls)
    }

    /// What the router's config adds: `server.tls` lines (under `server:`), and `auth`/`callers`.
    fn config(&self) -> (String, String) {
        let d = self.dir.display();
        let digest = ring::digest::digest(&ring::digest::SHA256, BENCH_KEY.as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        // Limits a caller would have, set so that the run never reaches them.
        let limits = "rpm_limit: 100000000, tpm_limit: 100000000000, max_parallel_requests: 100000, max_budget: 1000000, budget_duration: 30d";
        match self.mode {
            Security::Plain => (String::new(), String::new()),
            Security::Key => (
                String::new(),
                format!(
                    "auth: {{ required: true }}\ncallers:\n  - {{ name: bench, keys: [\"sha256:{hex}\"], {limits} }}\n"
                ),
            ),
            Security::Tls => (
                format!("  tls: {{ cert_file: {d}/server.pem, key_file: {d}/server.key }}\n"),
                String::new(),
            ),
            Security::Mtls => (
                format!(
                    "  tls: {{ cert_file: {d}/server.pem, key_file: {d}/server.key, client_ca_file: {d}/ca.pem }}\n"
                ),
                format!(
                    "auth: {{ required: true }}\ncallers:\n  - {{ name: bench, identities: [\"{BENCH_SPIFFE}\"], {limits} }}\n"
                ),
            ),
        }
    }
}

/// A request as the run's callers send it: with the API key in key mode.
fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if security().mode == Security::Key {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {BENCH_KEY}").parse().unwrap(),
        );
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Processes under test.

struct Server {
    child: Child,
    addr: SocketAddr,
    /// Its port speaks TLS (llm-router under `--security tls|mtls`).
    tls: bool,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time of every thread of the process, from /proc (nanoseconds, scheduler-precise).
    fn cpu(&self) -> Duration {
        let mut total = 0u64;
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) {
            for t in tasks.flatten() {
                if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                    total += s
                        .split_whitespace()
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
        Duration::from_nanos(total)
    }

    /// Context switches of every thread of the process: how often it went to sleep and was
    /// woken, which on a small machine costs as much as the work itself.
    fn switches(&self) -> u64 {
        let mut total = 0;
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) {
            for t in tasks.flatten() {
                if let Ok(s) = std::fs::read_to_string(t.path().join("status")) {
                    total += s
                        .lines()
                        .filter(|l| l.contains("ctxt_switches:"))
                        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                        .sum::<u64>();
                }
            }
        }
        total
    }

    /// User and kernel CPU time of the process, in clock ticks (from /proc/<pid>/stat): coarse,
    /// but enough to split a few seconds of load between the two.
    fn user_sys_ticks(&self) -> (u64, u64) {
        let f = stat_fields(self.pid());
        let field = |i: usize| f.get(i).and_then(|x| x.parse().ok()).unwrap_or(0);
        // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
        (field(11), field(12))
    }

    fn rss_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    async fn clients(&self, n: usize) -> Vec<RouterServiceClient<Channel>> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let sec = security();
        let mut out = Vec::new();
        for _ in 0..n {
            let channel = if self.tls {
                let mut tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&sec.ca_pem))
                    .domain_name("localhost");
                if sec.mode == Security::Mtls {
                    tls = tls.identity(Identity::from_pem(&sec.client.0, &sec.client.1));
                }
                Channel::from_shared(format!("https://{}", self.addr))
                    .unwrap()
                    .tls_config(tls)
                    .unwrap()
                    .connect()
                    .await
                    .unwrap()
            } else {
                Channel::from_shared(format!("http://{}", self.addr))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap()
            };
            out.push(RouterServiceClient::new(channel));
        }
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::env::var_os("LLMROUTER_BENCH_WRAP").is_some() {
            // A profiler writes its report when the process ends by a signal it can see. A
            // wrapper that runs the program as its child (heaptrack) does not pass the signal
            // on, so the program's own process, found among the wrapper's descendants, gets it;
            // one that becomes the program (valgrind) gets it itself.
            let target = descendants(self.pid())
                .into_iter()
                .find(|&p| {
                    std::fs::read_link(format!("/proc/{p}/exe"))
                        .is_ok_and(|exe| exe.ends_with("llm-router") || exe.ends_with(exe_name()))
                })
                .unwrap_or(self.pid());
            let _ = Command::new("kill")
                .args(["-TERM", &target.to_string()])
                .status();
            for _ in 0..600 {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fields of /proc/<pid>/stat after the command name (which is in parentheses and may hold
/// spaces): state, parent, ...; empty when the process is gone.
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// Every process below `pid`, from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let parent_of = |p: u32| -> Option<u32> { stat_fields(p).get(1)?.parse().ok() };
    let all: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(all.iter().copied().filter(|&c| parent_of(c) == Some(p)));
        i += 1;
    }
    found.remove(0);
    found
}

/// This benchmark's own file name: the baseline forwarder runs as it.
fn exe_name() -> std::ffi::OsString {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_owned()))
        .unwrap_or_default()
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn wait_serving(addr: SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing listens on {addr}");
}

/// `program`, under `LLMROUTER_BENCH_WRAP`'s command when it is set.
fn wrapped(program: &str, name: &str) -> Command {
    match std::env::var("LLMROUTER_BENCH_WRAP") {
        Ok(wrap) if !wrap.trim().is_empty() => {
            // `{name}` in the command becomes `llm-router` or `baseline`: one report each.
            let wrap = wrap.replace("{name}", name);
            let mut words = wrap.split_whitespace();
            let mut cmd = Command::new(words.next().unwrap());
            cmd.args(words).arg(program);
            cmd
        }
        _ => Command::new(program),
    }
}

/// The release llm-router with `config`.
async fn llm_router(config: &str) -> Server {
    let path = std::env::temp_dir().join(format!(
        "llm-router-bench-{}-{}.yaml",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::write(&path, config).unwrap();
    let addr = free_port();
    let child = wrapped(env!("CARGO_BIN_EXE_llm-router"), "llm-router")
        .args([
            "--config",
            path.to_str().unwrap(),
            "--listen",
            &addr.to_string(),
            "--admin-listen",
            "none",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_serving(addr).await;
    Server {
        child,
        addr,
        tls: security().tls(),
    }
}

/// The baseline: this executable in its forwarder role.
async fn baseline(upstream: &Upstream) -> Server {
    let addr = free_port();
    let child = wrapped(
        std::env::current_exe().unwrap().to_str().unwrap(),
        "baseline",
    )
    .env(ROLE_ENV, "forwarder")
    .env("FORWARD_LISTEN", addr.to_string())
    .env("FORWARD_UPSTREAM", upstream_base(upstream))
    .env(
        "FORWARD_CA",
        tls_front().map_or(String::new(), |f| f.ca_file.display().to_string()),
    )
    .stdout(Stdio::null())
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap();
    wait_serving(addr).await;
    Server {
        child,
        addr,
        tls: false,
    }
}

fn router_config(upstream: &Upstream) -> String {
    let (server_tls, auth) = security().config();
    format!(
        r#"
model_list:
  - model_name: bench
    litellm_params: {{ model: openai/bench, api_base: "{base}", timeout: 30s, max_retries: 0 }}
  - model_name: bench-stream
    litellm_params: {{ model: openai/bench-stream, api_base: "{base}", timeout: 30s, max_retries: 0 }}
  - model_name: fast
    litellm_params: {{ model: openai/fast, api_base: "{base}", timeout: 30s, max_retries: 0 }}
  - model_name: hang
    litellm_params: {{ model: openai/hang, api_base: "{base}", timeout: 30s, stream_timeout: 100ms, max_retries: 0 }}
  - model_name: slow-stream
    litellm_params: {{ model: openai/slow-stream, api_base: "{base}", timeout: 60s, max_retries: 0 }}
server:
  # The scale part holds 10,000 streams: above the default bound of 4096 calls, and of 4096
  # HTTP/1.1 connections per provider.
  max_concurrent_calls: 20000
{tls}{server_tls}{auth}router_settings:
{redis}{guard}  timeout: 60s
  pool_max_connections: 20000
  stream_idle_timeout: 30s
  # The timer parts call the hanging deployment on purpose, thousands of times: with cooldowns
  # on it would be skipped after a few failures (the feature working), and the timers would
  # not be measured.
  disable_cooldowns: true
  fallbacks:
    - hang: [fast]
"#,
        base = upstream_base(upstream),
        tls = tls_front().map_or(String::new(), |f| format!(
            "litellm_settings:\n  ssl_verify: {}\n",
            f.ca_file.display()
        )),
        redis = REDIS_URL
            .get()
            .cloned()
            .flatten()
            .map_or(String::new(), |url| format!("  redis_url: {url}\n")),
        // Judged only after 5 s of grace and a 10 s window, so no stream here is ever cut: the
        // meter's cost is what is measured.
        guard = if GUARD.get().copied().unwrap_or(false) {
            "  stream_min_tokens_per_s: 1\n"
        } else {
            ""
        },
    )
}

fn messages() -> Vec<ChatMessage> {
    vec![ChatMessage {
        role: Role::User as i32,
        content: "Say hello.".into(),
        name: None,
        ..Default::default()
    }]
}

// ---------------------------------------------------------------------------------------------
// Load generation.

/// Calls `call` at `rate` per second for `seconds` (open loop: a slow answer does not delay the
/// next call) and returns each call's latency, or `None` where it failed.
async fn at_rate<F, Fut>(rate: u32, seconds: f64, call: F) -> Vec<Option<Duration>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Option<Duration>> + Send + 'static,
{
    let n = (f64::from(rate) * seconds) as usize;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        // Each call is due at its own instant; the timer's millisecond grain makes calls leave
        // in small bursts at high rates.
        let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
        tokio::time::sleep_until(due.into()).await;
        tasks.push(tokio::spawn(call(i)));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap_or(None));
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn sorted_ok(v: &[Option<Duration>]) -> (Vec<Duration>, usize) {
    let mut ok: Vec<Duration> = v.iter().flatten().copied().collect();
    ok.sort();
    let failed = v.len() - ok.len();
    (ok, failed)
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

fn signed_us(a: Duration, b: Duration) -> String {
    format!("{:.0}", (a.as_secs_f64() - b.as_secs_f64()) * 1e6)
}

fn direct_body(model: &str, stream: bool, chunks: usize) -> String {
    format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"Say hello."}}],"stream":{stream},"max_tokens":{chunks}}}"#
    )
}

// ---------------------------------------------------------------------------------------------
// 1 and 2: overhead and cost.

async fn overhead(upstream: &Upstream, scale: &Scale) {
    let http = direct_client();
    let router = llm_router(&router_config(upstream)).await;
    let base = baseline(upstream).await;
    let router_clients = Arc::new(router.clients(4).await);
    let base_clients = Arc::new(base.clients(4).await);
    let url = format!("{}/chat/completions", upstream_base(upstream));

    println!("## Overhead and cost: Complete\n");
    println!(
        "Upstream latency {}ms. Added latency is llm-router's (or the baseline's) percentile minus the direct HTTP call's. CPU is the measured process's own, per call.\n",
        scale.latency.as_millis()
    );
    println!(
        "| rate (calls/s) | path | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | added p99.9 µs | CPU µs/call | of it in kernel | switches/call | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &rate in &scale.rates {
        // Warm every path's connections first.
        let warm = (rate / 10).max(10);
        let _ = at_rate(warm, 1.0, |i| unary_grpc(router_clients.clone(), i)).await;
        let _ = at_rate(warm, 1.0, |i| unary_grpc(base_clients.clone(), i)).await;
        let _ = at_rate(warm, 1.0, |_| unary_http(http.clone(), url.clone())).await;

        let direct = at_rate(rate, scale.seconds, |_| {
            unary_http(http.clone(), url.clone())
        })
        .await;
        let (direct, dfail) = sorted_ok(&direct);
        row(rate, "direct HTTP", &direct, &direct, dfail, None);

        for (name, server, clients) in [
            ("llm-router", &router, &router_clients),
            ("baseline forwarder", &base, &base_clients),
        ] {
            let (cpu0, sw0, (u0, s0)) = (server.cpu(), server.switches(), server.user_sys_ticks());
            let lat = at_rate(rate, scale.seconds, |i| unary_grpc(clients.clone(), i)).await;
            let (cpu, sw) = (server.cpu() - cpu0, server.switches() - sw0);
            let (u1, s1) = server.user_sys_ticks();
            let kernel = (s1 - s0) as f64 / ((u1 - u0) + (s1 - s0)).max(1) as f64;
            let (lat, fail) = sorted_ok(&lat);
            let calls = lat.len().max(1);
            let per_call = cpu / (calls as u32);
            let switches = sw as f64 / calls as f64;
            row(
                rate,
                name,
                &lat,
                &direct,
                fail,
                Some((per_call, kernel, switches)),
            );
        }
    }
    println!();

    // Streams: added time to first chunk, and CPU per 1,000 chunks.
    if scale.stream_rate == 0 {
        return;
    }
    println!("## Overhead and cost: StreamComplete\n");
    println!(
        "{} calls/s for {}s, {} chunks each, {}ms to the first chunk, then a chunk every {}ms.\n",
        scale.stream_rate,
        scale.seconds,
        scale.chunks,
        scale.latency.as_millis(),
        CHUNK_INTERVAL.as_millis()
    );
    println!(
        "| path | TTFC p50 µs | TTFC p99 µs | TTFC p99.9 µs | added p50 µs | added p99 µs | CPU µs per 1,000 chunks | switches per chunk | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let chunks = scale.chunks;
    let direct = at_rate(scale.stream_rate, scale.seconds, |_| {
        stream_http(http.clone(), url.clone(), chunks)
    })
    .await;
    let (direct, dfail) = sorted_ok(&direct);
    problem_if("StreamComplete direct", dfail);
    println!(
        "| direct HTTP | {} | {} | {} | | | | | {dfail} |",
        us(percentile(&direct, 50.0)),
        us(percentile(&direct, 99.0)),
        us(percentile(&direct, 99.9))
    );
    for (name, server, clients) in [
        ("llm-router", &router, &router_clients),
        ("baseline forwarder", &base, &base_clients),
    ] {
        let (cpu0, sw0) = (server.cpu(), server.switches());
        let lat = at_rate(scale.stream_rate, scale.seconds, |i| {
            stream_grpc(clients.clone(), i, chunks)
        })
        .await;
        let (cpu, sw) = (server.cpu() - cpu0, server.switches() - sw0);
        let (lat, fail) = sorted_ok(&lat);
        let per_1000_chunks =
            cpu.as_secs_f64() * 1e6 / ((lat.len() * chunks).max(1) as f64) * 1000.0;
        let per_chunk = sw as f64 / ((lat.len() * chunks).max(1) as f64);
        problem_if(format_args!("StreamComplete through {name}"), fail);
        println!(
            "| {name} | {} | {} | {} | {} | {} | {per_1000_chunks:.0} | {per_chunk:.2} | {fail} |",
            us(percentile(&lat, 50.0)),
            us(percentile(&lat, 99.0)),
            us(percentile(&lat, 99.9)),
            signed_us(percentile(&lat, 50.0), percentile(&direct, 50.0)),
            signed_us(percentile(&lat, 99.0), percentile(&direct, 99.0)),
        );
    }
    println!(
        "\nPeak RSS: llm-router {} KiB, baseline forwarder {} KiB.\n",
        router.rss_kib("VmHWM:"),
        base.rss_kib("VmHWM:")
    );
}

fn row(
    rate: u32,
    name: &str,
    lat: &[Duration],
    direct: &[Duration],
    failed: usize,
    // CPU per call, the kernel's share of it, and context switches per call.
    cost: Option<(Duration, f64, f64)>,
) {
    problem_if(format_args!("Complete at {rate}/s through {name}"), failed);
    let added = |p| {
        if std::ptr::eq(lat, direct) {
            String::new()
        } else {
            signed_us(percentile(lat, p), percentile(direct, p))
        }
    };
    println!(
        "| {rate} | {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {failed} |",
        us(percentile(lat, 50.0)),
        us(percentile(lat, 99.0)),
        us(percentile(lat, 99.9)),
        added(50.0),
        added(99.0),
        added(99.9),
        cost.map_or(String::new(), |c| format!("{:.1}", c.0.as_secs_f64() * 1e6)),
        cost.map_or(String::new(), |c| format!("{:.0}%", c.1 * 100.0)),
        cost.map_or(String::new(), |c| format!("{:.1}", c.2)),
    );
}

async fn unary_http(http: reqwest::Client, url: String) -> Option<Duration> {
    let start = Instant::now();
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .body(direct_body("bench", false, 20))
        .send()
        .await
        .ok()?;
    let body = resp.bytes().await.ok()?;
    // Decode it, as any client would.
    let _: serde_json::Value = serde_json::from_slice(&body).ok()?;
    Some(start.elapsed())
}

async fn unary_grpc(clients: Arc<Vec<RouterServiceClient<Channel>>>, i: usize) -> Option<Duration> {
    let mut c = clients[i % clients.len()].clone();
    let start = Instant::now();
    let req = CompleteRequest {
        model: "bench".into(),
        messages: messages(),
        max_tokens: Some(20),
        ..Default::default()
    };
    c.complete(request(req)).await.ok()?;
    Some(start.elapsed())
}

/// Time to the first content chunk; the stream is then read to its end.
async fn stream_http(http: reqwest::Client, url: String, chunks: usize) -> Option<Duration> {
    let start = Instant::now();
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .body(direct_body("bench-stream", true, chunks))
        .send()
        .await
        .ok()?;
    let mut body = resp.bytes_stream();
    let mut ttfc = None;
    let mut seen = String::new();
    while let Some(Ok(b)) = body.next().await {
        seen.push_str(&String::from_utf8_lossy(&b));
        if ttfc.is_none() && seen.contains("\"content\"") {
            ttfc = Some(start.elapsed());
        }
    }
    ttfc
}

async fn stream_grpc(
    clients: Arc<Vec<RouterServiceClient<Channel>>>,
    i: usize,
    chunks: usize,
) -> Option<Duration> {
    let mut c = clients[i % clients.len()].clone();
    let start = Instant::now();
    let req = StreamCompleteRequest {
        model: "bench-stream".into(),
        messages: messages(),
        max_tokens: Some(chunks as u32),
        ..Default::default()
    };
    let mut s = c.stream_complete(request(req)).await.ok()?.into_inner();
    s.message().await.ok()??;
    let ttfc = start.elapsed();
    while s.message().await.ok()?.is_some() {}
    Some(ttfc)
}

// ---------------------------------------------------------------------------------------------
// 4: timer precision.

async fn timers(upstream: &Upstream, scale: &Scale) {
    let router = llm_router(&router_config(upstream)).await;
    // HTTP/2 servers take 200 concurrent streams per connection by default: enough channels
    // that no call queues in the client.
    let clients = Arc::new(router.clients(scale.concurrent_deadlines / 100 + 4).await);
    println!("## Timer precision\n");

    // The first-chunk deadline: `hang` never answers; after its 100ms stream_timeout the
    // fallback (`fast`, no delay) answers. Lateness is when the first chunk reaches the client,
    // less 100ms.
    let late = at_rate(200, scale.timer_calls as f64 / 200.0, |i| {
        let clients = clients.clone();
        async move {
            let mut c = clients[i % clients.len()].clone();
            let start = Instant::now();
            let req = StreamCompleteRequest {
                model: "hang".into(),
                messages: messages(),
                max_tokens: Some(1),
                ..Default::default()
            };
            let mut s = c.stream_complete(request(req)).await.ok()?.into_inner();
            s.message().await.ok()??;
            let at = start.elapsed();
            while s.message().await.ok()?.is_some() {}
            Some(at)
        }
    })
    .await;
    let (late, fail) = sorted_ok(&late);
    let deadline = Duration::from_millis(100);
    println!(
        "| deadline | calls | p50 late µs | p99 late µs | p99.9 late µs | max late µs | failed |"
    );
    println!("|---|---|---|---|---|---|---|");
    print_lateness(
        "first chunk (stream_timeout 100ms), 200 calls/s",
        &late,
        deadline,
        fail,
    );

    // The total deadline: many calls at once, each with a 200ms timeout, all hanging. The
    // answer is due at 200ms less the 20ms margin. Twice: first as the burst comes, when
    // llm-router must open an upstream connection for every call as it arrives; then again
    // once it holds that many pooled connections, so that what is measured is the deadlines.
    let n = scale.concurrent_deadlines;
    deadline_burst(&clients, n, "new upstream connections").await;
    // n calls that overlap and then succeed leave n idle connections in llm-router's pool.
    set_upstream(upstream, Duration::from_millis(300), scale.chunks);
    let warm: Vec<_> = (0..n)
        .map(|i| tokio::spawn(unary_grpc(clients.clone(), i)))
        .collect();
    for w in warm {
        let _ = w.await;
    }
    set_upstream(upstream, scale.latency, scale.chunks);
    deadline_burst(&clients, n, "pooled upstream connections").await;
    // What such a burst costs with no deadline in it: the same calls to a deployment that
    // answers at once. Their latency is the floor under the two rows above.
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let clients = clients.clone();
            tokio::spawn(async move {
                let mut c = clients[i % clients.len()].clone();
                let req = CompleteRequest {
                    model: "fast".into(),
                    messages: messages(),
                    max_tokens: Some(1),
                    ..Default::default()
                };
                let start = Instant::now();
                c.complete(request(req)).await.ok()?;
                Some(start.elapsed())
            })
        })
        .collect();
    let mut answered = Vec::with_capacity(n);
    for c in calls {
        answered.push(c.await.ok().flatten());
    }
    let (answered, fail) = sorted_ok(&answered);
    print_lateness(
        "none: the same burst to a deployment that answers at once (its latency: the burst's own cost)",
        &answered,
        Duration::ZERO,
        fail,
    );

    // The same deadline in steady state: calls launched at n per second with a 1s timeout, so
    // about n are open at once while their deadlines fire spread out.
    let late = at_rate(n as u32, 2.0, |i| {
        let clients = clients.clone();
        async move {
            let mut c = clients[i % clients.len()].clone();
            let req = hang_request(Duration::from_secs(1));
            let start = Instant::now();
            let r = c.complete(request(req)).await;
            (r.err().map(|s| s.code()) == Some(tonic::Code::DeadlineExceeded))
                .then(|| start.elapsed())
        }
    })
    .await;
    let (late, fail) = sorted_ok(&late);
    print_lateness(
        &format!("total deadline (timeout 1s, margin 20ms), {n} calls/s: about {n} open at once"),
        &late,
        Duration::from_millis(980),
        fail,
    );
    println!();
}

/// A call to the hanging deployment (and, as its fallback, to itself again) with `timeout`:
/// it can only end at its deadline.
fn hang_request(timeout: Duration) -> CompleteRequest {
    CompleteRequest {
        model: "hang".into(),
        messages: messages(),
        timeout: Some(prost_types::Duration {
            seconds: timeout.as_secs() as i64,
            nanos: timeout.subsec_nanos() as i32,
        }),
        fallbacks: vec!["hang".into()],
        ..Default::default()
    }
}

/// `n` calls at once, all to a hanging deployment with a 200ms timeout.
async fn deadline_burst(clients: &Arc<Vec<RouterServiceClient<Channel>>>, n: usize, pool: &str) {
    let start_all = Instant::now();

    let mut tasks = Vec::new();
    for i in 0..n {
        let clients = clients.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = clients[i % clients.len()].clone();
            let req = hang_request(Duration::from_millis(200));
            let start = Instant::now();
            let r = c.complete(request(req)).await;
            (start.elapsed(), r.err().map(|s| s.code()))
        }));
    }
    let mut arrivals = Vec::new();
    let mut wrong = 0;
    for t in tasks {
        let (d, code) = t.await.unwrap();
        if code == Some(tonic::Code::DeadlineExceeded) {
            arrivals.push(d);
        } else {
            wrong += 1;
        }
    }
    arrivals.sort();
    print_lateness(
        &format!(
            "total deadline (timeout 200ms, margin 20ms), {n} calls launched at once, {pool} (all deadlines fire together; done in {:.0}ms)",
            start_all.elapsed().as_secs_f64() * 1e3
        ),
        &arrivals,
        Duration::from_millis(180),
        wrong,
    );
}

fn print_lateness(what: &str, sorted: &[Duration], deadline: Duration, failed: usize) {
    problem_if(what, failed);
    let late = |p: f64| signed_us(percentile(sorted, p), deadline);
    println!(
        "| {what} | {} | {} | {} | {} | {} | {failed} |",
        sorted.len(),
        late(50.0),
        late(99.0),
        late(99.9),
        sorted
            .last()
            .map_or(String::new(), |m| signed_us(*m, deadline)),
    );
}

// ---------------------------------------------------------------------------------------------
// 3: scale.

async fn streams_held(upstream: &Upstream, scale: &Scale) {
    set_upstream(upstream, Duration::from_millis(50), scale.chunks);
    let n = scale.held_streams;
    println!("## Streams held\n");
    println!(
        "{n} concurrent StreamComplete calls against an upstream sending one token a second (three tokens each), through each path in turn.\n"
    );
    println!(
        "| path | streams | committed | completed | opened in s | first chunk p50 ms | p99 ms | RSS idle KiB | RSS all open KiB | KiB per open stream |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for name in ["llm-router", "baseline forwarder"] {
        let server = match name {
            "llm-router" => llm_router(&router_config(upstream)).await,
            _ => baseline(upstream).await,
        };
        let held = hold(&server, n).await;
        problem_if(
            format_args!("streams held through {name}"),
            n - held.completed,
        );
        let ms = |p| percentile(&held.first_chunk, p).as_secs_f64() * 1000.0;
        println!(
            "| {name} | {n} | {} | {} | {:.1} | {:.0} | {:.0} | {} | {} | {:.1} |",
            held.committed,
            held.completed,
            held.opened_in.as_secs_f64(),
            ms(50.0),
            ms(99.0),
            held.idle_rss,
            held.open_rss,
            held.open_rss.saturating_sub(held.idle_rss) as f64 / held.committed.max(1) as f64
        );
    }
    println!();
    set_upstream(upstream, scale.latency, scale.chunks);
}

struct Held {
    committed: usize,
    /// Each committed stream's time from its request to its first message, sorted.
    first_chunk: Vec<Duration>,
    completed: usize,
    opened_in: Duration,
    idle_rss: u64,
    open_rss: u64,
}

/// Opens `n` slow streams through `server` and reads its RSS once all have their first chunk.
async fn hold(server: &Server, n: usize) -> Held {
    let clients = Arc::new(server.clients(n / 100 + 1).await);
    // Settle, then measure the idle process.
    let _ = unary_grpc(clients.clone(), 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = server.rss_kib("VmRSS:");
    let committed = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let first_chunk = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let mut tasks = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let (clients, committed, completed, first_chunk) = (
            clients.clone(),
            committed.clone(),
            completed.clone(),
            first_chunk.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let asked = Instant::now();
            let mut c = clients[i % clients.len()].clone();
            // Three tokens, one a second: each stream stays open about three seconds.
            let req = StreamCompleteRequest {
                model: "slow-stream".into(),
                messages: messages(),
                max_tokens: Some(3),
                ..Default::default()
            };
            let Ok(resp) = c.stream_complete(request(req)).await else {
                return;
            };
            let mut s = resp.into_inner();
            if matches!(s.message().await, Ok(Some(_))) {
                first_chunk.lock().unwrap().push(asked.elapsed());
                committed.fetch_add(1, Ordering::SeqCst);
            }
            loop {
                match s.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        completed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Err(_) => return,
                }
            }
        }));
        // Opening 10,000 streams at once would measure the accept queue, not the streams.
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Measure while all are open: every stream has its first chunk, none has finished.
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed.load(Ordering::SeqCst) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_rss = server.rss_kib("VmRSS:");
    let opened_in = start.elapsed();
    let committed = committed.load(Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    let mut first_chunk = std::mem::take(&mut *first_chunk.lock().unwrap());
    first_chunk.sort();
    Held {
        committed,
        first_chunk,
        completed: completed.load(Ordering::SeqCst),
        opened_in,
        idle_rss,
        open_rss,
    }
}

// ---------------------------------------------------------------------------------------------
// 5: the baseline, a tonic-to-HTTP forwarder with no routing features: no config, no deadline
// arithmetic, no retries, no attempt log. It does what any forwarder must: decode the gRPC
// request, encode a JSON body, send it, decode the answer and encode a gRPC response.

mod forwarder {
    use super::*;

    pub struct Forwarder {
        http: reqwest::Client,
        url: String,
    }

    fn body(
        model: &str,
        messages: &[ChatMessage],
        max_tokens: Option<u32>,
        stream: bool,
    ) -> Vec<u8> {
        let msgs: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| serde_json::json!({"role": "user", "content": m.content}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"model": model, "messages": msgs, "stream": stream, "max_tokens": max_tokens})).unwrap()
    }

    #[tonic::async_trait]
    impl RouterService for Forwarder {
        async fn complete(
            &self,
            req: tonic::Request<CompleteRequest>,
        ) -> Result<tonic::Response<CompleteResponse>, tonic::Status> {
            let r = req.into_inner();
            let resp = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .body(body(&r.model, &r.messages, r.max_tokens, false))
                .send()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let v: serde_json::Value = serde_json::from_slice(
                &resp
                    .bytes()
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?,
            )
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
            let text = v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            Ok(tonic::Response::new(CompleteResponse {
                message: Some(ChatMessage {
                    role: Role::Assistant as i32,
                    content: text,
                    name: None,
                    ..Default::default()
                }),
                ..Default::default()
            }))
        }

        type StreamCompleteStream = std::pin::Pin<
            Box<
                dyn futures_util::Stream<Item = Result<StreamCompleteResponse, tonic::Status>>
                    + Send,
            >,
        >;

        async fn stream_complete(
            &self,
            req: tonic::Request<StreamCompleteRequest>,
        ) -> Result<tonic::Response<Self::StreamCompleteStream>, tonic::Status> {
            let r = req.into_inner();
            let resp = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .body(body(&r.model, &r.messages, r.max_tokens, true))
                .send()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let mut buf = String::new();
            let out = resp.bytes_stream().flat_map(move |b| {
                let mut msgs = Vec::new();
                if let Ok(b) = b {
                    buf.push_str(&String::from_utf8_lossy(&b));
                    while let Some(end) = buf.find("\n\n") {
                        let event: String = buf.drain(..end + 2).collect();
                        if let Some(data) = event.trim().strip_prefix("data: ")
                            && let Ok(v) = serde_json::from_str::<serde_json::Value>(data)
                            && let Some(delta) = v["choices"][0]["delta"]["content"].as_str()
                        {
                            msgs.push(Ok(StreamCompleteResponse {
                                delta: delta.to_string(),
                                ..Default::default()
                            }));
                        }
                    }
                }
                stream::iter(msgs)
            });
            Ok(tonic::Response::new(Box::pin(out)))
        }

        async fn list_models(
            &self,
            _: tonic::Request<ListModelsRequest>,
        ) -> Result<tonic::Response<ListModelsResponse>, tonic::Status> {
            Ok(tonic::Response::new(ListModelsResponse::default()))
        }
    }

    pub fn main() {
        let listen: SocketAddr = std::env::var("FORWARD_LISTEN").unwrap().parse().unwrap();
        let url = format!(
            "{}/chat/completions",
            std::env::var("FORWARD_UPSTREAM").unwrap()
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut http = reqwest::Client::builder().tcp_nodelay(true);
            if let Ok(ca) = std::env::var("FORWARD_CA")
                && !ca.is_empty()
            {
                let pem = std::fs::read(ca).unwrap();
                http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
            }
            let fwd = Forwarder {
                http: http.build().unwrap(),
                url,
            };
            tonic::transport::Server::builder()
                .add_service(RouterServiceServer::new(fwd))
                .serve(listen)
                .await
                .unwrap();
        });
    }
}
