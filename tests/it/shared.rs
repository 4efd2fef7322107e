//! State shared across replicas through a real `redis-server`: two (or three) router
//! processes, the real binary, on one Redis and one fake upstream that counts what reached it.

use std::{
    path::PathBuf,
    process::Child,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use llm_router::proto::{CompleteRequest, router_service_client::RouterServiceClient};
use tonic::{Code, transport::Channel};

use crate::common::process::spawn_with_env;
use crate::common::redis_server::RedisServer;
use crate::common::upstream::{Behaviour, Upstream};
use crate::common::*;

/// A router process with its config file.
struct Replica {
    child: Child,
    admin: String,
    client: RouterServiceClient<Channel>,
    path: PathBuf,
}

static CONFIGS: AtomicU32 = AtomicU32::new(0);

impl Replica {
    async fn start(yaml: &str, env: &[(&str, &str)]) -> Replica {
        let path = std::env::temp_dir().join(format!(
            "llmrouter-shared-{}-{}.yaml",
            std::process::id(),
            CONFIGS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, yaml).unwrap();
        let (child, addr, admin) = spawn_with_env(&["--config", path.to_str().unwrap()], env);
        let client = RouterServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Replica {
            child,
            admin,
            client,
            path,
        }
    }

    async fn admin_get(&self, path: &str) -> String {
        reqwest::get(format!("http://{}{path}", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until the replica's last sync with Redis went through (or did not, `ok: false`).
    async fn wait_shared(&self, ok: bool) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let health = self.admin_get("/healthz").await;
            if health.contains("shared_state: ok") == ok {
                return;
            }
            assert!(
                Instant::now() < until,
                "shared state never became {ok}: {health}"
            );
            tokio::time::sleep(ms(20)).await;
        }
    }

    async fn call(&self, req: CompleteRequest) -> Result<String, tonic::Status> {
        self.client
            .clone()
            .complete(req)
            .await
            .map(|r| r.into_inner().deployment)
    }

    async fn deployment(&self, id: &str) -> llm_router::proto::Deployment {
        self.client
            .clone()
            .list_models(llm_router::proto::ListModelsRequest {})
            .await
            .unwrap()
            .into_inner()
            .groups
            .into_iter()
            .flat_map(|g| g.deployments)
            .find(|d| d.id == id)
            .unwrap()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Two replicas of one config, each past its first sync with Redis.
async fn two_replicas(yaml: &str, env: &[(&str, &str)]) -> (Replica, Replica) {
    let (a, b) = (
        Replica::start(yaml, env).await,
        Replica::start(yaml, env).await,
    );
    a.wait_shared(true).await;
    b.wait_shared(true).await;
    (a, b)
}

/// Usage counts in wall-clock minutes: waits, if need be, until `needed` is left in this one.
async fn room_in_minute(needed: Duration) {
    let into = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        % 60.0;
    if into + needed.as_secs_f64() > 59.0 {
        tokio::time::sleep(Duration::from_secs_f64(60.2 - into)).await;
    }
}

fn config(redis: &RedisServer, deployments: &str, router: &str) -> String {
    format!(
        "model_list:\n{deployments}router_settings:\n  redis_url: {}\n  redis_sync_interval: 20ms\n  num_retries: 0\n{router}",
        redis.url()
    )
}

fn dep(group: &str, id: &str, model: &str, up: &Upstream, extra: &str) -> String {
    format!(
        "  - model_name: {group}\n    litellm_params: {{ model: openai/{model}, api_base: \"{}\", api_key: sk-never-in-redis-0123456789 {extra} }}\n    model_info: {{ id: {id} }}\n",
        up.base()
    )
}

#[tokio::test]
async fn an_rpm_limit_holds_across_two_replicas() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    up.set("u", Behaviour::ok("fine"));
    let yaml = config(
        &redis,
        &dep("g", "d", "u", &up, ", rpm: 20"),
        "  routing_strategy: usage-based-routing\n",
    );
    let (a, b) = two_replicas(&yaml, &[]).await;
    room_in_minute(Duration::from_secs(10)).await;
    let mut answered = 0;
    for i in 0..60 {
        let r = if i % 2 == 0 { &a } else { &b };
        match r.call(complete("g")).await {
            Ok(_) => answered += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert_eq!(reason(&s), "ALL_DEPLOYMENTS_AT_CAPACITY");
            }
        }
        tokio::time::sleep(ms(25)).await;
    }
    let reached = up.counts("u").requests;
    eprintln!("rpm 20 over two replicas: {reached} of 60 calls reached the deployment");
    assert_eq!(reached, answered);
    // Each replica alone would let 20 through, 40 in all; shared, the overshoot is what the
    // other replica admits within two sync intervals (here 20ms each, calls 25ms apart).
    assert!(
        (20..=23).contains(&reached),
        "{reached} calls reached a deployment with rpm 20"
    );
}

#[tokio::test]
async fn failures_count_together_and_a_cooldown_entered_by_one_replica_is_honoured_by_the_other() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    up.set("flaky", Behaviour::status(503, "{}"));
    up.set("backup", Behaviour::ok("b"));
    let yaml = config(
        &redis,
        &(dep("primary", "primary", "flaky", &up, "")
            + &dep("backup", "backup", "backup", &up, "")),
        "  allowed_fails: 1\n  cooldown_time: 2s\n  fallbacks:\n    - primary: [backup]\n",
    );
    let (a, b) = two_replicas(&yaml, &[]).await;
    room_in_minute(Duration::from_secs(8)).await;

    // One failure through each: allowed_fails is 1, so together they are one too many.
    assert_eq!(a.call(complete("primary")).await.unwrap(), "backup");
    tokio::time::sleep(ms(150)).await;
    assert_eq!(b.call(complete("primary")).await.unwrap(), "backup");
    assert_eq!(up.counts("flaky").requests, 2);
    let until_b = b
        .deployment("primary")
        .await
        .cooldown_until
        .expect("b cooled it");
    tokio::time::sleep(ms(150)).await;
    let until_a = a
        .deployment("primary")
        .await
        .cooldown_until
        .expect("a honours b's cooldown");
    let (ta, tb) = (
        std::time::SystemTime::try_from(until_a).unwrap(),
        std::time::SystemTime::try_from(until_b).unwrap(),
    );
    let apart = ta.duration_since(tb).unwrap_or_else(|e| e.duration());
    assert!(apart <= ms(5), "the cooldowns end {apart:?} apart");

    // Cooling: neither replica sends the deployment anything.
    for r in [&a, &b, &a] {
        assert_eq!(r.call(complete("primary")).await.unwrap(), "backup");
    }
    assert_eq!(up.counts("flaky").requests, 2);

    // Both take it back at the same instant, and the count starts again.
    let left = tb
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(left + ms(100)).await;
    assert!(a.deployment("primary").await.cooldown_until.is_none());
    assert!(b.deployment("primary").await.cooldown_until.is_none());
    assert_eq!(b.call(complete("primary")).await.unwrap(), "backup");
    assert_eq!(up.counts("flaky").requests, 3);
}

#[tokio::test]
async fn least_busy_sees_the_other_replicas_attempts_in_flight() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    up.set("slow-a", Behaviour::slow_first_chunk("a", ms(1500)));
    up.set("slow-b", Behaviour::slow_first_chunk("b", ms(1500)));
    let router = "  routing_strategy: least-busy\n  redis_namespace: least-busy-test\n";
    let a_dep = dep("g", "a", "slow-a", &up, "");
    // One replica routes `g` to `a` only, the other to `a` and `b`: the same `a` in both.
    let first = Replica::start(&config(&redis, &a_dep, router), &[]).await;
    let second = Replica::start(
        &config(
            &redis,
            &(a_dep.clone() + &dep("g", "b", "slow-b", &up, "")),
            router,
        ),
        &[],
    )
    .await;
    first.wait_shared(true).await;
    second.wait_shared(true).await;

    let mut held = Vec::new();
    for _ in 0..3 {
        let c = first.client.clone();
        held.push(tokio::spawn(async move {
            c.clone().complete(complete("g")).await
        }));
    }
    let until = Instant::now() + Duration::from_secs(5);
    while up.counts("slow-a").open < 3 {
        assert!(Instant::now() < until);
        tokio::time::sleep(ms(10)).await;
    }
    // Two syncs: `first` writes its three, `second` reads them.
    tokio::time::sleep(ms(120)).await;
    assert_eq!(second.deployment("a").await.in_flight, 3);
    for _ in 0..2 {
        let c = second.client.clone();
        held.push(tokio::spawn(async move {
            c.clone().complete(complete("g")).await
        }));
        tokio::time::sleep(ms(100)).await;
    }
    assert_eq!(
        up.counts("slow-b").requests,
        2,
        "both went to the idle deployment"
    );
    assert_eq!(up.counts("slow-a").requests, 3);
    for h in held {
        h.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_callers_rate_limit_and_budget_hold_across_two_replicas() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    up.set("u", Behaviour::ok("one two three"));
    let yaml = format!(
        "{}auth:\n  required: true\ncallers:\n  - name: team-rpm\n    keys: [os.environ/RPM_KEY]\n    rpm_limit: 6\n  - name: team-budget\n    keys: [os.environ/BUDGET_KEY]\n    max_budget: 0.005\n    budget_duration: 30d\n",
        config(
            &redis,
            &dep(
                "g",
                "d",
                "u",
                &up,
                ", input_cost_per_token: 0.001, output_cost_per_token: 0.001"
            ),
            "",
        )
    );
    let env = [
        ("RPM_KEY", "rpm-key-0123456789abcdef"),
        ("BUDGET_KEY", "budget-key-0123456789abcdef"),
    ];
    let (a, b) = two_replicas(&yaml, &env).await;
    room_in_minute(Duration::from_secs(8)).await;
    let with_key = |key: &str| {
        let mut req = tonic::Request::new(complete("g"));
        req.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        req
    };

    let mut admitted = 0;
    for i in 0..12 {
        let r = if i % 2 == 0 { &a } else { &b };
        match r.client.clone().complete(with_key(env[0].1)).await {
            Ok(_) => admitted += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert_eq!(reason(&s), "CALLER_RATE_LIMITED");
            }
        }
        tokio::time::sleep(ms(60)).await;
    }
    assert_eq!(admitted, 6, "rpm_limit 6 over both replicas");

    // One call spends the budget (8 tokens at 0.001 USD each); the other replica knows.
    a.client.clone().complete(with_key(env[1].1)).await.unwrap();
    tokio::time::sleep(ms(150)).await;
    let refused = b
        .client
        .clone()
        .complete(with_key(env[1].1))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "CALLER_BUDGET_EXCEEDED", "{refused:?}");
}

