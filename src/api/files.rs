//! Upload, list, download and delete: thin handlers over the [`Store`](crate::store::Store).

use std::io::SeekFrom;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::multipart::{Field, MultipartRejection};
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;
use utoipa::IntoParams;

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::wire::*;
use crate::config::parse_bool;
use crate::session::{SessionOwner, Tenant, is_valid_entity_id, is_valid_id};
use crate::store::{FileMeta, FileName, FileOrigin, NewFile, Session, StagedFile, StoreError};

/// Most files one `/upload/batch` takes (LibreChat's official API uses the same cap).
const MAX_BATCH_FILES: usize = 200;
/// Read size for streaming a download: large reads keep throughput near the disk's
/// (tokio's file reads hop to a blocking thread per read).
const DOWNLOAD_CHUNK: usize = 256 * 1024;
/// Text form fields are ids and flags; anything longer is a mistake.
const MAX_FIELD_BYTES: usize = 1024;
/// Text fields a form may have besides its files (there are six kinds).
const MAX_TEXT_FIELDS: usize = 32;

fn check_id(id: &str, what: &str) -> ApiResult<()> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::malformed_id(what))
    }
}

/// The session if `tenant` owns it; anything else is a 404 that reveals nothing.
async fn owned_session(state: &AppState, tenant: &Tenant, sid: &str) -> ApiResult<Session> {
    check_id(sid, "session id")?;
    state
        .store
        .session(tenant, sid)
        .await?
        .ok_or_else(ApiError::session_not_found)
}

async fn owned_file(
    state: &AppState,
    tenant: &Tenant,
    sid: &str,
    fid: &str,
) -> ApiResult<FileMeta> {
    check_id(sid, "session id")?;
    check_id(fid, "file id")?;
    if state.store.session(tenant, sid).await?.is_none() {
        return Err(ApiError::file_not_found());
    }
    state
        .store
        .file(sid, fid)
        .await?
        .ok_or_else(ApiError::file_not_found)
}

// ---------------------------------------------------------------------------------------------
// Upload

/// Everything a multipart upload said, with its file parts already staged on disk.
#[derive(Default)]
struct ParsedUpload {
    session_id: Option<String>,
    entity_id: Option<String>,
    read_only: bool,
    origin: FileOrigin,
    files: Vec<(String, Result<StagedFile, StoreError>)>,
    over_limit: usize,
}

fn multipart_error(err: axum::extract::multipart::MultipartError) -> ApiError {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "file_too_large",
            "The request body is too large.",
        )
    } else {
        ApiError::bad_request(format!(
            "The multipart body could not be read ({}); send multipart/form-data with a 'file' part.",
            err.body_text()
        ))
    }
}

/// Wait for the next piece of a multipart body, for at most `UPLOAD_IDLE_SECONDS`.
async fn within_idle<T>(
    state: &AppState,
    next: impl std::future::Future<Output = Result<T, axum::extract::multipart::MultipartError>>,
) -> ApiResult<T> {
    let seconds = state.settings.upload_idle_seconds;
    tokio::time::timeout(std::time::Duration::from_secs(seconds), next)
        .await
        .map_err(|_| StoreError::BodyStalled { seconds })?
        .map_err(multipart_error)
}

async fn read_text_field(state: &AppState, mut field: Field<'_>) -> ApiResult<String> {
    let name = field.name().unwrap_or("").to_owned();
    let mut buf = Vec::new();
    while let Some(chunk) = within_idle(state, field.chunk()).await? {
        buf.extend_from_slice(&chunk);
        if buf.len() > MAX_FIELD_BYTES {
            return Err(ApiError::bad_request(format!(
                "The form field '{name}' is longer than {MAX_FIELD_BYTES} bytes."
            )));
        }
    }
    String::from_utf8(buf)
        .map(|s| s.trim().to_owned())
        .map_err(|_| ApiError::bad_request(format!("The form field '{name}' is not UTF-8 text.")))
}

fn optional_label(value: String, field: &str) -> ApiResult<Option<String>> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > 128 || value.chars().any(char::is_control) {
        return Err(ApiError::validation(format!(
            "The form field '{field}' must be at most 128 printable characters."
        )));
    }
    Ok(Some(value))
}

fn too_many_parts(max_files: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_many_files",
        format!(
            "An upload takes at most {max_files} files (MAX_UPLOAD_FILES); send the others in another request."
        ),
    )
}

/// How the form's file parts are limited.
#[derive(Clone, Copy)]
enum OverLimit {
    /// Refuse the whole request.
    Refuse,
    /// Skip the part and count it (`/upload/batch` reports each one).
    Count,
}

