//! `ocs-credentials`: makes a site's NATS authority and mints credentials.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ocs_credentials::{Authority, Role, Site, store};
use ocs_protocol::{AddressRoot, InstanceId};

/// NATS credentials for ocs-nats: one operator and account per site, one
/// scoped signing key per role, one credential per user.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The authority's directory (keys readable by their owner only).
    #[arg(long, env = "OCS_CREDENTIALS_DIR")]
    dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Makes the operator, the accounts and the role keys, and writes the
    /// server's configuration (`DIR/server.conf`); once per site.
    Init {
        /// First token of every agent address.
        #[arg(long, env = "OCS_ADDRESS_ROOT", default_value = "observatory")]
        address_root: AddressRoot,
        /// Instance id of the registry whose feed monitors and boards read.
        #[arg(long, default_value = "registry")]
        registry: InstanceId,
    },
    /// Mints a credential: for an agent, its instance id is the name.
    Mint {
        /// The role, whose key signs and whose permissions the user gets.
        #[arg(long, value_enum)]
        role: Role,
        /// The user's name: an agent's or registry's instance id, or a
        /// person's login (one subject token).
        name: String,
        /// Where to write the `.creds` file (default `DIR/users/<name>.creds`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Days until the credential expires (default: never).
        #[arg(long)]
        valid_days: Option<u32>,
    },
    /// Revokes every credential minted for a name so far (a lost laptop, a
    /// decommissioned agent): rewrites `DIR/server.conf`; the server refuses
    /// them, and drops their connections, once it reloads. A credential
    /// minted for the name afterwards works.
    Revoke {
        /// The user's name, as minted.
        name: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Init {
            address_root,
            registry,
        } => {
            let site = Site {
                root: address_root,
                registry,
            };
            store::save(&cli.dir, &Authority::generate(site))?;
            println!(
                "authority written to {}; include {} from nats-server's configuration",
                cli.dir.display(),
                cli.dir.join(store::SERVER_CONFIG).display()
            );
        }
        Command::Mint {
            role,
            name,
            out,
            valid_days,
        } => {
            let expires_at = valid_days
                .map(|days| chrono::Utc::now().timestamp() + i64::from(days) * 24 * 60 * 60);
            let credential = store::mint(&cli.dir, role, &name, expires_at)?;
            let out = out.unwrap_or_else(|| cli.dir.join("users").join(format!("{name}.creds")));
            store::write_secret(&out, &credential.creds_file())
                .with_context(|| format!("credential of {name}"))?;
            println!("{}", out.display());
        }
        Command::Revoke { name } => {
            let revoked = store::revoke(&cli.dir, &name)?;
            println!(
                "revoked {revoked} credential(s) of {name} in {}; reload nats-server to apply \
                 (systemctl reload nats-server, or nats-server --signal reload)",
                cli.dir.join(store::SERVER_CONFIG).display()
            );
        }
    }
    Ok(())
}
