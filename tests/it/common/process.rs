//! The real binary as a child process, for tests that run it as a user would.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_llm-router");

/// Starts the binary on an ephemeral port and returns it with the address it logged.
pub fn spawn(args: &[&str]) -> (Child, String) {
    let (child, addr, _) = spawn_with_env(args, &[]);
    (child, addr)
}

/// Starts the binary with `args` and `env` on ephemeral ports; returns it with the gRPC and
/// admin addresses it logged.
pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> (Child, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .envs(env.iter().copied())
        // The address is logged at info: a quieter level would hide it from `start`.
        .env("RUST_LOG", "info");
    start(cmd, |_| {})
}

/// Runs `cmd` (the binary, or a shell that execs it), logging as text; returns it with the
/// gRPC and admin addresses it logged. Every later log line goes to `on_line`.
pub fn start(
    mut cmd: Command,
    mut on_line: impl FnMut(String) + Send + 'static,
) -> (Child, String, String) {
    let mut child = cmd
        .env("LLMROUTER_LOG_FORMAT", "text")
        .env_remove("LLMROUTER_CONFIG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let field = |line: &str, name: &str| {
        line.split(&format!(" {name}=")).nth(1).map(|rest| {
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        })
    };
    let (addr, admin) = loop {
        let line = lines.next().expect("the server logs its address").unwrap();
        if let Some(addr) = field(&line, "addr") {
            break (addr, field(&line, "admin_addr").unwrap_or_default());
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            on_line(line);
        }
    });
    (child, addr, admin)
}

pub fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

pub fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("the server did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
