//! [`McpServer`]: the tools, the session-file resources, and what `initialize` answers.
//!
//! rmcp makes one `McpServer` per MCP session (an `Mcp-Session-Id`, or one stdio connection)
//! and one per request for clients of the sessionless 2026-07-28 revision. What an MCP session
//! remembers therefore lives here, in its [`Conversation`]: the owner key of its own code
//! session (found again through the store, like an entity's), the sessions it has touched,
//! and the log level it asked for. Everything else is shared state in the [`Backend`].
//!
//! The caller's tenant comes from the HTTP request, where the API-key middleware put it, or
//! over stdio from the transport; it is checked on every call, never remembered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use base64::Engine;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{
    CacheScope, CallToolResult, ContentBlock, Implementation, JsonObject,
    ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams, ProtocolVersion,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use super::error::{ToolError, ToolResult};
use super::render::{self, human_size, read_capped};
use super::run::{self, Feedback, Followed};
use super::wire::*;
use super::{Backend, MAX_INLINE_BYTES, uri};
use crate::exec::ExecRequest;
use crate::runtime::Language;
use crate::session::{SessionOwner, Tenant, is_valid_id, new_id};
use crate::store::{BodyStream, FileMeta, FileName, FileOrigin, NewFile, Session};

/// What `initialize` tells the client about using this server.
const INSTRUCTIONS: &str = "Runs code in a sandbox. Use execute_code: Python keeps its state \
(variables, imports) between calls in a session; other languages run as fresh programs. \
Files live in /mnt/data: upload_file puts one there, code can write more, and results link \
them as session:// resources (read_file or resources/read). Every result carries a \
session_id; calls without one share this conversation's session, so pass it back when \
your client does not keep an MCP session.";

/// Python packages worth naming in `list_runtimes` (when installed); there are more.
const NOTABLE_PYTHON_PACKAGES: &[&str] = &[
    "numpy",
    "pandas",
    "scipy",
    "statsmodels",
    "sympy",
    "networkx",
    "scikit-learn",
    "pyarrow",
    "matplotlib",
    "seaborn",
    "plotly",
    "openpyxl",
    "xlsxwriter",
    "python-docx",
    "python-pptx",
    "pypdf",
    "pdfplumber",
    "reportlab",
    "pillow",
    "requests",
    "beautifulsoup4",
];

/// What a notebook resource is.
const NOTEBOOK_MIME: &str = "application/x-ipynb+json";
/// Sessions listed as resources per MCP session, newest last.
const REMEMBERED_SESSIONS: usize = 32;
/// Resources one `resources/list` answers with.
const MAX_LISTED_RESOURCES: usize = 1000;

static TOOLS: LazyLock<ToolRouter<McpServer>> = LazyLock::new(McpServer::tool_router);

/// What one MCP session remembers (see the module docs).
struct Conversation {
    /// The owner of this conversation's own code session.
    owner: SessionOwner,
    /// Sessions this conversation touched, by tenant, oldest first.
    used: Mutex<Vec<(Tenant, String)>>,
    /// Whether run output goes out as log messages (`logging/setLevel` at `info` or lower).
    log_output: AtomicBool,
    /// Makes the conversation's session once, however many first calls arrive together.
    making_session: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
pub struct McpServer {
    backend: Backend,
    /// The tenant of every call on a transport without HTTP requests (stdio).
    fixed_tenant: Option<Tenant>,
    conversation: Arc<Conversation>,
}

fn input_schema<T: JsonSchema + 'static>() -> Arc<JsonObject> {
    let schema = rmcp::handler::server::common::schema_for_input::<T>()
        .unwrap_or_else(|e| panic!("the input schema of an MCP tool is invalid: {e}"));
    portable(&schema)
}

fn output_schema<T: JsonSchema + 'static>() -> Arc<JsonObject> {
    portable(&rmcp::handler::server::tool::schema_for_output::<T>())
}

