//! The JWTs LibreChat signs for a Code API (`Authorization: Bearer <jwt>`), verified by the
//! rules of LibreChat's official Code API so that one LibreChat configuration works with
//! either server:
//!
//! - EdDSA (Ed25519) or RS256 only; never `none`, never HMAC. The header must name a
//!   configured key (`kid`), and the key's type must fit the algorithm.
//! - `iss` and `aud` must match (`CODEAPI_JWT_ISSUER`, default `librechat`;
//!   `CODEAPI_JWT_AUDIENCE`, default `codeapi`).
//! - Required claims: `sub` (the user), `jti` (≤ 256 characters), `iat`, `nbf`, `exp`,
//!   `principal_source` (`librechat_jwt` or `openid_reuse`), `auth_context_hash`.
//!   `tenant_id` is optional (default `legacy`) unless tenant isolation is strict.
//! - Clock skew of up to 30 s; a lifetime (`exp - iat`) of at most 300 s.
//!
//! Keys come from `CODEAPI_JWT_JWKS_JSON` (a JWK set; keys without `kid` are skipped) and
//! `CODEAPI_JWT_PUBLIC_KEY` (PEM or one JWK) with `CODEAPI_JWT_KID`.

use std::collections::HashMap;
use std::str::FromStr;

use anyhow::{Context, bail};
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use serde_json::Value;

use crate::config::Settings;

/// The algorithms a LibreChat signer can use.
const SUPPORTED: [Algorithm; 2] = [Algorithm::EdDSA, Algorithm::RS256];
const PRINCIPAL_SOURCES: [&str; 2] = ["librechat_jwt", "openid_reuse"];
/// The tenant of a token without `tenant_id` (the official API's name for it).
const SINGLE_TENANT: &str = "legacy";
const MAX_JTI_CHARS: usize = 256;
/// Tenant and user names become labels in the store and the logs: printable and short.
const MAX_NAME_CHARS: usize = 256;

/// What a verified token vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtClaims {
    pub tenant_id: String,
    pub user_id: String,
}

/// Why a token was refused; each reads as the end of "Invalid bearer token: …".
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("it is neither one of this server's API keys nor a well-formed JWT")]
    Malformed,
    #[error("its algorithm '{0}' is not accepted (this server accepts {1})")]
    Algorithm(String, String),
    #[error("its algorithm does not match the type of key '{0}'")]
    KeyMismatch(String),
    #[error("its header names no key id ('kid')")]
    NoKeyId,
    #[error("its key id '{0}' is not one this server knows")]
    UnknownKey(String),
    #[error("its signature does not verify")]
    Signature,
    #[error("it has expired (LibreChat signs a new one for each call; check both clocks)")]
    Expired,
    #[error("it is not valid yet (check both clocks)")]
    NotYetValid,
    #[error("it was issued in the future (check both clocks)")]
    IssuedInFuture,
    #[error("its issuer is not trusted")]
    Issuer,
    #[error("its audience is not this server")]
    Audience,
    #[error("it lacks the claim '{0}'")]
    MissingClaim(String),
    #[error("{0}")]
    Claim(String),
}

struct VerifyingKey {
    key: DecodingKey,
    algorithm: Algorithm,
}

pub struct JwtVerifier {
    issuer: String,
    audience: String,
    allowed: Vec<Algorithm>,
    clock_skew: u64,
    max_lifetime: u64,
    strict_tenant: bool,
    keys: HashMap<String, VerifyingKey>,
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
    typ: Option<String>,
}

/// The claims beyond the registered ones jsonwebtoken checks, kept loose so that each
/// wrong type gets its own sentence.
#[derive(Deserialize)]
struct Claims {
    sub: Option<Value>,
    jti: Option<Value>,
    iat: Option<Value>,
    exp: Option<Value>,
    tenant_id: Option<Value>,
    principal_source: Option<Value>,
    auth_context_hash: Option<Value>,
}

