//! The connection pool toward providers, against an in-process TLS HTTP/2 upstream that
//! advertises a stream limit and misbehaves on purpose (`common::h2_upstream`): held streams
//! past one connection's limit, the pool's bound, GOAWAY, REFUSED_STREAM, and the TLS options
//! (`ssl_verify`, `ssl_certificate`).

use std::time::Duration;

use futures_util::future::join_all;
use llm_router::proto::{AttemptOutcome, StreamCompleteResponse};

use crate::common::{
    TestRouter, attempt_log, dur,
    h2_upstream::{H2Upstream, Plan, Tls},
    outcomes, stream_req,
};

/// A config with one OpenAI-compatible deployment `up` on `base`, and `extra` lines under its
/// `litellm_params` and in `router_settings`.
fn config(base: &str, params: &str, router: &str) -> String {
    format!(
        r#"
model_list:
  - model_name: m
    litellm_params:
      model: openai/up
      api_base: {base}
      api_key: sk-test
{params}
    model_info: {{id: up}}
router_settings:
  num_retries: 0
  allowed_fails: 1
  cooldown_time: 60s
{router}
"#
    )
}

/// Runs one stream to its end: its messages, or the status that ended it.
async fn run(
    r: &TestRouter,
    stream_timeout: Duration,
) -> Result<Vec<StreamCompleteResponse>, tonic::Status> {
    let mut req = stream_req("m");
    req.stream_timeout = Some(dur(stream_timeout));
    let mut s = r.client().stream_complete(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        out.push(m);
    }
    Ok(out)
}

fn text(messages: &[StreamCompleteResponse]) -> String {
    messages.iter().map(|m| m.delta.as_str()).collect()
}