/// The schema as clients best take it: each description's wrapped lines (doc comments keep
/// their line breaks) joined into one, and schemars' Rust formats (`uint64`, `double`, …),
/// which validators such as Ajv warn about or reject, left out; the `type` says enough.
fn portable(schema: &JsonObject) -> Arc<JsonObject> {
    fn tidy(map: &mut JsonObject) {
        if map
            .get("format")
            .and_then(|f| f.as_str())
            .is_some_and(|f| RUST_FORMATS.contains(&f))
        {
            map.remove("format");
        }
        for (key, value) in map.iter_mut() {
            match value {
                serde_json::Value::String(text) if key == "description" => {
                    let lines: Vec<&str> = text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .collect();
                    *text = lines.join(" ");
                }
                serde_json::Value::Object(child) => tidy(child),
                serde_json::Value::Array(items) => items
                    .iter_mut()
                    .filter_map(|v| v.as_object_mut())
                    .for_each(tidy),
                _ => {}
            }
        }
    }
    let mut schema = schema.clone();
    tidy(&mut schema);
    Arc::new(schema)
}

/// Formats schemars gives Rust number types; none is a JSON Schema format.
const RUST_FORMATS: &[&str] = &[
    "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64", "float",
    "double",
];

/// Tool arguments as `T`. Missing or mistyped arguments are a protocol error (invalid params)
/// with serde's sentence, which names the field.
fn arguments<T: DeserializeOwned>(tool: &str, arguments: JsonObject) -> ToolResult<T> {
    serde_json::from_value(serde_json::Value::Object(arguments))
        .map_err(|e| ToolError::BadArguments(format!("Invalid arguments for {tool}: {e}.")))
}

fn respond(result: ToolResult<CallToolResult>) -> Result<CallToolResult, ErrorData> {
    result.or_else(ToolError::into_tool_response)
}

/// An optional text argument; an empty string counts as absent.
fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// Whether the request speaks 2026-07-28 or later (no sessions, per-request options).
fn is_modern(ctx: &RequestContext<RoleServer>) -> bool {
    ctx.protocol_version()
        .is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str())
}

