//! The keys that vouch for every user of a site's bus, and the JWTs they sign.
//!
//! NATS's decentralised model: an operator key signs the accounts; the
//! account `OCS` lists one scoped signing key per [`Role`], each carrying
//! its role's permission template; a user's credential is a JWT naming the
//! user, signed by its role's key. The server trusts the operator, so a new
//! credential needs no change to the server's configuration, and the server,
//! not the credential, decides what the user may do.

use std::collections::BTreeMap;

use nats_io_jwt::{
    Account, KeyPair, Operator, OperatorLimits, Permission, ResponsePermission, RevocationList,
    ScopeType, SigningKeys, SigningKeysItem, StringList, SystemAccount, Token, User,
    UserPermissionLimits, UserScope,
};

use crate::role::{Role, Site, Template};

/// Why keys could not be read or a credential not minted.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// A seed is not an nkey seed of the expected kind.
    #[error("{what}: not a valid {kind} seed: {reason}")]
    BadSeed {
        /// Which key.
        what: String,
        /// The kind of key expected.
        kind: &'static str,
        /// What nkeys said.
        reason: String,
    },
    /// A user name that cannot stand as one subject token.
    #[error("user name {0}")]
    BadName(#[from] ocs_protocol::address::NameError),
    /// The account JWT to amend is not one this operator signed.
    #[error("the account JWT {0}")]
    BadAccountJwt(String),
}

/// Every key of a site, and the site its templates are written for.
pub struct Authority {
    /// Signs the accounts; the server trusts it.
    pub operator: KeyPair,
    /// The server's own account (monitoring and account updates).
    pub system_account: KeyPair,
    /// The account every ocs-nats user belongs to.
    pub account: KeyPair,
    /// One scoped signing key per role.
    pub signing_keys: BTreeMap<Role, KeyPair>,
    /// Address root and registry the templates name.
    pub site: Site,
}

/// The operator's name in its JWT.
const OPERATOR_NAME: &str = "ocs-nats";
/// The account of every ocs-nats user.
const ACCOUNT_NAME: &str = "OCS";
/// The system account.
const SYSTEM_ACCOUNT_NAME: &str = "SYS";

impl Authority {
    /// Fresh keys for `site`.
    pub fn generate(site: Site) -> Self {
        Authority {
            operator: KeyPair::new_operator(),
            system_account: KeyPair::new_account(),
            account: KeyPair::new_account(),
            signing_keys: Role::ALL
                .into_iter()
                .map(|role| (role, KeyPair::new_account()))
                .collect(),
            site,
        }
    }

    /// The nats-server configuration that trusts this authority: the
    /// operator, the system account and both accounts' JWTs preloaded in a
    /// memory resolver. Include it from the server's configuration in
    /// place of `permissions.conf`.
    pub fn server_config(&self) -> String {
        let operator = Operator {
            system_account: Some(SystemAccount(self.system_account.public_key())),
            ..Operator::default()
        };
        let operator_jwt = Token::new(self.operator.public_key())
            .name(OPERATOR_NAME)
            .claims(operator)
            .sign(&self.operator);
        let system_jwt = Token::new(self.system_account.public_key())
            .name(SYSTEM_ACCOUNT_NAME)
            .claims(Account::default())
            .sign(&self.operator);
        let account_jwt = Token::new(self.account.public_key())
            .name(ACCOUNT_NAME)
            .claims(self.account_claims())
            .sign(&self.operator);
        format!(
            "# Written by `ocs-credentials init`: the server trusts this operator's\n\
             # accounts, and every user of account {ACCOUNT_NAME} gets the permissions of\n\
             # the role whose key signed its credential. Minting credentials never\n\
             # changes this file. Keep it with the server's configuration.\n\
             operator: \"{operator_jwt}\"\n\
             system_account: \"{system}\"\n\
             resolver: MEMORY\n\
             resolver_preload: {{\n  \
               {system}: \"{system_jwt}\"\n  \
               {account}: \"{account_jwt}\"\n\
             }}\n",
            system = self.system_account.public_key(),
            account = self.account.public_key(),
        )
    }