/// A metric's value summed over its series whose labels contain `filter`.
fn metric(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn ssl_verify(up: &H2Upstream) -> String {
    format!("      ssl_verify: {}", up.ca_file.display())
}

#[tokio::test]
async fn held_streams_past_one_connections_limit_spread_over_more_connections() {
    let up = H2Upstream::start(
        "spread",
        Plan {
            max_streams: 20,
            chunks: 5,
            chunk_delay: Duration::from_millis(150),
            ..Plan::default()
        },
    )
    .await;
    let r = TestRouter::start(&config(&up.base(), &ssl_verify(&up), "")).await;
    // 100 streams held at once, five times the provider's per-connection limit. Each
    // stream's first chunk comes 150 ms after its request, well inside the first-chunk limit,
    // as long as no request is left queued behind a full connection.
    let calls = (0..100).map(|_| run(&r, Duration::from_secs(3)));
    let results = join_all(calls).await;
    for (i, res) in results.iter().enumerate() {
        let messages = res.as_ref().unwrap_or_else(|s| panic!("stream {i}: {s:?}"));
        assert_eq!(text(messages), "w0 w1 w2 w3 w4 ", "stream {i}");
        let log = outcomes(&messages[0].attempts);
        assert_eq!(log, [("up".to_string(), AttemptOutcome::Ok)], "stream {i}");
    }
    let stats = up.stats();
    assert!(stats.connections >= 5, "{stats:?}");
    assert_eq!(
        stats.over_limit, 0,
        "no stream past a connection's limit: {stats:?}"
    );
    assert!(stats.max_concurrent <= 20, "{stats:?}");
    assert_eq!(stats.completed, 100, "{stats:?}");
    let (_, metrics) = r.admin_get("/metrics").await;
    assert_eq!(
        metric(&metrics, "llmrouter_upstream_pool_waits_total", ""),
        0.0,
        "under the bound nobody waits"
    );
    assert!(
        metric(
            &metrics,
            "llmrouter_upstream_connections",
            "protocol=\"h2\""
        ) >= 5.0
    );
}

#[tokio::test]
async fn at_the_pools_bound_calls_wait_inside_their_deadlines_and_no_deployment_cools() {
    let up = H2Upstream::start(
        "bound",
        Plan {
            max_streams: 20,
            chunks: 3,
            chunk_delay: Duration::from_millis(200),
            ..Plan::default()
        },
    )
    .await;
    let r = TestRouter::start(&config(
        &up.base(),
        &ssl_verify(&up),
        "  pool_max_http2_connections: 2",
    ))
    .await;
    // 60 streams on 2 connections of 20: 20 wait for the first 40 (about 800 ms each), then
    // go, all within the 5 s first-chunk limit.
    let results = join_all((0..60).map(|_| run(&r, Duration::from_secs(5)))).await;
    for (i, res) in results.iter().enumerate() {
        let messages = res.as_ref().unwrap_or_else(|s| panic!("stream {i}: {s:?}"));
        assert_eq!(text(messages), "w0 w1 w2 ", "stream {i}");
    }
    let stats = up.stats();
    assert_eq!(stats.connections, 2, "{stats:?}");
    assert_eq!(stats.over_limit, 0, "{stats:?}");
    let (_, metrics) = r.admin_get("/metrics").await;
    let waits = metric(
        &metrics,
        "llmrouter_upstream_pool_waits_total",
        "deployment=\"up\"",
    );
    assert!(waits >= 20.0, "waits {waits}\n{metrics}");
    assert!(
        metric(
            &metrics,
            "llmrouter_upstream_pool_wait_seconds_count",
            "deployment=\"up\""
        ) >= 20.0
    );

    // Now the held streams outlast the first-chunk limit of the ones that wait: those end
    // POOL_SATURATED, never sent, and the deployment (allowed_fails: 1) does not cool down.
    up.set_plan(Plan {
        max_streams: 20,
        chunks: 3,
        chunk_delay: Duration::from_millis(1500),
        ..Plan::default()
    });
    let before = up.stats().streams;
    let results = join_all((0..50).map(|_| run(&r, Duration::from_millis(700)))).await;
    let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    assert_eq!(ok.len(), 40, "two connections of 20 answered");
    for status in failed.iter().map(|f| f.as_ref().unwrap_err()) {
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        let log = attempt_log(status).attempts;
        assert_eq!(
            outcomes(&log),
            [("up".to_string(), AttemptOutcome::PoolSaturated)],
            "{status:?}"
        );
        assert!(log[0].detail.contains("pool"), "{}", log[0].detail);
        assert!(
            !log[0].detail.contains("localhost"),
            "no upstream URL: {}",
            log[0].detail
        );
    }
    assert_eq!(
        up.stats().streams - before,
        40,
        "the ten that waited were never sent"
    );
    let d = r.deployment("up").await;
    assert!(
        d.cooldown_until.is_none(),
        "the pool's saturation is not the deployment's: {d:?}"
    );
    let (_, metrics) = r.admin_get("/metrics").await;
    assert_eq!(metric(&metrics, "llmrouter_cooldowns_total", ""), 0.0);
    assert_eq!(
        metric(
            &metrics,
            "llmrouter_attempts_total",
            "outcome=\"pool_saturated\""
        ),
        10.0
    );
    // And the next call is served as soon as the held streams are done.
    tokio::time::sleep(Duration::from_millis(5000)).await;
    up.set_plan(Plan::default());
    assert!(run(&r, Duration::from_secs(3)).await.is_ok());
}

#[tokio::test]
async fn streams_above_a_goaways_last_id_are_sent_again_unseen_by_callers() {
    let up = H2Upstream::start(
        "goaway",
        Plan {
            max_streams: 20,
            chunks: 3,
            chunk_delay: Duration::from_millis(150),
            // The first connection takes 10 streams, then says it processed only the first 5.
            goaway_after: Some(10),
            ..Plan::default()
        },
    )
    .await;
    let r = TestRouter::start(&config(&up.base(), &ssl_verify(&up), "")).await;
    let results = join_all((0..10).map(|_| run(&r, Duration::from_secs(3)))).await;
    for (i, res) in results.iter().enumerate() {
        let messages = res.as_ref().unwrap_or_else(|s| panic!("stream {i}: {s:?}"));
        assert_eq!(text(messages), "w0 w1 w2 ", "stream {i}");
        // One attempt each: the resend is not a retry.
        assert_eq!(
            outcomes(&messages[0].attempts),
            [("up".to_string(), AttemptOutcome::Ok)],
            "stream {i}"
        );
    }
    let stats = up.stats();
    assert_eq!(stats.goaways, 1, "{stats:?}");
    assert!(stats.connections >= 2, "{stats:?}");
    assert_eq!(stats.completed, 10, "{stats:?}");
    let (_, metrics) = r.admin_get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "llmrouter_upstream_resends_total",
            "reason=\"goaway\""
        ),
        5.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "llmrouter_retries_total", ""), 0.0);
}