impl McpServer {
    pub fn new(backend: Backend, fixed_tenant: Option<Tenant>) -> Self {
        McpServer {
            backend,
            fixed_tenant,
            conversation: Arc::new(Conversation {
                owner: SessionOwner {
                    user_id: None,
                    entity_id: Some(format!("mcp-{}", new_id())),
                },
                used: Mutex::new(Vec::new()),
                log_output: AtomicBool::new(true),
                making_session: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn tenant(&self, ctx: &RequestContext<RoleServer>) -> ToolResult<Tenant> {
        if let Some(tenant) = &self.fixed_tenant {
            return Ok(tenant.clone());
        }
        ctx.extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Tenant>())
            .cloned()
            // The auth middleware sets it on every request that reaches here.
            .ok_or_else(|| ToolError::Internal("an MCP request arrived without a tenant".into()))
    }

    fn remember(&self, tenant: &Tenant, session_id: &str) {
        let mut used = self
            .conversation
            .used
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        used.retain(|(t, s)| !(t == tenant && s == session_id));
        used.push((tenant.clone(), session_id.to_owned()));
        if used.len() > REMEMBERED_SESSIONS {
            used.remove(0);
        }
    }

    fn remembered(&self, tenant: &Tenant) -> Vec<String> {
        let used = self
            .conversation
            .used
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        used.iter()
            .filter(|(t, _)| t == tenant)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// The session if `tenant` owns it; `None` when it does not exist for them.
    async fn owned_session(
        &self,
        tenant: &Tenant,
        session_id: &str,
    ) -> ToolResult<Option<Session>> {
        if !is_valid_id(session_id) {
            return Err(ToolError::BadArguments(
                "session_id must be the 21-character id that an earlier call returned.".into(),
            ));
        }
        Ok(self.backend.store.session(tenant, session_id).await?)
    }

    async fn session(&self, tenant: &Tenant, session_id: &str) -> ToolResult<Session> {
        let session = self
            .owned_session(tenant, session_id)
            .await?
            .ok_or_else(|| ToolError::session_not_found(session_id))?;
        self.remember(tenant, &session.id);
        Ok(session)
    }

    /// This conversation's own session: found again by its owner key, or made.
    async fn conversation_session(&self, tenant: &Tenant) -> ToolResult<Session> {
        let _one_at_a_time = self.conversation.making_session.lock().await;
        let store = &self.backend.store;
        let owner = &self.conversation.owner;
        let session = match store.latest_session_for(tenant, owner).await? {
            Some(session) => session,
            None => store.create_session(tenant, owner).await?,
        };
        self.remember(tenant, &session.id);
        Ok(session)
    }

    /// The named session, or this conversation's when none is named.
    async fn session_or_own(
        &self,
        tenant: &Tenant,
        session_id: Option<String>,
    ) -> ToolResult<Session> {
        match given(session_id) {
            Some(sid) => self.session(tenant, &sid).await,
            None => self.conversation_session(tenant).await,
        }
    }

    /// Whether this request wants run output as log messages.
    #[allow(deprecated)] // Logging is deprecated in 2026-07-28 (SEP-2577), opt-in per request.
    fn log_output(&self, ctx: &RequestContext<RoleServer>) -> bool {
        if is_modern(ctx) {
            ctx.meta.log_level().is_some_and(shows_info)
        } else {
            self.conversation.log_output.load(Ordering::Relaxed)
        }
    }

    async fn run_code(
        &self,
        params: JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> ToolResult<CallToolResult> {
        let args: ExecuteCodeArgs = arguments("execute_code", params)?;
        let tenant = self.tenant(ctx)?;
        let settings = &self.backend.settings;
        let timeout = match args.timeout {
            None => None,
            Some(t) if t.is_finite() && t > 0.0 => Some(Duration::from_secs_f64(
                t.min(settings.execution_timeout as f64),
            )),
            Some(_) => {
                return Err(ToolError::BadArguments(
                    "'timeout' is in seconds and must be more than 0.".into(),
                ));
            }
        };
        // Without a named session the conversation's own is used; a named one that is not
        // found falls back to it too (ExecService's one policy), and the result says so.
        let asked = given(args.session_id);
        let session_id = match &asked {
            Some(sid) => Some(sid.clone()),
            None => Some(self.conversation_session(&tenant).await?.id),
        };
        let request = ExecRequest {
            tenant: tenant.clone(),
            lang: args.language,
            code: args.code,
            args: args.args.unwrap_or_default(),
            session_id,
            owner: self.conversation.owner.clone(),
            files: Vec::new(),
            timeout,
        };
        let started = self.backend.exec.start(request).await?;
        let session_id = started.session_id;
        self.remember(&tenant, &session_id);
        let mut notes = Vec::new();
        if let Some(sid) = asked.filter(|sid| *sid != session_id) {
            notes.push(format!(
                "Session {sid} was not found (it may have expired): the code ran in session \
                 {session_id} instead, without that session's variables and files."
            ));
        }
        let feedback = Feedback::new(ctx, self.log_output(ctx));
        match run::follow(started.events, ctx, feedback).await? {
            Followed::Finished { result, images } => {
                render::exec_result(&*self.backend.store, &result, images, notes).await
            }
            Followed::Cancelled => {
                // The client asked to stop (or went away): stop the run, whatever it is.
                started.handle.cancel();
                Err(ToolError::Failed("Cancelled: the run was stopped.".into()))
            }
        }
    }

    async fn upload(
        &self,
        params: JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> ToolResult<CallToolResult> {
        let args: UploadFileArgs = arguments("upload_file", params)?;
        let tenant = self.tenant(ctx)?;
        let name = FileName::parse(&args.name).map_err(|e| {
            ToolError::BadArguments(format!(
                "Invalid file name '{}': {e}.",
                args.name.escape_debug()
            ))
        })?;
        let bytes = match (args.content, args.content_base64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(encoded)) => {
                let compact: String = encoded.chars().filter(|c| !c.is_whitespace()).collect();
                base64::engine::general_purpose::STANDARD_NO_PAD_INDIFFERENT
                    .decode(compact)
                    .map_err(|e| {
                        ToolError::BadArguments(format!("'content_base64' is not base64: {e}."))
                    })?
            }
            (Some(_), Some(_)) => {
                return Err(ToolError::BadArguments(
                    "Give either 'content' (text) or 'content_base64' (bytes), not both.".into(),
                ));
            }
            (None, None) => {
                return Err(ToolError::BadArguments(
                    "Give the file's content: 'content' for text or 'content_base64' for bytes."
                        .into(),
                ));
            }
        };
        let session = self.session_or_own(&tenant, args.session_id).await?;
        let store = &self.backend.store;
        let body: BodyStream<'_> = Box::pin(futures::stream::once(async move {
            Ok(bytes::Bytes::from(bytes))
        }));
        let staged = store
            .stage(body, self.backend.settings.max_upload_bytes)
            .await?;
        let file = NewFile {
            name,
            staged,
            read_only: false,
            origin: FileOrigin::default(),
        };
        let meta = store.commit_one(&session.id, file).await?;
        let info = FileInfo::of(&meta);
        render::structured(
            format!(
                "Saved /mnt/data/{} ({}, {}) in session {}; code run there can open it.",
                info.name,
                human_size(info.size),
                info.content_type,
                info.session_id
            ),
            &info,
            vec![render::resource_link(&meta)],
        )
    }

    async fn files(
        &self,
        params: JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> ToolResult<CallToolResult> {
        let args: SessionArgs = arguments("list_files", params)?;
        let tenant = self.tenant(ctx)?;
        let session = self.session(&tenant, &args.session_id).await?;
        let files = self.backend.store.list_files(&session.id).await?;
        let mut text = format!(
            "Session {}: {} file(s) in /mnt/data\n",
            session.id,
            files.len()
        );
        for f in &files {
            text.push_str(&format!(
                "{}  {}  {}  id {}\n",
                f.name,
                human_size(f.size),
                f.content_type,
                f.id
            ));
        }
        let list = FileList {
            session_id: session.id,
            files: files.iter().map(FileInfo::of).collect(),
        };
        render::structured(text, &list, Vec::new())
    }

    /// The file `args` names, in a session `tenant` owns.
    async fn find_file(&self, tenant: &Tenant, args: FileArgs) -> ToolResult<FileMeta> {
        let session = self.session(tenant, &args.session_id).await?;
        let store = &self.backend.store;
        let missing = |what: String| {
            ToolError::Failed(format!(
                "No file {what} in session {}; list_files shows what is there.",
                session.id
            ))
        };
        match (given(args.name), given(args.file_id)) {
            (Some(_), Some(_)) => Err(ToolError::BadArguments(
                "Give 'name' or 'file_id', not both.".into(),
            )),
            (None, None) => Err(ToolError::BadArguments(
                "Say which file: give 'name' (its path under /mnt/data) or 'file_id'.".into(),
            )),
            (None, Some(id)) => {
                let found = if is_valid_id(&id) {
                    store.file(&session.id, &id).await?
                } else {
                    None
                };
                found.ok_or_else(|| missing(format!("with id '{}'", id.escape_debug())))
            }
            (Some(name), None) => {
                let wanted = name.trim().trim_start_matches("/mnt/data/");
                store
                    .list_files(&session.id)
                    .await?
                    .into_iter()
                    .find(|f| f.name.as_str() == wanted)
                    .ok_or_else(|| missing(format!("named '{}'", wanted.escape_debug())))
            }
        }
    }

    async fn read(
        &self,
        params: JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> ToolResult<CallToolResult> {
        let args: FileArgs = arguments("read_file", params)?;
        let tenant = self.tenant(ctx)?;
        let meta = self.find_file(&tenant, args).await?;
        let contents = self.contents(&meta).await?;
        let info = FileInfo::of(&meta);
        let (encoding, text) = match &contents {
            ResourceContents::TextResourceContents { text, .. } => {
                (Encoding::Text, Some(text.clone()))
            }
            _ => (Encoding::Base64, None),
        };
        let output = ReadFileOutput {
            file: info,
            encoding,
            text,
        };
        render::structured(
            format!(
                "/mnt/data/{} ({}, {}), as {}:",
                meta.name,
                human_size(meta.size),
                meta.content_type,
                match encoding {
                    Encoding::Text => "text",
                    Encoding::Base64 => "base64 bytes",
                }
            ),
            &output,
            vec![ContentBlock::resource(contents)],
        )
    }

    /// A file's content as a text resource (UTF-8 without NUL bytes) or a blob.
    async fn contents(&self, meta: &FileMeta) -> ToolResult<ResourceContents> {
        let uri = uri::file_uri(&meta.session_id, meta.name.as_str());
        let bytes = read_capped(&*self.backend.store, meta, MAX_INLINE_BYTES)
            .await?
            .ok_or_else(|| {
                ToolError::Failed(format!(
                    "/mnt/data/{} is {}, over the {} that MCP reads return. Look at part of it \
                     with execute_code (head, pandas, …), or download it over the REST API: \
                     GET /download/{}/{}.",
                    meta.name,
                    human_size(meta.size),
                    human_size(MAX_INLINE_BYTES as u64),
                    meta.session_id,
                    meta.id
                ))
            })?;
        let contents = match String::from_utf8(bytes) {
            Ok(text) if !text.contains('\0') => ResourceContents::text(text, uri),
            Ok(text) => ResourceContents::blob(
                base64::engine::general_purpose::STANDARD.encode(text.as_bytes()),
                uri,
            ),
            Err(not_text) => ResourceContents::blob(
                base64::engine::general_purpose::STANDARD.encode(not_text.as_bytes()),
                uri,
            ),
        };
        Ok(contents.with_mime_type(meta.content_type.clone()))
    }

    async fn delete(
        &self,
        params: JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> ToolResult<CallToolResult> {
        let args: FileArgs = arguments("delete_file", params)?;
        let tenant = self.tenant(ctx)?;
        let meta = self.find_file(&tenant, args).await?;
        let deleted = self
            .backend
            .store
            .delete_file(&meta.session_id, &meta.id)
            .await?
            .ok_or_else(|| {
                ToolError::Failed(format!("/mnt/data/{} was already gone.", meta.name))
            })?;
        let output = DeletedFile {
            session_id: deleted.session_id.clone(),
            deleted: FileInfo::of(&deleted),
        };
        render::structured(
            format!(
                "Deleted /mnt/data/{} from session {}.",
                deleted.name, deleted.session_id
            ),
            &output,
            Vec::new(),
        )
    }

    async fn reset(
        &self,
        params: JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> ToolResult<CallToolResult> {
        let args: SessionArgs = arguments("reset_session", params)?;
        let tenant = self.tenant(ctx)?;
        let session = self.session(&tenant, &args.session_id).await?;
        let restarted = self.backend.exec.restart(&tenant, &session.id).await?;
        let message = if restarted {
            "The Python kernel was shut down: the next Python call starts a fresh one, without \
             the old variables. Files in /mnt/data are kept."
        } else {
            "The session had no running Python kernel, so there was nothing to reset. Files in \
             /mnt/data are kept."
        };
        let output = ResetOutput {
            session_id: session.id,
            kernel_restarted: restarted,
            message: message.into(),
        };
        render::structured(message.into(), &output, Vec::new())
    }

    async fn runtimes(&self) -> ToolResult<CallToolResult> {
        let runtimes = self.backend.exec.runtimes();
        let settings = &self.backend.settings;
        let mut languages = Vec::new();
        for language in Language::all() {
            if let Ok(version) = runtimes.version(language).await {
                languages.push(RuntimeInfo {
                    language: language.name().into(),
                    version,
                    stateful: language.stateful(),
                });
            }
        }
        let python_packages: Vec<Package> = runtimes
            .libraries(Language::PYTHON)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|(name, _)| {
                let name = name.to_ascii_lowercase().replace('_', "-");
                NOTABLE_PYTHON_PACKAGES.contains(&name.as_str())
            })
            .map(|(name, version)| Package { name, version })
            .collect();
        let network = settings.sandbox_network == crate::config::NetworkPolicy::Allow;
        let mut text = String::from("Languages:\n");
        for l in &languages {
            let stateful = if l.stateful { " (stateful kernel)" } else { "" };
            text.push_str(&format!("  {} {}{stateful}\n", l.language, l.version));
        }
        if !python_packages.is_empty() {
            let list: Vec<String> = python_packages
                .iter()
                .map(|p| format!("{} {}", p.name, p.version))
                .collect();
            text.push_str(&format!("Python packages include: {}\n", list.join(", ")));
        }
        text.push_str(&format!(
            "A run may take up to {} s. Network: {}.\n",
            settings.execution_timeout,
            if network {
                "allowed (packages can be installed)"
            } else {
                "none (no installs)"
            }
        ));
        let output = RuntimesOutput {
            languages,
            python_packages,
            max_timeout_seconds: settings.execution_timeout,
            network,
        };
        render::structured(text, &output, Vec::new())
    }
}

#[tool_router]
impl McpServer {
    #[tool(
        description = "Run code in a sandboxed session and return its output. Python runs in a \
        stateful kernel (variables, imports and functions persist between calls in the same \
        session; matplotlib figures come back as images); other languages run as fresh \
        programs. The working directory is /mnt/data, where uploaded files are and where \
        files the code writes are kept and returned as links. Without session_id the call \
        uses this conversation's session; the result's session_id continues it.",
        input_schema = input_schema::<ExecuteCodeArgs>(),
        output_schema = output_schema::<ExecOutput>(),
        annotations(title = "Run code", read_only_hint = false, destructive_hint = true)
    )]
    async fn execute_code(
        &self,
        params: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(self.run_code(params, &ctx).await)
    }

    #[tool(
        description = "Put a file into a session's /mnt/data, where code can open it: text in \
        'content', or bytes in 'content_base64'. Without session_id the file goes to this \
        conversation's session. Returns the file and its session_id.",
        input_schema = input_schema::<UploadFileArgs>(),
        output_schema = output_schema::<FileInfo>(),
        annotations(
            title = "Upload a file",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true
        )
    )]
    async fn upload_file(
        &self,
        params: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(self.upload(params, &ctx).await)
    }

    #[tool(
        description = "List the files in a session's /mnt/data: name, size, type and id.",
        input_schema = input_schema::<SessionArgs>(),
        output_schema = output_schema::<FileList>(),
        annotations(title = "List files", read_only_hint = true)
    )]
    async fn list_files(
        &self,
        params: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(self.files(params, &ctx).await)
    }

    #[tool(
        description = "Read a file from a session's /mnt/data by name or file_id: text comes \
        back as text, anything else as base64. Files over 1 MiB are refused; look at them with \
        execute_code instead.",
        input_schema = input_schema::<FileArgs>(),
        output_schema = output_schema::<ReadFileOutput>(),
        annotations(title = "Read a file", read_only_hint = true)
    )]
    async fn read_file(
        &self,
        params: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(self.read(params, &ctx).await)
    }

    #[tool(
        description = "Delete a file from a session's /mnt/data by name or file_id.",
        input_schema = input_schema::<FileArgs>(),
        output_schema = output_schema::<DeletedFile>(),
        annotations(
            title = "Delete a file",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true
        )
    )]
    async fn delete_file(
        &self,
        params: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(self.delete(params, &ctx).await)
    }

    #[tool(
        description = "Restart a session's Python kernel: variables and imports are gone, \
        files in /mnt/data stay. Use it when the kernel is stuck or its state is wrong.",
        input_schema = input_schema::<SessionArgs>(),
        output_schema = output_schema::<ResetOutput>(),
        annotations(
            title = "Reset the Python kernel",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true
        )
    )]
    async fn reset_session(
        &self,
        params: JsonObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        respond(self.reset(params, &ctx).await)
    }

    #[tool(
        description = "List the languages this server runs, with versions, notable installed \
        Python packages, the longest allowed run and whether code may use the network.",
        output_schema = output_schema::<RuntimesOutput>(),
        annotations(title = "List runtimes", read_only_hint = true)
    )]
    async fn list_runtimes(&self) -> Result<CallToolResult, ErrorData> {
        respond(self.runtimes().await)
    }
}