#[tokio::test]
async fn redis_killed_mid_load_loses_no_call_and_the_replicas_share_again_when_it_is_back() {
    let mut redis = RedisServer::start();
    let up = Upstream::start().await;
    up.set("u", Behaviour::ok("fine"));
    let yaml = config(
        &redis,
        &dep("g", "d", "u", &up, ", rpm: 100000"),
        "  redis_timeout: 100ms\n  redis_namespace: outage\n",
    );
    let (a, b) = two_replicas(&yaml, &[]).await;
    room_in_minute(Duration::from_secs(12)).await;

    let load = |r: &Replica, for_: Duration| {
        let c = r.client.clone();
        tokio::spawn(async move {
            let (mut n, until) = (0, Instant::now() + for_);
            while Instant::now() < until {
                let mut req = complete("g");
                req.timeout = Some(dur(ms(2000)));
                let started = Instant::now();
                c.clone()
                    .complete(req)
                    .await
                    .expect("no call fails for Redis");
                assert!(started.elapsed() < ms(1000), "a call waited on Redis");
                n += 1;
                tokio::time::sleep(ms(10)).await;
            }
            n
        })
    };
    let loads = [
        load(&a, Duration::from_secs(4)),
        load(&b, Duration::from_secs(4)),
    ];
    tokio::time::sleep(ms(500)).await;
    redis.kill();
    a.wait_shared(false).await;
    b.wait_shared(false).await;
    let health = a.admin_get("/healthz").await;
    assert!(health.contains("unreachable since"), "{health}");
    assert!(
        health.starts_with("ok\n"),
        "liveness is not Redis's: {health}"
    );
    assert!(a.admin_get("/readyz").await.starts_with("ready"));
    tokio::time::sleep(ms(800)).await;
    redis.restart();
    a.wait_shared(true).await;
    b.wait_shared(true).await;
    let mut calls = 0;
    for l in loads {
        calls += l.await.unwrap();
    }
    assert_eq!(up.counts("u").requests, calls);
    let metrics = a.admin_get("/metrics").await;
    assert!(
        metrics.contains("llmrouter_shared_state_errors_total{kind="),
        "{metrics}"
    );

    // Back, the store is seeded again with what each replica counted this minute, outage
    // included: the shared count comes to every call's (once the last syncs are in).
    let mut con = redis.client().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("llmrouter:{outage}:deployment:*")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let until = Instant::now() + Duration::from_secs(5);
    let counted = loop {
        let counted: u32 = redis::cmd("HGET")
            .arg(&keys[0])
            .arg("u1")
            .query_async(&mut con)
            .await
            .unwrap();
        if counted >= calls || Instant::now() > until {
            break counted;
        }
        tokio::time::sleep(ms(50)).await;
    };
    // At least every call (an exchange that timed out after Redis applied it is sent again:
    // counts are at least once), and never much more.
    assert!(
        counted >= calls && counted <= calls + calls / 10,
        "Redis counts {counted} of {calls} calls"
    );
}