#[tokio::test]
async fn a_dying_connection_fails_only_its_own_streams_and_those_are_retried() {
    let up = H2Upstream::start(
        "dies",
        Plan {
            max_streams: 10,
            chunks: 3,
            chunk_delay: Duration::from_millis(50),
            // The first connection holds its streams unanswered, then closes without GOAWAY:
            // they reached the provider, so they are not resent unseen but retried.
            die_after: Some(Duration::from_millis(400)),
            ..Plan::default()
        },
    )
    .await;
    let cfg = format!(
        r#"
model_list:
  - model_name: m
    litellm_params:
      model: openai/up
      api_base: {base}
      api_key: sk-test
{tls}
    model_info: {{id: up}}
router_settings:
  num_retries: 1
  disable_cooldowns: true
  # Room for every lost stream's retry: the default budget rightly throttles a third of the
  # calls failing at once.
  retry_budget: {{max_tokens: 100}}
"#,
        base = up.base(),
        tls = ssl_verify(&up)
    );
    let r = TestRouter::start(&cfg).await;
    let results = join_all((0..30).map(|_| run(&r, Duration::from_secs(5)))).await;
    let mut retried = 0;
    for (i, res) in results.iter().enumerate() {
        let messages = res.as_ref().unwrap_or_else(|s| panic!("stream {i}: {s:?}"));
        assert_eq!(text(messages), "w0 w1 w2 ", "stream {i}");
        let log = outcomes(&messages[0].attempts);
        match log.as_slice() {
            [(_, AttemptOutcome::Ok)] => {}
            [(_, first), (_, AttemptOutcome::Ok)] => {
                // A connection broken after the request was sent is the provider's error (the proto
                // says so), not a failure to connect.
                assert_eq!(*first, AttemptOutcome::UpstreamError, "stream {i}: {log:?}");
                retried += 1;
            }
            other => panic!("stream {i}: {other:?}"),
        }
    }
    let stats = up.stats();
    // Only the streams the dead connection carried were lost, and each was retried once.
    assert!(stats.died_with >= 1 && stats.died_with <= 10, "{stats:?}");
    assert_eq!(retried, stats.died_with, "{stats:?}");
    assert_eq!(stats.completed, 30, "{stats:?}");
    assert_eq!(stats.over_limit, 0, "{stats:?}");
    let (_, metrics) = r.admin_get("/metrics").await;
    assert_eq!(
        metric(&metrics, "llmrouter_retries_total", ""),
        f64::from(stats.died_with),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "llmrouter_upstream_resends_total", ""),
        0.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn refused_streams_are_sent_again_unseen_by_callers() {
    let up = H2Upstream::start(
        "refused",
        Plan {
            refuse_first: 3,
            ..Plan::default()
        },
    )
    .await;
    let r = TestRouter::start(&config(&up.base(), &ssl_verify(&up), "")).await;
    let results = join_all((0..6).map(|_| run(&r, Duration::from_secs(3)))).await;
    for res in &results {
        let messages = res.as_ref().unwrap();
        assert_eq!(text(messages), "w0 w1 w2 ");
        assert_eq!(outcomes(&messages[0].attempts).len(), 1);
    }
    let stats = up.stats();
    assert_eq!(
        (stats.refused, stats.streams, stats.completed),
        (3, 9, 6),
        "{stats:?}"
    );
    let (_, metrics) = r.admin_get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "llmrouter_upstream_resends_total",
            "reason=\"refused_stream\""
        ),
        3.0
    );
    let d = r.deployment("up").await;
    assert!(d.cooldown_until.is_none());
}