/// Whether a client's log level lets `info` messages (run output) through.
#[allow(deprecated)] // Logging is deprecated in 2026-07-28 (SEP-2577); 2025 clients use it.
fn shows_info(level: rmcp::model::LoggingLevel) -> bool {
    use rmcp::model::LoggingLevel;
    matches!(level, LoggingLevel::Debug | LoggingLevel::Info)
}

/// `result` as a client of 2026-07-28 or later should get it: with cache hints saying it is
/// stale at once and private (it is per tenant and every run changes it). Older revisions
/// have no such fields.
fn uncached<T>(
    ctx: &RequestContext<RoleServer>,
    result: T,
    hints: impl FnOnce(T, u64, CacheScope) -> T,
) -> T {
    if is_modern(ctx) {
        hints(result, 0, CacheScope::Private)
    } else {
        result
    }
}

#[tool_handler(router = TOOLS)]
#[allow(deprecated)] // `logging/setLevel` and the logging capability (SEP-2577, see above).
impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_logging()
                .build(),
        )
        .with_server_info(
            Implementation::new("code-interpreter", env!("CARGO_PKG_VERSION"))
                .with_title("Code Interpreter"),
        )
        .with_instructions(INSTRUCTIONS)
    }

    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.conversation
            .log_output
            .store(shows_info(request.level), Ordering::Relaxed);
        Ok(())
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let template = ResourceTemplate::new(uri::TEMPLATE, "session-file")
            .with_title("A file in a code session")
            .with_description(
                "A file under /mnt/data in a session; session_id as execute_code returned it, \
                 name as the path relative to /mnt/data.",
            );
        let notebook = ResourceTemplate::new(uri::NOTEBOOK_TEMPLATE, "session-notebook")
            .with_title("A code session's notebook")
            .with_description(
                "Every Python cell the session ran, with its outputs and images, as a Jupyter \
                 notebook (nbformat 4).",
            )
            .with_mime_type(NOTEBOOK_MIME);
        let result = ListResourceTemplatesResult::with_all_items(vec![template, notebook]);
        Ok(uncached(&ctx, result, |r, ttl, scope| {
            r.with_ttl_ms(ttl).with_cache_scope(scope)
        }))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.session_files(&ctx)
            .await
            .map_err(ToolError::into_error_data)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        self.read_uri(&request.uri, &ctx)
            .await
            .map(|result| {
                uncached(&ctx, result, |r, ttl, scope| {
                    r.with_ttl_ms(ttl).with_cache_scope(scope)
                })
                .into()
            })
            .map_err(ToolError::into_error_data)
    }
}

