//! Routing strategies, cooldowns, hedged attempts, retry budgets, load shedding and config
//! reload, end to end: the real server on port 0, the fault-injecting upstream, and the
//! generated client. Loads are scripted so that each strategy's choice is determined.

use std::time::{Duration, Instant};

use crate::common::upstream::{Behaviour, Upstream};
use crate::common::*;
use llm_router::proto::{AttemptOutcome, CompleteResponse};
use tonic::Code;
use tonic_types::StatusExt;

/// A deployment on the test upstream whose upstream model (and so its counts) is its id.
fn dep(group: &str, id: &str, up: &Upstream, params: &str) -> String {
    format!(
        "  - model_name: {group}\n    litellm_params: {{ model: openai/{id}, api_base: \"{}\", api_key: sk-test, {params} }}\n    model_info: {{ id: {id} }}\n",
        up.base()
    )
}

fn yaml(deployments: &[String], router_settings: &str) -> String {
    format!(
        "model_list:\n{}router_settings:\n  retry_backoff_initial: 10ms\n  retry_backoff_max: 20ms\n{router_settings}\n",
        deployments.concat()
    )
}

async fn call(r: &TestRouter, model: &str) -> Result<CompleteResponse, tonic::Status> {
    r.client()
        .complete(complete(model))
        .await
        .map(|resp| resp.into_inner())
}

/// Waits (up to 5s) until the upstream has seen `n` requests for `model`.
async fn wait_requests(up: &Upstream, model: &str, n: u32) {
    let until = Instant::now() + Duration::from_secs(5);
    while up.counts(model).requests < n {
        assert!(Instant::now() < until, "{model} never saw {n} requests");
        tokio::time::sleep(ms(5)).await;
    }
}

fn answered_by(resp: &CompleteResponse) -> &str {
    &resp.deployment
}

#[tokio::test]
async fn simple_shuffle_follows_weights() {
    let up = Upstream::start().await;
    up.set("heavy", Behaviour::ok("h"));
    up.set("light", Behaviour::ok("l"));
    let r = TestRouter::start(&yaml(
        &[
            dep("g", "heavy", &up, "weight: 9"),
            dep("g", "light", &up, "weight: 1"),
        ],
        "",
    ))
    .await;
    let mut heavy = 0;
    for _ in 0..200 {
        if answered_by(&call(&r, "g").await.unwrap()) == "heavy" {
            heavy += 1;
        }
    }
    // Binomial(200, 0.9): 180 expected, sd 4.2; these bounds are more than 4 sd out.
    assert!(
        (160..=197).contains(&heavy),
        "heavy answered {heavy} of 200"
    );
}

