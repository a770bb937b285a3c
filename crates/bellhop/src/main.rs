//! The `bellhop` binary: `serve` runs a node, `token` mints development tokens, `connect` is a
//! line-oriented WebSocket client for trying the protocol by hand.
//!
//! The binary only parses, wires and reports; the logic lives in the library crates.

mod connect;
mod settings;

/// mimalloc instead of glibc's malloc: under fan-out load the node spent 15 % of its CPU in
/// glibc (`_int_malloc`, `malloc_consolidate`, `free`); see docs/BENCHMARKS.md. Built without
/// the `mimalloc` feature the node uses the system allocator, for heap profilers.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bellhop_dispatcher::requests::{MemoryRequestStore, RedisRequestStore, RequestStore, Requests};
use bellhop_dispatcher::{
    BanStore, Broker, Dispatcher, DispatcherConfig, MemoryBroker, RedisBroker,
};
use bellhop_gateway::auth::{Audience, Claims, TokenSigner};
use bellhop_gateway::Gateway;
use bellhop_gateway::JwtAlgorithm;
use bellhop_protocol::Role;
use clap::{Parser, Subcommand, ValueEnum};

use settings::{BrokerSettings, Environment, FileSettings, LogFormat, Overrides, ProcessEnv};

#[derive(Parser, Debug)]
#[command(
    name = "bellhop",
    version,
    about = "Real-time messaging gateway for hotel operations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a gateway node: alone on the embedded broker, or one of many sharing Redis (REDIS_URL);
    /// settings from the environment, see docs/CONFIGURATION.md.
    Serve {
        /// A TOML file with settings (environment variables win over it).
        #[arg(long, env = settings::BELLHOP_CONFIG)]
        config: Option<PathBuf>,
        /// WebSocket and HTTP API port (overrides WS_PORT).
        #[arg(long)]
        port: Option<u16>,
        /// Admin port for /metrics, /healthz, /readyz (overrides METRICS_PORT).
        #[arg(long)]
        metrics_port: Option<u16>,
        /// Address to bind (overrides BIND_ADDR; default 0.0.0.0, or 127.0.0.1 with the
        /// development secret).
        #[arg(long)]
        bind: Option<std::net::IpAddr>,
    },
    /// Print a token for development and load tests: HS256 signed with JWT_SECRET (or the
    /// development secret), or RS256/ES256 signed with a private key file (--alg, --key).
    Token {
        /// User id.
        #[arg(long)]
        sub: String,
        /// Role.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Property id.
        #[arg(long)]
        prop: String,
        /// Rooms (guests), comma-separated.
        #[arg(long, value_delimiter = ',')]
        rooms: Vec<String>,
        /// Departments (staff), comma-separated.
        #[arg(long, value_delimiter = ',')]
        depts: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// A TOML settings file to take jwt_secret from.
        #[arg(long, env = settings::BELLHOP_CONFIG)]
        config: Option<PathBuf>,
        /// Signing algorithm: HS256 (with JWT_SECRET), RS256 or ES256 (with --key).
        #[arg(long, env = "JWT_ALGORITHM")]
        alg: Option<String>,
        /// Private key (PEM, PKCS#8; PKCS#1 also for RS256) to sign RS256 or ES256 tokens with.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Key id written in the token's header (selects the key in a JWKS).
        #[arg(long)]
        kid: Option<String>,
        /// Issuer claim (iss).
        #[arg(long, env = "JWT_ISSUER")]
        iss: Option<String>,
        /// Audience claim (aud).
        #[arg(long, env = "JWT_AUDIENCE")]
        aud: Option<String>,
    },
    /// Connect to a node, print every frame received as a JSON line, send every JSON line read
    /// from standard input; exits when input ends and every request has its reply.
    Connect {
        /// The WebSocket URL: ws://, or wss:// for a node (or load balancer) that serves TLS.
        #[arg(long, default_value = "ws://127.0.0.1:3001/ws")]
        url: String,
        /// For wss://: trust only the CA certificates in this PEM file (a private or
        /// self-signed CA); without it, the public web CAs (webpki-roots) are trusted.
        #[arg(long, env = "BELLHOP_CA")]
        ca: Option<PathBuf>,
        /// The token (sent as Authorization: Bearer).
        #[arg(long, env = "BELLHOP_TOKEN")]
        token: String,
        /// Channels to subscribe to right after connecting.
        #[arg(long)]
        subscribe: Vec<String>,
        /// Keep running after standard input ends (to watch a channel).
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RoleArg {
    Guest,
    Staff,
    Manager,
    Admin,
    Service,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Guest => Role::Guest,
            RoleArg::Staff => Role::Staff,
            RoleArg::Manager => Role::Manager,
            RoleArg::Admin => Role::Admin,
            RoleArg::Service => Role::Service,
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(settings::LOG_LEVEL)
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        // The Redis client's own warnings print its errors as debug structs
        // (`Some(Error { details: "Connection closed.", kind: IO })`); the node says the same in
        // words (`watch_live_delivery`, and the errors publishes get). LOG_LEVEL=info,fred=warn
        // brings them back.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fred=error"));
    // Colours only for a person at a terminal: not in files, pipes or a log collector.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn load_file(path: &Option<PathBuf>) -> Result<FileSettings> {
    path.as_deref()
        .map(settings::read_file)
        .transpose()
        .map(Option::unwrap_or_default)
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            port,
            metrics_port,
            bind,
        } => {
            let file = load_file(&config)?;
            let flags = Overrides {
                ws_port: port,
                metrics_port,
                bind_addr: bind,
            };
            let settings = settings::serve_settings(&ProcessEnv, &file, &flags)?;
            init_logging(settings.log_format);
            serve(settings).await
        }
        Command::Token {
            sub,
            role,
            prop,
            rooms,
            depts,
            ttl,
            config,
            alg,
            key,
            kid,
            iss,
            aud,
        } => {
            let file = load_file(&config)?;
            let mut signer = token_signer(alg.as_deref(), key.as_deref(), &file)?;
            if let Some(kid) = kid {
                signer = signer.with_kid(kid);
            }
            let now = bellhop_dispatcher::now_ms() / 1000;
            let claims = Claims {
                sub,
                role: role.into(),
                prop,
                rooms,
                depts,
                exp: now + ttl,
                iat: Some(now),
                nbf: None,
                iss,
                aud: aud.map(Audience::One),
            };
            let token = signer.sign(&claims).context("cannot sign token")?;
            #[allow(clippy::print_stdout)]
            {
                println!("{token}");
            }
            Ok(())
        }
        Command::Connect {
            url,
            ca,
            token,
            subscribe,
            follow,
        } => {
            let options = connect::Options {
                ca,
                subscribe,
                follow,
            };
            connect::run(&url, &token, &options).await
        }
    }
}

