//! One caller must not degrade routing for the others: what a caller sets (tight deadlines,
//! many retries) never counts against a deployment, and no deployment is locked out for good.

use std::time::Duration;

use llm_router::proto::{AttemptOutcome, StreamCompleteRequest};

use crate::common::upstream::{Behaviour, Upstream};
use crate::common::*;

fn config(base: &str) -> String {
    format!(
        r#"
model_list:
  - model_name: slow
    litellm_params: {{ model: openai/slow, api_base: "{base}", max_retries: 1 }}
    model_info: {{ id: slow-1 }}
  - model_name: backup
    litellm_params: {{ model: openai/backup, api_base: "{base}", max_retries: 0 }}
    model_info: {{ id: backup-1 }}
  - model_name: down
    litellm_params: {{ model: openai/down, api_base: "{base}", max_retries: 0 }}
    model_info: {{ id: down-1 }}
  - model_name: recovering
    litellm_params: {{ model: openai/recovering, api_base: "{base}", max_retries: 0 }}
    model_info: {{ id: recovering-1 }}
router_settings:
  routing_strategy: latency-based-routing
  allowed_fails: 1
  cooldown_time: 60s
  retry_budget: {{ max_tokens: 4, token_ratio: 0.5 }}
  retry_backoff_initial: 5ms
  retry_backoff_max: 10ms
  fallbacks:
    - slow: [backup]
    - down: [recovering]
"#
    )
}

