//! Starts both emulators on 127.0.0.1 (port 0 allowed), in-process, for `mqlsync sandbox`,
//! `mqlsync demo` and the tests: generates the world, builds the Salesforce and Marketo
//! handles over one clock, one set of fault rules and one request log, mounts the shared
//! admin API on both ports, and shuts everything down gracefully. It must not contain
//! vendor behaviour (that lives in `salesforce/` and `marketo/`).

use std::sync::Arc;

use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::admin::{self, AdminState};
use super::clock::SandboxClock;
use super::faults::{FaultRule, Faults, FaultsFileError};
use super::log::RequestLog;
use super::marketo::{Marketo, MarketoConfig};
use super::salesforce::{Salesforce, SalesforceConfig};
use super::world::World;

/// How to start the sandbox.
pub struct SandboxOptions {
    /// People in the generated world (CRM leads/contacts and MAP leads).
    pub leads: usize,
    pub seed: u64,
    /// 0 picks a free port.
    pub sf_port: u16,
    pub mkto_port: u16,
    pub faults: Vec<FaultRule>,
    pub clock: SandboxClock,
    /// Enforce vendor limits on both sides; overrides `salesforce.limits` and
    /// `marketo.limits`. Off for benchmarks.
    pub limits: bool,
    /// The instant the world is generated for; the clock's present when absent.
    pub now: Option<Timestamp>,
    pub salesforce: SalesforceConfig,
    pub marketo: MarketoConfig,
    /// Campaign touches a generated person gets at most: the density of the score history.
    pub score_touches: u32,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            leads: 500,
            seed: 1,
            sf_port: 0,
            mkto_port: 0,
            faults: Vec::new(),
            clock: SandboxClock::running(),
            limits: true,
            now: None,
            salesforce: SalesforceConfig::sandbox_default(),
            marketo: MarketoConfig::sandbox_default(),
            score_touches: super::world::DEFAULT_TOUCHES,
        }
    }
}