#[tokio::test]
async fn ssl_verify_decides_which_provider_certificates_are_accepted() {
    let up = H2Upstream::start("verify", Plan::default()).await;

    // The system roots do not know the test CA: a clear connect error naming the deployment,
    // never the URL.
    let r = TestRouter::start(&config(&up.base(), "", "")).await;
    let status = run(&r, Duration::from_secs(3)).await.unwrap_err();
    let log = attempt_log(&status).attempts;
    assert_eq!(
        outcomes(&log),
        [("up".to_string(), AttemptOutcome::ConnectError)]
    );
    let detail = &log[0].detail;
    assert!(detail.contains("deployment `up`"), "{detail}");
    assert!(detail.contains("certificate is not accepted"), "{detail}");
    assert!(
        !detail.contains("localhost") && !detail.contains("https://"),
        "{detail}"
    );

    // Another CA's bundle: the same.
    let other = crate::common::certs::Ca::new("someone else");
    let other_file = crate::common::certs::write(&up.dir, "other.pem", &other.pem());
    let yaml = config(
        &up.base(),
        &format!("      ssl_verify: {}", other_file.display()),
        "",
    );
    let r = TestRouter::start(&yaml).await;
    let status = run(&r, Duration::from_secs(3)).await.unwrap_err();
    let detail = &attempt_log(&status).attempts[0].detail;
    assert!(detail.contains("certificate is not accepted"), "{detail}");

    // The right bundle, per deployment, and globally.
    let r = TestRouter::start(&config(&up.base(), &ssl_verify(&up), "")).await;
    assert!(run(&r, Duration::from_secs(3)).await.is_ok());
    let global = format!(
        "{}litellm_settings:\n  ssl_verify: {}\n",
        config(&up.base(), "", ""),
        up.ca_file.display()
    );
    let r = TestRouter::start(&global).await;
    assert!(run(&r, Duration::from_secs(3)).await.is_ok());

    // ssl_verify: false takes any certificate, and the config says so.
    let yaml = config(&up.base(), "      ssl_verify: false", "");
    let loaded = llm_router::config::Config::load(llm_router::config::Source::Yaml(&yaml)).unwrap();
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.contains("model_list[0].litellm_params: ssl_verify is false")),
        "{:?}",
        loaded.warnings
    );
    let r = TestRouter::start(&yaml).await;
    assert!(run(&r, Duration::from_secs(3)).await.is_ok());
    // A deployment's `true` wins over a global `false`.
    let yaml = format!(
        "{}litellm_settings:\n  ssl_verify: false\n",
        config(&up.base(), "      ssl_verify: true", "")
    );
    let r = TestRouter::start(&yaml).await;
    assert!(run(&r, Duration::from_secs(3)).await.is_err());
}

#[tokio::test]
async fn a_provider_that_asks_for_a_client_certificate_gets_ssl_certificate() {
    let up = H2Upstream::start_with("mtls", Plan::default(), Tls::ClientCertRequired).await;
    let r = TestRouter::start(&config(&up.base(), &ssl_verify(&up), "")).await;
    let status = run(&r, Duration::from_secs(3)).await.unwrap_err();
    let detail = &attempt_log(&status).attempts[0].detail;
    assert!(detail.contains("deployment `up`"), "{detail}");
    assert!(detail.contains("ssl_certificate"), "{detail}");

    let identity = up.client_identity.as_ref().unwrap();
    let params = format!(
        "{}\n      ssl_certificate: {}",
        ssl_verify(&up),
        identity.display()
    );
    let r = TestRouter::start(&config(&up.base(), &params, "")).await;
    let messages = run(&r, Duration::from_secs(3)).await.unwrap();
    assert_eq!(text(&messages), "w0 w1 w2 ");
}

#[tokio::test]
async fn an_http1_providers_idle_connections_are_reused_then_closed_after_pool_idle_timeout() {
    use crate::common::upstream::{Behaviour, Upstream};
    let up = Upstream::start().await;
    up.set("up", Behaviour::ok("hello"));
    let r = TestRouter::start(&config(&up.base(), "", "  pool_idle_timeout: 1s")).await;
    let call = || async {
        r.client()
            .complete(crate::common::complete("m"))
            .await
            .unwrap()
    };
    call().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    call().await;
    assert_eq!(
        up.connections(),
        1,
        "reused while idle for less than the timeout"
    );
    // Three to five sweeps (every quarter of the timeout, at least 250 ms) after the timeout,
    // the idle connection is closed, and the next call opens another.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, metrics) = r.admin_get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "llmrouter_upstream_connections",
            "protocol=\"h1\""
        ),
        0.0,
        "{metrics}"
    );
    call().await;
    assert_eq!(up.connections(), 2);
    // HTTP/1.1 calls in flight at once each have a connection: ten at once, ten connections,
    // then kept for what follows.
    let slow = Behaviour::slow_first_chunk("hello", Duration::from_millis(200));
    up.set("up", slow);
    join_all((0..10).map(|_| call())).await;
    assert_eq!(up.connections(), 2 + 9);
    join_all((0..10).map(|_| call())).await;
    assert_eq!(up.connections(), 11, "all ten kept for reuse");
}