/// Read the whole form. File parts (any part with a file name) stream to staging as they
/// arrive, because LibreChat sends the `file` part before the fields that say where it goes.
/// What a form may cost is bounded: `MAX_UPLOAD_FILES` file parts, a few text fields, no
/// more staged bytes than the session quota, and no pause longer than `UPLOAD_IDLE_SECONDS`.
async fn read_upload_form(
    state: &AppState,
    multipart: Result<Multipart, MultipartRejection>,
    max_files: usize,
    over_limit: OverLimit,
    stop_at_first_error: bool,
) -> ApiResult<ParsedUpload> {
    let mut multipart = multipart.map_err(|_| {
        ApiError::bad_request("Invalid content type: send multipart/form-data with a 'file' part.")
    })?;
    let max_parts = state.settings.max_upload_files as usize + MAX_TEXT_FIELDS;
    let quota = state.settings.session_disk_quota_bytes();
    let mut form = ParsedUpload::default();
    let (mut parts, mut staged_bytes) = (0usize, 0u64);
    while let Some(field) = within_idle(state, multipart.next_field()).await? {
        parts += 1;
        if parts > max_parts {
            return Err(too_many_parts(max_files));
        }
        let part = field.name().unwrap_or("").to_owned();
        if let Some(file_name) = field.file_name().map(str::to_owned) {
            if form.files.len() >= max_files {
                match over_limit {
                    OverLimit::Refuse => return Err(too_many_parts(max_files)),
                    OverLimit::Count => {
                        form.over_limit += 1;
                        continue;
                    }
                }
            }
            // Staging never holds more than the session could keep, nor takes DATA_DIR
            // below its free-space floor.
            let room = quota.map_or(u64::MAX, |q| q.saturating_sub(staged_bytes));
            let floor = state.settings.disk_floor();
            floor.check(0)?;
            let disk_room = floor.room().unwrap_or(u64::MAX);
            let limit = state.settings.max_upload_bytes.min(room).min(disk_room);
            let body = field.map_err(std::io::Error::other).boxed();
            let staged = match state.store.stage(body, limit).await {
                Err(StoreError::TooLarge { .. }) if limit == disk_room => Err(floor.refusal()),
                Err(StoreError::TooLarge { .. }) if limit < state.settings.max_upload_bytes => {
                    Err(StoreError::QuotaExceeded {
                        quota: quota.unwrap_or_default(),
                    })
                }
                other => other,
            };
            if let Ok(file) = &staged {
                staged_bytes += file.size;
            }
            match staged {
                // A broken body or a full disk ends the whole request: nothing after it can be read.
                Err(
                    err @ (StoreError::BodyInterrupted(_)
                    | StoreError::BodyStalled { .. }
                    | StoreError::DiskFull
                    | StoreError::BelowFloor { .. }),
                ) => {
                    return Err(err.into());
                }
                Err(err) if stop_at_first_error => return Err(err.into()),
                other => form.files.push((file_name, other)),
            }
            continue;
        }
        let value = read_text_field(state, field).await?;
        match part.as_str() {
            "session_id" => form.session_id = Some(value).filter(|v| !v.is_empty()),
            "entity_id" => form.entity_id = Some(value).filter(|v| !v.is_empty()),
            "kind" => form.origin.kind = optional_label(value, "kind")?,
            "id" => form.origin.ref_id = optional_label(value, "id")?,
            "version" => form.origin.version = optional_label(value, "version")?,
            "read_only" => {
                form.read_only = parse_bool(&value).map_err(|e| {
                    ApiError::validation(format!("The form field 'read_only' is invalid: {e}."))
                })?
            }
            _ => {} // Unknown fields are ignored, as LibreChat's clients expect.
        }
    }
    if form.files.is_empty() && form.over_limit == 0 {
        return Err(ApiError::bad_request(
            "No file provided: send the file in a multipart part named 'file' with a file name.",
        ));
    }
    Ok(form)
}

/// The session an upload goes to: the one named (if this tenant owns it) or a new one.
async fn upload_session(
    state: &AppState,
    tenant: &Tenant,
    headers: &HeaderMap,
    form: &ParsedUpload,
) -> ApiResult<Session> {
    if let Some(entity) = &form.entity_id
        && !is_valid_entity_id(entity)
    {
        return Err(ApiError::validation(
            "entity_id must be 1 to 40 characters of A-Z, a-z, 0-9, '_' and '-'.",
        ));
    }
    if let Some(sid) = &form.session_id {
        return owned_session(state, tenant, sid).await;
    }
    let owner = SessionOwner {
        user_id: user_id_header(headers),
        entity_id: form.entity_id.clone(),
    };
    Ok(state.store.create_session(tenant, &owner).await?)
}

