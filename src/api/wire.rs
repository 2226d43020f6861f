//! JSON shapes of the file API, exactly as LibreChat's clients and the seed's read them.
//! Where the two differ, both keys are sent (`session_id` and `storage_session_id`, `id` and
//! `fileId`, `name` and `filename`).

use chrono::{DateTime, SecondsFormat};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::FileMeta;

pub fn rfc3339(millis: i64) -> String {
    DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn download_path(file: &FileMeta) -> String {
    format!("/download/{}/{}", file.session_id, file.id)
}

/// `"<session_id>/<file_id>"`: LibreChat derives the file id from this form.
fn storage_name(file: &FileMeta) -> String {
    format!("{}/{}", file.session_id, file.id)
}

fn is_false(b: &bool) -> bool {
    !b
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FileMetadata {
    #[serde(rename = "content-type")]
    pub content_type: String,
    /// The plain path relative to `/mnt/data`.
    #[serde(rename = "original-filename")]
    pub original_filename: String,
}

impl FileMetadata {
    fn of(file: &FileMeta) -> Self {
        FileMetadata {
            content_type: file.content_type.clone(),
            original_filename: file.name.to_string(),
        }
    }
}

/// A file as upload answers and `detail=full` lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileObject {
    pub id: String,
    #[serde(rename = "fileId")]
    pub file_id: String,
    /// The plain path (upload) or `"<session_id>/<file_id>"` (listing with `detail=full`).
    pub name: String,
    /// The plain path relative to `/mnt/data`.
    pub filename: String,
    pub session_id: String,
    pub storage_session_id: String,
    /// Relative download URL.
    pub path: String,
    pub size: u64,
    #[serde(rename = "lastModified")]
    pub last_modified: String,
    pub etag: String,
    #[serde(rename = "contentType")]
    pub content_type: String,
    pub metadata: FileMetadata,
    #[serde(skip_serializing_if = "is_false")]
    pub read_only: bool,
}

impl FileObject {
    pub fn of(file: &FileMeta) -> Self {
        FileObject {
            id: file.id.clone(),
            file_id: file.id.clone(),
            name: file.name.to_string(),
            filename: file.name.to_string(),
            session_id: file.session_id.clone(),
            storage_session_id: file.session_id.clone(),
            path: download_path(file),
            size: file.size,
            last_modified: rfc3339(file.modified_at),
            etag: file.etag(),
            content_type: file.content_type.clone(),
            metadata: FileMetadata::of(file),
            read_only: file.read_only,
        }
    }

    fn listed(file: &FileMeta) -> Self {
        FileObject {
            name: storage_name(file),
            ..Self::of(file)
        }
    }
}

/// `detail=simple`: the plain path and where to download it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SimpleFile {
    pub id: String,
    pub name: String,
    pub session_id: String,
    pub path: String,
}

/// `detail=summary`: what LibreChat's liveness checks read (`fileId`, `name`, `lastModified`).
#[derive(Debug, Serialize, ToSchema)]
pub struct SummaryFile {
    pub id: String,
    #[serde(rename = "fileId")]
    pub file_id: String,
    /// `"<session_id>/<file_id>"`.
    pub name: String,
    pub filename: String,
    pub session_id: String,
    pub storage_session_id: String,
    pub size: u64,
    #[serde(rename = "lastModified")]
    pub last_modified: String,
    pub etag: String,
    pub metadata: FileMetadata,
}

/// `detail=normalized` (LibreChat's official API): self-contained, plain name.
#[derive(Debug, Serialize, ToSchema)]
pub struct NormalizedFile {
    pub id: String,
    pub name: String,
    pub storage_session_id: String,
    pub size: u64,
    #[serde(rename = "contentType")]
    pub content_type: String,
    #[serde(rename = "lastModified")]
    pub last_modified: String,
    #[serde(skip_serializing_if = "is_false")]
    pub read_only: bool,
}

/// The answer of `GET /files/{session_id}`: a bare array whose items depend on `detail`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum FileListing {
    Simple(Vec<SimpleFile>),
    Summary(Vec<SummaryFile>),
    Full(Vec<FileObject>),
    Normalized(Vec<NormalizedFile>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    Simple,
    Summary,
    Full,
    Normalized,
}

impl Detail {
    /// Unknown values fall back to `simple`, as LibreChat's official API does.
    pub fn parse(value: Option<&str>) -> Self {
        match value.map(str::to_ascii_lowercase).as_deref() {
            Some("summary") => Detail::Summary,
            Some("full") => Detail::Full,
            Some("normalized") => Detail::Normalized,
            _ => Detail::Simple,
        }
    }
}