    /// The account `OCS`: JetStream allowed, bearer tokens refused, and one
    /// scoped signing key per role with the role's template.
    fn account_claims(&self) -> Account {
        let scopes = self
            .signing_keys
            .iter()
            .map(|(role, key)| {
                SigningKeysItem::UserScope(UserScope {
                    key: Some(key.public_key()),
                    kind: ScopeType::UserScope,
                    role: Some(role.as_str().to_owned()),
                    description: Some(format!("ocs-nats role {role}")),
                    template: Some(permission_limits(&self.site.template(*role))),
                })
            })
            .collect();
        Account {
            limits: Some(OperatorLimits {
                disallow_bearer: true,
                ..OperatorLimits::default()
            }),
            signing_keys: Some(SigningKeys(scopes)),
            ..Account::default()
        }
    }
}

/// A template as JWT permissions: unlimited subscriptions and sizes (the
/// server's own limits apply), never a bearer token.
fn permission_limits(template: &Template) -> UserPermissionLimits {
    let allow = |subjects: &[String]| Permission {
        allow: Some(StringList(subjects.to_vec())),
        deny: None,
    };
    UserPermissionLimits {
        bearer_token: false,
        pub_: Some(allow(&template.publish)),
        sub: Some(allow(&template.subscribe)),
        resp: template.answers_requests.then_some(ResponsePermission {
            max: Some(1),
            ttl: Some(0),
        }),
        ..UserPermissionLimits::default()
    }
}

/// A user's credential: its JWT and its own nkey seed, in the `.creds`
/// format every NATS client reads.
pub struct Credential {
    /// The user's public key: what a revocation names.
    pub user: String,
    /// The signed user JWT.
    pub jwt: String,
    /// The user's nkey seed: the secret that proves the JWT is its own.
    pub seed: String,
}

impl Credential {
    /// The text of a `.creds` file.
    pub fn creds_file(&self) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n",
            jwt = self.jwt,
            seed = self.seed,
        )
    }
}

/// Mints a credential for the user `name` of account `account` (its public
/// key), signed by a role's scoped `signing_key`. The server gives it the
/// role's permissions with `name` filled in, so the credential itself
/// carries none; `expires_at` is a Unix time in seconds.
pub fn mint(
    account: &str,
    signing_key: &KeyPair,
    name: &str,
    expires_at: Option<i64>,
) -> Result<Credential, AuthorityError> {
    ocs_protocol::address::validate_token("user name", name)?;
    let user_key = KeyPair::new_user();
    // A scoped key's users must carry empty permissions and limits: the
    // server refuses any other, and applies the scope's template.
    let user = User {
        issuer_account: Some(account.to_owned()),
        bearer_token: false,
        data: 0,
        payload: 0,
        subs: 0,
        ..User::default()
    };
    let token = Token::new(user_key.public_key()).name(name).claims(user);
    let token = match expires_at {
        Some(at) => token.expires(at),
        None => token,
    };
    Ok(Credential {
        user: user_key.public_key(),
        jwt: token.sign(signing_key),
        seed: user_key.seed().expect("a generated key has its seed"),
    })
}

/// `account_jwt` amended and signed again by `operator`, with the users
/// `revoked` (public keys) revoked as of `at` (Unix seconds): the server
/// refuses any credential of theirs issued until then and closes their
/// connections. Revocations already in it stay.
pub fn revoke(
    account_jwt: &str,
    operator: &KeyPair,
    revoked: &[String],
    at: i64,
) -> Result<String, AuthorityError> {
    let bad = |reason: &str| AuthorityError::BadAccountJwt(reason.to_owned());
    let claims = verified_claims(account_jwt, operator).map_err(bad)?;
    if claims["nats"]["type"] != "account" {
        return Err(bad("is not an account's"));
    }
    let mut account: Account = serde_json::from_value(claims["nats"].clone())
        .map_err(|_| bad("has account claims that cannot be read"))?;
    let subject = claims["sub"]
        .as_str()
        .ok_or_else(|| bad("names no account"))?;
    let revocations = account
        .revocations
        .get_or_insert_with(|| RevocationList(Default::default()));
    for user in revoked {
        let key = user
            .parse()
            .map_err(|_| bad("cannot hold the revocation"))?;
        revocations.0.insert(key, at);
    }
    let token = Token::new(subject).claims(account);
    let token = match claims["name"].as_str() {
        Some(name) => token.name(name),
        None => token,
    };
    Ok(token.sign(operator))
}

