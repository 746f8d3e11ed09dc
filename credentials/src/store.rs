//! The authority's directory: seeds readable by their owner only, the
//! account's public key, and the server's configuration.
//!
//! ```text
//! DIR/server.conf            include from nats-server's configuration
//! DIR/account.pub            the account users belong to
//! DIR/operator.nk            seeds: the operator, the accounts,
//! DIR/system-account.nk             and one signing key per role; minting
//! DIR/account.nk                    a role's users needs only its own
//! DIR/signing/<role>.nk
//! DIR/minted.tsv             every credential minted: when, role, name, key
//! ```

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::authority::{self, Authority, Credential};
use crate::role::Role;

/// The nats-server configuration file in the directory.
pub const SERVER_CONFIG: &str = "server.conf";
const ACCOUNT_PUBLIC: &str = "account.pub";
/// One line per credential minted: Unix time, role, name, the user's public
/// key. A revocation looks up a name's keys here.
const MINTED: &str = "minted.tsv";

fn signing_key_path(dir: &Path, role: Role) -> PathBuf {
    dir.join("signing").join(format!("{role}.nk"))
}

/// Writes `text` to a new file readable by its owner only; an existing file
/// is an error, so that no key or credential is ever replaced by accident.
pub fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

/// Writes a new authority's keys and server configuration into `dir`,
/// which must not hold one already.
pub fn save(dir: &Path, authority: &Authority) -> anyhow::Result<()> {
    if dir.join("operator.nk").exists() {
        bail!(
            "{} already holds an authority (operator.nk): keys are never replaced",
            dir.display()
        );
    }
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restrict {}", dir.display()))?;
    let seed = |key: &nkeys::KeyPair| key.seed().expect("generated keys have seeds") + "\n";
    write_secret(&dir.join("operator.nk"), &seed(&authority.operator))?;
    write_secret(
        &dir.join("system-account.nk"),
        &seed(&authority.system_account),
    )?;
    write_secret(&dir.join("account.nk"), &seed(&authority.account))?;
    for (role, key) in &authority.signing_keys {
        write_secret(&signing_key_path(dir, *role), &seed(key))?;
    }
    fs::write(
        dir.join(ACCOUNT_PUBLIC),
        authority.account.public_key() + "\n",
    )
    .with_context(|| format!("write {}", dir.join(ACCOUNT_PUBLIC).display()))?;
    let config = dir.join(SERVER_CONFIG);
    fs::write(&config, authority.server_config())
        .with_context(|| format!("write {}", config.display()))
}

/// Mints a credential for `name` in `role` with the keys in `dir`: the
/// role's signing key and the account's public key, nothing else. Notes it
/// in `DIR/minted.tsv` so that it can be revoked by name.
pub fn mint(
    dir: &Path,
    role: Role,
    name: &str,
    expires_at: Option<i64>,
) -> anyhow::Result<Credential> {
    let account = read(&dir.join(ACCOUNT_PUBLIC))?;
    let signing_path = signing_key_path(dir, role);
    let signing =
        authority::account_key(&signing_path.display().to_string(), &read(&signing_path)?)?;
    let credential = authority::mint(account.trim(), &signing, name, expires_at)?;
    let ledger = dir.join(MINTED);
    let mut minted = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&ledger)
        .with_context(|| format!("open {}", ledger.display()))?;
    writeln!(
        minted,
        "{}\t{role}\t{name}\t{}",
        chrono::Utc::now().timestamp(),
        credential.user
    )
    .with_context(|| format!("write {}", ledger.display()))?;
    Ok(credential)
}

/// Revokes every credential minted for `name` until now: the account's JWT
/// in `DIR/server.conf` gets their keys as revoked, signed again by the
/// operator. Takes effect when the server reloads its configuration.
/// Returns how many credentials were revoked.
pub fn revoke(dir: &Path, name: &str) -> anyhow::Result<usize> {
    let ledger = dir.join(MINTED);
    let keys: Vec<String> = read(&ledger)?
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            (fields.len() == 4 && fields[2] == name).then(|| fields[3].to_owned())
        })
        .collect();
    if keys.is_empty() {
        bail!("{}: no credential was minted for {name}", ledger.display());
    }
    let operator_path = dir.join("operator.nk");
    let operator = nkeys::KeyPair::from_seed(read(&operator_path)?.trim())
        .with_context(|| format!("{}: not an nkey seed", operator_path.display()))?;
    let config_path = dir.join(SERVER_CONFIG);
    let config = read(&config_path)?;
    let account = read(&dir.join(ACCOUNT_PUBLIC))?;
    let preload = format!("{}: \"", account.trim());
    let start = config
        .find(&preload)
        .map(|at| at + preload.len())
        .with_context(|| format!("{}: the account's JWT is not there", config_path.display()))?;
    let end = start
        + config[start..]
            .find('"')
            .with_context(|| format!("{}: the account's JWT is cut", config_path.display()))?;
    let amended = authority::revoke(
        &config[start..end],
        &operator,
        &keys,
        chrono::Utc::now().timestamp(),
    )
    .with_context(|| config_path.display().to_string())?;
    // Written beside and renamed over: a server reloading meanwhile reads
    // the old file or the new one, never half of one.
    let partial = dir.join(format!("{SERVER_CONFIG}.new"));
    fs::write(
        &partial,
        format!("{}{amended}{}", &config[..start], &config[end..]),
    )
    .with_context(|| format!("write {}", partial.display()))?;
    fs::rename(&partial, &config_path)
        .with_context(|| format!("replace {}", config_path.display()))?;
    Ok(keys.len())
}

fn read(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}
