//! The real binary, as a user runs it: the built-in default config, `check-config`, SIGTERM.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::common::*;
use llm_router::proto::{AttemptOutcome, router_service_client::RouterServiceClient};

use crate::common::process::{BIN, sigterm, spawn, spawn_with_env, wait_exit};

#[tokio::test]
async fn the_default_config_serves_its_fallback_story_and_exits_cleanly_on_sigterm() {
    let (mut child, addr) = spawn(&[]);
    let mut client = RouterServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let resp = client
        .complete(complete("chat"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.deployment, "chat-primary");

    // `hanging` never answers; after its 1s timeout the call falls back to chat-backup.
    let start = Instant::now();
    let resp = client
        .complete(complete("hanging"))
        .await
        .unwrap()
        .into_inner();
    assert_between(start.elapsed(), ms(1000), ms(1000) + SLACK);
    assert_eq!(resp.model, "chat-backup");
    assert_eq!(
        outcomes(&resp.attempts),
        [
            ("hanging-primary".into(), AttemptOutcome::Timeout),
            ("chat-backup".into(), AttemptOutcome::Ok)
        ]
    );

    let mut s = client
        .stream_complete(stream_req("story"))
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    assert_eq!(first.delta, "Once ");

    // SIGTERM mid-stream: the stream still completes, then the process exits 0.
    sigterm(&child);
    let mut words = 1;
    while let Some(m) = s.message().await.unwrap() {
        words += usize::from(!m.delta.is_empty());
    }
    assert!(words > 20, "the whole story arrived ({words} chunks)");
    drop(client);
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}

#[test]
fn check_config_prints_the_routing_table_or_names_the_bad_key() {
    let out = Command::new(BIN)
        .args(["check-config"])
        .env_remove("LLMROUTER_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("group hanging"), "{table}");
    assert!(table.contains("fallbacks: chat-backup"), "{table}");

    let dir = std::env::temp_dir().join(format!("llm-router-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "model_list:\n  - model_name: a\n    litellm_params: { model: mock/a, timeout: 0 }\nrouter_settings:\n  fallbacks:\n    - a: [b]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("`model_list[0].litellm_params.timeout`: must be greater than zero"),
        "{err}"
    );
    assert!(
        err.contains("`router_settings.fallbacks[0].a[0]`: unknown model group `b`"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_flags_exit_2_with_usage() {
    let out = Command::new(BIN).args(["--frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("USAGE"));
}

/// Runs `llm-router health-check` against `addr`; returns its exit success and what it printed.
fn health_check(addr: &str, service: &str) -> (bool, String) {
    let out = Command::new(BIN)
        .args([
            "health-check",
            "--addr",
            addr,
            "--service",
            service,
            "--timeout",
            "2s",
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text.trim().to_string())
}

#[tokio::test]
async fn sigterm_drains_then_refuses_new_calls_and_exits_within_the_grace_period() {
    let (mut child, addr, _) =
        spawn_with_env(&[], &[("LLMROUTER__SERVER__DRAIN_PERIOD", "1500ms")]);
    assert_eq!(health_check(&addr, ""), (true, "SERVING".into()));
    assert_eq!(
        health_check(&addr, "llmrouter.v1.RouterService"),
        (true, "SERVING".into())
    );

    let mut client = RouterServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    // A long stream (about 1.5s) is in flight when SIGTERM arrives.
    let mut s = client
        .stream_complete(stream_req("story"))
        .await
        .unwrap()
        .into_inner();
    s.message().await.unwrap().unwrap();
    sigterm(&child);
    tokio::time::sleep(ms(200)).await;

    // Draining: readiness says NOT_SERVING, liveness still SERVING, and new calls are served.
    let (ok, status) = health_check(&addr, "llmrouter.v1.RouterService");
    assert_eq!((ok, status.as_str()), (false, "NOT_SERVING"));
    assert_eq!(health_check(&addr, "liveness"), (true, "SERVING".into()));
    let mut fresh = RouterServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    fresh
        .complete(complete("chat"))
        .await
        .expect("served during the drain period");

    // After the drain period: new connections are refused, in-flight calls finish.
    tokio::time::sleep(ms(1600)).await;
    let (ok, _) = health_check(&addr, "");
    assert!(!ok, "no new calls after the drain period");
    while s.message().await.unwrap().is_some() {}
    drop((client, fresh));
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}

#[test]
fn health_check_fails_for_unknown_services_and_dead_servers() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (ok, text) = health_check(&dead, "");
    assert!(!ok);
    assert!(text.contains("cannot connect"), "{text}");
}

#[tokio::test]
async fn health_check_names_unknown_services() {
    let (mut child, addr) = spawn(&[]);
    let (ok, text) = health_check(&addr, "no.such.Service");
    assert!(!ok);
    assert!(text.contains("NotFound"), "{text}");
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
}

#[test]
fn sleep_waits_for_pre_stop_hooks() {
    let start = Instant::now();
    let out = Command::new(BIN).args(["sleep", "0.2"]).output().unwrap();
    assert!(out.status.success());
    assert!(start.elapsed() >= ms(200));
}

#[tokio::test]
async fn logs_are_json_lines_with_one_line_per_call_and_no_prompt_text() {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "none"])
        .env_remove("LLMROUTER_CONFIG")
        .env("LLMROUTER_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    let next = |pred: &dyn Fn(&serde_json::Value) -> bool| loop {
        let v = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a log line");
        if pred(&v) {
            return v;
        }
    };
    let serving = next(&|v| v["message"] == "llm-router serving");
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["admin_addr"], "none");
    let addr = serving["addr"].as_str().unwrap().to_string();

    let mut client = RouterServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut req = complete("hanging");
    req.messages = user("my secret prompt text");
    client.complete(req).await.unwrap();
    let line = next(&|v| v["message"] == "call finished");
    assert_eq!(line["rpc"], "Complete");
    assert_eq!(line["model"], "chat-backup");
    assert_eq!(line["deployment"], "chat-backup");
    assert_eq!(line["attempts"], 2);
    assert_eq!(line["code"], "Ok");
    assert!(line["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(line["elapsed_ms"].as_u64().unwrap() >= 1000);
    assert!(!line.to_string().contains("secret prompt"));

    sigterm(&child);
    while let Ok(v) = rx.recv_timeout(Duration::from_secs(10)) {
        assert!(!v.to_string().contains("secret prompt"), "{v}");
    }
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
}

#[tokio::test]
async fn idle_client_connections_do_not_hold_shutdown_for_the_grace_period() {
    // The default config's shutdown_grace is 10s; gRPC clients keep their channels open.
    let (mut child, addr) = spawn(&[]);
    let mut client = RouterServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client.complete(complete("chat")).await.unwrap();
    let start = Instant::now();
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert!(status.success());
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "exited after {:?}",
        start.elapsed()
    );
    drop(client);
}

#[tokio::test]
async fn sighup_reloads_the_config_file_and_a_bad_file_keeps_the_old_config() {
    let dir = std::env::temp_dir().join(format!("llm-router-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yaml");
    // The file is only re-read on SIGHUP within this test's time: the poll is an hour apart.
    let text = |groups: &[&str]| {
        let mut t = String::from("model_list:\n");
        for g in groups {
            t.push_str(&format!(
                "  - model_name: {g}\n    litellm_params: {{ model: mock/{g}, mock: {{ time_to_first_chunk: 1ms }} }}\n"
            ));
        }
        t.push_str("server:\n  config_watch_interval: 1h\n");
        t
    };
    std::fs::write(&path, text(&["one"])).unwrap();
    let (mut child, addr) = spawn(&["serve", "--config", path.to_str().unwrap()]);
    let mut client = RouterServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let names = |c: &mut RouterServiceClient<tonic::transport::Channel>| {
        let mut c = c.clone();
        async move {
            c.list_models(llm_router::proto::ListModelsRequest {})
                .await
                .unwrap()
                .into_inner()
                .groups
                .into_iter()
                .map(|g| g.name)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(names(&mut client).await, ["one"]);
    let hup = |child: &std::process::Child| {
        let ok = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };

    std::fs::write(&path, text(&["one", "two"])).unwrap();
    hup(&child);
    let until = Instant::now() + Duration::from_secs(5);
    while names(&mut client).await != ["one", "two"] {
        assert!(Instant::now() < until, "SIGHUP did not reload the config");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.complete(complete("two")).await.unwrap();

    // An invalid file: rejected, logged, and the server keeps serving the previous config.
    std::fs::write(&path, "model_list: []\n").unwrap();
    hup(&child);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the server must keep running"
    );
    assert_eq!(names(&mut client).await, ["one", "two"]);
    client.complete(complete("two")).await.unwrap();

    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// CPU time a process has used, from `/proc/<pid>/stat` (user and system, in clock ticks of
/// 10 ms on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn out_of_file_descriptors_both_ports_back_off_quietly_and_serve_again() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    // The binary under `ulimit -n 64`, its log lines counted.
    let mut sh = Command::new("sh");
    sh.args([
        "-c",
        &format!("ulimit -n 64 && exec {BIN} --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0"),
    ])
    .env("RUST_LOG", "info");
    let logged = Arc::new(AtomicUsize::new(0));
    let count = logged.clone();
    let (mut child, addr, admin) = crate::common::process::start(sh, move |_| {
        count.fetch_add(1, Ordering::Relaxed);
    });
    // More connections than descriptors: the rest wait in the listeners' backlogs, and every
    // accept fails until one closes.
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(std::net::TcpStream::connect(&addr).unwrap());
    }
    for _ in 0..3 {
        held.push(std::net::TcpStream::connect(&admin).unwrap());
    }
    tokio::time::sleep(ms(500)).await;
    let (cpu, log) = (cpu_ticks(child.id()), logged.load(Ordering::Relaxed));
    tokio::time::sleep(ms(2000)).await;
    let cpu = cpu_ticks(child.id()) - cpu;
    let log = logged.load(Ordering::Relaxed) - log;
    // Spinning, it burned a core (200 ticks in 2 s) and logged hundreds of thousands of lines.
    assert!(cpu < 40, "{cpu} ticks of CPU in 2s at the descriptor limit");
    assert!(log <= 8, "{log} log lines in 2s at the descriptor limit");
    // Once the connections close, both ports serve again.
    drop(held);
    let started = Instant::now();
    let mut client = loop {
        match RouterServiceClient::connect(format!("http://{addr}")).await {
            Ok(c) => break c,
            Err(_) if started.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(ms(100)).await
            }
            Err(e) => panic!("the gRPC port did not come back: {e}"),
        }
    };
    let resp = client
        .complete(complete("chat"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.deployment, "chat-primary");
    let metrics = loop {
        use std::io::{Read, Write};
        let fetched = std::net::TcpStream::connect(&admin).and_then(|mut c| {
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            c.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
            let mut out = String::new();
            c.read_to_string(&mut out)?;
            Ok(out)
        });
        match fetched {
            Ok(text) if text.starts_with("HTTP/1.1 200") => break text,
            _ if started.elapsed() < Duration::from_secs(5) => tokio::time::sleep(ms(100)).await,
            other => panic!("the admin port did not come back: {other:?}"),
        }
    };
    assert!(
        metrics.contains("llmrouter_accept_errors_total{port=\"grpc\"}"),
        "{metrics}"
    );
    sigterm(&child);
    wait_exit(&mut child, Duration::from_secs(20));
}