fn algorithm_names(algs: &[Algorithm]) -> String {
    algs.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_algorithm(name: &str, variable: &str) -> anyhow::Result<Algorithm> {
    match Algorithm::from_str(name.trim()) {
        Ok(alg) if SUPPORTED.contains(&alg) => Ok(alg),
        _ => bail!(
            "{variable}: '{}' is not accepted; use EdDSA or RS256",
            name.trim()
        ),
    }
}

impl JwtVerifier {
    /// The verifier the settings ask for, or `None` when no JWT key is configured.
    /// Settings that cannot work stop start-up with a sentence naming the variable.
    pub fn from_settings(s: &Settings) -> anyhow::Result<Option<Self>> {
        let mut keys = HashMap::new();
        if let Some(raw) = s.jwt_jwks_json.as_deref().filter(|v| !v.trim().is_empty()) {
            load_jwks(&mut keys, raw)?;
        }
        match (
            s.jwt_public_key.as_deref().filter(|v| !v.trim().is_empty()),
            s.jwt_kid.as_deref().filter(|v| !v.trim().is_empty()),
        ) {
            (Some(pem), Some(kid)) => {
                let key = public_key(pem).context("CODEAPI_JWT_PUBLIC_KEY")?;
                keys.insert(kid.trim().to_owned(), key);
            }
            (Some(_), None) => bail!(
                "CODEAPI_JWT_KID is required with CODEAPI_JWT_PUBLIC_KEY: the key id LibreChat puts in each token's header"
            ),
            (None, Some(_)) => bail!("CODEAPI_JWT_KID is set but CODEAPI_JWT_PUBLIC_KEY is not"),
            (None, None) => {}
        }
        if keys.is_empty() {
            return Ok(None);
        }
        let mut allowed = Vec::new();
        for name in s
            .jwt_allowed_algs
            .split(',')
            .filter(|n| !n.trim().is_empty())
        {
            let alg = parse_algorithm(name, "CODEAPI_JWT_ALLOWED_ALGS")?;
            if !allowed.contains(&alg) {
                allowed.push(alg);
            }
        }
        if let Some(name) = &s.jwt_algorithm {
            let alg = parse_algorithm(name, "CODEAPI_JWT_ALGORITHM")?;
            if !allowed.contains(&alg) {
                bail!(
                    "CODEAPI_JWT_ALGORITHM={alg:?} is not in CODEAPI_JWT_ALLOWED_ALGS ({})",
                    algorithm_names(&allowed)
                );
            }
            allowed = vec![alg];
        }
        if allowed.is_empty() {
            bail!("CODEAPI_JWT_ALLOWED_ALGS is empty; use EdDSA, RS256 or both");
        }
        Ok(Some(JwtVerifier {
            issuer: s.jwt_issuer.clone(),
            audience: s.jwt_audience.clone(),
            allowed,
            clock_skew: s.jwt_clock_skew_seconds,
            max_lifetime: s.jwt_max_ttl_seconds,
            strict_tenant: s.tenant_isolation_strict,
            keys,
        }))
    }

    pub fn verify(&self, token: &str) -> Result<JwtClaims, TokenError> {
        let header = decode_header(token)?;
        let alg_name = header.alg.unwrap_or_default();
        let allowed = || algorithm_names(&self.allowed);
        let algorithm = Algorithm::from_str(&alg_name)
            .ok()
            .filter(|a| self.allowed.contains(a))
            .ok_or_else(|| TokenError::Algorithm(alg_name.clone(), allowed()))?;
        if header.typ.as_deref().is_some_and(|t| t != "JWT") {
            return Err(TokenError::Malformed);
        }
        let kid = header
            .kid
            .filter(|k| !k.trim().is_empty())
            .ok_or(TokenError::NoKeyId)?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;
        if key.algorithm != algorithm {
            return Err(TokenError::KeyMismatch(kid));
        }

        let mut validation = Validation::new(algorithm);
        validation.leeway = self.clock_skew;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| match e.into_kind() {
                ErrorKind::InvalidSignature => TokenError::Signature,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidIssuer => TokenError::Issuer,
                ErrorKind::InvalidAudience => TokenError::Audience,
                ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c),
                ErrorKind::InvalidAlgorithm => TokenError::KeyMismatch(kid.clone()),
                _ => TokenError::Malformed,
            })?
            .claims;
        self.check_claims(claims)
    }

    /// What jsonwebtoken leaves to us: the LibreChat-specific claims and `iat`.
    fn check_claims(&self, c: Claims) -> Result<JwtClaims, TokenError> {
        let user_id = name(required_string(c.sub, "sub")?, "sub")?;
        let jti = required_string(c.jti, "jti")?;
        if jti.chars().count() > MAX_JTI_CHARS {
            return Err(TokenError::Claim(format!(
                "its 'jti' is longer than {MAX_JTI_CHARS} characters"
            )));
        }
        let source = required_string(c.principal_source, "principal_source")?;
        if !PRINCIPAL_SOURCES.contains(&source.as_str()) {
            return Err(TokenError::Claim(format!(
                "its 'principal_source' '{source}' is not one of {}",
                PRINCIPAL_SOURCES.join(", ")
            )));
        }
        required_string(c.auth_context_hash, "auth_context_hash")?;
        let tenant_id = match c.tenant_id {
            None if self.strict_tenant => return Err(TokenError::MissingClaim("tenant_id".into())),
            None => SINGLE_TENANT.to_owned(),
            Some(v) => name(string_claim(v, "tenant_id")?, "tenant_id")?,
        };
        let iat = number(c.iat, "iat")?;
        let exp = number(c.exp, "exp")?;
        let now = jsonwebtoken::get_current_timestamp() as f64;
        if iat > now + self.clock_skew as f64 {
            return Err(TokenError::IssuedInFuture);
        }
        if exp <= iat {
            return Err(TokenError::Claim("its 'exp' is not after its 'iat'".into()));
        }
        if exp - iat > self.max_lifetime as f64 {
            return Err(TokenError::Claim(format!(
                "it lives longer than {} s ('exp' - 'iat')",
                self.max_lifetime
            )));
        }
        Ok(JwtClaims { tenant_id, user_id })
    }
}

