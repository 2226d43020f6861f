//! LibreChat's identity and stateful-profile contract, as its official Code API has it:
//! JWTs that LibreChat signs (EdDSA and RS256; every way a token can be wrong), API keys
//! beside them, tenants from `tenant_id` and users from `sub`, `runtime_session_hint`
//! with `runtime_status` (also after a crash and an eviction), the execution-profile
//! headers and the per-user rate limit (`/exec` and new programmatic runs).

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{KEY_A, TestServer};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::StatusCode;
use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");
const ED_KID: &str = "librechat-ed-1";
const RSA_KID: &str = "librechat-rsa-1";
/// A well-formed session id nobody owns.
const NO_SESSION: &str = "AAAAAAAAAAAAAAAAAAAAA";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The claims LibreChat puts into a Code API token.
fn claims(user: &str, tenant: &str) -> Value {
    let now = now();
    json!({
        "iss": "librechat", "aud": "codeapi", "sub": user, "tenant_id": tenant,
        "jti": format!("jti-{user}-{now}"), "iat": now, "nbf": now, "exp": now + 240,
        "role": "USER", "principal_source": "librechat_jwt", "auth_context_hash": "h-1234",
    })
}

fn ed_token(claims: &Value) -> String {
    sign(Algorithm::EdDSA, ED_KID, "ed25519.pem", claims)
}