#[tokio::test]
async fn least_busy_sends_each_call_to_the_deployment_with_fewest_in_flight() {
    let up = Upstream::start().await;
    let slow = Behaviour::slow_first_chunk("done", ms(600));
    up.set("a", slow.clone());
    up.set("b", slow);
    let r = TestRouter::start(&yaml(
        &[dep("g", "a", &up, ""), dep("g", "b", &up, "")],
        "  routing_strategy: least-busy",
    ))
    .await;
    // Calls start one at a time, each once the previous one is in flight upstream, so every
    // choice sees the load the earlier ones left.
    let mut calls = Vec::new();
    for i in 1..=6u32 {
        let client = r.client();
        calls.push(tokio::spawn(async move {
            client.clone().complete(complete("g")).await
        }));
        let until = Instant::now() + Duration::from_secs(5);
        while up.counts("a").requests + up.counts("b").requests < i {
            assert!(Instant::now() < until);
            tokio::time::sleep(ms(5)).await;
        }
    }
    assert_eq!(up.counts("a").requests, 3);
    assert_eq!(up.counts("b").requests, 3);
    for c in calls {
        c.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn latency_based_routing_prefers_the_fastest_first_chunk() {
    let up = Upstream::start().await;
    up.set("quick", Behaviour::slow_first_chunk("q", ms(5)));
    up.set("sluggish", Behaviour::slow_first_chunk("s", ms(150)));
    let r = TestRouter::start(&yaml(
        &[dep("g", "quick", &up, ""), dep("g", "sluggish", &up, "")],
        "  routing_strategy: latency-based-routing",
    ))
    .await;
    let mut client = r.client();
    for _ in 0..12 {
        let mut s = client
            .stream_complete(stream_req("g"))
            .await
            .unwrap()
            .into_inner();
        while s.message().await.unwrap().is_some() {}
    }
    // Each deployment is measured once (unmeasured ones go first), then the quick one wins.
    assert_eq!(up.counts("sluggish").requests, 1);
    assert_eq!(up.counts("quick").requests, 11);
}

#[tokio::test]
async fn latency_based_routing_counts_a_timeout_as_a_heavy_penalty() {
    let up = Upstream::start().await;
    up.set("flaky", Behaviour::Hang);
    up.set("steady", Behaviour::slow_first_chunk("s", ms(100)));
    let r = TestRouter::start(&yaml(
        &[
            dep("g", "flaky", &up, "timeout: 200ms"),
            dep("g", "steady", &up, ""),
        ],
        "  routing_strategy: latency-based-routing\n  num_retries: 1\n  allowed_fails: 100",
    ))
    .await;
    for _ in 0..6 {
        call(&r, "g").await.unwrap();
    }
    // `flaky` timed out once (a retry then went to `steady`); never chosen again while its
    // penalty lasts, even though it is not cooling down.
    assert_eq!(up.counts("flaky").requests, 1);
    assert_eq!(up.counts("steady").requests, 6);
}

#[tokio::test]
async fn usage_based_routing_balances_and_stays_under_rpm() {
    // rpm counts in wall-clock minutes: start with time left in this one for the five calls.
    let into_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        % 60.0;
    if into_minute > 50.0 {
        tokio::time::sleep(Duration::from_secs_f64(60.1 - into_minute)).await;
    }
    let up = Upstream::start().await;
    up.set("a", Behaviour::ok("a"));
    up.set("b", Behaviour::ok("b"));
    let r = TestRouter::start(&yaml(
        &[dep("g", "a", &up, "rpm: 2"), dep("g", "b", &up, "rpm: 2")],
        "  routing_strategy: usage-based-routing",
    ))
    .await;
    for _ in 0..4 {
        call(&r, "g").await.unwrap();
    }
    assert_eq!(up.counts("a").requests, 2);
    assert_eq!(up.counts("b").requests, 2);
    let started = Instant::now();
    let status = call(&r, "g").await.unwrap_err();
    assert!(started.elapsed() < ms(200), "refused at once");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "ALL_DEPLOYMENTS_AT_CAPACITY");
    let retry = status.get_details_retry_info().expect("RetryInfo");
    let delay = retry.retry_delay.unwrap();
    assert!(delay <= Duration::from_secs(60) && delay > Duration::ZERO);
    assert_eq!(
        outcomes(&attempt_log(&status).attempts),
        vec![
            ("a".to_string(), AttemptOutcome::AtCapacity),
            ("b".to_string(), AttemptOutcome::AtCapacity)
        ]
    );
    assert_eq!(up.counts("a").requests + up.counts("b").requests, 4);
}

#[tokio::test]
async fn a_deployment_at_max_parallel_requests_is_skipped_not_queued() {
    let up = Upstream::start().await;
    up.set("narrow", Behaviour::slow_first_chunk("n", ms(500)));
    up.set("backup", Behaviour::ok("b"));
    let r = TestRouter::start(&yaml(
        &[
            dep("g", "narrow", &up, "max_parallel_requests: 1"),
            dep("backup", "backup", &up, ""),
        ],
        "  fallbacks:\n    - g: [backup]",
    ))
    .await;
    let client = r.client();
    let held = tokio::spawn(async move { client.clone().complete(complete("g")).await });
    wait_requests(&up, "narrow", 1).await;
    let started = Instant::now();
    let resp = call(&r, "g").await.unwrap();
    assert!(started.elapsed() < ms(300), "went to the fallback at once");
    assert_eq!(resp.deployment, "backup");
    assert_eq!(
        outcomes(&resp.attempts),
        vec![
            ("narrow".to_string(), AttemptOutcome::AtCapacity),
            ("backup".to_string(), AttemptOutcome::Ok)
        ]
    );
    assert_eq!(r.deployment("narrow").await.in_flight, 1);
    assert_eq!(
        held.await.unwrap().unwrap().into_inner().deployment,
        "narrow"
    );
    assert_eq!(r.deployment("narrow").await.in_flight, 0);
}

const COOLDOWN_SETTINGS: &str = "  num_retries: 0\n  allowed_fails: 1\n  cooldown_time: 1s\n  fallbacks:\n    - primary: [backup]";

#[tokio::test]
async fn cooldown_entry_skip_expiry_and_return() {
    let up = Upstream::start().await;
    up.set("primary", Behaviour::status(503, "{}"));
    up.set("backup", Behaviour::ok("b"));
    let r = TestRouter::start(&yaml(
        &[
            dep("primary", "primary", &up, ""),
            dep("backup", "backup", &up, ""),
        ],
        COOLDOWN_SETTINGS,
    ))
    .await;
    // One failure is allowed; the second cools the deployment.
    for _ in 0..2 {
        assert_eq!(call(&r, "primary").await.unwrap().deployment, "backup");
    }
    assert_eq!(up.counts("primary").requests, 2);
    let d = r.deployment("primary").await;
    let until = d.cooldown_until.expect("cooling down");
    let wall_until = std::time::SystemTime::try_from(until).unwrap();
    let left = wall_until
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(left <= Duration::from_secs(1) && left > ms(500), "{left:?}");
    let (_, metrics) = r.admin_get("/metrics").await;
    assert!(
        metrics.contains(
            "llmrouter_cooldowns_total{model_group=\"primary\",deployment=\"primary\"} 1"
        ),
        "{metrics}"
    );
    // The metric says until when, as a Unix time, matching ListModels.
    let gauge: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "llmrouter_deployment_cooldown_until_seconds{model_group=\"primary\",deployment=\"primary\"} ",
            )
        })
        .expect("cooldown_until gauge")
        .parse()
        .unwrap();
    let listed = wall_until
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((gauge - listed).abs() < 0.05, "{gauge} vs {listed}");

    // While cooling, the group fails at once and the chain moves on without calling it.
    let started = Instant::now();
    let resp = call(&r, "primary").await.unwrap();
    assert!(started.elapsed() < ms(200));
    assert_eq!(
        outcomes(&resp.attempts),
        vec![
            ("primary".to_string(), AttemptOutcome::CoolingDown),
            ("backup".to_string(), AttemptOutcome::Ok)
        ]
    );
    assert_eq!(up.counts("primary").requests, 2);

    // Back after the cooldown, and healthy again.
    tokio::time::sleep(left + ms(50)).await;
    assert!(r.deployment("primary").await.cooldown_until.is_none());
    up.set("primary", Behaviour::ok("p"));
    assert_eq!(call(&r, "primary").await.unwrap().deployment, "primary");
    assert_eq!(up.counts("primary").requests, 3);
}

