//! Shared test harness: the real server on port 0, driven through the generated tonic client.

#![allow(dead_code)]

pub mod certs;
pub mod h2_upstream;
pub mod process;
pub mod redis_server;
pub mod upstream;

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use llm_router::config::{Config, Source};
use llm_router::proto::{
    AttemptLog, AttemptOutcome, ChatMessage, CompleteRequest, Role, StreamCompleteRequest,
    router_service_client::RouterServiceClient,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Status, transport::Channel};
use tonic_types::StatusExt;

pub struct TestRouter {
    pub addr: SocketAddr,
    /// The admin HTTP port (`/metrics`, `/healthz`, `/readyz`).
    pub admin_addr: SocketAddr,
    pub client: RouterServiceClient<Channel>,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<()>,
}

impl TestRouter {
    /// Loads `yaml` (with the given environment for `os.environ/` keys) and serves it on an
    /// ephemeral port.
    pub async fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> TestRouter {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let config = Config::load_with_env(Source::Yaml(yaml), Vec::new(), |k| env.get(k).cloned())
            .unwrap_or_else(|e| panic!("test config is invalid: {e}"));
        Self::serve(config, None).await
    }

    /// Serves the config file at `path`, reloading it when it changes.
    pub async fn start_reloading(path: &std::path::Path) -> TestRouter {
        let config = Config::load(Source::File(path))
            .unwrap_or_else(|e| panic!("test config is invalid: {e}"));
        let reload = llm_router::reload::ConfigFile {
            path: path.to_path_buf(),
            on_sighup: false,
        };
        Self::serve(config, Some(reload)).await
    }

    async fn serve(config: Config, reload: Option<llm_router::reload::ConfigFile>) -> TestRouter {
        let config_tls = config.server.tls.is_some();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let listeners = llm_router::Listeners {
                grpc: listener,
                admin: Some(admin),
            };
            let shutdown = async {
                let _ = rx.await;
            };
            match reload {
                Some(r) => llm_router::run_with_reload(listeners, Arc::new(config), r, shutdown)
                    .await
                    .unwrap(),
                None => llm_router::run(listeners, Arc::new(config), shutdown)
                    .await
                    .unwrap(),
            }
        });
        // A TLS port is for a client made by the test (`TestRouter::tls_client`).
        let client = if config_tls {
            RouterServiceClient::new(
                Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect_lazy(),
            )
        } else {
            RouterServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap()
        };
        TestRouter {
            addr,
            admin_addr,
            client,
            shutdown: Some(tx),
            task,
        }
    }

    /// A client over TLS that trusts `ca_pem` and, with `identity`, presents that certificate
    /// (PEM certificate, PEM key).
    pub async fn tls_client(
        &self,
        ca_pem: &str,
        identity: Option<(&str, &str)>,
    ) -> Result<RouterServiceClient<Channel>, tonic::transport::Error> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let channel = Channel::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(RouterServiceClient::new(channel))
    }

    pub async fn start(yaml: &str) -> TestRouter {
        Self::start_with_env(yaml, &[]).await
    }

    pub fn client(&self) -> RouterServiceClient<Channel> {
        self.client.clone()
    }

    /// A new connection to the server, for the other services' clients.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// GETs a path of the admin port: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("http://{}{path}", self.admin_addr))
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// The routing table as ListModels shows it.
    pub async fn models(&self) -> Vec<llm_router::proto::ModelGroup> {
        self.client()
            .list_models(llm_router::proto::ListModelsRequest {})
            .await
            .unwrap()
            .into_inner()
            .groups
    }

    /// A deployment as ListModels shows it.
    pub async fn deployment(&self, id: &str) -> llm_router::proto::Deployment {
        self.models()
            .await
            .into_iter()
            .flat_map(|g| g.deployments)
            .find(|d| d.id == id)
            .unwrap_or_else(|| panic!("no deployment `{id}`"))
    }

    /// Triggers graceful shutdown.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn user(text: &str) -> Vec<ChatMessage> {
    vec![ChatMessage {
        role: Role::User as i32,
        content: text.into(),
        name: None,
        ..Default::default()
    }]
}

pub fn complete(model: &str) -> CompleteRequest {
    CompleteRequest {
        model: model.into(),
        messages: user("hello"),
        ..Default::default()
    }
}

pub fn stream_req(model: &str) -> StreamCompleteRequest {
    StreamCompleteRequest {
        model: model.into(),
        messages: user("hello"),
        ..Default::default()
    }
}

pub fn dur(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The AttemptLog detail of an error status.
pub fn attempt_log(status: &Status) -> AttemptLog {
    llm_router::api::status::attempt_log(status).expect("status carries an AttemptLog")
}

pub fn outcomes(log: &[llm_router::proto::Attempt]) -> Vec<(String, AttemptOutcome)> {
    log.iter()
        .map(|a| {
            (
                a.deployment.clone(),
                AttemptOutcome::try_from(a.outcome).unwrap(),
            )
        })
        .collect()
}

/// The ErrorInfo reason of an error status.
pub fn reason(status: &Status) -> String {
    let info = status
        .get_details_error_info()
        .expect("status carries ErrorInfo");
    assert_eq!(info.domain, "llmrouter.v1");
    info.reason
}

/// Timing tolerance for assertions on real timers: generous enough for a loaded 2-core machine,
/// tight enough to tell a 300ms timeout from a 600s one.
pub const SLACK: Duration = Duration::from_millis(400);

pub fn assert_between(elapsed: Duration, low: Duration, high: Duration) {
    assert!(
        elapsed >= low && elapsed <= high,
        "elapsed {elapsed:?} not within {low:?}..={high:?}"
    );
}