#[tokio::test]
async fn keys_expire_hold_no_secret_and_a_second_config_keeps_its_own() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    up.set("u", Behaviour::ok("fine"));
    up.set("v", Behaviour::ok("fine"));
    let callers = "callers:\n  - name: team\n    keys: [os.environ/TEAM_KEY]\n    rpm_limit: 100\n";
    let one = format!(
        "{}{callers}",
        config(&redis, &dep("g", "d", "u", &up, ""), "")
    );
    let two = format!(
        "{}{callers}",
        config(
            &redis,
            &(dep("g", "d", "u", &up, "") + &dep("h", "e", "v", &up, "")),
            ""
        )
    );
    let env = [("TEAM_KEY", "team-key-0123456789abcdef")];
    let (a, b) = (
        Replica::start(&one, &env).await,
        Replica::start(&two, &env).await,
    );
    a.wait_shared(true).await;
    b.wait_shared(true).await;
    room_in_minute(Duration::from_secs(5)).await;
    for _ in 0..3 {
        a.call(complete("g")).await.unwrap();
    }
    b.call(complete("g")).await.unwrap();
    tokio::time::sleep(ms(150)).await;

    let mut con = redis.client().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("llmrouter:*")
        .query_async(&mut con)
        .await
        .unwrap();
    // Two namespaces: one key per deployment and caller in each.
    let namespaces: std::collections::BTreeSet<&str> = keys
        .iter()
        .filter_map(|k| k.split(['{', '}']).nth(1))
        .collect();
    assert_eq!(namespaces.len(), 2, "{keys:?}");
    assert_eq!(keys.len(), 2 + 3, "{keys:?}");
    for k in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(k)
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 120_000, "{k} expires in {ttl}ms");
        let fields: Vec<String> = redis::cmd("HGETALL")
            .arg(k)
            .query_async(&mut con)
            .await
            .unwrap();
        let all = format!("{k} {fields:?}");
        for secret in ["sk-never-in-redis", "team-key", "127.0.0.1"] {
            assert!(!all.contains(secret), "{all}");
        }
    }
    // The same deployment `d` in each config counts apart: three calls, and one.
    let mut counts = Vec::new();
    for k in keys.iter().filter(|k| k.contains(":deployment:")) {
        let n: Option<u32> = redis::cmd("HGET")
            .arg(k)
            .arg("u1")
            .query_async(&mut con)
            .await
            .unwrap();
        counts.push(n.unwrap_or(0));
    }
    counts.sort();
    assert_eq!(counts, [0, 1, 3]);
}

