//! The gRPC surface: `llmrouter.v1.RouterService`. Validates requests, hands them to the
//! router, and turns answers and failures into messages and statuses.

pub mod request;
pub mod status;

use std::{sync::Arc, time::Duration};

use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::proto::{
    self, ChatMessage, CompleteRequest, CompleteResponse, ListModelsRequest, ListModelsResponse,
    Role, StreamCompleteRequest, StreamCompleteResponse, router_service_server::RouterService,
};
use crate::routing::{self, CallFailure, Router, deadline::parse_grpc_timeout, stream::StreamEnd};
use status::call_status;

/// Messages buffered between a committed provider stream and the client.
const STREAM_BUFFER: usize = 16;

pub struct RouterApi {
    router: Arc<Router>,
}

impl RouterApi {
    pub fn new(router: Arc<Router>) -> Self {
        RouterApi { router }
    }
}

fn client_timeout<T>(req: &Request<T>) -> Option<Duration> {
    req.metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

fn new_id() -> String {
    format!("chatcmpl-{:032x}", fastrand::u128(..))
}

/// One log line per finished call.
fn log_call(
    rpc: &str,
    id: &str,
    model: &str,
    deployment: &str,
    attempts: usize,
    code: tonic::Code,
    started: Instant,
) {
    tracing::info!(
        rpc,
        id,
        model,
        deployment,
        attempts,
        code = ?code,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "call finished"
    );
}

fn failed(rpc: &str, id: &str, model: &str, f: CallFailure, started: Instant) -> Status {
    let status = call_status(&f.error, &f.attempts);
    let deployment = f
        .attempts
        .last()
        .map(|a| a.deployment.as_str())
        .unwrap_or("");
    log_call(
        rpc,
        id,
        model,
        deployment,
        f.attempts.len(),
        status.code(),
        started,
    );
    status
}

#[tonic::async_trait]
impl RouterService for RouterApi {
    async fn complete(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<Response<CompleteResponse>, Status> {
        let started = Instant::now();
        let id = new_id();
        let client_timeout = client_timeout(&request);
        let model = request.get_ref().model.clone();
        let call =
            request::call_from_complete(request.into_inner(), client_timeout).map_err(|error| {
                let failure = CallFailure {
                    error,
                    attempts: Vec::new(),
                };
                failed("Complete", &id, &model, failure, started)
            })?;
        let answered = self
            .router
            .complete(&call)
            .await
            .map_err(|f| failed("Complete", &id, &call.model, f, started))?;
        log_call(
            "Complete",
            &id,
            &answered.group,
            &answered.deployment,
            answered.attempts.len(),
            tonic::Code::Ok,
            started,
        );
        let completion = answered.value;
        Ok(Response::new(CompleteResponse {
            id,
            model: answered.group,
            deployment: answered.deployment,
            message: Some(ChatMessage {
                role: Role::Assistant as i32,
                content: completion.text,
                name: None,
            }),
            finish_reason: completion.finish_reason as i32,
            usage: completion.usage,
            attempts: answered.attempts,
        }))
    }

    type StreamCompleteStream = ReceiverStream<Result<StreamCompleteResponse, Status>>;

    async fn stream_complete(
        &self,
        request: Request<StreamCompleteRequest>,
    ) -> Result<Response<Self::StreamCompleteStream>, Status> {
        let started = Instant::now();
        let id = new_id();
        let client_timeout = client_timeout(&request);
        let model = request.get_ref().model.clone();
        let call =
            request::call_from_stream(request.into_inner(), client_timeout).map_err(|error| {
                let failure = CallFailure {
                    error,
                    attempts: Vec::new(),
                };
                failed("StreamComplete", &id, &model, failure, started)
            })?;
        // Everything before the first chunk, retries and fallbacks included, is answered as a
        // status: the response stream is only returned once the call has committed.
        let answered = self
            .router
            .stream(&call)
            .await
            .map_err(|f| failed("StreamComplete", &id, &call.model, f, started))?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let idle = self.router.config().router.stream_idle_timeout;
        tokio::spawn(async move {
            let (group, deployment, attempts) = (
                answered.group.clone(),
                answered.deployment.clone(),
                answered.attempts.len(),
            );
            let end = routing::stream::pump(answered, id.clone(), idle, tx).await;
            let code = match end {
                StreamEnd::Finished => tonic::Code::Ok,
                StreamEnd::ClientGone => tonic::Code::Cancelled,
                StreamEnd::Failed(code) => code,
            };
            log_call(
                "StreamComplete",
                &id,
                &group,
                &deployment,
                attempts,
                code,
                started,
            );
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let config = self.router.config();
        let groups = config
            .groups
            .values()
            .map(|g| proto::ModelGroup {
                name: g.name.clone(),
                deployments: g
                    .deployments
                    .iter()
                    .map(|d| proto::Deployment {
                        id: d.id.clone(),
                        provider: d.provider.name().to_string(),
                        upstream_model: d.upstream_model.clone(),
                        api_base: d.provider.api_base().to_string(),
                        timeout: Some(routing::to_proto_duration(d.timeout)),
                        stream_timeout: d.stream_timeout.map(routing::to_proto_duration),
                        max_retries: d.max_retries,
                        weight: d.weight,
                    })
                    .collect(),
                fallbacks: g.fallbacks.clone(),
                context_window_fallbacks: g.context_window_fallbacks.clone(),
                content_policy_fallbacks: g.content_policy_fallbacks.clone(),
            })
            .collect();
        Ok(Response::new(ListModelsResponse { groups }))
    }
}