/// Why the sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "cannot listen on 127.0.0.1:{port} for the {system} emulator: {source} (pick another port, or 0 for any free port)"
    )]
    Bind {
        system: &'static str,
        port: u16,
        source: std::io::Error,
    },
    #[error(transparent)]
    Faults(#[from] FaultsFileError),
    /// `mqlsync sandbox --write-config` could not write, or would not replace, a file.
    #[error(transparent)]
    WriteConfig(#[from] super::cli::WriteConfigError),
}

/// Credentials a Marketo client uses (the Salesforce ones are in `SalesforceConfig`).
#[derive(Clone, Debug)]
pub struct MarketoCredentials {
    pub client_id: String,
    pub client_secret: String,
    pub munchkin_id: String,
}

/// A running sandbox. Dropping it without `shutdown` leaves the servers running until the
/// runtime ends.
pub struct Sandbox {
    world: Arc<World>,
    salesforce: Salesforce,
    marketo: Marketo,
    marketo_credentials: MarketoCredentials,
    faults: Arc<Faults>,
    log: Arc<RequestLog>,
    clock: SandboxClock,
    salesforce_url: String,
    marketo_url: String,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

async fn bind(system: &'static str, port: u16) -> Result<tokio::net::TcpListener, SandboxError> {
    tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|source| SandboxError::Bind {
            system,
            port,
            source,
        })
}

impl Sandbox {
    /// Generates the world, binds both servers and starts serving.
    pub async fn start(options: SandboxOptions) -> Result<Sandbox, SandboxError> {
        let clock = options.clock.clone();
        let now = options.now.unwrap_or_else(|| clock.now());
        let world = Arc::new(World::generate_touching(
            options.seed,
            options.leads,
            now,
            options.score_touches,
        ));
        let faults = Arc::new(Faults::new(options.faults));
        let log = Arc::new(RequestLog::default());
        let mut sf_config = options.salesforce;
        sf_config.limits = options.limits;
        let mut mkto_config = options.marketo;
        mkto_config.limits = options.limits;
        let marketo_credentials = MarketoCredentials {
            client_id: mkto_config.client_id.clone(),
            client_secret: mkto_config.client_secret.clone(),
            munchkin_id: mkto_config.munchkin_id.clone(),
        };
        let salesforce = Salesforce::new(
            &world,
            sf_config,
            clock.clone(),
            faults.clone(),
            log.clone(),
        );
        let marketo = Marketo::new(
            &world,
            mkto_config,
            clock.clone(),
            faults.clone(),
            log.clone(),
        );
        let admin_state = AdminState {
            clock: clock.clone(),
            faults: faults.clone(),
            log: log.clone(),
            salesforce: salesforce.clone(),
            marketo: marketo.clone(),
            world: world.clone(),
        };
        let sf_listener = bind("Salesforce", options.sf_port).await?;
        let mkto_listener = bind("Marketo", options.mkto_port).await?;
        let url = |l: &tokio::net::TcpListener, system| {
            l.local_addr()
                .map(|a| format!("http://{a}"))
                .map_err(|source| SandboxError::Bind {
                    system,
                    port: 0,
                    source,
                })
        };
        let salesforce_url = url(&sf_listener, "Salesforce")?;
        let marketo_url = url(&mkto_listener, "Marketo")?;
        let shutdown = CancellationToken::new();
        let sf_app = salesforce
            .router()
            .merge(admin::router(admin_state.clone()));
        let mkto_app = marketo.router().merge(admin::router(admin_state));
        let mut tasks = Vec::new();
        for (listener, app) in [(sf_listener, sf_app), (mkto_listener, mkto_app)] {
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    tracing::warn!(error = %e, "sandbox server stopped with an error");
                }
            }));
        }
        tasks.push(salesforce.spawn_outbound_worker(shutdown.clone()));
        tracing::info!(%salesforce_url, %marketo_url, seed = options.seed, people = options.leads, "sandbox started");
        Ok(Sandbox {
            world,
            salesforce,
            marketo,
            marketo_credentials,
            faults,
            log,
            clock,
            salesforce_url,
            marketo_url,
            shutdown,
            tasks,
        })
    }

    /// `http://127.0.0.1:PORT`: the Salesforce instance URL (and login host).
    pub fn salesforce_url(&self) -> &str {
        &self.salesforce_url
    }

    /// `http://127.0.0.1:PORT`: the Marketo base URL (identity and REST).
    pub fn marketo_url(&self) -> &str {
        &self.marketo_url
    }

    pub fn salesforce(&self) -> &Salesforce {
        &self.salesforce
    }

    /// The org's credentials (client id/secret, username, JWT public key).
    pub fn salesforce_config(&self) -> &SalesforceConfig {
        self.salesforce.config()
    }

    pub fn marketo(&self) -> &Marketo {
        &self.marketo
    }

    pub fn marketo_credentials(&self) -> &MarketoCredentials {
        &self.marketo_credentials
    }

    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    pub fn log(&self) -> &Arc<RequestLog> {
        &self.log
    }

    pub fn clock(&self) -> &SandboxClock {
        &self.clock
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    /// The object `mqlsync sandbox --json` prints first:
    /// `{"salesforce": {"base_url", "client_id", "client_secret", "username"},
    ///   "marketo": {"base_url", "client_id", "client_secret"}}`.
    pub fn connection_info(&self) -> Value {
        let sf = self.salesforce_config();
        json!({
            "salesforce": {"base_url": self.salesforce_url, "client_id": sf.client_id,
                           "client_secret": sf.client_secret, "username": sf.username},
            "marketo": {"base_url": self.marketo_url,
                        "client_id": self.marketo_credentials.client_id,
                        "client_secret": self.marketo_credentials.client_secret},
        })
    }

    /// [`connection_info`](Self::connection_info) as one line, keys in the documented order
    /// (`salesforce` first), for `mqlsync sandbox --json`.
    pub fn connection_info_line(&self) -> String {
        let info = self.connection_info();
        format!(
            "{{\"salesforce\":{},\"marketo\":{}}}",
            info["salesforce"], info["marketo"]
        )
    }

    /// Stops accepting connections, lets in-flight requests finish (up to 5 s) and stops the
    /// background workers.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let all = futures::future::join_all(self.tasks);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), all).await;
    }
}