#[tokio::test]
async fn rediss_with_a_private_ca_and_a_password_from_the_environment() {
    let dir = crate::common::certs::dir("redis-tls");
    let ca = crate::common::certs::Ca::new("redis test CA");
    let server = ca.server();
    let cert = crate::common::certs::write(&dir, "redis.crt", &server.cert_pem);
    let key = crate::common::certs::write(&dir, "redis.key", &server.key_pem);
    let ca_file = crate::common::certs::write(&dir, "ca.pem", &ca.pem());
    let password = "redis-password-0123456789";
    let redis = RedisServer::start_tls(
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        Some(password),
    );
    let up = Upstream::start().await;
    up.set("u", Behaviour::ok("fine"));
    let yaml = |password_var: &str| {
        format!(
            "model_list:\n{}router_settings:\n  redis_url: rediss://localhost:{}/0\n  redis_password: os.environ/{password_var}\n  redis_ca_file: {}\n  redis_sync_interval: 20ms\n",
            dep("g", "d", "u", &up, ""),
            redis.port,
            ca_file.display()
        )
    };
    let env = [("GOOD", password), ("BAD", "not-the-redis-password-42")];
    let good = Replica::start(&yaml("GOOD"), &env).await;
    good.wait_shared(true).await;
    good.call(complete("g")).await.unwrap();
    let health = good.admin_get("/healthz").await;
    assert!(health.contains("rediss://localhost:"), "{health}");

    // A wrong password: the replica serves alone, and says why without either password.
    let bad = Replica::start(&yaml("BAD"), &env).await;
    bad.wait_shared(false).await;
    bad.call(complete("g")).await.unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    let health = loop {
        let h = bad.admin_get("/healthz").await;
        if h.contains("unreachable since") || Instant::now() > until {
            break h;
        }
        tokio::time::sleep(ms(20)).await;
    };
    assert!(health.contains("unreachable since"), "{health}");
    for secret in [password, env[1].1] {
        assert!(!health.contains(secret), "{health}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_frozen_redis_costs_each_sync_its_timeout_and_no_call_anything() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    up.set("u", Behaviour::ok("fine"));
    let yaml = config(
        &redis,
        &dep("g", "d", "u", &up, ", rpm: 100000"),
        "  redis_timeout: 100ms\n",
    );
    let r = Replica::start(&yaml, &[]).await;
    r.wait_shared(true).await;
    // Connections stay open and nothing answers: every exchange runs into redis_timeout.
    redis.pause();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let started = Instant::now();
        r.call(complete("g"))
            .await
            .expect("no call fails for Redis");
        assert!(started.elapsed() < ms(500), "a call waited on Redis");
        tokio::time::sleep(ms(20)).await;
    }
    let health = r.admin_get("/healthz").await;
    assert!(
        health.contains("no answer within redis_timeout (100ms)"),
        "{health}"
    );
    let metrics = r.admin_get("/metrics").await;
    assert!(
        metrics.contains("llmrouter_shared_state_errors_total{kind=\"timeout\"}"),
        "{metrics}"
    );
    redis.resume();
    r.wait_shared(true).await;
}
