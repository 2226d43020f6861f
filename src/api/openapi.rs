//! The OpenAPI 3.1 document, generated from the handlers' annotations, and the Swagger UI
//! page at `/docs` (its assets are compiled into the binary: nothing is fetched at build
//! time or by the browser).

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::schema::{AnyOf, Schema};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::openapi::{HttpMethod, RefOr};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::{Config, SwaggerUi};

use super::{AppState, error, exec, files, notebook, programmatic, system, wire};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "code-interpreter",
        license(name = "MIT", identifier = "MIT"),
        description = "A sandboxed code interpreter for AI agents: LibreChat Code API compatible. \
                       Every route is also served under /v1. `POST /exec/stream` answers with \
                       Server-Sent Events whose frames are `StreamFrame`s. The same server speaks \
                       MCP (streamable HTTP) at /mcp."
    ),
    paths(
        exec::exec,
        exec::exec_stream,
        exec::interrupt,
        exec::restart,
        files::upload,
        files::upload_batch,
        files::list_files,
        files::object_info,
        files::download,
        files::delete_file,
        files::delete_session,
        notebook::notebook,
        system::health,
        system::metrics,
        system::libraries,
        system::root,
        programmatic::programmatic,
        programmatic::cancel,
    ),
    components(schemas(
        error::ErrorBody,
        exec::ExecBody,
        exec::ExecResponse,
        exec::RunInfo,
        exec::ExecFile,
        exec::FileRefBody,
        exec::ArgsField,
        exec::KernelAction,
        exec::StreamFrame,
        exec::FrameFile,
        programmatic::ProgramBody,
        programmatic::ToolBody,
        programmatic::ToolResultBody,
        programmatic::ProgramResponse,
        programmatic::ToolCallBody,
        programmatic::CancelBody,
        programmatic::CancelResponse,
        wire::FileObject,
        wire::FileMetadata,
        wire::SimpleFile,
        wire::SummaryFile,
        wire::NormalizedFile,
        wire::FileListing,
        wire::ObjectInfo,
        wire::UploadResponse,
        wire::BatchItem,
        wire::BatchResponse,
        wire::BatchRefusal,
        wire::DeletedFile,
        wire::DeletedSession,
        wire::UploadForm,
        system::Health,
        system::ReadinessInfo,
        system::SandboxInfo,
        system::SandboxLimits,
        system::KernelCounts,
        system::RuntimeLibraries,
        system::Library,
        system::RootInfo,
    )),
    modifiers(&SecuritySchemes, &Aliases, &OperationIds, &AnyOfListing),
    tags(
        (name = "files", description = "Upload, list, download and delete session files"),
        (name = "sessions", description = "Session lifecycle"),
        (name = "exec", description = "Running code"),
        (name = "system", description = "Health, metrics and documentation"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        // Every protected operation lists both schemes: either one is enough.
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-api-key",
                "One of the server's API keys (CODE_INTERPRETER_API_KEY or CODE_INTERPRETER_API_KEYS).",
            ))),
        );
        // An API key or LibreChat's JWT: both travel in this one header.
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("API key or JWT")
                    .description(Some(
                        "`Authorization: Bearer <API key>`, or a JWT signed by LibreChat (EdDSA or RS256; CODEAPI_JWT_PUBLIC_KEY or CODEAPI_JWT_JWKS_JSON), used when `x-api-key` is absent.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Routes served by a handler documented under another path: `DELETE
/// /sessions/{session_id}/objects/{file_id}` (LibreChat's official API) deletes like `DELETE
/// /files/{session_id}/{file_id}`.
const ALIASES: &[(&str, &str, HttpMethod)] = &[(
    "/files/{session_id}/{file_id}",
    "/sessions/{session_id}/objects/{file_id}",
    HttpMethod::Delete,
)];

struct Aliases;

impl Modify for Aliases {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (documented, alias, method) in ALIASES {
            let Some(operation) = openapi
                .paths
                .get_path_operation(documented, method.clone())
                .cloned()
            else {
                continue;
            };
            openapi
                .paths
                .add_path_operation(*alias, vec![method.clone()], operation);
        }
    }
}

/// Every operation's `operationId`, pinned here so renaming a handler never changes it:
/// clients import them (LibreChat Actions turn them into tool names, API clients into
/// method names). A route added without an entry fails the tests, which say what to add.
const OPERATION_IDS: &[(&str, &str, &str)] = &[
    ("post", "/exec", "executeCode"),
    ("post", "/exec/stream", "executeCodeStream"),
    ("post", "/exec/programmatic", "executeProgrammatic"),
    ("post", "/exec/programmatic/cancel", "cancelProgrammatic"),
    (
        "post",
        "/sessions/{session_id}/interrupt",
        "interruptSession",
    ),
    ("post", "/sessions/{session_id}/restart", "restartSession"),
    ("delete", "/sessions/{session_id}", "deleteSession"),
    (
        "get",
        "/sessions/{session_id}/notebook",
        "getSessionNotebook",
    ),
    ("post", "/upload", "uploadFiles"),
    ("post", "/upload/batch", "uploadFilesBatch"),
    ("get", "/files/{session_id}", "listFiles"),
    (
        "get",
        "/sessions/{session_id}/objects/{file_id}",
        "getFileInfo",
    ),
    ("get", "/download/{session_id}/{file_id}", "downloadFile"),
    ("delete", "/files/{session_id}/{file_id}", "deleteFile"),
    (
        "delete",
        "/sessions/{session_id}/objects/{file_id}",
        "deleteSessionObject",
    ),
    ("get", "/health", "getHealth"),
    ("get", "/metrics", "getMetrics"),
    ("get", "/libraries", "listLibraries"),
    ("get", "/", "getServerInfo"),
];

/// `FileListing` as `anyOf`: utoipa writes an untagged enum as `oneOf`, which an empty
/// listing breaks (`[]` matches every item shape, and `oneOf` wants exactly one).
struct AnyOfListing;

impl Modify for AnyOfListing {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        if let Some(RefOr::T(Schema::OneOf(one))) = components.schemas.get_mut("FileListing") {
            let mut any = AnyOf::new();
            any.items = std::mem::take(&mut one.items);
            any.description = one.description.take();
            components
                .schemas
                .insert("FileListing".into(), RefOr::T(Schema::AnyOf(any)));
        }
    }
}