fn user_id_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get("user-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
}

fn parse_name(raw: &str) -> ApiResult<FileName> {
    FileName::parse(raw).map_err(|e| {
        ApiError::bad_request(format!("Invalid file name '{}': {e}.", raw.escape_debug()))
    })
}

/// Upload one or more files into a session (a new one unless `session_id` is given).
#[utoipa::path(
    post, path = "/upload", tag = "files",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Stored", body = UploadResponse),
        (status = 400, description = "Not multipart, no file, or a bad file name", body = ErrorBody),
        (status = 404, description = "session_id is unknown", body = ErrorBody),
        (status = 408, description = "The body stalled for UPLOAD_IDLE_SECONDS", body = ErrorBody),
        (status = 413, description = "Over MAX_UPLOAD_BYTES, MAX_UPLOAD_FILES or the session's disk quota", body = ErrorBody),
        (status = 422, description = "A form field other than the files is invalid", body = ErrorBody),
        (status = 507, description = "The disk is full, or DATA_DIR would fall below DATA_DIR_MIN_FREE_MB", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn upload(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Json<UploadResponse>> {
    let max_files = state.settings.max_upload_files as usize;
    let form = read_upload_form(&state, multipart, max_files, OverLimit::Refuse, true).await?;
    // Names are checked before a session is made, so a bad request leaves nothing behind.
    let names = form
        .files
        .iter()
        .map(|(raw, _)| parse_name(raw))
        .collect::<ApiResult<Vec<_>>>()?;
    let session = upload_session(&state, &tenant, &headers, &form).await?;
    let (read_only, origin) = (form.read_only, form.origin);
    let new_files = form
        .files
        .into_iter()
        .zip(names)
        .map(|((_, staged), name)| {
            Ok(NewFile {
                name,
                staged: staged?,
                read_only,
                origin: origin.clone(),
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let metas = state.store.commit(&session.id, new_files).await?;
    Ok(Json(UploadResponse {
        message: "success".into(),
        session_id: session.id.clone(),
        storage_session_id: session.id,
        files: metas.iter().map(FileObject::of).collect(),
    }))
}

/// Upload several files; each gets its own status, so one bad file does not sink the rest.
#[utoipa::path(
    post, path = "/upload/batch", tag = "files",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "At least one file stored", body = BatchResponse),
        (status = 400, description = "Not multipart, no file, or every file failed", body = BatchRefusal),
        (status = 404, description = "session_id is unknown", body = ErrorBody),
        (status = 408, description = "The body stalled for UPLOAD_IDLE_SECONDS", body = ErrorBody),
        (status = 422, description = "A form field other than the files is invalid", body = ErrorBody),
        (status = 507, description = "The disk is full, or DATA_DIR would fall below DATA_DIR_MIN_FREE_MB", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn upload_batch(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Response> {
    let max_files = MAX_BATCH_FILES.min(state.settings.max_upload_files as usize);
    let form = read_upload_form(&state, multipart, max_files, OverLimit::Count, false).await?;
    let session = upload_session(&state, &tenant, &headers, &form).await?;
    let (read_only, origin, over_limit) = (form.read_only, form.origin.clone(), form.over_limit);

    let mut items = Vec::with_capacity(form.files.len() + over_limit);
    for (raw_name, staged) in form.files {
        let outcome = match (FileName::parse(&raw_name), staged) {
            (Err(e), _) => Err(ApiError::bad_request(format!("Invalid file name: {e}."))),
            (_, Err(e)) => Err(ApiError::from(e)),
            (Ok(name), Ok(staged)) => {
                let file = NewFile {
                    name,
                    staged,
                    read_only,
                    origin: origin.clone(),
                };
                state
                    .store
                    .commit_one(&session.id, file)
                    .await
                    .map_err(ApiError::from)
            }
        };
        items.push(match outcome {
            Ok(meta) => BatchItem {
                status: "success".into(),
                file_id: Some(meta.id.clone()),
                filename: meta.name.to_string(),
                error: None,
                file: Some(FileObject::of(&meta)),
            },
            Err(err) => BatchItem {
                status: "error".into(),
                file_id: None,
                filename: raw_name,
                error: Some(err.detail),
                file: None,
            },
        });
    }
    for _ in 0..over_limit {
        items.push(BatchItem {
            status: "error".into(),
            file_id: None,
            filename: String::new(),
            error: Some(format!(
                "Not stored: a batch takes at most {max_files} files."
            )),
            file: None,
        });
    }
    let succeeded = items.iter().filter(|i| i.status == "success").count();
    let failed = items.len() - succeeded;
    let message = match (succeeded, failed) {
        (_, 0) => "success",
        (0, _) => "error",
        _ => "partial_success",
    };
    let status = if succeeded == 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let body = BatchResponse {
        message: message.into(),
        session_id: session.id.clone(),
        storage_session_id: session.id,
        files: items,
        succeeded,
        failed,
        files_limit_reached: over_limit > 0,
        max_files: (over_limit > 0).then_some(max_files),
    };
    Ok((status, Json(body)).into_response())
}

// ---------------------------------------------------------------------------------------------
// List

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// `simple` (default), `summary`, `full` or `normalized`. Other query parameters are ignored.
    detail: Option<String>,
}

/// List a session's files. An unknown, expired or foreign session is an empty list
/// (LibreChat reads "listed" as alive and anything else as expired).
#[utoipa::path(
    get, path = "/files/{session_id}", tag = "files",
    params(("session_id" = String, Path, description = "21-character session id"), ListQuery),
    responses(
        (status = 200, description = "A bare array; item shape depends on detail", body = FileListing),
        (status = 400, description = "Malformed session id", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list_files(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(sid): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<FileListing>> {
    check_id(&sid, "session id")?;
    let detail = Detail::parse(query.detail.as_deref());
    let files = match state.store.session(&tenant, &sid).await? {
        Some(_) => state.store.list_files(&sid).await?,
        None => Vec::new(),
    };
    Ok(Json(FileListing::of(&files, detail)))
}

/// A file's metadata (newer LibreChat's liveness probe).
#[utoipa::path(
    get, path = "/sessions/{session_id}/objects/{file_id}", tag = "files",
    params(("session_id" = String, Path), ("file_id" = String, Path)),
    responses(
        (status = 200, body = ObjectInfo),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 404, description = "Unknown, expired or not yours", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn object_info(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path((sid, fid)): Path<(String, String)>,
) -> ApiResult<Json<ObjectInfo>> {
    let file = owned_file(&state, &tenant, &sid, &fid).await?;
    Ok(Json(ObjectInfo::of(&file)))
}

// ---------------------------------------------------------------------------------------------
// Download

/// The part of a file a `Range` header asks for.
#[derive(Debug, PartialEq, Eq)]
enum ByteRange {
    Whole,
    /// Inclusive bounds.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range; several ranges are answered with the whole file, which RFC 9110 allows.
fn parse_range(value: &str, size: u64) -> ByteRange {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return ByteRange::Whole;
    };
    if spec.contains(',') {
        return ByteRange::Whole;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return ByteRange::Whole;
    };
    let (start, end) = (start.trim(), end.trim());
    let parsed = match (start.parse::<u64>(), end.parse::<u64>()) {
        (Ok(s), Ok(e)) if s <= e => Some((s, e.min(size.saturating_sub(1)))),
        (Ok(_), Ok(_)) => return ByteRange::Whole,
        (Ok(s), Err(_)) if end.is_empty() => Some((s, size.saturating_sub(1))),
        (Err(_), Ok(n)) if start.is_empty() => {
            if n == 0 {
                return ByteRange::Unsatisfiable;
            }
            Some((size.saturating_sub(n), size.saturating_sub(1)))
        }
        _ => return ByteRange::Whole,
    };
    match parsed {
        Some((s, e)) if s < size && s <= e => ByteRange::Part(s, e),
        _ => ByteRange::Unsatisfiable,
    }
}

/// Everything but RFC 5987's `attr-char` is percent-encoded in `filename*`.
const RFC5987_ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

fn content_disposition(name: &FileName) -> HeaderValue {
    let base = name.base_name();
    let ascii: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded = percent_encoding::utf8_percent_encode(base, RFC5987_ESCAPED);
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// Download a file's bytes, streamed from disk, with `ETag` and single-range support.
/// Extra query parameters (`kind`, `id`, `version`) are ignored.
#[utoipa::path(
    get, path = "/download/{session_id}/{file_id}", tag = "files",
    params(("session_id" = String, Path), ("file_id" = String, Path)),
    responses(
        (status = 200, description = "The bytes, with the content type they were stored with", content_type = "*/*"),
        (status = 206, description = "The requested range", content_type = "*/*"),
        (status = 304, description = "Matches If-None-Match"),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 404, description = "Unknown, expired or not yours", body = ErrorBody),
        (status = 416, description = "Range outside the file", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn download(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path((sid, fid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let meta = owned_file(&state, &tenant, &sid, &fid).await?;
    let etag = meta.etag();

    let mut response_headers = HeaderMap::new();
    let content_type = HeaderValue::from_str(&meta.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    response_headers.insert(header::CONTENT_TYPE, content_type);
    response_headers.insert(header::CONTENT_DISPOSITION, content_disposition(&meta.name));
    response_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        response_headers.insert(header::ETAG, v);
    }
    if let Some(modified) = chrono::DateTime::from_timestamp_millis(meta.modified_at)
        && let Ok(v) =
            HeaderValue::from_str(&modified.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
    {
        response_headers.insert(header::LAST_MODIFIED, v);
    }
    if meta.read_only {
        response_headers.insert("x-read-only", HeaderValue::from_static("true"));
    }

    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    if if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*")) {
        return Ok((StatusCode::NOT_MODIFIED, response_headers).into_response());
    }

    // If-Range: only honour the range when the client's copy is still current.
    let range_applies = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if range_applies => parse_range(r, meta.size),
        _ => ByteRange::Whole,
    };

    let mut file = state.store.open(&meta).await.map_err(|err| match err {
        StoreError::Io(_) => ApiError::file_not_found(),
        other => other.into(),
    })?;
    let (status, start, len) = match range {
        ByteRange::Whole => (StatusCode::OK, 0, meta.size),
        ByteRange::Part(s, e) => {
            let value = format!("bytes {s}-{e}/{}", meta.size);
            response_headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&value).map_err(ApiError::internal)?,
            );
            (StatusCode::PARTIAL_CONTENT, s, e - s + 1)
        }
        ByteRange::Unsatisfiable => {
            let value = format!("bytes */{}", meta.size);
            let mut err = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!(
                    "The requested range is outside the file's {} bytes.",
                    meta.size
                ),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&value) {
                err.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(err);
        }
    };
    if start > 0 {
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(ApiError::internal)?;
    }
    response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let body = Body::from_stream(ReaderStream::with_capacity(file.take(len), DOWNLOAD_CHUNK));
    Ok((status, response_headers, body).into_response())
}

// ---------------------------------------------------------------------------------------------
// Delete

/// Delete one file (also at `DELETE /sessions/{session_id}/objects/{file_id}`).
#[utoipa::path(
    delete, path = "/files/{session_id}/{file_id}", tag = "files",
    params(("session_id" = String, Path), ("file_id" = String, Path)),
    responses(
        (status = 200, body = DeletedFile),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 404, description = "Unknown, already deleted, or not yours", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn delete_file(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path((sid, fid)): Path<(String, String)>,
) -> ApiResult<Json<DeletedFile>> {
    let meta = owned_file(&state, &tenant, &sid, &fid).await?;
    state
        .store
        .delete_file(&meta.session_id, &meta.id)
        .await?
        .ok_or_else(ApiError::file_not_found)?;
    Ok(Json(DeletedFile {
        message: "File deleted successfully".into(),
        session_id: sid,
        file_id: fid,
    }))
}

/// End a session: its files and metadata are deleted.
#[utoipa::path(
    delete, path = "/sessions/{session_id}", tag = "sessions",
    params(("session_id" = String, Path)),
    responses(
        (status = 200, body = DeletedSession),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 404, description = "Unknown, expired or not yours", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn delete_session(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(sid): Path<String>,
) -> ApiResult<Json<DeletedSession>> {
    check_id(&sid, "session id")?;
    if !state.exec.delete_session(&tenant, &sid).await? {
        return Err(ApiError::session_not_found());
    }
    Ok(Json(DeletedSession {
        message: "Session deleted successfully".into(),
        session_id: sid,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), ByteRange::Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), ByteRange::Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), ByteRange::Part(90, 99));
        assert_eq!(parse_range("bytes=50-500", 100), ByteRange::Part(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), ByteRange::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), ByteRange::Whole);
        assert_eq!(parse_range("items=0-1", 100), ByteRange::Whole);
        assert_eq!(parse_range("bytes=5-1", 100), ByteRange::Whole);
    }

    #[test]
    fn disposition_keeps_an_ascii_fallback_and_the_utf8_name() {
        let v = content_disposition(&FileName::parse("out/résumé \"x\".pdf").unwrap());
        let v = v.to_str().unwrap();
        assert!(
            v.starts_with("attachment; filename=\"r_sum_ _x_.pdf\""),
            "{v}"
        );
        assert!(
            v.contains("filename*=UTF-8''r%C3%A9sum%C3%A9%20%22x%22.pdf"),
            "{v}"
        );
    }
}
