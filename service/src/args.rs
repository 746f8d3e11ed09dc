//! The command line every service, agent and the `ocs` client share: NATS
//! URL and authentication, address root, logging, and the site file whose
//! entry for an instance supplies its arguments.

use async_nats::ConnectOptions;
use clap::{Args, ValueEnum};
use ocs_protocol::AddressRoot;

/// Options every service, agent and the `ocs` client take.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// First token of every agent address.
    #[arg(long, env = "OCS_ADDRESS_ROOT", default_value = "observatory")]
    pub address_root: AddressRoot,
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Site file: agents take their arguments from their instance's entry
    /// (command-line arguments override them).
    #[arg(long, env = crate::site::SITE_FILE_ENV)]
    pub site_file: Option<std::path::PathBuf>,
    /// This host's name in the site file (default: the host name).
    #[arg(long, env = crate::site::SITE_HOST_ENV)]
    pub site_host: Option<String>,
    /// How to authenticate to NATS and check its certificate.
    #[command(flatten)]
    pub nats_auth: NatsAuth,
}

/// NATS authentication and TLS. Secrets are best given by environment
/// variable or file: command-line arguments show in `ps`.
#[derive(Debug, Clone, Default, Args)]
pub struct NatsAuth {
    /// NATS user name (with --nats-password).
    #[arg(long, env = "NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// NATS password.
    #[arg(
        long,
        env = "NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    pub nats_password: Option<String>,
    /// NATS credentials file (a user JWT and nkey seed, from nsc).
    #[arg(long, env = "NATS_CREDS", conflicts_with = "nats_user")]
    pub nats_creds: Option<std::path::PathBuf>,
    /// CA certificate (PEM) to check the server's with; implies TLS.
    #[arg(long, env = "NATS_TLS_CA")]
    pub nats_tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for servers that verify clients (with --nats-tls-key).
    #[arg(long, env = "NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<std::path::PathBuf>,
    /// Client certificate key (PEM).
    #[arg(long, env = "NATS_TLS_KEY", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<std::path::PathBuf>,
}

impl NatsAuth {
    /// Fresh connect options with these settings; a credentials file that
    /// cannot be read is a connection error.
    pub(crate) async fn options(&self) -> Result<ConnectOptions, async_nats::ConnectError> {
        self.apply(ConnectOptions::new()).await.map_err(|err| {
            async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::Io, err)
        })
    }

    /// `options` with these credentials and TLS settings.
    pub async fn apply(&self, mut options: ConnectOptions) -> std::io::Result<ConnectOptions> {
        if let Some(creds) = &self.nats_creds {
            options = options.credentials_file(creds).await?;
        }
        if let (Some(user), Some(password)) = (&self.nats_user, &self.nats_password) {
            options = options.user_and_password(user.clone(), password.clone());
            // Replies come to this user's own inboxes, which the server's
            // permissions keep from every other user.
            if let Some(prefix) = ocs_protocol::subject::inbox_prefix(user) {
                options = options.custom_inbox_prefix(prefix);
            }
        }
        if let Some(ca) = &self.nats_tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.nats_tls_cert, &self.nats_tls_key) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        Ok(options)
    }
}

/// Parses the command line of an agent or service, with its arguments from
/// the site file put first (see [`crate::site::with_site_arguments`]); a bad
/// site file ends the process with its file, line and reason.
pub fn parse_with_site<C: clap::Parser>() -> C {
    match crate::site::with_site_arguments(std::env::args_os()) {
        Ok(args) => C::parse_from(args),
        Err(err) => {
            eprintln!("error: {err}");
            std::process::exit(2);
        }
    }
}

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
