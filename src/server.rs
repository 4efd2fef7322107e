//! The gRPC server: RouterService, grpc.health.v1 and reflection (v1 and v1alpha, since
//! grpcurl up to 1.8.7 only speaks v1alpha), with a bounded graceful shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use tonic::service::interceptor::InterceptedService;

use crate::api::{
    ActiveCalls, RouterApi,
    pending::{PendingBytes, PendingLayer},
    reflection_guard,
};
use crate::config::Config;
use crate::listen::{
    conn::incoming,
    tls::{Rotating, ServerTls},
};
use crate::proto::router_service_server::RouterServiceServer;
use crate::reload::ConfigFile;
use crate::routing::{
    Router, SharedRouter,
    callers::{CallerStore, LocalCallers},
    health::{HealthStore, LocalStore},
};
use crate::shared::SharedStore;
use crate::telemetry::{Metrics, admin};

/// The descriptor set of `proto/`, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/llmrouter_descriptor.bin"));

/// The name readiness checks use: SERVING once the config is loaded, NOT_SERVING from the
/// moment shutdown begins.
pub const SERVICE_NAME: &str = "llmrouter.v1.RouterService";

/// The name liveness checks use: SERVING for as long as the process serves, draining included,
/// so that an orchestrator never kills a pod for draining.
pub const LIVENESS_SERVICE_NAME: &str = "liveness";

