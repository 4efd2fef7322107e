//! Callers told apart and held to their policies: API keys, a trusted mesh header, mTLS
//! client certificates; allowed groups and request switches; rate, token, concurrency and
//! budget limits; all against the real server and an in-process upstream that counts what
//! reached it.

use std::time::{Duration, Instant};

use llm_router::config::{Config, Source};
use llm_router::proto::{StreamCompleteRequest, router_service_client::RouterServiceClient};
use tonic::{Code, Request, Status, transport::Channel};
use tonic_types::StatusExt;

use crate::common::{
    TestRouter, certs, complete, reason,
    upstream::{Behaviour, Upstream},
    user,
};

const SEARCH_KEY: &str = "sk-search-0123456789abcdef";
const BATCH_KEY: &str = "sk-batch-0123456789abcdef0";

fn sha256_hex(key: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Two groups on the upstream (`chat` priced, `secret`), and two callers: `search` by a key
/// from the environment, `batch` by a key stored as its SHA-256.
fn config(base: &str, auth: &str, search: &str, batch: &str) -> String {
    format!(
        r#"
model_list:
  - model_name: chat
    litellm_params: {{ model: openai/chat, api_base: "{base}", api_key: sk-upstream, max_retries: 0, input_cost_per_token: 0.001, output_cost_per_token: 0.002 }}
  - model_name: secret
    litellm_params: {{ model: openai/secret, api_base: "{base}", api_key: sk-upstream, max_retries: 0 }}
router_settings:
  allow_mock_response: true
  model_group_alias: {{ talk: chat, vault: secret }}
{auth}
callers:
  - name: search
    keys: [os.environ/SEARCH_KEY]
    models: [chat]
{search}
  - name: batch
    keys: ["sha256:{batch_digest}"]
{batch}
"#,
        batch_digest = sha256_hex(BATCH_KEY),
    )
}

async fn start(base: &str, auth: &str, search: &str, batch: &str) -> TestRouter {
    TestRouter::start_with_env(
        &config(base, auth, search, batch),
        &[("SEARCH_KEY", SEARCH_KEY)],
    )
    .await
}

fn with_key<T>(msg: T, key: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

fn retry_delay(status: &Status) -> Duration {
    status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("status carries RetryInfo")
}

fn metadata(status: &Status, key: &str) -> Option<String> {
    status.get_details_error_info()?.metadata.get(key).cloned()
}

#[tokio::test]
async fn keys_tell_callers_apart_and_a_wrong_or_missing_key_is_unauthenticated() {
    let up = Upstream::start().await;
    up.set("chat", Behaviour::ok("hello"));
    up.set("secret", Behaviour::ok("hello"));
    let r = start(&up.base(), "auth: { required: true }", "", "").await;
    let mut c = r.client();

    let ok = c
        .complete(with_key(complete("chat"), SEARCH_KEY))
        .await
        .unwrap();
    assert_eq!(ok.get_ref().model, "chat");
    let ok = c
        .complete(with_key(complete("secret"), BATCH_KEY))
        .await
        .unwrap();
    assert!(!ok.get_ref().deployment.is_empty());

    let wrong = format!("{}x", &SEARCH_KEY[..SEARCH_KEY.len() - 1]);
    for (request, what) in [
        (with_key(complete("chat"), &wrong), "a wrong key"),
        (Request::new(complete("chat")), "no key"),
        (
            {
                let mut r = Request::new(complete("chat"));
                r.metadata_mut().insert(
                    "authorization",
                    format!("Basic {SEARCH_KEY}").parse().unwrap(),
                );
                r
            },
            "another scheme",
        ),
    ] {
        let e = c.complete(request).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
        assert_eq!(reason(&e), "UNAUTHENTICATED", "{what}");
        // Nothing of any key comes back.
        assert!(!e.message().contains("sk-"), "{what}: {}", e.message());
    }
    // Only the two good calls reached the upstream.
    assert_eq!(up.counts("chat").requests, 1);
    assert_eq!(up.counts("secret").requests, 1);

    let (_, metrics) = r.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"llmrouter_calls_total{rpc="Complete",model_group="chat",caller="search",code="OK"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"caller="unauthenticated",code="UNAUTHENTICATED"} 3"#),
        "{metrics}"
    );
    // Spend by caller, from the config's prices: 5 prompt tokens, 1 completion token.
    assert!(
        metrics.contains(r#"llmrouter_cost_usd_total{model_group="chat",deployment="chat/0",caller="search"} 0.007"#),
        "{metrics}"
    );
    assert!(!metrics.contains("sk-"));
}

#[tokio::test]
async fn without_auth_required_a_call_without_a_key_is_served_and_a_wrong_key_still_refused() {
    let up = Upstream::start().await;
    up.set("chat", Behaviour::ok("hello"));
    let r = start(&up.base(), "", "", "").await;
    let mut c = r.client();
    c.complete(complete("chat")).await.unwrap();
    let e = c
        .complete(with_key(complete("chat"), "sk-not-a-key-0123456789"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // ListModels is the caller's: anonymous sees every group, `search` only its own.
    let all = c
        .list_models(llm_router::proto::ListModelsRequest {})
        .await
        .unwrap();
    assert_eq!(all.get_ref().groups.len(), 2);
    let mine = c
        .list_models(with_key(
            llm_router::proto::ListModelsRequest {},
            SEARCH_KEY,
        ))
        .await
        .unwrap();
    let names: Vec<_> = mine
        .get_ref()
        .groups
        .iter()
        .map(|g| g.name.clone())
        .collect();
    assert_eq!(names, ["chat"]);
    // Aliases go with their groups: `vault` names a group `search` may not use.
    let alias = |r: &llm_router::proto::ListModelsResponse| {
        r.aliases
            .iter()
            .map(|a| (a.name.clone(), a.group.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        alias(all.get_ref()),
        [
            ("talk".into(), "chat".into()),
            ("vault".into(), "secret".into())
        ]
    );
    assert_eq!(alias(mine.get_ref()), [("talk".into(), "chat".into())]);
}

#[tokio::test]
async fn a_group_outside_the_callers_models_is_denied_and_a_fallback_into_one_is_skipped() {
    let up = Upstream::start().await;
    up.set("chat", Behaviour::status(503, "overloaded"));
    up.set("secret", Behaviour::ok("should never be asked"));
    let r = start(&up.base(), "auth: { required: true }", "", "").await;
    let mut c = r.client();

    let e = c
        .complete(with_key(complete("secret"), SEARCH_KEY))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(reason(&e), "PERMISSION_DENIED");
    assert!(e.message().contains("`secret`"), "{}", e.message());
    assert_eq!(metadata(&e, "model").as_deref(), Some("secret"));
    assert_eq!(metadata(&e, "caller").as_deref(), Some("search"));

    let mut req = complete("chat");
    req.fallbacks = vec!["secret".into()];
    let e = c.complete(with_key(req, SEARCH_KEY)).await.unwrap_err();
    // The chain ended with `chat`'s failure: `secret` was never tried.
    assert_eq!(reason(&e), "FALLBACKS_EXHAUSTED", "{e:?}");
    let log = crate::common::attempt_log(&e);
    assert!(log.attempts.iter().all(|a| a.model == "chat"), "{log:?}");
    assert_eq!(up.counts("secret").requests, 0);
    assert_eq!(up.counts("chat").requests, 1);
}

#[tokio::test]
async fn request_switches_are_granted_per_caller() {
    let up = Upstream::start().await;
    up.set("chat", Behaviour::ok("hello"));
    let r = start(
        &up.base(),
        "auth: { required: true }",
        "    allow: { max_num_retries: 1, fallbacks: false }",
        "    allow: { mock: true }",
    )
    .await;
    let mut c = r.client();
    let cases: Vec<(CompleteEdit, &str)> = vec![
        (|r| r.mock_response = "canned".into(), "mock_response"),
        (|r| r.mock_timeout = true, "mock_timeout"),
        (|r| r.num_retries = Some(2), "num_retries"),
        (|r| r.fallbacks = vec!["chat".into()], "fallbacks"),
    ];
    for (edit, field) in cases {
        let mut req = complete("chat");
        edit(&mut req);
        let e = c.complete(with_key(req, SEARCH_KEY)).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{field}: {e:?}");
        assert_eq!(metadata(&e, "field").as_deref(), Some(field));
        assert!(e.message().contains(field), "{}", e.message());
    }
    let mut req = complete("chat");
    req.num_retries = Some(1);
    c.complete(with_key(req, SEARCH_KEY)).await.unwrap();
    // `batch` may mock.
    let mut req = complete("chat");
    req.mock_response = "canned".into();
    let ok = c.complete(with_key(req, BATCH_KEY)).await.unwrap();
    assert_eq!(ok.get_ref().message.as_ref().unwrap().content, "canned");
    assert_eq!(up.counts("chat").requests, 1);
}

type CompleteEdit = fn(&mut llm_router::proto::CompleteRequest);

#[tokio::test]
async fn a_stricter_slow_stream_guard_needs_the_stream_recovery_grant_and_off_does_not() {
    let up = Upstream::start().await;
    up.set("chat", Behaviour::ok("hello"));
    let r = start(
        &up.base(),
        "auth: { required: true }",
        "    allow: { stream_recovery: false }",
        "",
    )
    .await;
    let mut c = r.client();
    let cases: Vec<(StreamCompleteRequest, &str)> = vec![
        (
            StreamCompleteRequest {
                stream_min_tokens_per_s: Some(5.0),
                ..crate::common::stream_req("chat")
            },
            "stream_min_tokens_per_s",
        ),
        (
            StreamCompleteRequest {
                stream_min_tokens_window: Some(crate::common::dur(Duration::from_secs(5))),
                ..crate::common::stream_req("chat")
            },
            "stream_min_tokens_window",
        ),
    ];
    for (req, field) in cases {
        let e = c
            .stream_complete(with_key(req, SEARCH_KEY))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{field}: {e:?}");
        assert_eq!(metadata(&e, "field").as_deref(), Some(field));
    }
    assert_eq!(up.counts("chat").requests, 0);
    // Turning the guard off is anyone's to ask; `batch` has every grant.
    for (req, key) in [
        (
            StreamCompleteRequest {
                stream_min_tokens_per_s: Some(0.0),
                ..crate::common::stream_req("chat")
            },
            SEARCH_KEY,
        ),
        (
            StreamCompleteRequest {
                stream_min_tokens_per_s: Some(5.0),
                ..crate::common::stream_req("chat")
            },
            BATCH_KEY,
        ),
    ] {
        let mut s = c
            .stream_complete(with_key(req, key))
            .await
            .unwrap()
            .into_inner();
        while s.message().await.unwrap().is_some() {}
    }
    assert_eq!(up.counts("chat").requests, 2);
}

#[tokio::test]
async fn a_caller_over_its_rpm_is_refused_with_the_wait_until_its_minute_ends() {
    let up = Upstream::start().await;
    up.set("chat", Behaviour::ok("hello"));
    let r = start(&up.base(), "", "    rpm_limit: 3", "").await;
    let mut c = r.client();
    for _ in 0..3 {
        c.complete(with_key(complete("chat"), SEARCH_KEY))
            .await
            .unwrap();
    }
    let e = c
        .complete(with_key(complete("chat"), SEARCH_KEY))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(reason(&e), "CALLER_RATE_LIMITED");
    assert_eq!(metadata(&e, "limit").as_deref(), Some("rpm_limit"));
    let wait = retry_delay(&e);
    assert!(
        wait <= Duration::from_secs(61) && wait > Duration::ZERO,
        "{wait:?}"
    );
    assert_eq!(up.counts("chat").requests, 3);
    // The other caller is not held to it.
    c.complete(with_key(complete("chat"), BATCH_KEY))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_caller_over_its_tpm_is_refused_after_its_usage_settles() {
    let up = Upstream::start().await;
    // Ten completion tokens per answer, five prompt tokens.
    up.set("chat", Behaviour::ok("a b c d e f g h i j"));
    let r = start(&up.base(), "", "    tpm_limit: 20", "").await;
    let mut c = r.client();
    // Estimated at a few tokens, settled at 5 + 10.
    c.complete(with_key(complete("chat"), SEARCH_KEY))
        .await
        .unwrap();
    c.complete(with_key(complete("chat"), SEARCH_KEY))
        .await
        .unwrap();
    let e = c
        .complete(with_key(complete("chat"), SEARCH_KEY))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "CALLER_RATE_LIMITED", "{e:?}");
    assert_eq!(metadata(&e, "limit").as_deref(), Some("tpm_limit"));
    assert!(
        e.message().contains("tpm_limit (20 tokens a minute)"),
        "{}",
        e.message()
    );
    assert_eq!(up.counts("chat").requests, 2);
}

#[tokio::test]
async fn a_caller_at_its_concurrency_is_refused_at_once_until_a_call_ends() {
    let up = Upstream::start().await;
    up.set(
        "chat",
        Behaviour::slow_first_chunk("slow answer", Duration::from_millis(600)),
    );
    let r = start(&up.base(), "", "    max_parallel_requests: 1", "").await;
    let mut c = r.client();
    let held = {
        let mut c = c.clone();
        tokio::spawn(async move { c.complete(with_key(complete("chat"), SEARCH_KEY)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let e = c
        .complete(with_key(complete("chat"), SEARCH_KEY))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "refused at once"
    );
    assert_eq!(reason(&e), "CALLER_CONCURRENCY_LIMITED", "{e:?}");
    assert!(held.await.unwrap().is_ok());
    c.complete(with_key(complete("chat"), SEARCH_KEY))
        .await
        .unwrap();
    assert_eq!(up.counts("chat").requests, 2);
}

#[tokio::test]
async fn a_committed_stream_holds_its_callers_concurrency_until_it_ends() {
    let up = Upstream::start().await;
    up.set(
        "chat",
        Behaviour::Answer {
            headers_after: Duration::ZERO,
            first_chunk_after: Duration::ZERO,
            chunks: (0..6).map(|i| format!("w{i} ")).collect(),
            chunk_interval: Duration::from_millis(100),
        },
    );
    let r = start(&up.base(), "", "    max_parallel_requests: 1", "").await;
    let mut c = r.client();
    let mut stream = c
        .stream_complete(with_key(
            StreamCompleteRequest {
                model: "chat".into(),
                messages: user("hi"),
                ..Default::default()
            },
            SEARCH_KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap();
    let e = c
        .complete(with_key(complete("chat"), SEARCH_KEY))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "CALLER_CONCURRENCY_LIMITED");
    while stream.message().await.unwrap().is_some() {}
    drop(stream);
    // Let go once the stream's end reached the server.
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        match c.complete(with_key(complete("chat"), SEARCH_KEY)).await {
            Ok(_) => break,
            Err(e) if Instant::now() < until && reason(&e) == "CALLER_CONCURRENCY_LIMITED" => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

#[tokio::test]
async fn a_caller_over_its_budget_is_refused_until_the_period_ends() {
    let up = Upstream::start().await;
    up.set("chat", Behaviour::ok("hello"));
    // One answer costs 0.007 USD.
    let r = start(
        &up.base(),
        "",
        "    max_budget: 0.01\n    budget_duration: 30d",
        "",
    )
    .await;
    let mut c = r.client();
    c.complete(with_key(complete("chat"), SEARCH_KEY))
        .await
        .unwrap();
    // Under the budget when admitted: this one takes it over.
    c.complete(with_key(complete("chat"), SEARCH_KEY))
        .await
        .unwrap();
    let e = c
        .complete(with_key(complete("chat"), SEARCH_KEY))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(reason(&e), "CALLER_BUDGET_EXCEEDED", "{e:?}");
    assert!(
        e.message().contains("max_budget (0.01 USD per 30d)"),
        "{}",
        e.message()
    );
    // The period ends within 30 days, but no client is told to wait longer than the router's
    // longest wait hint (max_cooldown_from_hint, 5m).
    let wait = retry_delay(&e);
    assert!(wait <= Duration::from_secs(300), "{wait:?}");
    assert_eq!(up.counts("chat").requests, 2);
}

#[tokio::test]
async fn a_caller_at_its_limit_leaves_another_callers_calls_unchanged() {
    let up = Upstream::start().await;
    up.set("chat", Behaviour::ok("hello"));
    let r = start(&up.base(), "", "    rpm_limit: 5", "").await;
    let c = r.client();
    let flood = {
        let c = c.clone();
        tokio::spawn(async move {
            let calls = (0..200).map(|_| {
                let mut c = c.clone();
                async move { c.complete(with_key(complete("chat"), SEARCH_KEY)).await }
            });
            futures_util::future::join_all(calls).await
        })
    };
    let mut slowest = Duration::ZERO;
    let others = (0..40).map(|_| {
        let mut c = c.clone();
        async move {
            let t = Instant::now();
            let r = c.complete(with_key(complete("chat"), BATCH_KEY)).await;
            (r, t.elapsed())
        }
    });
    for (result, took) in futures_util::future::join_all(others).await {
        result.unwrap();
        slowest = slowest.max(took);
    }
    let flood = flood.await.unwrap();
    let served = flood.iter().filter(|r| r.is_ok()).count();
    assert_eq!(served, 5);
    for e in flood.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(reason(e), "CALLER_RATE_LIMITED");
    }
    // Every one of the other caller's calls answered, none held up behind the refusals.
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    assert_eq!(up.counts("chat").requests, 45);
}

fn mesh_config(base: &str, peers: &str) -> String {
    format!(
        r#"
model_list:
  - model_name: chat
    litellm_params: {{ model: openai/chat, api_base: "{base}", api_key: sk-upstream, max_retries: 0 }}
  - model_name: secret
    litellm_params: {{ model: openai/secret, api_base: "{base}", api_key: sk-upstream, max_retries: 0 }}
auth:
  required: true
  trusted_header: {{ name: x-forwarded-client-cert, trusted_peers: [{peers}] }}
callers:
  - name: ranker
    identities: ["spiffe://cluster.local/ns/search/sa/ranker"]
    models: [chat]
"#
    )
}

fn xfcc<T>(msg: T, spiffe: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "x-forwarded-client-cert",
        format!(r#"By=spiffe://cluster.local/ns/llm/sa/router;Hash=ab;Subject="";URI={spiffe}"#)
            .parse()
            .unwrap(),
    );
    r
}

#[tokio::test]
async fn a_mesh_header_names_the_caller_only_from_a_trusted_peer() {
    let up = Upstream::start().await;
    up.set("chat", Behaviour::ok("hello"));
    let ranker = "spiffe://cluster.local/ns/search/sa/ranker";

    let trusted = TestRouter::start(&mesh_config(&up.base(), "127.0.0.1/32")).await;
    let mut c = trusted.client();
    c.complete(xfcc(complete("chat"), ranker)).await.unwrap();
    let e = c
        .complete(xfcc(complete("secret"), ranker))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // A proven identity no caller lists, with no auth.default: refused.
    let e = c
        .complete(xfcc(complete("chat"), "spiffe://cluster.local/ns/x/sa/y"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // The same header from a peer outside trusted_peers is no identity.
    let untrusted = TestRouter::start(&mesh_config(&up.base(), "10.0.0.0/8")).await;
    let e = untrusted
        .client()
        .complete(xfcc(complete("chat"), ranker))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert_eq!(up.counts("chat").requests, 1);
}

#[tokio::test]
async fn a_reload_applies_new_callers_and_keeps_what_was_counted() {
    let up = Upstream::start().await;
    up.set("chat", Behaviour::ok("hello"));
    let dir = certs::dir("callers-reload");
    let path = dir.join("config.yaml");
    let text = |limit: u32, batch: &str| {
        format!(
            r#"
model_list:
  - model_name: chat
    litellm_params: {{ model: openai/chat, api_base: "{base}", api_key: sk-upstream, max_retries: 0 }}
server: {{ config_watch_interval: 50ms }}
auth: {{ required: true }}
callers:
  - name: search
    keys: ["sha256:{search}"]
    rpm_limit: {limit}
{batch}
"#,
            base = up.base(),
            search = sha256_hex(SEARCH_KEY),
        )
    };
    std::fs::write(&path, text(2, "")).unwrap();
    let r = TestRouter::start_reloading(&path).await;
    let mut c = r.client();
    c.complete(with_key(complete("chat"), SEARCH_KEY))
        .await
        .unwrap();
    let e = c
        .complete(with_key(complete("chat"), BATCH_KEY))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // A new caller and a higher limit, without a restart; the call already counted stays.
    let batch = format!(
        "  - name: batch\n    keys: [\"sha256:{}\"]",
        sha256_hex(BATCH_KEY)
    );
    certs::write(&dir, "config.yaml", &text(3, &batch));
    let until = Instant::now() + Duration::from_secs(5);
    while c
        .complete(with_key(complete("chat"), BATCH_KEY))
        .await
        .is_err()
    {
        assert!(Instant::now() < until, "the reload did not apply");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.complete(with_key(complete("chat"), SEARCH_KEY))
        .await
        .unwrap();
    c.complete(with_key(complete("chat"), SEARCH_KEY))
        .await
        .unwrap();
    // 1 before the reload + 2 after = the new limit of 3 (unless the wall-clock minute
    // turned in between, which lets one more in).
    let fourth = c.complete(with_key(complete("chat"), SEARCH_KEY)).await;
    if let Err(e) = &fourth {
        assert_eq!(reason(e), "CALLER_RATE_LIMITED");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn caller_config_errors_name_their_key_and_never_a_key() {
    let base = "http://127.0.0.1:9/v1";
    let check = |callers: &str, env: &[(&str, &str)], expect: &str| {
        let yaml = format!(
            "model_list:\n  - model_name: chat\n    litellm_params: {{ model: openai/chat, api_base: \"{base}\", api_key: k }}\n{callers}"
        );
        let env: std::collections::HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let err = Config::load_with_env(Source::Yaml(&yaml), Vec::new(), |k| env.get(k).cloned())
            .expect_err(callers)
            .to_string();
        assert!(
            err.contains(expect),
            "{callers}\n→ {err}\n(expected {expect})"
        );
        assert!(!err.contains("sk-live"), "{err}");
    };
    check(
        "callers: [{ name: a, keys: [sk-live-0123456789abcdef] }]",
        &[],
        "callers[0].keys[0]",
    );
    check(
        "callers: [{ name: a, keys: [os.environ/A_KEY] }]",
        &[],
        "environment variable A_KEY is not set",
    );
    check(
        "callers: [{ name: a, keys: [os.environ/A_KEY] }]",
        &[("A_KEY", "sk-live")],
        "shorter than 16 bytes",
    );
    check(
        "callers: [{ name: a, keys: [os.environ/A_KEY] }, { name: b, keys: [os.environ/B_KEY] }]",
        &[
            ("A_KEY", "sk-live-0123456789abcdef"),
            ("B_KEY", "sk-live-0123456789abcdef"),
        ],
        "callers[1].keys[0]",
    );
    check(
        "callers: [{ name: a, identities: [x], models: [nope] }]",
        &[],
        "callers[0].models[0]",
    );
    check(
        "callers: [{ name: unknown, identities: [x] }]",
        &[],
        "callers[0].name",
    );
    check(
        "callers: [{ name: a }]",
        &[],
        "has neither identities nor keys",
    );
    check(
        "callers: [{ name: a, identities: [x], max_budget: 5 }]",
        &[],
        "callers[0].budget_duration",
    );
    check(
        "callers: [{ name: a, identities: [x], max_budget: 5, budget_duration: 2w }]",
        &[],
        "unknown unit `w`",
    );
    check(
        "auth: { trusted_header: { name: l5d-client-id } }",
        &[],
        "auth.trusted_header.trusted_peers",
    );
    check("auth: { required: true }", &[], "auth.required");
    check(
        "callers: [{ name: a, identities: [x], allow: { max_num_retries: 11 } }]",
        &[],
        "callers[0].allow.max_num_retries",
    );
}

fn tls_config(base: &str, dir: &std::path::Path, client_auth: &str) -> String {
    tls_config_with(base, dir, client_auth, false)
}

fn tls_config_with(base: &str, dir: &std::path::Path, client_auth: &str, admin: bool) -> String {
    format!(
        r#"
model_list:
  - model_name: chat
    litellm_params: {{ model: openai/chat, api_base: "{base}", api_key: sk-upstream, max_retries: 0 }}
server:
  config_watch_interval: 100ms
  tls:
    cert_file: {d}/server.pem
    key_file: {d}/server.key
    client_ca_file: {d}/ca.pem
    client_auth: {client_auth}
    admin: {admin}
auth: {{ required: true }}
callers:
  - name: ranker
    identities: ["spiffe://cluster.local/ns/search/sa/ranker"]
  - name: keyed
    keys: ["sha256:{key}"]
"#,
        d = dir.display(),
        key = sha256_hex(SEARCH_KEY),
    )
}

async fn call_ok(
    mut c: RouterServiceClient<Channel>,
    req: Request<llm_router::proto::CompleteRequest>,
) -> Result<(), Status> {
    c.complete(req).await.map(|_| ())
}

#[tokio::test]
async fn mtls_proves_the_caller_and_refuses_clients_without_a_certificate_of_its_ca() {
    let up = Upstream::start().await;
    up.set("chat", Behaviour::ok("hello"));
    let dir = certs::dir("mtls");
    let ca = certs::Ca::new("llm-router test CA");
    let server = ca.server();
    certs::write(&dir, "ca.pem", &ca.pem());
    certs::write(&dir, "server.pem", &server.cert_pem);
    certs::write(&dir, "server.key", &server.key_pem);
    let r = TestRouter::start(&tls_config(&up.base(), &dir, "required")).await;

    let ranker = ca.client("spiffe://cluster.local/ns/search/sa/ranker");
    let c = r
        .tls_client(&ca.pem(), Some((&ranker.cert_pem, &ranker.key_pem)))
        .await
        .unwrap();
    call_ok(c.clone(), Request::new(complete("chat")))
        .await
        .unwrap();

    // No certificate, or one from another CA: the connection is refused.
    let other = certs::Ca::new("another CA").client("spiffe://cluster.local/ns/search/sa/ranker");
    for (identity, what) in [
        (None, "no certificate"),
        (Some((&other.cert_pem, &other.key_pem)), "another CA's"),
    ] {
        let refused = match r
            .tls_client(
                &ca.pem(),
                identity.map(|(c, k): (&String, &String)| (c.as_str(), k.as_str())),
            )
            .await
        {
            Err(_) => true,
            Ok(c) => call_ok(c, Request::new(complete("chat"))).await.is_err(),
        };
        assert!(refused, "{what} was let in");
    }
    // A plaintext client gets nowhere either.
    let plain = RouterServiceClient::connect(format!("http://{}", r.addr)).await;
    if let Ok(mut p) = plain {
        assert!(p.complete(complete("chat")).await.is_err());
    }
    assert_eq!(up.counts("chat").requests, 1);

    let (_, metrics) = r.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"model_group="chat",caller="ranker",code="OK"} 1"#),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn with_optional_client_auth_a_client_without_a_certificate_uses_a_key() {
    let up = Upstream::start().await;
    up.set("chat", Behaviour::ok("hello"));
    let dir = certs::dir("tls-optional");
    let ca = certs::Ca::new("llm-router test CA");
    let server = ca.server();
    certs::write(&dir, "ca.pem", &ca.pem());
    certs::write(&dir, "server.pem", &server.cert_pem);
    certs::write(&dir, "server.key", &server.key_pem);
    let r = TestRouter::start(&tls_config_with(&up.base(), &dir, "optional", true)).await;
    // `admin: true`: the admin port is HTTPS with the same certificate, and asks for none.
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let ready = https
        .get(format!("https://localhost:{}/readyz", r.admin_addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert!(
        reqwest::get(format!("http://{}/readyz", r.admin_addr))
            .await
            .is_err(),
        "plaintext on the HTTPS admin port"
    );
    let c = r.tls_client(&ca.pem(), None).await.unwrap();
    let e = call_ok(c.clone(), Request::new(complete("chat")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    call_ok(c, with_key(complete("chat"), SEARCH_KEY))
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_server_certificate_rotates_on_disk_under_load_without_losing_a_call() {
    let up = Upstream::start().await;
    up.set(
        "chat",
        Behaviour::slow_first_chunk("hello", Duration::from_millis(20)),
    );
    let dir = certs::dir("tls-rotate");
    let ca = certs::Ca::new("llm-router test CA");
    let first = ca.server();
    certs::write(&dir, "ca.pem", &ca.pem());
    certs::write(&dir, "server.pem", &first.cert_pem);
    certs::write(&dir, "server.key", &first.key_pem);
    let r = TestRouter::start(&tls_config(&up.base(), &dir, "required")).await;
    let ranker = ca.client("spiffe://cluster.local/ns/search/sa/ranker");
    let identity = (ranker.cert_pem.as_str(), ranker.key_pem.as_str());

    // Load on one connection made before the rotation and on new ones during it.
    let held = r.tls_client(&ca.pem(), Some(identity)).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let c = held.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                call_ok(c.clone(), Request::new(complete("chat"))).await?;
                n += 1;
            }
            Ok::<u32, Status>(n)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A broken file first (a rotation caught half-way): logged, the old certificate stays.
    certs::write(&dir, "server.key", "-----BEGIN PRIVATE KEY-----\nbroken\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = r.tls_client(&ca.pem(), Some(identity)).await.unwrap();
    call_ok(c, Request::new(complete("chat"))).await.unwrap();
    // Then the new pair.
    let second = ca.server();
    certs::write(&dir, "server.pem", &second.cert_pem);
    certs::write(&dir, "server.key", &second.key_pem);
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let served = served_certificate(r.addr, &ca.pem(), identity).await;
        if served == second.der {
            break;
        }
        assert_eq!(served, first.der);
        assert!(
            Instant::now() < until,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let c = r.tls_client(&ca.pem(), Some(identity)).await.unwrap();
        call_ok(c, Request::new(complete("chat"))).await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        total += w
            .await
            .unwrap()
            .expect("a call on the old connection failed");
    }
    assert!(total > 10, "{total}");
    // The connection opened before the rotation still serves.
    call_ok(held, Request::new(complete("chat"))).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The certificate the server presents to a new connection.
async fn served_certificate(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: (&str, &str),
) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(identity.0.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(identity.1.as_bytes()).unwrap(),
        )
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_key_file_rotated_on_disk_applies_without_a_restart() {
    let up = Upstream::start().await;
    up.set("chat", Behaviour::ok("hello"));
    let dir = certs::dir("callers-key-file");
    certs::write(&dir, "search.key", &format!("{SEARCH_KEY}\n"));
    let path = certs::write(
        &dir,
        "config.yaml",
        &format!(
            r#"
model_list:
  - model_name: chat
    litellm_params: {{ model: openai/chat, api_base: "{base}", api_key: sk-upstream, max_retries: 0 }}
server: {{ config_watch_interval: 50ms }}
auth: {{ required: true }}
callers:
  - name: search
    keys: ["file:{key}"]
"#,
            base = up.base(),
            key = dir.join("search.key").display(),
        ),
    );
    let r = TestRouter::start_reloading(&path).await;
    let mut c = r.client();
    c.complete(with_key(complete("chat"), SEARCH_KEY))
        .await
        .unwrap();
    // The Secret is updated: the new key works and the old one stops, with no config change.
    certs::write(&dir, "search.key", BATCH_KEY);
    let until = Instant::now() + Duration::from_secs(5);
    while c
        .complete(with_key(complete("chat"), BATCH_KEY))
        .await
        .is_err()
    {
        assert!(Instant::now() < until, "the rotated key was not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = c
        .complete(with_key(complete("chat"), SEARCH_KEY))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_prints_each_callers_policy_and_never_a_key() {
    let yaml = config(
        "http://127.0.0.1:9/v1",
        "auth:\n  required: true\n  trusted_header: { name: l5d-client-id, trusted_peers: [127.0.0.1/32] }\n  default: { models: [chat], rpm_limit: 5 }",
        "    rpm_limit: 3\n    identities: [spiffe://t/search]\n    max_budget: 2.5\n    budget_duration: 1mo\n    allow: { hedging: false }",
        "",
    );
    let cfg = Config::load_with_env(Source::Yaml(&yaml), Vec::new(), |k| {
        (k == "SEARCH_KEY").then(|| SEARCH_KEY.to_string())
    })
    .unwrap();
    let table = cfg.routing_table();
    assert!(
        table.contains(
            "auth: required true, reflection open, trusted_header l5d-client-id from 127.0.0.1/32"
        ),
        "{table}"
    );
    assert!(
        table.contains("caller search: identities [spiffe://t/search], 1 key(s); models chat, rpm_limit 3, max_budget 2.5 USD per 1mo; allow mock false, fallbacks true, max_num_retries 10, stream_recovery true, hedging false"),
        "{table}"
    );
    assert!(
        table.contains("caller batch: identities [], 1 key(s); models all"),
        "{table}"
    );
    assert!(
        table.contains("default (proven identities no caller lists): models chat, rpm_limit 5"),
        "{table}"
    );
    assert!(
        !table.contains(SEARCH_KEY) && !table.contains(&sha256_hex(BATCH_KEY)),
        "{table}"
    );
}
