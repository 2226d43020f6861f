// The legacy shapes: what @librechat/agents 2.x (2.4.322) put on the wire, and
// the /files?detail=full lookups (2.x tool, and 3.9.x's exported fetchSessionFiles).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startServer } from '../lib/server.mjs';
import { NANOID_21, USER_AGENT, hostAuthHeaders, readJson, toolCall } from '../lib/librechat.mjs';

let server;
let agents;

before(async () => {
  server = await startServer();
  process.env.LIBRECHAT_CODE_BASEURL = server.baseUrl;
  agents = await import('@librechat/agents');
});

after(async () => {
  await server?.stop();
});

/**
 * The 2.x tool's POST /exec: headers Content-Type, User-Agent, X-API-Key; body
 * `{lang, code, ...rest, ...params}` where LibreChat's params were
 * `{user_id, files?, LIBRECHAT_CODE_API_KEY}` (the key leaked into the body).
 */
async function legacyExec({ lang, code, args, files, user_id = 'legacy-user' }) {
  const body = { lang, code, ...(args ? { args } : {}), user_id, LIBRECHAT_CODE_API_KEY: server.apiKey };
  if (files) body.files = files;
  const res = await fetch(`${server.baseUrl}/exec`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'User-Agent': USER_AGENT, 'X-API-Key': server.apiKey },
    body: JSON.stringify(body),
  });
  assert.equal(res.status, 200, `legacy /exec answered ${res.status}`);
  return readJson(res);
}

/**
 * The 2.x tool when the model passed `session_id`: GET /files/{sid}?detail=full,
 * id parsed from `name` ("{sid}/{fileId}[.ext]"), mount name from
 * metadata['original-filename'].
 */
async function legacySessionFileRefs(sessionId) {
  const res = await fetch(`${server.baseUrl}/files/${sessionId}?detail=full`, {
    headers: { 'User-Agent': USER_AGENT, 'X-API-Key': server.apiKey },
  });
  assert.equal(res.status, 200);
  const files = await readJson(res);
  assert.ok(Array.isArray(files), 'a bare JSON array');
  return {
    raw: files,
    refs: files.map((file) => {
      const nameParts = file.name.split('/');
      const id = nameParts.length > 1 ? nameParts[1].split('.')[0] : '';
      return { session_id: sessionId, id, name: file.metadata['original-filename'] };
    }),
  };
}

describe('2.x wire shapes', () => {
  let produced;

  before(async () => {
    produced = await legacyExec({
      lang: 'py',
      code: 'open("/mnt/data/report.txt", "w").write("legacy-ok\\n")\nprint("wrote")',
    });
  });

  test('/exec with the 2.x body (extra user_id and LIBRECHAT_CODE_API_KEY fields) runs', () => {
    assert.equal(produced.stdout, 'wrote\n');
    assert.equal(produced.stderr, '');
    assert.match(produced.session_id, NANOID_21);
    assert.equal(produced.files.length, 1);
    assert.equal(produced.files[0].name, 'report.txt');
    assert.match(produced.files[0].id, NANOID_21);
  });

  test('GET /files/{sid}?detail=full: name is "<sid>/<fileId>", metadata carries the original filename', async () => {
    const { raw, refs } = await legacySessionFileRefs(produced.session_id);
    assert.equal(raw.length, 1);
    assert.equal(raw[0].name, `${produced.session_id}/${produced.files[0].id}`);
    assert.equal(raw[0].metadata['original-filename'], 'report.txt');
    assert.deepEqual(refs, [{ session_id: produced.session_id, id: produced.files[0].id, name: 'report.txt' }]);
  });

  test('the next 2.x call sends {session_id, id, name} files and reads them', async () => {
    const { refs } = await legacySessionFileRefs(produced.session_id);
    const next = await legacyExec({ lang: 'py', code: 'print(open("/mnt/data/report.txt").read().strip())', files: refs });
    assert.equal(next.stdout, 'legacy-ok\n');
    assert.equal(next.stderr, '');
    for (const file of next.files ?? []) {
      assert.equal(file.inherited, true, 'an unchanged input must not come back as a new file');
    }
  });

  test('2.x shape files also work through the 3.9 tool\'s `files` param', async () => {
    const tool = agents.createCodeExecutionTool({
      authHeaders: hostAuthHeaders(server.apiKey),
      files: [{ session_id: produced.session_id, id: produced.files[0].id, name: 'report.txt' }],
    });
    const msg = await tool.invoke(toolCall(tool.name, { lang: 'bash', code: 'cat /mnt/data/report.txt' }));
    assert.equal(msg.content, 'stdout:\nlegacy-ok');
  });

  test('a 2.x file ref to a file that does not exist is an error, not a silent empty mount', async () => {
    const res = await fetch(`${server.baseUrl}/exec`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'User-Agent': USER_AGENT, 'X-API-Key': server.apiKey },
      body: JSON.stringify({
        lang: 'py',
        code: 'print(1)',
        files: [{ session_id: produced.session_id, id: 'AAAAAAAAAAAAAAAAAAAAA', name: 'ghost.txt' }],
      }),
    });
    assert.equal(res.status, 404);
    const body = await readJson(res);
    assert.equal(typeof body.detail, 'string');
  });

  test('a 2.x-style raw /exec with lang "bash" (added to the 3.x enum) runs', async () => {
    const out = await legacyExec({ lang: 'bash', code: 'echo $((6*7))' });
    assert.equal(out.stdout, '42\n');
  });
});

describe('3.9.x fetchSessionFiles (exported helper, GET /files?detail=full)', () => {
  let sessionId;
  let fileId;

  before(async () => {
    const out = await legacyExec({ lang: 'py', code: 'open("/mnt/data/a.json","w").write("{\\"k\\": 1}")\nprint(1)' });
    sessionId = out.session_id;
    fileId = out.files[0].id;
  });

  test('unscoped lookup returns CodeEnvFile refs with id, name, storage session', async () => {
    const refs = await agents.fetchSessionFiles(server.baseUrl, sessionId, undefined, hostAuthHeaders(server.apiKey));
    assert.equal(refs.length, 1);
    assert.equal(refs[0].id, fileId);
    assert.equal(refs[0].name, 'a.json');
    assert.equal(refs[0].storage_session_id, sessionId);
  });

  test('scoped lookup (&kind=user&id=…) is accepted and returns the same file', async () => {
    const refs = await agents.fetchSessionFiles(
      server.baseUrl,
      sessionId,
      { kind: 'user', id: 'librechat-user-1' },
      hostAuthHeaders(server.apiKey),
    );
    assert.equal(refs.length, 1);
    assert.equal(refs[0].id, fileId);
    assert.equal(refs[0].name, 'a.json');
    assert.equal(refs[0].kind, 'user');
    assert.equal(refs[0].storage_session_id, sessionId);
  });

  test('the refs it returns, injected into the tool, mount the file', async () => {
    const refs = await agents.fetchSessionFiles(server.baseUrl, sessionId, undefined, hostAuthHeaders(server.apiKey));
    const tool = agents.createCodeExecutionTool({ authHeaders: hostAuthHeaders(server.apiKey) });
    const msg = await tool.invoke(
      toolCall(tool.name, { lang: 'py', code: 'import json\nprint(json.load(open("/mnt/data/a.json"))["k"] + 41)' }, {
        session_id: sessionId,
        _injected_files: refs,
      }),
    );
    assert.equal(msg.content, 'stdout:\n42');
  });
});