/// The signer of `bellhop token`: HS256 with JWT_SECRET (the default), or RS256/ES256 with the
/// private key file given by `--key`.
fn token_signer(
    alg: Option<&str>,
    key: Option<&std::path::Path>,
    file: &FileSettings,
) -> Result<TokenSigner> {
    let algorithm = match alg {
        None => JwtAlgorithm::Hs256,
        Some(name) => JwtAlgorithm::parse(name).ok_or_else(|| {
            anyhow::anyhow!("--alg {name:?} is invalid: use HS256, RS256 or ES256")
        })?,
    };
    match (algorithm, key) {
        (JwtAlgorithm::Hs256, Some(_)) => {
            anyhow::bail!("--key signs RS256 or ES256 tokens: add --alg RS256 or --alg ES256")
        }
        (JwtAlgorithm::Hs256, None) => {
            let (secret, _, dev) = settings::resolve_secret(&ProcessEnv, file)?;
            if dev {
                eprintln!(
                    "warning: JWT_SECRET is unset (or the development secret): signing with the public development secret"
                );
            }
            Ok(TokenSigner::hs256(&secret))
        }
        (alg, None) => anyhow::bail!("--alg {alg} needs --key <private key PEM file>"),
        (alg, Some(path)) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read --key {}", path.display()))?;
            TokenSigner::from_pem(alg, &pem).with_context(|| format!("--key {}", path.display()))
        }
    }
}