/// The claims of `jwt`, once its signature is checked against `signer`; or
/// why not.
fn verified_claims(jwt: &str, signer: &KeyPair) -> Result<serde_json::Value, &'static str> {
    let (signed, signature) = jwt.rsplit_once('.').ok_or("is not a JWT")?;
    let signature = data_encoding::BASE64URL_NOPAD
        .decode(signature.as_bytes())
        .map_err(|_| "has a malformed signature")?;
    signer
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| "is not signed by this authority's operator")?;
    let body = signed.split('.').nth(1).ok_or("is not a JWT")?;
    // Read as JSON, not as `Claims`: that enum is untagged, and an account's
    // claims would read as an operator's, losing the account's fields.
    data_encoding::BASE64URL_NOPAD
        .decode(body.as_bytes())
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or("has claims that cannot be read")
}

/// Reads a seed of an account key (the account's or a signing key).
pub fn account_key(what: &str, seed: &str) -> Result<KeyPair, AuthorityError> {
    let bad = |reason: String| AuthorityError::BadSeed {
        what: what.to_owned(),
        kind: "account",
        reason,
    };
    let key = KeyPair::from_seed(seed.trim()).map_err(|err| bad(err.to_string()))?;
    if key.key_pair_type() != nats_io_jwt::KeyPairType::Account {
        return Err(bad(format!("it is a {:?} key", key.key_pair_type())));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocs_protocol::{AddressRoot, InstanceId};

    fn authority() -> Authority {
        Authority::generate(Site {
            root: AddressRoot::new("observatory").unwrap(),
            registry: InstanceId::new("registry").unwrap(),
        })
    }

    /// The claims of a JWT, after checking its signature against `signer`.
    fn verified(jwt: &str, signer: &str) -> serde_json::Value {
        let signer = KeyPair::from_public_key(signer).unwrap();
        verified_claims(jwt, &signer).expect("signed by the expected key")
    }

    /// The JWT quoted after `key: ` in the server configuration.
    fn configured_jwt(config: &str, key: &str) -> String {
        let line = config
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{key}:")))
            .unwrap_or_else(|| panic!("no {key} in {config}"));
        line.split('"').nth(1).unwrap().to_owned()
    }

    #[test]
    fn a_minted_credential_names_its_user_and_carries_no_permissions_of_its_own() {
        let authority = authority();
        let signer = &authority.signing_keys[&Role::Agent];
        let account = authority.account.public_key();
        let credential = mint(&account, signer, "faker3", Some(2_000_000_000)).unwrap();
        let claims = verified(&credential.jwt, &signer.public_key());
        assert_eq!(claims["name"], "faker3");
        assert_eq!(claims["exp"], 2_000_000_000);
        let user = &claims["nats"];
        assert_eq!(user["type"], "user");
        assert_eq!(user["issuer_account"], account.as_str());
        assert_eq!(user["bearer_token"], false);
        for absent in ["pub", "sub", "resp"] {
            assert!(user.get(absent).is_none(), "{absent} in {user}");
        }
        let seed = KeyPair::from_seed(&credential.seed).unwrap();
        assert_eq!(claims["sub"], seed.public_key().as_str());
        let file = credential.creds_file();
        assert!(file.contains(&format!(
            "-----BEGIN NATS USER JWT-----\n{}\n",
            credential.jwt
        )));
        assert!(file.contains(&format!(
            "-----BEGIN USER NKEY SEED-----\n{}\n",
            credential.seed
        )));
    }

    #[test]
    fn a_name_that_is_not_one_token_is_refused() {
        let authority = authority();
        let signer = &authority.signing_keys[&Role::Agent];
        for name in ["faker1.ops", "*", ">", "", "a b"] {
            assert!(
                mint(&authority.account.public_key(), signer, name, None).is_err(),
                "{name:?}"
            );
        }
    }

    #[test]
    fn the_server_config_trusts_the_operator_and_scopes_every_role() {
        let authority = authority();
        let config = authority.server_config();
        let operator = authority.operator.public_key();
        let operator_claims = verified(&configured_jwt(&config, "operator"), &operator);
        assert_eq!(
            operator_claims["nats"]["system_account"],
            authority.system_account.public_key().as_str()
        );
        let account_claims = verified(
            &configured_jwt(&config, &authority.account.public_key()),
            &operator,
        );
        let account = &account_claims["nats"];
        assert_eq!(account["limits"]["disallow_bearer"], true);
        assert_ne!(account["limits"]["disk_storage"], 0, "JetStream is allowed");
        let scopes = account["signing_keys"].as_array().unwrap();
        assert_eq!(scopes.len(), Role::ALL.len());
        for (role, key) in &authority.signing_keys {
            let scope = scopes
                .iter()
                .find(|scope| scope["key"] == key.public_key().as_str())
                .unwrap_or_else(|| panic!("no scope for {role}"));
            assert_eq!(scope["kind"], "user_scope");
            assert_eq!(scope["role"], role.as_str());
            let template = authority.site.template(*role);
            assert_eq!(
                scope["template"]["pub"]["allow"],
                serde_json::json!(template.publish)
            );
            assert_eq!(
                scope["template"]["sub"]["allow"],
                serde_json::json!(template.subscribe)
            );
            assert_eq!(
                scope["template"].get("resp").is_some(),
                template.answers_requests
            );
            assert_eq!(scope["template"]["bearer_token"], false);
        }
        verified(
            &configured_jwt(&config, &authority.system_account.public_key()),
            &operator,
        );
        assert!(config.contains(&format!(
            "system_account: \"{}\"",
            authority.system_account.public_key()
        )));
    }

    #[test]
    fn a_revocation_amends_the_account_and_keeps_everything_else() {
        let authority = authority();
        let operator = authority.operator.public_key();
        let account_key = authority.account.public_key();
        let config = authority.server_config();
        let before = configured_jwt(&config, &account_key);
        let signer = &authority.signing_keys[&Role::Agent];
        let lost = mint(&account_key, signer, "faker1", None).unwrap();
        let other = mint(&account_key, signer, "faker2", None).unwrap();

        let once = revoke(
            &before,
            &authority.operator,
            std::slice::from_ref(&lost.user),
            1_000,
        )
        .unwrap();
        let twice = revoke(
            &once,
            &authority.operator,
            std::slice::from_ref(&other.user),
            2_000,
        )
        .unwrap();
        let claims = verified(&twice, &operator);
        assert_eq!(claims["sub"], account_key.as_str());
        assert_eq!(claims["name"], ACCOUNT_NAME);
        assert_eq!(
            claims["nats"]["revocations"],
            serde_json::json!({lost.user.as_str(): 1_000, other.user.as_str(): 2_000})
        );
        let mut kept = claims["nats"].clone();
        kept.as_object_mut().unwrap().remove("revocations");
        assert_eq!(kept, verified(&before, &operator)["nats"]);

        let stranger = KeyPair::new_operator();
        assert!(matches!(
            revoke(&before, &stranger, &[lost.user], 1_000),
            Err(AuthorityError::BadAccountJwt(_))
        ));
    }

    #[test]
    fn seeds_of_the_wrong_kind_are_refused() {
        let user = KeyPair::new_user().seed().unwrap();
        assert!(account_key("signing/agent.nk", &user).is_err());
        assert!(account_key("x", "not a seed").is_err());
        let account = KeyPair::new_account().seed().unwrap();
        assert!(account_key("account.nk", &format!("{account}\n")).is_ok());
    }
}