/// Why the server could not start or stopped with an error.
#[derive(Debug)]
pub enum ServeError {
    Setup(String),
    Transport(tonic::transport::Error),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Setup(msg) => write!(f, "server setup failed: {msg}"),
            ServeError::Transport(e) => write!(f, "server failed: {e}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// Where the server listens: gRPC, and the admin HTTP port when it is on. Bound by the caller,
/// so tests can use port 0.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: Option<TcpListener>,
}

/// Serves `config` until `shutdown` completes; see [`run_with_reload`].
pub async fn run(
    listeners: Listeners,
    config: Arc<Config>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve(listeners, config, None, shutdown).await
}

/// As [`run`], and reloads the config from `reload.path` when the file changes (it is read
/// every `server.config_watch_interval`) and, when `reload.on_sighup`, on SIGHUP. A new config
/// that fails validation is logged and the previous one keeps serving.
pub async fn run_with_reload(
    listeners: Listeners,
    config: Arc<Config>,
    reload: ConfigFile,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve(listeners, config, Some(reload), shutdown).await
}

/// Serves until `shutdown` completes. Then, in order:
/// 1. health flips to NOT_SERVING (the overall service and `llmrouter.v1.RouterService`);
/// 2. for `server.drain_period` new calls are still served, while load balancers and meshes
///    notice and move traffic away;
/// 3. the server stops accepting (GOAWAY: clients open new calls elsewhere) and in-flight calls
///    get up to `server.shutdown_grace` to finish; what is still running then is cut.
async fn serve(
    listeners: Listeners,
    config: Arc<Config>,
    reload: Option<ConfigFile>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let Listeners {
        grpc: listener,
        admin: admin_listener,
    } = listeners;
    let server_settings = config.server.clone();
    let metrics = Arc::new(Metrics::new());
    let active = Arc::new(ActiveCalls::default());
    // Deployments' health and callers' usage, across reloads: shared with the other replicas
    // through Redis when the config names one, else kept in this process.
    let (health, callers): (Arc<dyn HealthStore>, Arc<dyn CallerStore>) = match &config.shared_state
    {
        Some(settings) => {
            tracing::info!(redis = %settings.shown, "state is shared through Redis");
            let store = SharedStore::start(settings.clone(), metrics.clone());
            (store.clone(), store)
        }
        None => (Arc::new(LocalStore::new()), Arc::new(LocalCallers::new())),
    };
    let routers = Arc::new(SharedRouter::new(
        Router::with_stores(config, metrics.clone(), health, callers).map_err(ServeError::Setup)?,
    ));
    // Stops watching however `serve` returns.
    let _watcher = reload.map(|r| {
        let text = crate::reload::snapshot(&r);
        let keys = crate::reload::key_snapshot(routers.current().config());
        AbortOnDrop(tokio::spawn(crate::reload::watch(
            r,
            text,
            keys,
            routers.clone(),
            metrics.clone(),
        )))
    });

    // TLS files are read again every config watch interval: a rotated certificate is used by
    // the next connection, and a broken one is logged and ignored.
    let tls = match &server_settings.tls {
        None => None,
        Some(t) => {
            let first = ServerTls::load(t)
                .map_err(|e| ServeError::Setup(format!("`{}` {}", e.key, e.message)))?;
            Some(Arc::new(Rotating::new(t.clone(), first)))
        }
    };
    let _tls_watcher = tls
        .clone()
        .map(|t| AbortOnDrop(tokio::spawn(t.watch(server_settings.config_watch_interval))));
    let admin_tls = tls
        .clone()
        .filter(|_| server_settings.tls.as_ref().is_some_and(|t| t.admin));

    // The admin port reports ready until shutdown begins, and runs until the process ends.
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(true);
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = admin_listener.map(|l| {
        tokio::spawn(admin::serve(
            l,
            metrics.clone(),
            ready_rx,
            admin_tls,
            async {
                let _ = admin_stopped.await;
            },
        ))
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RouterServiceServer<RouterApi>>().await;
    health.set_service_status("", ServingStatus::Serving).await;
    health
        .set_service_status(LIVENESS_SERVICE_NAME, ServingStatus::Serving)
        .await;

    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServeError::Setup(e.to_string()))?;

    let (stop_accepting, stopped) = tokio::sync::oneshot::channel::<()>();
    // Listener-level settings apply from start-up; a reload that changes them logs that they
    // need a restart.
    // What requests being received may hold is bounded across connections (`pending`), not
    // by fewer streams per connection: a client over its connection's streams queues on its
    // side, where calls over max_concurrent_calls must be refused at once.
    let pending = PendingBytes::new(server_settings.max_pending_request_bytes);
    let serve = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(Some(server_settings.max_concurrent_streams))
        .layer(PendingLayer(pending))
        .add_service(health_service)
        .add_service(InterceptedService::new(
            reflection_v1,
            reflection_guard(routers.clone()),
        ))
        .add_service(InterceptedService::new(
            reflection_v1alpha,
            reflection_guard(routers.clone()),
        ))
        .add_service(
            RouterServiceServer::new(RouterApi::new(routers.clone(), active.clone()))
                .max_decoding_message_size(server_settings.max_request_bytes),
        )
        .serve_with_incoming_shutdown(incoming(listener, metrics.clone(), tls), async {
            let _ = stopped.await;
        });
    tokio::pin!(serve);

    tokio::select! {
        result = &mut serve => return result.map_err(ServeError::Transport),
        () = shutdown => {}
    }
    let _ = ready_tx.send(false);
    // The drain and grace of the config serving now, reloads included.
    let (drain, grace) = {
        let current = routers.current();
        let s = &current.config().server;
        (s.drain_period, s.shutdown_grace)
    };

    tracing::info!(
        drain_ms = drain.as_millis() as u64,
        grace_ms = grace.as_millis() as u64,
        "shutting down: health NOT_SERVING, draining"
    );
    health
        .set_not_serving::<RouterServiceServer<RouterApi>>()
        .await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    // Still serving while the world notices; the server may also stop on its own meanwhile.
    tokio::select! {
        result = &mut serve => return result.map_err(ServeError::Transport),
        () = tokio::time::sleep(drain) => {}
    }
    tracing::info!("drain period over: refusing new calls, waiting for in-flight ones");
    let _ = stop_accepting.send(());
    let result = tokio::select! {
        result = &mut serve => result.map_err(ServeError::Transport),
        () = active.wait_idle() => {
            // Clients were told GOAWAY; what is left are idle connections, and the frames the
            // last calls' answers may still have on their way out. A moment for those, bounded:
            // an idle client connection must not hold the pod.
            tracing::info!("no calls in flight: closing idle connections");
            let _ = tokio::time::timeout(FLUSH_ON_SHUTDOWN, &mut serve).await;
            Ok(())
        }
        () = tokio::time::sleep(grace) => {
            tracing::warn!(
                in_flight = active.count(),
                "shutdown grace period ended with calls still in flight; closing them"
            );
            Ok(())
        }
    };
    let _ = admin_stop.send(());
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    result
}

/// How long shutdown waits, once no call is in flight, for the last answers' frames to leave.
const FLUSH_ON_SHUTDOWN: Duration = Duration::from_millis(250);

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // google.rpc.ErrorInfo, RetryInfo and BadRequest: the error details clients decode.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}
