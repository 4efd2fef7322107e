//! The gRPC surface: `llmrouter.v1.RouterService`. Validates requests, hands them to the
//! router, and turns answers and failures into messages and statuses.

pub mod auth;
mod content;
pub mod error;
mod models;
pub mod pending;
mod record;
pub mod request;
pub mod status;
pub mod stream;

use std::{sync::Arc, time::Duration};

use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::proto::{
    ChatMessage, CompleteRequest, CompleteResponse, ListModelsRequest, ListModelsResponse, Role,
    StreamCompleteRequest, router_service_server::RouterService,
};
use crate::routing::{CallRequest, SharedRouter, deadline::parse_grpc_timeout, recovery::Recovery};
use error::ApiError;
pub use record::{ActiveCalls, ActiveGuard};
use record::{CallRecord, rpc_span};
use stream::{Open, ResponseStream, StreamEnd};

pub struct RouterApi {
    routers: Arc<SharedRouter>,
    active: Arc<ActiveCalls>,
}

impl RouterApi {
    pub fn new(routers: Arc<SharedRouter>, active: Arc<ActiveCalls>) -> Self {
        RouterApi { routers, active }
    }
}

fn client_timeout<T>(req: &Request<T>) -> Option<Duration> {
    req.metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

impl RouterApi {
    /// The one admission point of a call: counted in flight, its caller worked out, refused
    /// at the server's cap, shape-validated, and held to its caller's policy.
    fn admit<T: request::Incoming>(
        &self,
        rpc: &'static str,
        request: Request<T>,
        span: tracing::Span,
        validate: fn(T, Option<Duration>) -> Result<CallRequest, ApiError>,
    ) -> Result<(CallRecord, CallRequest), Status> {
        let r = request.get_ref();
        let mut record = CallRecord::start(
            &self.routers,
            &self.active,
            rpc,
            r.model(),
            r.metadata(),
            span,
        );
        let context = auth::call_context(&record.router.config().auth, &request)
            .map_err(|e| record.answer_failure(e))?;
        record.identified(&context);
        record.shed_if_overloaded()?;
        let client_timeout = client_timeout(&request);
        let mut call =
            validate(request.into_inner(), client_timeout).map_err(|e| record.answer_failure(e))?;
        call.context = context;
        record.lease = record
            .router
            .admit(&call)
            .map_err(|e| record.answer_failure(ApiError::Call(e)))?;
        Ok((record, call))
    }

    async fn complete_in(
        &self,
        request: Request<CompleteRequest>,
        span: tracing::Span,
    ) -> Result<Response<CompleteResponse>, Status> {
        let (mut record, call) =
            self.admit("Complete", request, span, request::call_from_complete)?;
        let router = record.router.clone();
        let answered = router
            .complete(&call)
            .await
            .map_err(|f| record.answer_failure(f))?;
        let completion = answered.value;
        if let Some(usage) = &completion.usage {
            record.settle(usage);
        }
        record.finish(
            Some((&answered.group, &answered.deployment)),
            answered.attempts.len(),
            tonic::Code::Ok,
        );
        Ok(Response::new(CompleteResponse {
            id: record.id.clone(),
            model: answered.group,
            deployment: answered.deployment,
            message: Some(ChatMessage {
                role: Role::Assistant as i32,
                content: completion.text,
                tool_calls: completion.tool_calls,
                thinking: completion.thinking,
                ..Default::default()
            }),
            finish_reason: completion.finish_reason as i32,
            usage: completion.usage,
            attempts: answered.attempts,
        }))
    }

    async fn stream_complete_in(
        &self,
        request: Request<StreamCompleteRequest>,
        span: tracing::Span,
    ) -> Result<Response<ResponseStream>, Status> {
        let (mut record, call) =
            self.admit("StreamComplete", request, span, request::call_from_stream)?;
        let router = record.router.clone();
        // Everything before the first chunk, retries and fallbacks included, is answered as a
        // status: the response stream is only returned once the call has committed.
        let mut answered = router
            .stream(&call)
            .await
            .map_err(|f| record.answer_failure(f))?;
        let open = Open {
            id: record.id.clone(),
            idle: router.config().router.stream_idle_timeout,
            max_retry_delay: router.config().router.cooldowns.max_hint,
            gauge: router.metrics().stream_open(),
            active: record.active.take(),
            // The record (and with it the RPC's span) lives until the stream ends.
            on_end: Box::new(move |end| {
                if let Some(u) = &end.usage {
                    record.settle(u);
                }
                let code = match end.how {
                    StreamEnd::Finished => tonic::Code::Ok,
                    StreamEnd::ClientGone => tonic::Code::Cancelled,
                    StreamEnd::Failed(code) => code,
                };
                record.finish(Some((end.group, end.deployment)), end.attempts, code);
            }),
        };
        // The call's request is kept only by a stream that may recover.
        let recovery = Recovery::arm(router.clone(), call, &mut answered);
        Ok(Response::new(stream::forward(answered, recovery, open)))
    }
}

#[tonic::async_trait]
impl RouterService for RouterApi {
    async fn complete(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<Response<CompleteResponse>, Status> {
        let span = rpc_span("Complete", &request, &request.get_ref().model);
        self.complete_in(request, span.clone())
            .instrument(span)
            .await
    }

    type StreamCompleteStream = ResponseStream;

    async fn stream_complete(
        &self,
        request: Request<StreamCompleteRequest>,
    ) -> Result<Response<Self::StreamCompleteStream>, Status> {
        let span = rpc_span("StreamComplete", &request, &request.get_ref().model);
        self.stream_complete_in(request, span.clone())
            .instrument(span)
            .await
    }

    async fn list_models(
        &self,
        request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let router = self.routers.current();
        let context = auth::call_context(&router.config().auth, &request)
            .map_err(|e| status::call_status(&e, &[], router.config().router.cooldowns.max_hint))?;
        Ok(Response::new(models::list(&router, &context)))
    }
}

/// Server reflection for recognised callers only, when `auth.reflection` is `authenticated`;
/// open otherwise (and health checks are always open, for probes).
pub fn reflection_guard(
    routers: Arc<SharedRouter>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request: Request<()>| {
        let router = routers.current();
        let auth = &router.config().auth;
        if !auth.reflection_requires_auth {
            return Ok(request);
        }
        match auth::call_context(auth, &request) {
            Ok(c) if c.identity.is_some() => Ok(request),
            Ok(_) => Err(Status::unauthenticated(
                "server reflection is for authenticated callers (auth.reflection)",
            )),
            Err(e) => Err(Status::unauthenticated(e.message())),
        }
    }
}
