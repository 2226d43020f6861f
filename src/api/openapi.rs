//! The OpenAPI 3.1 document, generated from the handlers' annotations, and the Swagger UI
//! page at `/docs` (its assets are compiled into the binary: nothing is fetched at build
//! time or by the browser).

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::{Config, SwaggerUi};

use super::{AppState, error, exec, files, system, wire};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "code-interpreter",
        description = "A sandboxed code interpreter for AI agents: LibreChat Code API compatible. \
                       Every route is also served under /v1."
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
        system::health,
        system::metrics,
        system::libraries,
        system::root,
        system::programmatic,
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
        wire::DeletedFile,
        wire::DeletedSession,
        wire::UploadForm,
        system::Health,
        system::SandboxInfo,
        system::KernelCounts,
        system::RuntimeLibraries,
        system::Library,
        system::RootInfo,
    )),
    modifiers(&SecuritySchemes),
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
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

fn document(public_base_url: Option<&str>) -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    if let Some(base) = public_base_url {
        doc.servers = Some(vec![Server::new(base.trim_end_matches('/'))]);
    }
    doc.to_json().unwrap_or_else(|_| "{}".to_owned())
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

    #[test]
    fn the_document_covers_every_file_route_and_names_its_servers() {
        let doc: serde_json::Value =
            serde_json::from_str(&document(Some("https://ci.example/"))).unwrap();
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
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    }
}
