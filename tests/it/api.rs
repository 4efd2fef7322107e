//! The gRPC surface: request validation over the wire, ListModels, health, reflection and
//! graceful shutdown.

use std::time::Duration;

use crate::common::*;
use llm_router::proto::{ChatMessage, CompleteRequest, ListModelsRequest, Role};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

const YAML: &str = r#"
model_list:
  - model_name: fast
    litellm_params: { model: mock/fast, timeout: 2s, mock: { time_to_first_chunk: 5ms, text: "quick answer" } }
    model_info: { id: fast-1 }
  - model_name: keyed
    litellm_params: { model: openai/gpt-4o-mini, api_base: "http://127.0.0.1:9/v1", api_key: sk-do-not-show-me }
  - model_name: slow
    litellm_params: { model: mock/slow, mock: { time_to_first_chunk: 10ms, tokens_per_second: 10, text: "a b c d e f" } }
router_settings:
  timeout: 30s
  allow_mock_response: true
  fallbacks:
    - keyed: [fast]
  model_group_alias:
    quick: fast
    backstage: { model: slow, hidden: true }
"#;

/// A request with one thing wrong, the code it must get, and the field its error must name.
fn bad_inputs() -> Vec<(&'static str, CompleteRequest, Code, &'static str)> {
    let ok = complete("fast");
    let d = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
    vec![
        (
            "empty model",
            CompleteRequest {
                model: String::new(),
                ..ok.clone()
            },
            Code::NotFound,
            "",
        ),
        (
            "unknown model",
            CompleteRequest {
                model: "gpt-5".into(),
                ..ok.clone()
            },
            Code::NotFound,
            "",
        ),
        (
            "no messages",
            CompleteRequest {
                messages: vec![],
                ..ok.clone()
            },
            Code::InvalidArgument,
            "messages",
        ),
        (
            "unspecified role",
            CompleteRequest {
                messages: vec![ChatMessage {
                    role: Role::Unspecified as i32,
                    content: "x".into(),
                    name: None,
                    ..Default::default()
                }],
                ..ok.clone()
            },
            Code::InvalidArgument,
            "messages[0].role",
        ),
        (
            "zero timeout",
            CompleteRequest {
                timeout: d(0, 0),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "timeout",
        ),
        (
            "negative timeout",
            CompleteRequest {
                timeout: d(-1, 0),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "timeout",
        ),
        (
            "negative stream_timeout",
            CompleteRequest {
                stream_timeout: d(0, -5),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "stream_timeout",
        ),
        (
            "unknown fallback",
            CompleteRequest {
                fallbacks: vec!["ghost".into()],
                ..ok.clone()
            },
            Code::InvalidArgument,
            "fallbacks[0]",
        ),
        (
            "temperature",
            CompleteRequest {
                temperature: Some(3.0),
                ..ok.clone()
            },
            Code::InvalidArgument,
            "temperature",
        ),
    ]
}

#[tokio::test]
async fn bad_input_gets_a_clear_status_naming_the_field() {
    let r = TestRouter::start(YAML).await;
    for (what, req, code, field) in bad_inputs() {
        let status = r.client().complete(req.clone()).await.unwrap_err();
        assert_eq!(status.code(), code, "{what}: {status:?}");
        if code == Code::NotFound {
            assert!(
                status.message().contains("fast, keyed, slow"),
                "{what}: names the known groups: {}",
                status.message()
            );
            assert_eq!(reason(&status), "MODEL_NOT_FOUND");
        } else {
            assert!(
                status.message().contains(&format!("`{field}`")),
                "{what}: {}",
                status.message()
            );
            let violation = &status
                .get_details_bad_request()
                .expect("BadRequest detail")
                .field_violations[0];
            assert_eq!(violation.field, field, "{what}");
        }
        assert!(
            attempt_log(&status).attempts.is_empty(),
            "{what}: nothing was attempted"
        );

        // The streaming RPC validates the same fields the same way.
        let s = stream_req_from(req);
        let status = r.client().stream_complete(s).await.unwrap_err();
        assert_eq!(status.code(), code, "stream {what}");
    }
}

fn stream_req_from(r: CompleteRequest) -> llm_router::proto::StreamCompleteRequest {
    llm_router::proto::StreamCompleteRequest {
        model: r.model,
        messages: r.messages,
        timeout: r.timeout,
        stream_timeout: r.stream_timeout,
        temperature: r.temperature,
        fallbacks: r.fallbacks,
        ..Default::default()
    }
}

#[tokio::test]
async fn list_models_shows_the_routing_table_and_never_a_key() {
    let r = TestRouter::start(YAML).await;
    let resp = r
        .client()
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = resp.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["fast", "keyed", "slow"]);
    let keyed = &resp.groups[1];
    assert_eq!(keyed.fallbacks, ["fast"]);
    let d = &keyed.deployments[0];
    assert_eq!(
        (d.provider.as_str(), d.upstream_model.as_str()),
        ("openai", "gpt-4o-mini")
    );
    assert_eq!(d.api_base, "", "upstream URLs are not shown to callers");
    assert_eq!(
        d.timeout.unwrap().seconds,
        30,
        "defaults to the router timeout"
    );
    assert_eq!(resp.groups[0].deployments[0].id, "fast-1");
    assert!(!format!("{resp:?}").contains("sk-do-not-show-me"));
    // Aliases with the group each resolves to; LiteLLM's `hidden` ones are usable, not listed.
    assert_eq!(
        resp.aliases,
        [llm_router::proto::ModelAlias {
            name: "quick".into(),
            group: "fast".into(),
        }]
    );
    let hidden = r.client().complete(complete("backstage")).await.unwrap();
    assert_eq!(hidden.into_inner().model, "slow");
}

#[tokio::test]
async fn mock_response_answers_both_rpcs_without_a_provider() {
    let r = TestRouter::start(YAML).await;
    let mut req = complete("keyed");
    req.mock_response = "canned words here".into();
    let resp = r.client().complete(req.clone()).await.unwrap().into_inner();
    assert_eq!(resp.message.unwrap().content, "canned words here");
    assert_eq!(resp.deployment, "mock_response");

    let mut s = r
        .client()
        .stream_complete(llm_router::proto::StreamCompleteRequest {
            mock_response: req.mock_response,
            ..stream_req("keyed")
        })
        .await
        .unwrap()
        .into_inner();
    let mut text = String::new();
    while let Some(m) = s.message().await.unwrap() {
        text.push_str(&m.delta);
    }
    assert_eq!(text, "canned words here");
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let r = TestRouter::start(YAML).await;
    let mut health = HealthClient::new(r.channel().await);
    for service in ["", "llmrouter.v1.RouterService"] {
        let resp = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            resp.status,
            ServingStatus::Serving as i32,
            "service `{service}`"
        );
    }

    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut refl = ServerReflectionClient::new(r.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = refl
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"llmrouter.v1.RouterService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

#[tokio::test]
async fn shutdown_flips_health_and_lets_in_flight_streams_finish() {
    let mut r = TestRouter::start(YAML).await;
    let mut health = HealthClient::new(r.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "llmrouter.v1.RouterService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    // "slow" takes about half a second to stream its six words.
    let mut s = r
        .client()
        .stream_complete(stream_req("slow"))
        .await
        .unwrap()
        .into_inner();
    s.message().await.unwrap().unwrap();
    r.shutdown();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    let mut text = String::from("a ");
    while let Some(m) = s.message().await.unwrap() {
        text.push_str(&m.delta);
    }
    assert_eq!(text, "a b c d e f", "the in-flight stream finished");
    drop(watch);
    drop(health);
    let client = r.client.clone();
    drop(client);
    tokio::time::timeout(Duration::from_secs(15), &mut r.task)
        .await
        .expect("server stops after draining")
        .unwrap();
}

#[tokio::test]
async fn huge_durations_in_a_request_are_capped_not_panicked_on() {
    let r = TestRouter::start(YAML).await;
    let huge = Some(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 999_999_999,
    });
    let mut req = complete("fast");
    req.timeout = huge;
    req.stream_timeout = huge;
    assert!(r.client().complete(req).await.is_ok());
    let s = llm_router::proto::StreamCompleteRequest {
        timeout: huge,
        stream_timeout: huge,
        ..stream_req("fast")
    };
    let mut stream = r.client().stream_complete(s).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
}

#[tokio::test]
async fn the_admin_port_cuts_off_a_client_that_never_finishes_its_headers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = TestRouter::start(YAML).await;
    let mut conn = tokio::net::TcpStream::connect(r.admin_addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The headers never end. The server closes the connection after its 10s header limit.
    let start = std::time::Instant::now();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf)).await;
    let closed = matches!(read, Ok(Ok(_)) | Ok(Err(_)));
    assert!(closed, "the connection was still open after 20s");
    assert!(
        start.elapsed() >= Duration::from_secs(9),
        "{:?}",
        start.elapsed()
    );
}
