//! Metrics and the admin port: a scripted set of calls, then `/metrics` scraped, parsed and
//! checked series by series.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::upstream::{Behaviour, Upstream};
use crate::common::*;

fn config(up: &Upstream) -> String {
    format!(
        r#"
model_list:
  - model_name: primary
    litellm_params: {{ model: openai/primary, api_base: "{base}", timeout: 200ms, max_retries: 1 }}
    model_info: {{ id: primary-1 }}
  - model_name: backup
    litellm_params: {{ model: openai/backup, api_base: "{base}", max_retries: 0 }}
    model_info: {{ id: backup-1 }}
router_settings:
  retry_backoff_initial: 10ms
  retry_backoff_max: 10ms
  fallbacks:
    - primary: [backup]
server:
  drain_period: 2s
"#,
        base = up.base()
    )
}

/// Parses the text exposition into `name{labels}` -> value.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series).unwrap_or_else(|| {
        let mut known: Vec<&String> = m.keys().collect();
        known.sort();
        panic!("no series `{series}`; have:\n{known:#?}")
    })
}

#[tokio::test]
async fn metrics_follow_a_scripted_set_of_calls() {
    let up = Upstream::start().await;
    up.set("primary", Behaviour::Hang);
    up.set("backup", Behaviour::ok("backup answers"));
    let r = TestRouter::start(&config(&up)).await;

    // 1. primary times out twice (a retry), then the fallback answers.
    r.client().complete(complete("primary")).await.unwrap();
    // 2. a stream straight from the backup.
    let mut s = r
        .client()
        .stream_complete(stream_req("backup"))
        .await
        .unwrap()
        .into_inner();
    while s.message().await.unwrap().is_some() {}
    // 3. an unknown model: counted under `unknown`, never under the caller's string.
    r.client()
        .complete(complete("caller-chosen-name"))
        .await
        .unwrap_err();
    // 4. a call whose deadline passes.
    up.set("backup", Behaviour::Hang);
    let mut req = complete("backup");
    req.timeout = Some(dur(ms(100)));
    r.client().complete(req).await.unwrap_err();

    // The stream's bookkeeping finishes just after its last message.
    tokio::time::sleep(ms(100)).await;
    let (status, body) = r.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    assert!(
        !body.contains("caller-chosen-name"),
        "label values come from the config only"
    );
    let m = parse(&body);

    assert_eq!(
        get(
            &m,
            r#"llmrouter_calls_total{rpc="Complete",model_group="backup",caller="unauthenticated",code="OK"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            r#"llmrouter_calls_total{rpc="StreamComplete",model_group="backup",caller="unauthenticated",code="OK"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            r#"llmrouter_calls_total{rpc="Complete",model_group="unknown",caller="unauthenticated",code="NOT_FOUND"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            r#"llmrouter_calls_total{rpc="Complete",model_group="backup",caller="unauthenticated",code="DEADLINE_EXCEEDED"}"#
        ),
        1.0
    );

    assert_eq!(
        get(
            &m,
            r#"llmrouter_attempts_total{model_group="primary",deployment="primary-1",outcome="timeout"}"#
        ),
        2.0
    );
    assert_eq!(
        get(
            &m,
            r#"llmrouter_attempts_total{model_group="backup",deployment="backup-1",outcome="ok"}"#
        ),
        2.0
    );
    assert_eq!(
        get(
            &m,
            r#"llmrouter_retries_total{model_group="primary",deployment="primary-1"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            r#"llmrouter_fallbacks_total{from="primary",to="backup"}"#
        ),
        1.0
    );

    assert_eq!(
        get(
            &m,
            r#"llmrouter_time_to_first_chunk_seconds_count{model_group="backup",deployment="backup-1"}"#
        ),
        1.0
    );
    let call_count = get(
        &m,
        r#"llmrouter_call_duration_seconds_count{rpc="Complete",model_group="backup",deployment="backup-1"}"#,
    );
    assert_eq!(call_count, 1.0);
    let call_sum = get(
        &m,
        r#"llmrouter_call_duration_seconds_sum{rpc="Complete",model_group="backup",deployment="backup-1"}"#,
    );
    assert!(
        call_sum >= 0.4,
        "the answered call waited out two 200ms primary attempts: {call_sum}"
    );

    // The upstream reports 5 prompt tokens per call, and one completion token per word.
    assert_eq!(
        get(
            &m,
            r#"llmrouter_tokens_total{deployment="backup-1",direction="input"}"#
        ),
        10.0
    );
    assert_eq!(
        get(
            &m,
            r#"llmrouter_tokens_total{deployment="backup-1",direction="output"}"#
        ),
        4.0
    );
    assert_eq!(get(&m, r#"llmrouter_calls_in_flight{rpc="Complete"}"#), 0.0);
    assert_eq!(get(&m, "llmrouter_streams_open"), 0.0);
}

#[tokio::test]
async fn in_flight_counts_open_streams_and_cancelled_calls_are_counted() {
    let up = Upstream::start().await;
    up.set("backup", Behaviour::StallAfter { after: 1 });
    let r = TestRouter::start(&config(&up)).await;
    let mut s = r
        .client()
        .stream_complete(stream_req("backup"))
        .await
        .unwrap()
        .into_inner();
    s.message().await.unwrap().unwrap();
    let m = parse(&r.admin_get("/metrics").await.1);
    assert_eq!(
        get(&m, r#"llmrouter_calls_in_flight{rpc="StreamComplete"}"#),
        1.0
    );
    assert_eq!(get(&m, "llmrouter_streams_open"), 1.0);
    drop(s);

    // A unary call the client gives up on is counted as CANCELLED.
    up.set("primary", Behaviour::Hang);
    let mut client = r.client();
    let _ = tokio::time::timeout(ms(50), client.complete(complete("primary"))).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = parse(&r.admin_get("/metrics").await.1);
        let cancelled = m
            .get(r#"llmrouter_calls_total{rpc="Complete",model_group="primary",caller="unauthenticated",code="CANCELLED"}"#);
        let stream_gone = m.get("llmrouter_streams_open") == Some(&0.0);
        if cancelled == Some(&1.0) && stream_gone {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cancellations were not counted: {m:?}"
        );
        tokio::time::sleep(ms(20)).await;
    }
}

#[tokio::test]
async fn healthz_and_readyz_follow_shutdown() {
    let up = Upstream::start().await;
    let mut r = TestRouter::start(&config(&up)).await;
    assert_eq!(r.admin_get("/healthz").await, (200, "ok\n".to_string()));
    assert_eq!(r.admin_get("/readyz").await, (200, "ready\n".to_string()));
    assert_eq!(r.admin_get("/nope").await.0, 404);
    r.shutdown();
    tokio::time::sleep(ms(100)).await;
    // During the 2s drain period: not ready, still alive.
    assert_eq!(
        r.admin_get("/readyz").await,
        (503, "draining\n".to_string())
    );
    assert_eq!(r.admin_get("/healthz").await.0, 200);
}