#[tokio::test]
async fn a_longer_retry_after_sets_the_cooldown() {
    let up = Upstream::start().await;
    up.set(
        "primary",
        Behaviour::Status {
            code: 429,
            body: "{}".into(),
            retry_after: Some(3),
        },
    );
    up.set("backup", Behaviour::ok("b"));
    let r = TestRouter::start(&yaml(
        &[
            dep("primary", "primary", &up, ""),
            dep("backup", "backup", &up, ""),
        ],
        // No failure allowed: each failure cools, for 1s or the Retry-After.
        "  num_retries: 0\n  allowed_fails: 0\n  cooldown_time: 1s\n  fallbacks:\n    - primary: [backup]",
    ))
    .await;
    call(&r, "primary").await.unwrap();
    let until = |d: llm_router::proto::Deployment| {
        std::time::SystemTime::try_from(d.cooldown_until.expect("cooling")).unwrap()
    };
    let first = until(r.deployment("primary").await);
    let left = first
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        left > Duration::from_secs(2),
        "Retry-After (3s) wins over 1s: {left:?}"
    );
    // Past the 1s cooldown_time, still cooling: the call goes straight to the fallback.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(call(&r, "primary").await.unwrap().deployment, "backup");
    assert_eq!(up.counts("primary").requests, 1);
}

