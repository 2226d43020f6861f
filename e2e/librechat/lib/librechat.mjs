// What LibreChat itself does around the code tool, written from LibreChat's file
// services (api/server/services/Files/Code/*) and from @librechat/agents 3.9.2's source:
// ToolNode's file injection, the host's auth headers, and LibreChat's own
// upload / liveness / download calls (api/server/services/Files/Code/*).

import assert from 'node:assert/strict';

/** LibreChat's route `GET /api/files/code/download/:session_id/:fileId` accepts only this. */
export const NANOID_21 = /^[A-Za-z0-9_-]{21}$/;

export const USER_AGENT = 'LibreChat/1.0';

/** Summary line @librechat/agents 3.9.x appends when a run produced files. */
export function summaryRegex(fileCount, imageCount) {
  return new RegExp(
    `\\n\\nGenerated files:\\nSession files: ${fileCount} persisted file\\(s\\) are available in /mnt/data, ` +
      `including ${imageCount} image\\(s\\)\\. Use known /mnt/data paths directly in later code-tool calls\\.`,
  );
}

/**
 * The auth headers a LibreChat 3.x host hands to the tool factories
 * (`authHeaders`): the legacy X-API-Key when a key is configured.
 */
export function hostAuthHeaders(apiKey) {
  return { 'X-API-Key': apiKey };
}

let callSeq = 0;

/** A LangChain tool call, as ToolNode passes it to `tool.invoke`. */
export function toolCall(name, args, extra = {}) {
  callSeq += 1;
  return { id: `call_e2e_${process.pid}_${callSeq}`, name, type: 'tool_call', args, ...extra };
}

/**
 * ToolNode 3.9.x: the file ref injected into the next code call for a file it
 * remembers (`toInjectedFileRef`): resource_id defaults to id, the storage
 * session to the exec session, kind to 'user'; `version` only for skills.
 */
export function toInjectedFileRef(file, execSessionId) {
  const ref = {
    id: file.id,
    resource_id: file.resource_id ?? file.id,
    name: file.name,
    storage_session_id: file.storage_session_id ?? execSessionId,
  };
  const kind = file.kind ?? 'user';
  if (kind === 'skill' && file.version != null) return { ...ref, kind: 'skill', version: file.version };
  if (kind === 'agent') return { ...ref, kind: 'agent' };
  return { ...ref, kind: 'user' };
}

/**
 * What ToolNode adds to the next code tool call after a call returned
 * `artifact`: the exec `session_id` and `_injected_files` (it keeps the
 * artifact's files, filling a missing storage_session_id with the exec id).
 */
export function nextCallInjection(artifact) {
  const sessionId = artifact.session_id;
  const remembered = (artifact.files ?? []).map((file) => ({
    ...file,
    storage_session_id: file.storage_session_id ?? sessionId,
  }));
  const injection = { session_id: sessionId };
  if (remembered.length > 0) {
    injection._injected_files = remembered.map((file) => toInjectedFileRef(file, sessionId));
  }
  return injection;
}

export async function readJson(res) {
  const text = await res.text();
  try {
    return JSON.parse(text);
  } catch {
    assert.fail(`expected JSON from ${res.url} (HTTP ${res.status}), got: ${text.slice(0, 500)}`);
  }
}

/**
 * LibreChat `crud.js` `uploadCodeEnvFile`: multipart with the file part named
 * `file` and either the legacy `entity_id` or the new `kind`/`id`/`version`.
 */
export async function uploadCodeEnvFile(server, {
  userId,
  filename,
  content,
  type = 'application/octet-stream',
  entity_id,
  kind,
  id,
  version,
  apiKey = server.apiKey,
}) {
  const form = new FormData();
  if (entity_id != null && entity_id.length > 0) form.append('entity_id', entity_id);
  if (kind != null) form.append('kind', kind);
  if (id != null) form.append('id', id);
  if (version != null) form.append('version', String(version));
  form.append('file', new Blob([content], { type }), filename);
  const res = await fetch(`${server.baseUrl}/upload`, {
    method: 'POST',
    headers: { 'User-Agent': USER_AGENT, 'User-Id': userId, 'X-API-Key': apiKey },
    body: form,
    signal: AbortSignal.timeout(120_000),
  });
  return { res, body: await readJson(res) };
}

/** LibreChat `batchUploadCodeEnvFiles`: several `file` parts, optional `read_only`. */
export async function batchUploadCodeEnvFiles(server, { userId, files, entity_id, kind, id, version, read_only }) {
  const form = new FormData();
  if (entity_id != null && entity_id.length > 0) form.append('entity_id', entity_id);
  if (kind != null) form.append('kind', kind);
  if (id != null) form.append('id', id);
  if (version != null) form.append('version', String(version));
  if (read_only != null) form.append('read_only', String(read_only));
  for (const file of files) {
    form.append('file', new Blob([file.content], { type: file.type ?? 'application/octet-stream' }), file.filename);
  }
  const res = await fetch(`${server.baseUrl}/upload/batch`, {
    method: 'POST',
    headers: { 'User-Agent': USER_AGENT, 'User-Id': userId, 'X-API-Key': server.apiKey },
    body: form,
    signal: AbortSignal.timeout(120_000),
  });
  return { res, body: await readJson(res) };
}