impl FileListing {
    pub fn of(files: &[FileMeta], detail: Detail) -> Self {
        match detail {
            Detail::Simple => FileListing::Simple(
                files
                    .iter()
                    .map(|f| SimpleFile {
                        id: f.id.clone(),
                        name: f.name.to_string(),
                        session_id: f.session_id.clone(),
                        path: download_path(f),
                    })
                    .collect(),
            ),
            Detail::Summary => FileListing::Summary(
                files
                    .iter()
                    .map(|f| SummaryFile {
                        id: f.id.clone(),
                        file_id: f.id.clone(),
                        name: storage_name(f),
                        filename: f.name.to_string(),
                        session_id: f.session_id.clone(),
                        storage_session_id: f.session_id.clone(),
                        size: f.size,
                        last_modified: rfc3339(f.modified_at),
                        etag: f.etag(),
                        metadata: FileMetadata::of(f),
                    })
                    .collect(),
            ),
            Detail::Full => FileListing::Full(files.iter().map(FileObject::listed).collect()),
            Detail::Normalized => FileListing::Normalized(
                files
                    .iter()
                    .map(|f| NormalizedFile {
                        id: f.id.clone(),
                        name: f.name.to_string(),
                        storage_session_id: f.session_id.clone(),
                        size: f.size,
                        content_type: f.content_type.clone(),
                        last_modified: rfc3339(f.modified_at),
                        read_only: f.read_only,
                    })
                    .collect(),
            ),
        }
    }
}

/// `GET /sessions/{session_id}/objects/{file_id}`: newer LibreChat's liveness probe.
#[derive(Debug, Serialize, ToSchema)]
pub struct ObjectInfo {
    /// `"<session_id>/<file_id>"`.
    pub name: String,
    pub id: String,
    #[serde(rename = "fileId")]
    pub file_id: String,
    pub storage_session_id: String,
    /// Changes whenever the content changes.
    pub version: String,
    #[serde(rename = "originalFilename")]
    pub original_filename: String,
    pub size: u64,
    #[serde(rename = "lastModified")]
    pub last_modified: String,
    pub etag: String,
    #[serde(rename = "contentType")]
    pub content_type: String,
    #[serde(rename = "readOnly")]
    pub read_only: bool,
}

impl ObjectInfo {
    pub fn of(file: &FileMeta) -> Self {
        ObjectInfo {
            name: storage_name(file),
            id: file.id.clone(),
            file_id: file.id.clone(),
            storage_session_id: file.session_id.clone(),
            version: file.sha256[..16.min(file.sha256.len())].to_owned(),
            original_filename: file.name.to_string(),
            size: file.size,
            last_modified: rfc3339(file.modified_at),
            etag: file.etag(),
            content_type: file.content_type.clone(),
            read_only: file.read_only,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UploadResponse {
    /// `"success"`: LibreChat treats anything else as a failure.
    pub message: String,
    pub session_id: String,
    pub storage_session_id: String,
    pub files: Vec<FileObject>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItem {
    /// `success` or `error`.
    pub status: String,
    #[serde(rename = "fileId", skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
    pub filename: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileObject>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    /// `success`, `partial_success`, or `error` when every file failed.
    pub message: String,
    pub session_id: String,
    pub storage_session_id: String,
    pub files: Vec<BatchItem>,
    pub succeeded: usize,
    pub failed: usize,
    #[serde(rename = "filesLimitReached", skip_serializing_if = "is_false")]
    pub files_limit_reached: bool,
    #[serde(rename = "maxFiles", skip_serializing_if = "Option::is_none")]
    pub max_files: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedFile {
    pub message: String,
    pub session_id: String,
    #[serde(rename = "fileId")]
    pub file_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedSession {
    pub message: String,
    pub session_id: String,
}

/// Documentation of what `/upload/batch` answers with 400: the items when every file failed,
/// or an error when the request itself was refused (not multipart, no file part).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum BatchRefusal {
    Items(BatchResponse),
    Refused(super::error::ErrorBody),
}

/// Documentation of the multipart form of `/upload` and `/upload/batch`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The file (repeatable; `files` is accepted as the part name too). Its file name is the
    /// path relative to `/mnt/data`.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
    /// Put the files into this existing session instead of a new one.
    pub session_id: Option<String>,
    /// LibreChat's agent id (≤ 40 characters of `[A-Za-z0-9_-]`).
    pub entity_id: Option<String>,
    /// LibreChat's file kind: `user`, `agent` or `skill`.
    pub kind: Option<String>,
    /// LibreChat's owner id for `kind`.
    pub id: Option<String>,
    pub version: Option<String>,
    /// `true`: runs may read the files but their edits are never reported back.
    pub read_only: Option<bool>,
}