#[tokio::test]
async fn with_nothing_available_the_call_gets_unavailable_and_when_to_return() {
    let up = Upstream::start().await;
    up.set("primary", Behaviour::status(503, "{}"));
    let r = TestRouter::start(&yaml(
        &[dep("primary", "primary", &up, "cooldown_time: 1s")],
        "  num_retries: 0\n  allowed_fails: 0",
    ))
    .await;
    call(&r, "primary").await.unwrap_err();
    let first = r.deployment("primary").await.cooldown_until.unwrap();
    // Cooling: the call is answered at once with UNAVAILABLE and when to come back.
    let status = call(&r, "primary").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(reason(&status), "ALL_DEPLOYMENTS_COOLING_DOWN");
    let delay = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo says when the deployment returns");
    assert!(
        delay <= Duration::from_secs(1) && delay > ms(500),
        "{delay:?}"
    );
    // After it returns it fails again: cooled again, to a later end.
    tokio::time::sleep(delay + ms(20)).await;
    call(&r, "primary").await.unwrap_err();
    let second = r.deployment("primary").await.cooldown_until.unwrap();
    assert!(
        std::time::SystemTime::try_from(second).unwrap()
            > std::time::SystemTime::try_from(first).unwrap()
    );
    assert_eq!(up.counts("primary").requests, 2);
}

#[tokio::test]
async fn a_hedge_wins_over_a_hanging_primary_and_the_loser_is_abandoned() {
    let up = Upstream::start().await;
    up.set("stuck", Behaviour::Hang);
    up.set(
        "spare",
        Behaviour::slow_first_chunk("spare answered", ms(20)),
    );
    let r = TestRouter::start(&yaml(
        &[
            // Weights make `stuck` the first choice nearly always; the test pins it below.
            dep("g", "stuck", &up, "weight: 1000000"),
            dep("g", "spare", &up, "weight: 1"),
        ],
        "  hedge_after: 150ms\n  max_hedges: 1",
    ))
    .await;
    let mut client = r.client();
    let started = Instant::now();
    let mut s = client
        .stream_complete(stream_req("g"))
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(first.deployment, "spare");
    assert_between(elapsed, ms(150), ms(150) + SLACK);
    let attempts: Vec<_> = first
        .attempts
        .iter()
        .map(|a| {
            (
                a.deployment.clone(),
                AttemptOutcome::try_from(a.outcome).unwrap(),
                a.hedge,
            )
        })
        .collect();
    assert_eq!(
        attempts,
        vec![
            ("stuck".to_string(), AttemptOutcome::Cancelled, false),
            ("spare".to_string(), AttemptOutcome::Ok, true)
        ]
    );
    while s.message().await.unwrap().is_some() {}
    // The hanging request was closed, not left open upstream.
    let stuck = up.wait_abandoned("stuck", 1).await;
    assert_eq!(stuck.abandoned, 1);
    assert_eq!(stuck.open, 0);
    let (_, metrics) = r.admin_get("/metrics").await;
    assert!(metrics.contains("llmrouter_hedges_total{model_group=\"g\",deployment=\"spare\"} 1"));
}

#[tokio::test]
async fn a_group_with_one_deployment_hedges_into_its_first_fallback() {
    let up = Upstream::start().await;
    up.set("slow", Behaviour::slow_first_chunk("slow", ms(2000)));
    up.set("backup", Behaviour::ok("backup answered"));
    let r = TestRouter::start(&yaml(
        &[dep("g", "slow", &up, ""), dep("backup", "backup", &up, "")],
        "  fallbacks:\n    - g: [backup]\n  model_group_settings:\n    g: { hedge_after: 100ms }",
    ))
    .await;
    let started = Instant::now();
    let resp = call(&r, "g").await.unwrap();
    assert_between(started.elapsed(), ms(100), ms(100) + SLACK);
    assert_eq!(resp.model, "backup");
    assert_eq!(
        outcomes(&resp.attempts),
        vec![
            ("slow".to_string(), AttemptOutcome::Cancelled),
            ("backup".to_string(), AttemptOutcome::Ok)
        ]
    );
    assert_eq!(up.wait_abandoned("slow", 1).await.abandoned, 1);
    // Hedging is per group: ListModels says so.
    let groups = r.models().await;
    let g = groups.iter().find(|g| g.name == "g").unwrap();
    assert_eq!(g.max_hedges, 1);
    assert!(g.hedge_after.is_some());
    assert!(
        groups
            .iter()
            .find(|g| g.name == "backup")
            .unwrap()
            .hedge_after
            .is_none()
    );
}