impl McpServer {
    /// The files of the sessions this conversation used, as resources.
    async fn session_files(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> ToolResult<ListResourcesResult> {
        let tenant = self.tenant(ctx)?;
        let store = &self.backend.store;
        let mut sessions = self.remembered(&tenant);
        if let Some(own) = store
            .latest_session_for(&tenant, &self.conversation.owner)
            .await?
            && !sessions.contains(&own.id)
        {
            sessions.push(own.id);
        }
        let mut resources = Vec::new();
        for sid in sessions.iter().rev() {
            if store.session(&tenant, sid).await?.is_none() {
                continue;
            }
            resources.push(
                Resource::new(uri::notebook_uri(sid), format!("session-{sid}.ipynb"))
                    .with_description(format!("The Python cells of session {sid} as a notebook"))
                    .with_mime_type(NOTEBOOK_MIME),
            );
            for meta in store.list_files(sid).await? {
                if resources.len() >= MAX_LISTED_RESOURCES {
                    break;
                }
                let info = FileInfo::of(&meta);
                resources.push(
                    Resource::new(info.uri, info.name)
                        .with_description(format!("/mnt/data/{} in session {sid}", meta.name))
                        .with_mime_type(info.content_type)
                        .with_size(info.size),
                );
            }
        }
        let result = ListResourcesResult::with_all_items(resources);
        Ok(uncached(ctx, result, |r, ttl, scope| {
            r.with_ttl_ms(ttl).with_cache_scope(scope)
        }))
    }

    async fn read_uri(
        &self,
        uri: &str,
        ctx: &RequestContext<RoleServer>,
    ) -> ToolResult<ReadResourceResult> {
        let tenant = self.tenant(ctx)?;
        if let Some(session_id) = uri::parse_notebook(uri) {
            return self.notebook(&tenant, session_id, uri).await;
        }
        let (session_id, name) = uri::parse(uri).ok_or_else(|| {
            ToolError::BadArguments(format!(
                "'{}' is not a session file or notebook; resources here are {} and {}.",
                uri.escape_debug(),
                uri::TEMPLATE,
                uri::NOTEBOOK_TEMPLATE
            ))
        })?;
        let session = if is_valid_id(&session_id) {
            self.backend.store.session(&tenant, &session_id).await?
        } else {
            None
        }
        .ok_or_else(|| ToolError::session_not_found(&session_id))?;
        let meta = self
            .backend
            .store
            .list_files(&session.id)
            .await?
            .into_iter()
            .find(|f| f.name.as_str() == name)
            .ok_or_else(|| {
                ToolError::Failed(format!(
                    "No file named '{}' in session {}.",
                    name.escape_debug(),
                    session.id
                ))
            })?;
        Ok(ReadResourceResult::new(vec![self.contents(&meta).await?]))
    }

    async fn notebook(
        &self,
        tenant: &Tenant,
        session_id: &str,
        uri: &str,
    ) -> ToolResult<ReadResourceResult> {
        let session = if is_valid_id(session_id) {
            self.backend.store.session(tenant, session_id).await?
        } else {
            None
        }
        .ok_or_else(|| ToolError::session_not_found(session_id))?;
        let notebook = self
            .backend
            .exec
            .notebooks()
            .notebook(&session.id)
            .await
            .map_err(|err| {
                tracing::error!(error = %err, "a notebook could not be read");
                ToolError::Failed("The notebook could not be read; try again.".to_owned())
            })?;
        let text = serde_json::to_string_pretty(&notebook).unwrap_or_default();
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(text, uri).with_mime_type(NOTEBOOK_MIME),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_declares_portable_object_schemas() {
        let tools = TOOLS.list_all();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                "delete_file",
                "execute_code",
                "list_files",
                "list_runtimes",
                "read_file",
                "reset_session",
                "upload_file"
            ]
        );
        for tool in &tools {
            let output = tool.output_schema.as_ref().expect("an output schema");
            for schema in [&tool.input_schema, output] {
                assert_eq!(schema.get("type"), Some(&serde_json::json!("object")));
                let text = serde_json::to_string(schema.as_ref()).unwrap();
                assert!(!text.contains("\\n"), "{}: {text}", tool.name);
                assert!(!text.contains("\"format\""), "{}: {text}", tool.name);
            }
        }
    }

    #[test]
    fn a_missing_argument_is_a_protocol_error_naming_the_field() {
        let err = arguments::<ExecuteCodeArgs>("execute_code", JsonObject::new()).unwrap_err();
        assert!(
            matches!(&err, ToolError::BadArguments(m) if m.contains("missing field `code`")),
            "{err:?}"
        );
        let mut lang = JsonObject::new();
        lang.insert("code".into(), "1".into());
        lang.insert("lang".into(), "py".into());
        let args = arguments::<ExecuteCodeArgs>("execute_code", lang).unwrap();
        assert_eq!(args.language, "py");
    }
}