/** Legacy LibreChat: the identifier it stores after an upload. */
export function legacyFileIdentifier(uploadBody, entity_id) {
  const base = `${uploadBody.session_id}/${uploadBody.files[0].fileId}`;
  return entity_id ? `${base}?entity_id=${entity_id}` : base;
}

/**
 * Legacy LibreChat `getSessionInfo(fileIdentifier)`: GET /files/{session}?detail=summary
 * (plus the identifier's query) and the `lastModified` of the item whose
 * `name` starts with "{session_id}/{fileId}"; null when not listed.
 */
export async function legacyGetSessionInfo(server, fileIdentifier) {
  const [pathPart, queryString] = fileIdentifier.split('?');
  const [sessionId, fileId] = pathPart.split('/');
  const params = new URLSearchParams({ detail: 'summary' });
  for (const [k, v] of new URLSearchParams(queryString ?? '')) params.set(k, v);
  const res = await fetch(`${server.baseUrl}/files/${sessionId}?${params}`, {
    headers: { 'User-Agent': USER_AGENT, 'X-API-Key': server.apiKey },
    signal: AbortSignal.timeout(5_000),
  });
  assert.equal(res.status, 200, `GET /files/${sessionId}?${params} answered ${res.status}`);
  const list = await readJson(res);
  assert.ok(Array.isArray(list), `/files answer must be a bare JSON array, got ${JSON.stringify(list).slice(0, 200)}`);
  const hit = list.find((file) => typeof file.name === 'string' && file.name.startsWith(`${sessionId}/${fileId}`));
  return hit?.lastModified ?? null;
}

/** Legacy LibreChat `checkIfActive`: re-upload when 23 h old or more. */
export function checkIfActive(dateString) {
  const lastModified = new Date(dateString);
  const hours = (Date.now() - lastModified.getTime()) / 3_600_000;
  return hours < 23;
}

/**
 * Newer LibreChat `checkCodeEnvFileAlive(codeEnvRef)`: GET
 * /files/{storage_session_id}?detail=summary, 5 s; alive when an item has
 * `fileId === ref.file_id`; a 2xx without it means expired; 404 not found;
 * timeout or 5xx "unknown" (treated as alive).
 */
export async function checkCodeEnvFileAlive(server, ref, { extraQuery = {} } = {}) {
  const params = new URLSearchParams({ detail: 'summary', ...extraQuery });
  let res;
  try {
    res = await fetch(`${server.baseUrl}/files/${ref.storage_session_id}?${params}`, {
      headers: { 'User-Agent': USER_AGENT, 'X-API-Key': server.apiKey },
      signal: AbortSignal.timeout(5_000),
    });
  } catch {
    return { state: 'unknown' };
  }
  if (res.status === 404) return { state: 'not_found', status: 404 };
  if (res.status >= 500) return { state: 'unknown', status: res.status };
  if (!res.ok) return { state: 'error', status: res.status };
  const list = await readJson(res);
  assert.ok(Array.isArray(list), '/files answer must be a bare JSON array');
  const item = list.find((file) => file.fileId === ref.file_id);
  return { state: item ? 'alive' : 'expired', status: res.status, item, list };
}

/** LibreChat `getCodeOutputDownloadStream`: GET /download/{session}/{fileId}[?kind=&id=]. */
export async function downloadCodeFile(server, sessionId, fileId, query) {
  const qs = query ? `?${new URLSearchParams(query)}` : '';
  const res = await fetch(`${server.baseUrl}/download/${sessionId}/${fileId}${qs}`, {
    headers: { 'User-Agent': USER_AGENT, 'X-API-Key': server.apiKey },
    signal: AbortSignal.timeout(15_000),
  });
  const bytes = Buffer.from(await res.arrayBuffer());
  return { res, bytes };
}

/** Newer LibreChat object liveness probe: GET /sessions/{sid}/objects/{fid}. */
export async function probeObject(server, sessionId, fileId, query) {
  const qs = query ? `?${new URLSearchParams(query)}` : '';
  const res = await fetch(`${server.baseUrl}/sessions/${sessionId}/objects/${fileId}${qs}`, {
    headers: { 'User-Agent': USER_AGENT, 'X-API-Key': server.apiKey },
    signal: AbortSignal.timeout(5_000),
  });
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { res, body };
}

export function isIsoDate(value) {
  return typeof value === 'string' && !Number.isNaN(new Date(value).getTime());
}

export const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