#[tokio::test]
async fn no_hedge_when_the_first_attempt_answers_in_time() {
    let up = Upstream::start().await;
    up.set("a", Behaviour::slow_first_chunk("a", ms(10)));
    up.set("b", Behaviour::slow_first_chunk("b", ms(10)));
    let r = TestRouter::start(&yaml(
        &[dep("g", "a", &up, ""), dep("g", "b", &up, "")],
        "  hedge_after: 300ms",
    ))
    .await;
    for _ in 0..5 {
        let resp = call(&r, "g").await.unwrap();
        assert_eq!(resp.attempts.len(), 1);
    }
    assert_eq!(up.counts("a").requests + up.counts("b").requests, 5);
}

#[tokio::test]
async fn the_retry_budget_stops_retries_during_an_outage_and_recovers_after_it() {
    let up = Upstream::start().await;
    up.set("flaky", Behaviour::status(503, "{}"));
    let r = TestRouter::start(&yaml(
        &[dep("g", "flaky", &up, "")],
        // Bucket of 4: two failures bring it to half, where retries stop.
        "  num_retries: 3\n  disable_cooldowns: true\n  retry_budget: { max_tokens: 4, token_ratio: 0.5 }",
    ))
    .await;
    let status = call(&r, "g").await.unwrap_err();
    assert_eq!(
        outcomes(&attempt_log(&status).attempts),
        vec![
            ("flaky".to_string(), AttemptOutcome::UpstreamError),
            ("flaky".to_string(), AttemptOutcome::UpstreamError),
            ("flaky".to_string(), AttemptOutcome::RetryThrottled),
        ]
    );
    assert_eq!(up.counts("flaky").requests, 2);
    // Still in the outage: the first attempt always goes, retries do not.
    for n in 3..=5 {
        let status = call(&r, "g").await.unwrap_err();
        assert_eq!(attempt_log(&status).attempts.len(), 2);
        assert_eq!(up.counts("flaky").requests, n);
    }
    assert_eq!(r.deployment("flaky").await.retry_budget_tokens, Some(0.0));

    // The provider recovers: successes refill the bucket, 0.5 each, until a failure (-1)
    // leaves it above half and a retry may go again.
    up.set("flaky", Behaviour::ok("fine"));
    for _ in 0..7 {
        call(&r, "g").await.unwrap();
    }
    assert_eq!(r.deployment("flaky").await.retry_budget_tokens, Some(3.5));
    up.fail_first("flaky", 1, Behaviour::status(503, "{}"));
    let resp = call(&r, "g").await.unwrap();
    assert_eq!(
        outcomes(&resp.attempts),
        vec![
            ("flaky".to_string(), AttemptOutcome::UpstreamError),
            ("flaky".to_string(), AttemptOutcome::Ok),
        ]
    );
}

#[tokio::test]
async fn calls_over_max_concurrent_calls_are_shed_at_once() {
    let up = Upstream::start().await;
    up.set("slow", Behaviour::slow_first_chunk("slow", ms(400)));
    let r = TestRouter::start(&format!(
        "{}server:\n  max_concurrent_calls: 4\n",
        yaml(&[dep("g", "slow", &up, "")], "")
    ))
    .await;
    let mut calls = Vec::new();
    for _ in 0..20 {
        let mut client = r.client();
        calls.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut req = tonic::Request::new(complete("g"));
            req.set_timeout(Duration::from_secs(3));
            let result = client.complete(req).await;
            (started.elapsed(), result)
        }));
    }
    let (mut ok, mut shed) = (0, 0);
    for c in calls {
        let (elapsed, result) = c.await.unwrap();
        match result {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(reason(&status), "OVERLOADED");
                assert!(status.get_details_retry_info().is_some());
                // Refused, not queued.
                assert!(elapsed < ms(300), "shed after {elapsed:?}");
                shed += 1;
            }
        }
    }
    assert!((1..=4).contains(&ok), "{ok} calls served");
    assert_eq!(ok + shed, 20);
    assert!(up.counts("slow").requests <= 4);
    let (_, metrics) = r.admin_get("/metrics").await;
    assert!(metrics.contains(&format!(
        "llmrouter_calls_shed_total{{rpc=\"Complete\"}} {shed}"
    )));
}