#[tokio::test]
async fn a_callers_own_tight_limits_never_count_against_the_deployment() {
    let up = Upstream::start().await;
    up.set("slow", Behaviour::slow_first_chunk("fine", ms(150)));
    up.set(
        "backup",
        Behaviour::slow_first_chunk("from backup", ms(150)),
    );
    let r = TestRouter::start(&config(&up.base())).await;

    // A careless caller: a first-chunk limit neither deployment can meet (both take 150ms),
    // and many retries asked for.
    for _ in 0..10 {
        let req = StreamCompleteRequest {
            stream_timeout: Some(dur(ms(20))),
            num_retries: Some(10),
            ..stream_req("slow")
        };
        // Before commit, the failure is the call's status (tonic hands it over either as the
        // call's error or as the stream's first item, depending on timing).
        let status = match r.client().stream_complete(req).await {
            Err(status) => status,
            Ok(resp) => resp.into_inner().message().await.unwrap_err(),
        };
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(
            outcomes(&attempt_log(&status).attempts),
            [
                // The request may lower retries, never raise them: max_retries 1.
                ("slow-1".into(), AttemptOutcome::CallerTimeout),
                ("slow-1".into(), AttemptOutcome::CallerTimeout),
                ("backup-1".into(), AttemptOutcome::CallerTimeout),
            ]
        );
    }
    assert_eq!(
        up.counts("slow").requests,
        20,
        "two attempts a call, not eleven"
    );

    // With allowed_fails 1, two real failures would have cooled `slow` down for a minute, and
    // ten would have drained its retry budget and its latency record. None of that happened.
    for d in ["slow-1", "backup-1"] {
        let d = r.deployment(d).await;
        assert_eq!(d.cooldown_until, None, "{}", d.id);
        assert_eq!(d.retry_budget_tokens, Some(4.0), "{}", d.id);
    }
    let resp = r
        .client()
        .complete(complete("slow"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.deployment, "slow-1");
    assert_eq!(
        outcomes(&resp.attempts),
        [("slow-1".into(), AttemptOutcome::Ok)]
    );

    // The same with a short client deadline: the caller's, so not the deployment's either.
    let mut req = tonic::Request::new(complete("slow"));
    req.set_timeout(ms(100));
    let status = r.client().complete(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    assert_eq!(
        outcomes(&attempt_log(&status).attempts)[0],
        ("slow-1".into(), AttemptOutcome::CallerTimeout)
    );
    assert_eq!(r.deployment("slow-1").await.cooldown_until, None);
}

#[tokio::test]
async fn a_deployment_reached_only_through_fallbacks_is_never_locked_out_by_its_budget() {
    let up = Upstream::start().await;
    up.set("down", Behaviour::status(503, "{}"));
    // The fallback fails four times (its bucket of 4 runs dry), then works again.
    up.set("recovering", Behaviour::ok("back"));
    up.fail_first("recovering", 4, Behaviour::status(503, "{}"));
    let config = config(&up.base()).replace("allowed_fails: 1", "disable_cooldowns: true");
    let r = TestRouter::start(&config).await;
    for _ in 0..4 {
        let status = r.client().complete(complete("down")).await.unwrap_err();
        let log = outcomes(&attempt_log(&status).attempts);
        assert_eq!(
            log[1],
            ("recovering-1".into(), AttemptOutcome::UpstreamError),
            "each call's first attempt on the fallback goes out: {log:?}"
        );
    }
    assert_eq!(
        r.deployment("recovering-1").await.retry_budget_tokens,
        Some(0.0)
    );
    // Its bucket is empty, but a call's first attempt on a group is no retry: it goes out, and
    // the call is answered.
    let resp = r
        .client()
        .complete(complete("down"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.deployment, "recovering-1");
    assert_eq!(up.counts("recovering").requests, 5);
}

#[tokio::test]
async fn request_fallbacks_are_bounded_deduplicated_and_echoed_names_cut() {
    let up = Upstream::start().await;
    for failing in ["down", "recovering", "slow"] {
        up.set(failing, Behaviour::status(503, "{}"));
    }
    up.set("backup", Behaviour::ok("from backup"));
    let config = config(&up.base()).replace("allowed_fails: 1", "disable_cooldowns: true");
    let r = TestRouter::start(&config).await;

    // Named more than once, a group is tried once, and duplicates do not count against
    // max_fallbacks (5 by default, LiteLLM's): eight names, three groups.
    let mut req = complete("down");
    req.fallbacks = [
        "recovering",
        "recovering",
        "slow",
        "recovering",
        "slow",
        "backup",
        "slow",
        "backup",
    ]
    .map(String::from)
    .to_vec();
    let resp = r.client().complete(req).await.unwrap().into_inner();
    assert_eq!(resp.deployment, "backup-1");
    assert_eq!(
        outcomes(&resp.attempts),
        [
            ("down-1".into(), AttemptOutcome::UpstreamError),
            ("recovering-1".into(), AttemptOutcome::UpstreamError),
            ("slow-1".into(), AttemptOutcome::UpstreamError),
            ("slow-1".into(), AttemptOutcome::UpstreamError),
            ("backup-1".into(), AttemptOutcome::Ok),
        ]
    );

    // An unknown name is refused by its index.
    let mut req = complete("down");
    req.fallbacks = vec!["backup".into(), "nope".into()];
    let status = r.client().complete(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("`fallbacks[1]`"),
        "{}",
        status.message()
    );

    // More distinct groups than max_fallbacks: refused, naming the field and the key.
    let tight = config.replace(
        "disable_cooldowns: true",
        "disable_cooldowns: true\n  max_fallbacks: 1",
    );
    let r2 = TestRouter::start(&tight).await;
    let mut req = complete("down");
    req.fallbacks = vec!["recovering".into(), "backup".into()];
    let status = r2.client().complete(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("names 2 model groups; router_settings.max_fallbacks allows at most 1"),
        "{}",
        status.message()
    );
    // A configured chain is cut at max_fallbacks: with 0, `down` has no fallback left.
    let none = config.replace(
        "disable_cooldowns: true",
        "disable_cooldowns: true\n  max_fallbacks: 0",
    );
    let r3 = TestRouter::start(&none).await;
    let status = r3.client().complete(complete("down")).await.unwrap_err();
    assert_eq!(
        outcomes(&attempt_log(&status).attempts),
        [("down-1".into(), AttemptOutcome::UpstreamError)]
    );

    // An unknown model name of 100 KB is echoed cut, not whole.
    let status = r
        .client()
        .complete(complete(&"m".repeat(100_000)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().len() < 1_000, "{}", status.message().len());
    assert!(status.details().len() < 2_000, "{}", status.details().len());
}

#[tokio::test]
async fn a_stream_whose_client_stops_reading_still_ends_at_its_deadline_and_lets_go() {
    let up = Upstream::start().await;
    // 20 MB of answer, as fast as it goes: far more than HTTP/2 lets the server send to a
    // client that does not read, so the router stops being asked for more.
    up.set(
        "slow",
        Behaviour::Answer {
            headers_after: Duration::ZERO,
            first_chunk_after: Duration::ZERO,
            chunks: vec!["x".repeat(10_000); 2_000],
            chunk_interval: Duration::ZERO,
        },
    );
    let r = TestRouter::start(&config(&up.base())).await;
    let req = StreamCompleteRequest {
        timeout: Some(dur(ms(1000))),
        ..stream_req("slow")
    };
    let start = std::time::Instant::now();
    let mut s = r.client().stream_complete(req).await.unwrap().into_inner();
    s.message().await.unwrap().unwrap();
    // The client reads nothing more. At the call's deadline the router drops the upstream
    // request and releases the deployment anyway.
    let seen = up.wait_abandoned("slow", 1).await;
    assert_eq!(seen.abandoned, 1, "the upstream request was closed");
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "closed at the deadline: {took:?}"
    );
    assert_eq!(r.deployment("slow-1").await.in_flight, 0);
    // Whenever the client reads on, the stream ends with DEADLINE_EXCEEDED.
    let status = loop {
        match s.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream cannot have finished: it was cut"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
}

/// A well-behaved caller runs steady traffic through the real binary while another sends
/// tight deadlines, huge mock answers, long fallback lists and streams it never reads. The
/// first caller's calls all succeed, no deployment cools down or loses retry budget, and the
/// server's memory stays bounded and comes back near its level once the abuse stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_careless_caller_does_not_degrade_a_well_behaved_one() {
    use crate::chaos::{metric, rss_kib};
    use crate::common::process::{sigterm, spawn_with_env, wait_exit};
    use llm_router::proto::router_service_client::RouterServiceClient;

    let up = Upstream::start().await;
    up.set(
        "steady",
        Behaviour::slow_first_chunk("a steady answer", ms(5)),
    );
    up.set("backup", Behaviour::ok("from backup"));
    up.set(
        "firehose",
        Behaviour::Answer {
            headers_after: Duration::ZERO,
            first_chunk_after: Duration::ZERO,
            chunks: vec!["y".repeat(10_000); 1_000],
            chunk_interval: Duration::ZERO,
        },
    );
    let base = up.base();
    let yaml = format!(
        r#"
model_list:
  - model_name: steady
    litellm_params: {{ model: openai/steady, api_base: "{base}", timeout: 2s, max_retries: 1 }}
    model_info: {{ id: steady-1 }}
  - model_name: backup
    litellm_params: {{ model: openai/backup, api_base: "{base}", max_retries: 0 }}
    model_info: {{ id: backup-1 }}
  - model_name: firehose
    litellm_params: {{ model: openai/firehose, api_base: "{base}", max_retries: 0 }}
    model_info: {{ id: firehose-1 }}
router_settings:
  allowed_fails: 3
  cooldown_time: 60s
  allow_mock_response: true
  fallbacks:
    - steady: [backup]
"#
    );
    let dir = std::env::temp_dir().join(format!("llm-router-abuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("abuse.yaml");
    std::fs::write(&path, yaml).unwrap();
    let (mut child, addr, admin) = spawn_with_env(
        &["serve", "--config", path.to_str().unwrap()],
        // glibc raises its mmap threshold each time a large block is freed, after which the
        // next ones come from its heaps, which it keeps: how much it kept after a burst of
        // 3 MB answers then depends on how the burst interleaved. A fixed threshold (and two
        // arenas) makes what the server holds the measure, not the allocator's history.
        &[
            ("RUST_LOG", "warn"),
            ("MALLOC_MMAP_THRESHOLD_", "131072"),
            ("MALLOC_ARENA_MAX", "2"),
        ],
    );
    let client = RouterServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let well_behaved = |n: usize| {
        let client = client.clone();
        async move {
            let mut ok = 0;
            for _ in 0..n {
                let mut c = client.clone();
                if let Ok(resp) = c.complete(complete("steady")).await {
                    ok += usize::from(resp.into_inner().deployment == "steady-1");
                }
            }
            ok
        }
    };
    // Warm-up, then the memory it settles at.
    assert_eq!(well_behaved(100).await, 100);
    let rss_before = rss_kib(child.id());

    // The careless caller, all at once.
    let careless = || {
        let mut abuse = Vec::new();
        for i in 0..40 {
            let mut c = client.clone();
            abuse.push(tokio::spawn(async move {
                match i % 4 {
                    // A first-chunk limit no provider meets, and many retries asked for.
                    0 => {
                        let req = StreamCompleteRequest {
                            stream_timeout: Some(dur(Duration::from_micros(1))),
                            num_retries: Some(10),
                            ..stream_req("steady")
                        };
                        let _ = c.stream_complete(req).await;
                    }
                    // A client deadline shorter than any answer.
                    1 => {
                        let mut req = tonic::Request::new(complete("steady"));
                        req.set_timeout(Duration::from_millis(2));
                        let _ = c.complete(req).await;
                    }
                    // A 3 MB mock answer of spaces, and a fallback list of 200 names.
                    2 => {
                        let mut req = complete("steady");
                        req.mock_response = " ".repeat(3_000_000);
                        let _ = c.complete(req).await;
                        let mut req = complete("steady");
                        req.fallbacks = vec!["backup".to_string(); 200];
                        let _ = c.complete(req).await;
                    }
                    // A stream it never reads, of an answer far larger than flow control lets out.
                    _ => {
                        let req = StreamCompleteRequest {
                            timeout: Some(dur(ms(1500))),
                            ..stream_req("firehose")
                        };
                        if let Ok(resp) = c.stream_complete(req).await {
                            let mut s = resp.into_inner();
                            let _ = s.message().await;
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            drop(s);
                        }
                    }
                }
            }));
        }
        abuse
    };
    let abuse = careless();

    // Meanwhile the well-behaved caller goes on, and every one of its calls is answered by
    // the deployment it asked for.
    assert_eq!(well_behaved(200).await, 200);
    let rss_peak = rss_kib(child.id());
    for a in abuse {
        a.await.unwrap();
    }

    // Nothing cooled down, nothing lost its retry budget, nothing is left open.
    let models = RouterServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .list_models(llm_router::proto::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    for d in models.groups.iter().flat_map(|g| &g.deployments) {
        assert_eq!(d.cooldown_until, None, "{} cooled down", d.id);
        assert_eq!(d.retry_budget_tokens, Some(10.0), "{} lost budget", d.id);
    }
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while metric(&admin, "llmrouter_calls_in_flight").await > 0.0 {
        assert!(std::time::Instant::now() < until, "calls still in flight");
        tokio::time::sleep(ms(20)).await;
    }
    assert_eq!(well_behaved(100).await, 100);
    let rss_after = rss_kib(child.id());

    // The same abuse again: what the server holds must not grow from one round to the next,
    // or something leaked.
    let abuse = careless();
    assert_eq!(well_behaved(200).await, 200);
    for a in abuse {
        a.await.unwrap();
    }
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while metric(&admin, "llmrouter_calls_in_flight").await > 0.0 {
        assert!(std::time::Instant::now() < until, "calls still in flight");
        tokio::time::sleep(ms(20)).await;
    }
    assert_eq!(well_behaved(100).await, 100);
    let rss_again = rss_kib(child.id());
    println!(
        "server RSS: {rss_before} KiB after warm-up, {rss_peak} KiB during the abuse, {rss_after} KiB after it, {rss_again} KiB after a second round"
    );
    assert!(
        rss_peak <= rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_peak} KiB under abuse"
    );
    assert!(
        rss_after <= rss_before + rss_before / 2 + 16 * 1024,
        "RSS did not come back: {rss_before} KiB before, {rss_after} KiB after"
    );
    assert!(
        rss_again <= rss_after + 16 * 1024,
        "RSS grew round after round: {rss_after} KiB after the first, {rss_again} KiB after the second"
    );
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// One raw HTTP/2 Complete request that announces `len` bytes and sends all but the last: a
/// request the server buffers and can never finish. Returns the response's gRPC status, if
/// one comes within `wait`.
async fn unfinished_request(
    sender: &mut h2::client::SendRequest<bytes::Bytes>,
    len: usize,
    wait: Duration,
) -> tokio::task::JoinHandle<Option<String>> {
    let request = http::Request::builder()
        .method("POST")
        .uri("http://router/llmrouter.v1.RouterService/Complete")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let ready = sender.clone().ready().await.unwrap();
    *sender = ready;
    let (response, mut body) = sender.send_request(request, false).unwrap();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    frame.extend(std::iter::repeat_n(b'x', len - 1));
    body.send_data(bytes::Bytes::from(frame), false).unwrap();
    tokio::spawn(async move {
        let _keep = body;
        let response = tokio::time::timeout(wait, response).await.ok()?.ok()?;
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    })
}

#[tokio::test]
async fn unfinished_requests_hold_no_more_than_the_pending_bytes_bound() {
    let dir = std::env::temp_dir().join(format!("llm-router-pending-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pending.yaml");
    std::fs::write(
        &path,
        "model_list:\n  - { model_name: chat, litellm_params: { model: mock/a } }\nserver:\n  max_request_bytes: 1048576\n  max_pending_request_bytes: 4194304\n",
    )
    .unwrap();
    let (mut child, addr, _) = crate::common::process::spawn_with_env(
        &["serve", "--config", path.to_str().unwrap()],
        &[
            ("RUST_LOG", "warn"),
            ("MALLOC_MMAP_THRESHOLD_", "131072"),
            ("MALLOC_ARENA_MAX", "2"),
        ],
    );
    let idle = crate::chaos::rss_kib(child.id());
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut sender, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    // 40 requests of 1 MiB on one connection, none finished: 40 MiB if all were buffered.
    let mut answers = Vec::new();
    for _ in 0..40 {
        answers.push(unfinished_request(&mut sender, 1 << 20, Duration::from_secs(5)).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = crate::chaos::rss_kib(child.id());
    let mut refused = 0;
    for a in answers {
        if a.await.unwrap().as_deref() == Some("8") {
            refused += 1;
        }
    }
    // Four fit under the 4 MiB bound, less a frame or so; the rest are RESOURCE_EXHAUSTED as
    // their bytes arrive, and their buffers freed.
    assert!(refused >= 35, "{refused} of 40 refused");
    let grew = during.saturating_sub(idle);
    eprintln!("unfinished requests: {refused} of 40 refused, RSS grew by {grew} KiB");
    assert!(
        grew < 12 * 1024,
        "RSS grew by {grew} KiB holding unfinished requests"
    );
    // Other calls go on.
    let mut client = llm_router::proto::router_service_client::RouterServiceClient::connect(
        format!("http://{addr}"),
    )
    .await
    .unwrap();
    assert!(client.complete(complete("chat")).await.is_ok());
    crate::common::process::sigterm(&child);
    crate::common::process::wait_exit(&mut child, Duration::from_secs(20));
    let _ = std::fs::remove_dir_all(&dir);
}