fn sign(alg: Algorithm, kid: &str, private_key: &str, claims: &Value) -> String {
    let pem = fixture(private_key);
    let key = match alg {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    encode(&header, claims, &key).unwrap()
}

/// A token whose header and payload are what a forger writes, with no signature.
fn unsigned(header: Value, claims: &Value) -> String {
    use base64::Engine;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    format!("{}.{}.", b64(&header), b64(claims))
}

/// A server that takes both API keys and LibreChat's JWTs: the Ed25519 key as PEM with
/// its kid, the RSA key in a JWK set.
async fn jwt_server(extra: &[(&str, &str)]) -> TestServer {
    let jwk: Value = serde_json::from_str(&fixture("rsa.pub.jwk.json")).unwrap();
    let mut jwk = jwk.as_object().unwrap().clone();
    jwk.insert("kid".into(), RSA_KID.into());
    jwk.insert("alg".into(), "RS256".into());
    let jwks = json!({"keys": [jwk, {"kty": "oct", "k": "c2VjcmV0"}]}).to_string();
    let public = fixture("ed25519.pub.pem");
    let mut env = vec![
        ("CODEAPI_JWT_PUBLIC_KEY", public.as_str()),
        ("CODEAPI_JWT_KID", ED_KID),
        ("CODEAPI_JWT_JWKS_JSON", jwks.as_str()),
    ];
    env.extend_from_slice(extra);
    TestServer::start(&env).await
}

async fn list_with_token(server: &TestServer, token: &str) -> (StatusCode, Value) {
    let r = server
        .client
        .get(server.url(&format!("/v1/files/{NO_SESSION}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn exec_with_token(server: &TestServer, token: &str, body: Value) -> (StatusCode, Value) {
    let r = server
        .client
        .post(server.url("/v1/exec"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn valid_eddsa_and_rs256_tokens_are_accepted_and_api_keys_still_work() {
    let server = jwt_server(&[]).await;
    let c = claims("user-1", "acme");
    for token in [ed_token(&c), sign(Algorithm::RS256, RSA_KID, "rsa.pem", &c)] {
        let (status, body) = list_with_token(&server, &token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, json!([]));
    }
    // Without tenant_id the token is the official API's single tenant.
    let mut no_tenant = claims("user-1", "x");
    no_tenant.as_object_mut().unwrap().remove("tenant_id");
    assert_eq!(
        list_with_token(&server, &ed_token(&no_tenant)).await.0,
        StatusCode::OK
    );
    let r = server
        .fetch(&format!("/v1/files/{NO_SESSION}"), KEY_A)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn every_wrong_token_is_a_401_that_says_why() {
    let server = jwt_server(&[("CODEAPI_TENANT_ISOLATION_STRICT", "true")]).await;
    let base = claims("user-1", "acme");
    let with = |changes: Value| {
        let mut c = base.clone();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let t = now();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            ed_token(&with(
                json!({"iat": t - 400, "nbf": t - 400, "exp": t - 120}),
            )),
            "expired",
        ),
        (
            "not yet valid",
            ed_token(&with(json!({"nbf": t + 120, "exp": t + 240}))),
            "not valid yet",
        ),
        (
            "issued in the future",
            ed_token(&with(json!({"iat": t + 120, "nbf": t, "exp": t + 240}))),
            "future",
        ),
        (
            "wrong key",
            sign(Algorithm::EdDSA, ED_KID, "ed25519-other.pem", &base),
            "signature",
        ),
        (
            "wrong issuer",
            ed_token(&with(json!({"iss": "someone-else"}))),
            "issuer",
        ),
        (
            "wrong audience",
            ed_token(&with(json!({"aud": "another-api"}))),
            "audience",
        ),
        (
            "alg none",
            unsigned(json!({"alg": "none", "kid": ED_KID, "typ": "JWT"}), &base),
            "algorithm 'none'",
        ),
        (
            "HS256",
            unsigned(json!({"alg": "HS256", "kid": ED_KID}), &base),
            "algorithm 'HS256'",
        ),
        (
            "RS256 header on the Ed25519 key",
            sign(Algorithm::RS256, ED_KID, "rsa.pem", &base),
            "does not match",
        ),
        (
            "unknown kid",
            sign(Algorithm::EdDSA, "nobody", "ed25519.pem", &base),
            "key id 'nobody'",
        ),
        ("no jti", ed_token(&with(json!({"jti": null}))), "'jti'"),
        ("no sub", ed_token(&with(json!({"sub": null}))), "'sub'"),
        ("no nbf", ed_token(&with(json!({"nbf": null}))), "'nbf'"),
        (
            "no auth_context_hash",
            ed_token(&with(json!({"auth_context_hash": null}))),
            "'auth_context_hash'",
        ),
        (
            "untrusted principal_source",
            ed_token(&with(json!({"principal_source": "api_key"}))),
            "'principal_source'",
        ),
        (
            "no tenant_id under strict isolation",
            ed_token(&with(json!({"tenant_id": null}))),
            "'tenant_id'",
        ),
        (
            "lives longer than 300 s",
            ed_token(&with(json!({"exp": t + 600}))),
            "longer than 300 s",
        ),
        (
            "neither a key nor a JWT",
            "not-a-token".to_owned(),
            "nor a well-formed JWT",
        ),
    ];
    for (case, token, says) in cases {
        let (status, body) = list_with_token(&server, &token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}: {body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{case}: {detail}");
        assert_eq!(body["error"], "invalid_token", "{case}");
    }
}

#[tokio::test]
async fn tenants_come_from_tenant_id_and_never_see_each_other() {
    let server = jwt_server(&[]).await;
    let acme = ed_token(&claims("user-1", "acme"));
    let (status, made) = exec_with_token(
        &server,
        &acme,
        json!({"lang": "bash", "code": "echo hi > /mnt/data/a.txt"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    let sid = made["session_id"].as_str().unwrap();
    let fid = made["files"][0]["id"].as_str().unwrap();
    let download = |token: String| {
        let url = server.url(&format!("/v1/download/{sid}/{fid}"));
        let client = server.client.clone();
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(download(acme.clone()).await, StatusCode::OK);
    // Another user of the same tenant reaches it (LibreChat shares agent files so).
    assert_eq!(
        download(ed_token(&claims("user-2", "acme"))).await,
        StatusCode::OK
    );
    // Another tenant, and an API key, get 404 as if it did not exist.
    assert_eq!(
        download(ed_token(&claims("user-1", "globex"))).await,
        StatusCode::NOT_FOUND
    );
    let r = server
        .fetch(&format!("/v1/download/{sid}/{fid}"), KEY_A)
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = server
        .client
        .post(server.url(&format!("/v1/sessions/{sid}/restart")))
        .bearer_auth(ed_token(&claims("user-1", "globex")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_runtime_session_hint_keeps_one_kernel_per_tenant_user_and_hint() {
    let server = jwt_server(&[]).await;
    let server = &server;
    let call = |user: &str, code: &str| {
        let token = ed_token(&claims(user, "acme"));
        let body = json!({"lang": "py", "code": code, "runtime_session_hint": "conversation-7"});
        async move { exec_with_token(server, &token, body).await }
    };
    let (_, first) = call("user-1", "x = 41").await;
    assert_eq!(first["runtime_status"], "new", "{first}");
    assert_eq!(first["runtime_session_id"], first["session_id"]);
    let (_, again) = call("user-1", "print(x + 1)").await;
    assert_eq!(again["stdout"], "42\n", "{again}");
    assert_eq!(again["runtime_status"], "reused");
    assert_eq!(again["session_id"], first["session_id"]);
    // The same hint from another user is another kernel: `sub` is the user.
    let (_, other) = call("user-2", "print('x' in dir())").await;
    assert_eq!(other["stdout"], "False\n", "{other}");
    assert_eq!(other["runtime_status"], "new");
    assert_ne!(other["session_id"], first["session_id"]);
    // A JWT's user is its `sub`: naming another user in the body reaches nobody else's kernel.
    let (_, claimed) = exec_with_token(
        server,
        &ed_token(&claims("user-2", "acme")),
        json!({"lang": "py", "code": "print('x' in dir())", "user_id": "user-1",
               "runtime_session_hint": "conversation-7"}),
    )
    .await;
    assert_eq!(claimed["stdout"], "False\n", "{claimed}");
    assert_eq!(claimed["session_id"], other["session_id"]);
    // After a restart the state is gone, and the answer says so.
    let sid = first["session_id"].as_str().unwrap();
    let r = server
        .client
        .post(server.url(&format!("/v1/sessions/{sid}/restart")))
        .bearer_auth(ed_token(&claims("user-1", "acme")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (_, after) = call("user-1", "print('x' in dir())").await;
    assert_eq!(after["stdout"], "False\n", "{after}");
    assert_eq!(after["runtime_status"], "new");
    assert_eq!(after["session_id"], first["session_id"]);
    // One-shot languages carry nothing in memory.
    let (_, bash) = exec_with_token(
        server,
        &ed_token(&claims("user-1", "acme")),
        json!({"lang": "bash", "code": "true", "runtime_session_hint": "conversation-7"}),
    )
    .await;
    assert_eq!(bash["runtime_status"], "new", "{bash}");
    assert_eq!(bash["session_id"], first["session_id"]);
}

#[tokio::test]
async fn bad_jwt_settings_stop_start_up_with_the_variable_named() {
    let binary = env!("CARGO_BIN_EXE_code-interpreter");
    let public = fixture("ed25519.pub.pem");
    for (env, says) in [
        (
            vec![("CODEAPI_JWT_PUBLIC_KEY", public.as_str())],
            "CODEAPI_JWT_KID",
        ),
        (
            vec![
                ("CODEAPI_JWT_PUBLIC_KEY", "not a key"),
                ("CODEAPI_JWT_KID", "k"),
            ],
            "CODEAPI_JWT_PUBLIC_KEY",
        ),
        (
            vec![
                ("CODEAPI_JWT_PUBLIC_KEY", public.as_str()),
                ("CODEAPI_JWT_KID", "k"),
                ("CODEAPI_JWT_ALLOWED_ALGS", "HS256"),
            ],
            "CODEAPI_JWT_ALLOWED_ALGS",
        ),
        (
            vec![
                ("CODEAPI_JWT_PUBLIC_KEY", public.as_str()),
                ("CODEAPI_JWT_KID", "k"),
                ("CODEAPI_JWT_ALGORITHM", "none"),
            ],
            "CODEAPI_JWT_ALGORITHM",
        ),
        (
            vec![("CODEAPI_JWT_JWKS_JSON", "{\"keys\": 3}")],
            "CODEAPI_JWT_JWKS_JSON",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(binary)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATA_DIR", dir.path())
            .env("PORT", "1")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{env:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{env:?}: {stderr}");
    }
}

#[tokio::test]
async fn the_exec_rate_limit_is_per_tenant_and_user_with_the_official_429() {
    let server = TestServer::start(&[("RATE_LIMIT_EXEC_PER_MINUTE", "2")]).await;
    let run = |user: &'static str| {
        let r = server
            .client
            .post(server.url("/v1/exec"))
            .header("x-api-key", KEY_A)
            .json(&json!({"lang": "bash", "code": "echo ok", "user_id": user}));
        async move { r.send().await.unwrap() }
    };
    for _ in 0..2 {
        assert_eq!(run("alice").await.status(), StatusCode::OK);
    }
    let over = run("alice").await;
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = over.headers().clone();
    let body: Value = over.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    let seconds = body["retry_after_seconds"].as_u64().unwrap();
    assert!((1..=30).contains(&seconds), "{body}");
    assert_eq!(
        body["message"],
        format!("Too many CodeAPI execution requests. Please retry in {seconds} seconds.")
    );
    assert_eq!(headers["retry-after"], seconds.to_string().as_str());
    assert_eq!(headers["ratelimit-limit"], "2");
    assert_eq!(headers["ratelimit-remaining"], "0");
    // Another user of the same key has an allowance of their own.
    assert_eq!(run("bob").await.status(), StatusCode::OK);
    // A new programmatic run draws on the same allowance, as in the official API.
    let program = server
        .client
        .post(server.url("/v1/exec/programmatic"))
        .header("x-api-key", KEY_A)
        .json(&json!({"code": "print(1)", "tools": [{"name": "noop"}], "user_id": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(program.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(program.headers().contains_key("retry-after"));
    let body: Value = program.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert!(body["retry_after_seconds"].as_u64().is_some(), "{body}");
}

#[tokio::test]
async fn runtime_status_is_new_after_a_crash_and_an_eviction() {
    // One live kernel at most: a second session's kernel evicts the first (idle) one.
    let server = TestServer::start(&[("MAX_SESSIONS", "1")]).await;
    let run = |hint: &'static str, code: &'static str| {
        let r = server
            .client
            .post(server.url("/v1/exec"))
            .header("x-api-key", KEY_A)
            .json(&json!({"lang": "py", "code": code, "user_id": "alice",
                          "runtime_session_hint": hint}));
        async move { r.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    assert_eq!(run("a", "x = 1").await["runtime_status"], "new");
    let reused = run("a", "print(x)").await;
    assert_eq!(
        (reused["runtime_status"].as_str(), reused["stdout"].as_str()),
        (Some("reused"), Some("1\n")),
        "{reused}"
    );
    // The kernel dies under the cell: the next cell finds a new one and is told so.
    run("a", "import os; os._exit(3)").await;
    let after_crash = run("a", "print('x' in dir())").await;
    assert_eq!(after_crash["runtime_status"], "new", "{after_crash}");
    assert_eq!(after_crash["stdout"], "False\n");
    // Another hint's kernel takes the only place; back on "a", nothing carried over.
    assert_eq!(run("a", "y = 2").await["runtime_status"], "reused");
    assert_eq!(run("b", "pass").await["runtime_status"], "new");
    let after_eviction = run("a", "print('y' in dir())").await;
    assert_eq!(after_eviction["runtime_status"], "new", "{after_eviction}");
    assert_eq!(after_eviction["stdout"], "False\n");
}

async fn profile_answer(server: &TestServer, expected: &[&str]) -> (StatusCode, String, Value) {
    let mut r = server.get(&format!("/v1/files/{NO_SESSION}"), KEY_A);
    for e in expected {
        r = r.header("x-codeapi-expected-profile", *e);
    }
    let r = r.send().await.unwrap();
    let actual = r.headers()["x-codeapi-execution-profile"]
        .to_str()
        .unwrap()
        .to_owned();
    (r.status(), actual, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn expected_profiles_are_checked_exactly_as_the_official_api_does() {
    let server = TestServer::start(&[]).await;
    let (status, actual, _) = profile_answer(&server, &[]).await;
    assert_eq!((status, actual.as_str()), (StatusCode::OK, "default"));
    assert_eq!(
        profile_answer(&server, &["default"]).await.0,
        StatusCode::OK
    );

    let (status, actual, body) = profile_answer(&server, &["stateful"]).await;
    assert_eq!((status, actual.as_str()), (StatusCode::CONFLICT, "default"));
    assert_eq!(body["error"], "execution_profile_mismatch");
    assert_eq!(
        body["message"],
        "Expected the stateful execution profile, but reached default"
    );
    assert_eq!(body["expected_profile"], "stateful");
    assert_eq!(body["actual_profile"], "default");

    for (sent, read) in [
        (vec!["Default"], "Default"),
        (vec!["aws"], "aws"),
        (vec!["default", "default"], "default,default"),
    ] {
        let (status, _, body) = profile_answer(&server, &sent).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{sent:?}: {body}");
        assert_eq!(body["error"], "invalid_execution_profile");
        assert_eq!(
            body["message"],
            format!("Invalid execution profile: {read}")
        );
        assert_eq!(body["expected_profile"], read);
        assert_eq!(body["actual_profile"], "default");
    }

    // The official API's variable name works too.
    let stateful = TestServer::start(&[("CODEAPI_EXECUTION_PROFILE", "stateful")]).await;
    let (status, actual, _) = profile_answer(&stateful, &["stateful"]).await;
    assert_eq!((status, actual.as_str()), (StatusCode::OK, "stateful"));
}