#[tokio::test]
async fn a_request_over_max_request_bytes_gets_a_clear_status() {
    let up = Upstream::start().await;
    up.set("a", Behaviour::ok("a"));
    let r = TestRouter::start(&format!(
        "{}server:\n  max_request_bytes: 4096\n",
        yaml(&[dep("g", "a", &up, "")], "")
    ))
    .await;
    let mut req = complete("g");
    req.messages = user(&"x".repeat(10_000));
    let status = r.client().complete(req).await.unwrap_err();
    // tonic's own answer for an oversized message: OUT_OF_RANGE, naming the limit.
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("4096"), "{}", status.message());
    assert_eq!(up.counts("a").requests, 0);
    // A request under the limit still works.
    call(&r, "g").await.unwrap();
}

/// Writes `text` to `path` the way Kubernetes updates a mounted ConfigMap: a new file, then a
/// rename over the old name, so a reader never sees half a file.
fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_reload_under_load_fails_no_call_and_a_bad_reload_is_rejected() {
    let up = Upstream::start().await;
    up.set("one", Behaviour::slow_first_chunk("one", ms(30)));
    up.set("two", Behaviour::slow_first_chunk("two", ms(30)));
    let dir = std::env::temp_dir().join(format!("llm-router-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yaml");
    let server = "server:\n  config_watch_interval: 50ms\n";
    let before = format!("{}{server}", yaml(&[dep("g", "one", &up, "")], ""));
    let after = format!(
        "{}{server}",
        yaml(
            &[dep("g", "two", &up, ""), dep("extra", "one", &up, "")],
            ""
        )
    );
    std::fs::write(&path, &before).unwrap();
    let r = TestRouter::start_reloading(&path).await;

    // Calls run back to back on four connections while the config changes under them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let mut client = r.client();
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let resp = client.complete(complete("g")).await.expect("no call fails");
                assert!(["one", "two"].contains(&resp.into_inner().deployment.as_str()));
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(ms(200)).await;
    replace_file(&path, &after);
    let until = Instant::now() + Duration::from_secs(5);
    while !r.models().await.iter().any(|g| g.name == "extra") {
        assert!(Instant::now() < until, "the new config was never applied");
        tokio::time::sleep(ms(20)).await;
    }
    let two_before = up.counts("two").requests;
    tokio::time::sleep(ms(200)).await;
    assert!(
        up.counts("two").requests > two_before,
        "calls go to the new deployment"
    );

    // An invalid file is rejected; the previous config keeps serving.
    replace_file(&path, "model_list: []\nrouter_settings: { timeout: -1 }\n");
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = r.admin_get("/metrics").await;
        if metrics.contains("llmrouter_config_reloads_total{result=\"rejected\"} 1") {
            assert!(metrics.contains("llmrouter_config_reloads_total{result=\"applied\"} 1"));
            break;
        }
        assert!(Instant::now() < until, "the bad config was never seen");
        tokio::time::sleep(ms(20)).await;
    }
    tokio::time::sleep(ms(100)).await;
    assert!(r.models().await.iter().any(|g| g.name == "extra"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for l in load {
        total += l.await.unwrap();
    }
    assert!(total > 20, "only {total} calls ran");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn cooldowns_survive_a_reload_of_the_same_deployment() {
    let up = Upstream::start().await;
    up.set("primary", Behaviour::status(503, "{}"));
    let dir = std::env::temp_dir().join(format!("llm-router-reload-cool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yaml");
    let text = |timeout: &str| {
        format!(
            "{}server:\n  config_watch_interval: 50ms\n",
            yaml(
                &[dep("primary", "primary", &up, "")],
                &format!(
                    "  timeout: {timeout}\n  num_retries: 0\n  allowed_fails: 0\n  cooldown_time: 30s"
                ),
            )
        )
    };
    std::fs::write(&path, text("60s")).unwrap();
    let r = TestRouter::start_reloading(&path).await;
    call(&r, "primary").await.unwrap_err();
    assert!(r.deployment("primary").await.cooldown_until.is_some());
    replace_file(&path, &text("50s"));
    let until = Instant::now() + Duration::from_secs(5);
    while r.deployment("primary").await.timeout != Some(dur(Duration::from_secs(50))) {
        assert!(Instant::now() < until, "never reloaded");
        tokio::time::sleep(ms(20)).await;
    }
    assert!(r.deployment("primary").await.cooldown_until.is_some());
    let _ = std::fs::remove_dir_all(&dir);
}