struct OperationIds;

impl Modify for OperationIds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                ("get", &mut item.get),
                ("post", &mut item.post),
                ("put", &mut item.put),
                ("patch", &mut item.patch),
                ("delete", &mut item.delete),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                operation.operation_id = OPERATION_IDS
                    .iter()
                    .find(|(m, p, _)| *m == method && p == path)
                    .map(|(_, _, id)| (*id).to_owned());
            }
        }
    }
}

/// The OpenAPI document as JSON: `servers` is `public_base_url` when set, else `/` (the
/// host the document was read from). `code-interpreter openapi` prints it; the committed
/// `openapi.json` is this with no base URL.
pub fn document(public_base_url: Option<&str>) -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let base = public_base_url
        .map(|b| b.trim_end_matches('/'))
        .filter(|b| !b.is_empty())
        .unwrap_or("/");
    doc.servers = Some(vec![Server::new(base)]);
    let mut json = doc.to_pretty_json().unwrap_or_else(|_| "{}".to_owned());
    json.push('\n');
    json
}

/// Every operation in the document: operation id → `"METHOD /path"`.
pub fn operations() -> std::collections::BTreeMap<String, String> {
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let mut out = std::collections::BTreeMap::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            if let Some(id) = op["operationId"].as_str() {
                out.insert(id.to_owned(), format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    out
}

/// The OpenAPI document (no key needed).
pub async fn spec(State(state): State<AppState>) -> Response {
    static DOC: OnceLock<String> = OnceLock::new();
    let body = DOC.get_or_init(|| document(state.settings.public_base_url.as_deref()));
    ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response()
}

/// The Swagger UI at `/docs`, reading `/openapi.json`.
pub fn docs() -> SwaggerUi {
    SwaggerUi::new("/docs").config(Config::new(["/openapi.json"]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

    fn parsed(base: Option<&str>) -> Value {
        serde_json::from_str(&document(base)).unwrap()
    }

    #[test]
    fn the_document_covers_every_file_route_and_names_its_servers() {
        let doc = parsed(Some("https://ci.example/"));
        for path in [
            "/exec",
            "/upload",
            "/upload/batch",
            "/files/{session_id}",
            "/files/{session_id}/{file_id}",
            "/download/{session_id}/{file_id}",
            "/sessions/{session_id}",
            "/sessions/{session_id}/objects/{file_id}",
            "/health",
            "/metrics",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} is missing");
        }
        assert_eq!(doc["servers"][0]["url"], "https://ci.example");
        assert_eq!(parsed(None)["servers"][0]["url"], "/");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    }

    #[test]
    fn the_committed_openapi_json_is_the_generated_document() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == document(None),
            "openapi.json differs from the document the code generates: run `make openapi` and commit openapi.json"
        );
    }

    #[test]
    fn every_operation_has_a_pinned_unique_operation_id() {
        let doc = parsed(None);
        let mut seen = std::collections::HashSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS {
                let Some(operation) = item.get(method) else {
                    continue;
                };
                let id = operation["operationId"].as_str().unwrap_or_else(|| {
                    panic!("{method} {path} has no operationId: add it to OPERATION_IDS in src/api/openapi.rs")
                });
                // LibreChat Actions use the id as a function name.
                assert!(
                    id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric()),
                    "{id} is not a plain camelCase name"
                );
                assert!(seen.insert(id.to_owned()), "{id} is used twice");
            }
        }
        for (method, path, id) in OPERATION_IDS {
            assert!(
                doc["paths"][path][method].is_object(),
                "OPERATION_IDS names {method} {path} ({id}), which the document does not have"
            );
        }
    }

    #[test]
    fn protected_operations_name_the_key_schemes_and_public_ones_none() {
        let doc = parsed(None);
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["api_key"]["type"], "apiKey");
        assert_eq!(schemes["api_key"]["in"], "header");
        assert_eq!(schemes["api_key"]["name"], "x-api-key");
        assert_eq!(schemes["bearer"]["type"], "http");
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        let public = [("get", "/health"), ("get", "/")];
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS {
                let Some(operation) = item.get(method) else {
                    continue;
                };
                let names: Vec<&str> = operation["security"]
                    .as_array()
                    .map(|list| {
                        list.iter()
                            .filter_map(|r| r.as_object())
                            .flat_map(|r| r.keys().map(String::as_str))
                            .collect()
                    })
                    .unwrap_or_default();
                if public.contains(&(method, path.as_str())) {
                    assert!(names.is_empty(), "{method} {path} is public");
                } else {
                    assert_eq!(names, ["api_key", "bearer"], "{method} {path}");
                }
            }
        }
    }

    #[test]
    fn the_stream_frames_are_described_by_type() {
        let doc = parsed(None);
        let stream = &doc["paths"]["/exec/stream"]["post"]["responses"]["200"]["content"];
        assert_eq!(
            stream["text/event-stream"]["schema"]["$ref"],
            "#/components/schemas/StreamFrame"
        );
        let variants = doc["components"]["schemas"]["StreamFrame"]["oneOf"]
            .as_array()
            .expect("StreamFrame is a oneOf");
        let types: Vec<String> = variants
            .iter()
            .map(|v| serde_json::to_string(v).unwrap())
            .collect();
        for kind in ["session", "stream", "display", "result", "error", "done"] {
            assert!(
                types.iter().any(|t| t.contains(&format!("\"{kind}\""))),
                "no `{kind}` frame in {types:?}"
            );
        }
    }
}
