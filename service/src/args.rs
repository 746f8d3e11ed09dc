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
    /// NATS credentials file (a user JWT and nkey seed, from
    /// `ocs-credentials mint` or nsc).
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
            // A credential's user is named in its JWT, and its replies come
            // to that name's inboxes as with a password (see below).
            let text = tokio::fs::read_to_string(creds).await?;
            if let Some(prefix) = creds_user_name(&text)
                .as_deref()
                .and_then(ocs_protocol::subject::inbox_prefix)
            {
                options = options.custom_inbox_prefix(prefix);
            }
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

/// The user named in a `.creds` file's JWT (its `name` claim), unverified:
/// the server checks the JWT, this only chooses the inbox prefix.
pub fn creds_user_name(creds: &str) -> Option<String> {
    let mut lines = creds.lines().map(str::trim);
    lines.find(|line| line.starts_with("-----BEGIN NATS USER JWT"))?;
    let jwt = lines.next()?;
    let claims = jwt.split('.').nth(1)?.trim_end_matches('=');
    let claims = data_encoding::BASE64URL_NOPAD
        .decode(claims.as_bytes())
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&claims).ok()?;
    Some(claims.get("name")?.as_str()?.to_owned())
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

#[cfg(test)]
mod tests {
    use super::creds_user_name;

    /// A credential as `ocs-credentials mint` and nsc write it, for the user "faker1".
    const CREDS: &str = "-----BEGIN NATS USER JWT-----
eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJuYW1lIjoiZmFrZXIxIiwic3ViIjoiVUFCQyJ9.c2ln
------END NATS USER JWT------

-----BEGIN USER NKEY SEED-----
SUAEXAMPLE
------END USER NKEY SEED------
";

    #[test]
    fn the_user_of_a_credential_is_the_name_in_its_jwt() {
        assert_eq!(creds_user_name(CREDS).as_deref(), Some("faker1"));
    }

    #[test]
    fn a_file_that_is_not_a_credential_names_no_user() {
        assert_eq!(creds_user_name(""), None);
        assert_eq!(
            creds_user_name("-----BEGIN NATS USER JWT-----\nnot.a-jwt!\n"),
            None
        );
        let no_name = CREDS.replace(
            "eyJuYW1lIjoiZmFrZXIxIiwic3ViIjoiVUFCQyJ9",
            "eyJzdWIiOiJVQUJDIn0",
        );
        assert_eq!(creds_user_name(&no_name), None);
    }
}