fn decode_header(token: &str) -> Result<Header, TokenError> {
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

fn string_claim(value: Value, claim: &str) -> Result<String, TokenError> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(TokenError::Claim(format!(
            "its '{claim}' must be a non-empty string"
        ))),
    }
}

fn required_string(value: Option<Value>, claim: &str) -> Result<String, TokenError> {
    string_claim(
        value.ok_or_else(|| TokenError::MissingClaim(claim.into()))?,
        claim,
    )
}

/// A tenant or user name: printable and short.
fn name(value: String, claim: &str) -> Result<String, TokenError> {
    if value.chars().count() > MAX_NAME_CHARS || value.chars().any(char::is_control) {
        return Err(TokenError::Claim(format!(
            "its '{claim}' must be at most {MAX_NAME_CHARS} printable characters"
        )));
    }
    Ok(value)
}

fn number(value: Option<Value>, claim: &str) -> Result<f64, TokenError> {
    value
        .ok_or_else(|| TokenError::MissingClaim(claim.into()))?
        .as_f64()
        .ok_or_else(|| TokenError::Claim(format!("its '{claim}' must be a number")))
}

/// A JWK's key and the one algorithm it verifies.
fn jwk_key(jwk: &Jwk) -> anyhow::Result<VerifyingKey> {
    let algorithm = match (&jwk.algorithm, &jwk.common.key_algorithm) {
        (AlgorithmParameters::OctetKeyPair(_), None | Some(KeyAlgorithm::EdDSA)) => {
            Algorithm::EdDSA
        }
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        _ => bail!("only Ed25519 keys (EdDSA) and RSA keys (RS256) are accepted"),
    };
    let key = DecodingKey::from_jwk(jwk).context("the key cannot be read")?;
    Ok(VerifyingKey { key, algorithm })
}

fn load_jwks(keys: &mut HashMap<String, VerifyingKey>, raw: &str) -> anyhow::Result<()> {
    let set: Value =
        serde_json::from_str(raw).context("CODEAPI_JWT_JWKS_JSON is not valid JSON")?;
    let Some(list) = set.get("keys").and_then(Value::as_array) else {
        bail!("CODEAPI_JWT_JWKS_JSON must be a JWK set: {{\"keys\": [...]}}");
    };
    for entry in list {
        // As the official API does: a key without a key id cannot be asked for.
        let Some(kid) = entry.get("kid").and_then(Value::as_str) else {
            continue;
        };
        let key = serde_json::from_value::<Jwk>(entry.clone())
            .map_err(anyhow::Error::from)
            .and_then(|jwk| jwk_key(&jwk))
            .with_context(|| format!("CODEAPI_JWT_JWKS_JSON: key '{kid}'"))?;
        keys.insert(kid.to_owned(), key);
    }
    Ok(())
}

/// A PEM public key (Ed25519 or RSA) or one JWK; `\n` escapes stand for newlines, as in
/// a one-line environment variable.
fn public_key(value: &str) -> anyhow::Result<VerifyingKey> {
    let text = value.replace("\\n", "\n");
    let text = text.trim();
    if text.starts_with('{') {
        let jwk: Jwk = serde_json::from_str(text).context("not a valid JWK")?;
        return jwk_key(&jwk);
    }
    if let Ok(key) = DecodingKey::from_ed_pem(text.as_bytes()) {
        return Ok(VerifyingKey {
            key,
            algorithm: Algorithm::EdDSA,
        });
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(text.as_bytes()) {
        return Ok(VerifyingKey {
            key,
            algorithm: Algorithm::RS256,
        });
    }
    bail!("not a PEM Ed25519 or RSA public key, nor a JWK")
}