async fn serve(settings: settings::ServeSettings) -> Result<()> {
    let shutdown = shutdown_signal()?;
    if settings.dev_secret {
        tracing::warn!(
            "JWT_SECRET is unset or the development secret: using the PUBLIC development secret. Anyone can mint tokens for this node. \
             Set JWT_SECRET (and BELLHOP_ENV=production) before exposing it."
        );
    }
    if settings.loopback_for_dev_secret {
        tracing::warn!(
            "listening on 127.0.0.1 only, because the development secret is in use; set JWT_SECRET, or BIND_ADDR=0.0.0.0 to listen on every interface anyway"
        );
    }
    if settings.tls_paths_ignored {
        tracing::warn!(
            "SSL_CERT_PATH or SSL_KEY_PATH is set but SSL_ENABLED is not true: the main port serves plain ws/http"
        );
    }
    // The backend stores messages, service requests and the bans the nodes share.
    type Backend = (
        Arc<dyn Broker>,
        Arc<dyn BanStore>,
        &'static str,
        Arc<dyn RequestStore>,
    );
    let (broker, bans, backend, store): Backend = match &settings.broker {
        BrokerSettings::Embedded(config) => {
            let memory = Arc::new(MemoryBroker::new(config.clone()));
            memory.spawn_sweeper(Duration::from_secs(60));
            let store = Arc::new(MemoryRequestStore::new(config.retention));
            (memory.clone(), memory, "embedded", store)
        }
        BrokerSettings::Redis(config) => {
            let cannot = || format!("cannot use Redis at {}", config.redacted_url());
            let redis = RedisBroker::connect(config.as_ref().clone())
                .await
                .with_context(cannot)?;
            let store = RedisRequestStore::connect(config)
                .await
                .with_context(cannot)?;
            let redis = Arc::new(redis);
            (redis.clone(), redis, "redis", Arc::new(store))
        }
    };
    let dispatcher = Arc::new(Dispatcher::new(broker, DispatcherConfig::default()));
    if backend == "redis" {
        watch_live_delivery(dispatcher.clone());
    }
    let requests = Requests::start(dispatcher.clone(), store, settings.requests.clone())
        .map_err(anyhow::Error::msg)?;
    // The error names what failed: the address that could not be bound, or the TLS file.
    let gateway =
        Gateway::bind_with_requests(settings.gateway.clone(), dispatcher, requests, bans).await?;
    let addr = gateway.local_addr();
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    tracing::info!(
        environment = ?settings.environment,
        broker = backend,
        retention_hours = settings.broker.retention().as_secs() / 3600,
        "bellhop node ready"
    );
    let ws = if settings.gateway.tls.is_some() {
        "wss"
    } else {
        "ws"
    };
    tracing::info!(
        "connect: {ws}://{host}:{}{} with a token from `bellhop token --sub u1 --role staff --prop h1 --depts housekeeping`; admin: {}",
        addr.port(),
        settings.gateway.ws_path,
        gateway.admin_addr().map(|a| format!("http://{host}:{}/metrics", a.port())).unwrap_or_else(|| "disabled".into()),
    );
    if settings.environment == Environment::Production && settings.dev_secret {
        anyhow::bail!("refusing the development secret in production");
    }
    shutdown.await;
    tracing::info!("shutdown requested: draining");
    gateway.shutdown().await;
    Ok(())
}

/// How often the node looks at its live delivery from Redis, to log when it goes and comes back.
const LIVE_DELIVERY_CHECK: Duration = Duration::from_secs(1);

/// Logs, in words, when live delivery from Redis stops (the subscriber connection is down or its
/// probes do not come back) and when it works again. `bellhop_broker_live_healthy` and `/readyz`
/// show the same; the log says when, on the node's own timeline.
fn watch_live_delivery(dispatcher: Arc<Dispatcher>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(LIVE_DELIVERY_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut healthy = true;
        loop {
            tick.tick().await;
            let now = dispatcher.broker().live_healthy();
            if now == healthy {
                continue;
            }
            healthy = now;
            if healthy {
                tracing::info!("live delivery from Redis works again; every channel is re-read from the last offset delivered");
            } else {
                tracing::warn!(
                    "live delivery from Redis is down: Redis cannot be reached or its subscriber connection is silent; the node keeps reconnecting, and publishes fail with unavailable meanwhile"
                );
            }
        }
    });
}

/// Resolves on SIGTERM or Ctrl-C. Installs the handlers when called, so call it before the
/// node starts serving: a SIGTERM that arrives early must still drain, not kill the process.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
