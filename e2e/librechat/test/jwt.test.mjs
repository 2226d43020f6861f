// LibreChat configured for a Code API with JWT auth sends only `Authorization: Bearer
// <jwt>`, a token it mints for each call (EdDSA, kid in the header, iss "librechat",
// aud "codeapi", sub = the user, 300 s lifetime). The server verifies it with the public
// key (CODEAPI_JWT_PUBLIC_KEY + CODEAPI_JWT_KID) and the tools work with no API key.
// The stateful profile's runtime_session_hint keeps one kernel per (tenant, user, hint),
// and the artifact says whether it was new or reused.

import assert from 'node:assert/strict';
import { generateKeyPairSync, randomUUID, sign } from 'node:crypto';
import { after, before, test } from 'node:test';

import { startServer } from '../lib/server.mjs';
import { USER_AGENT, readJson, toolCall } from '../lib/librechat.mjs';

const KID = 'librechat-e2e';
const USER_ID = '665f1c2e9b1d4a0012345678';
const { publicKey, privateKey } = generateKeyPairSync('ed25519');

/** What LibreChat's Code API token minter produces, signed with node:crypto. */
function mint({ sub = USER_ID, tenant = 'tenant-e2e', iat = Math.floor(Date.now() / 1000), ...extra } = {}) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const header = encode({ alg: 'EdDSA', typ: 'JWT', kid: KID });
  const claims = encode({
    iss: 'librechat',
    aud: 'codeapi',
    sub,
    iat,
    nbf: iat,
    exp: iat + 300,
    jti: randomUUID(),
    tenant_id: tenant,
    role: 'USER',
    principal_source: 'librechat_jwt',
    auth_context_hash: 'b1f1c0de'.repeat(8),
    ...extra,
  });
  const signature = sign(null, Buffer.from(`${header}.${claims}`), privateKey).toString('base64url');
  return `${header}.${claims}.${signature}`;
}

/** LibreChat 3.x hands the tools a function that returns fresh auth headers. */
const bearerOnly = (options) => async () => ({ Authorization: `Bearer ${mint(options)}` });

let server;
let agents;

before(async () => {
  server = await startServer({
    extraEnv: {
      CODEAPI_JWT_PUBLIC_KEY: publicKey.export({ type: 'spki', format: 'pem' }),
      CODEAPI_JWT_KID: KID,
    },
  });
  process.env.LIBRECHAT_CODE_BASEURL = server.baseUrl;
  agents = await import('@librechat/agents');
});

after(async () => {
  await server?.stop();
});

test('the code tool with only a Bearer JWT runs code', async () => {
  const tool = agents.createCodeExecutionTool({ authHeaders: bearerOnly() });
  const msg = await tool.invoke(toolCall(tool.name, { lang: 'py', code: 'print(6*7)' }));
  assert.equal(msg.content, 'stdout:\n42');
});

test('upload, mount and download with only a Bearer JWT', async () => {
  const form = new FormData();
  form.append('kind', 'user');
  form.append('id', USER_ID);
  form.append('file', new Blob(['a,b\n1,2\n'], { type: 'text/csv' }), 'data.csv');
  const res = await fetch(`${server.baseUrl}/upload`, {
    method: 'POST',
    headers: { 'User-Agent': USER_AGENT, 'User-Id': USER_ID, Authorization: `Bearer ${mint()}` },
    body: form,
  });
  const up = await readJson(res);
  assert.equal(res.status, 200, JSON.stringify(up));
  const file = { id: up.files[0].fileId, name: 'data.csv', storage_session_id: up.storage_session_id };

  const tool = agents.createCodeExecutionTool({ authHeaders: bearerOnly() });
  const msg = await tool.invoke(
    toolCall(
      tool.name,
      { lang: 'py', code: "print(open('/mnt/data/data.csv').read().split()[1])" },
      { _injected_files: [{ ...file, resource_id: file.id, kind: 'user' }] },
    ),
  );
  assert.equal(msg.content, 'stdout:\n1,2');

  const download = (token) =>
    fetch(`${server.baseUrl}/download/${file.storage_session_id}/${file.id}?kind=user&id=${USER_ID}`, {
      headers: { 'User-Agent': USER_AGENT, Authorization: `Bearer ${token}` },
    });
  const mine = await download(mint());
  assert.equal(mine.status, 200);
  assert.equal(await mine.text(), 'a,b\n1,2\n');
  // Another tenant's token finds nothing there.
  assert.equal((await download(mint({ tenant: 'someone-else' }))).status, 404);
});

test('an expired or foreign-signed token gives the tool\'s "not authorized" error', async () => {
  const expired = agents.createCodeExecutionTool({
    authHeaders: bearerOnly({ iat: Math.floor(Date.now() / 1000) - 900 }),
  });
  await assert.rejects(expired.invoke(toolCall(expired.name, { lang: 'py', code: 'print(1)' })), {
    message: /^Execution error:\n\nCode execution is not authorized\. Verify access before trying again\./,
  });
  const other = generateKeyPairSync('ed25519').privateKey;
  const forged = (() => {
    const [h, c] = mint().split('.');
    return `${h}.${c}.${sign(null, Buffer.from(`${h}.${c}`), other).toString('base64url')}`;
  })();
  const res = await fetch(`${server.baseUrl}/exec`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'User-Agent': USER_AGENT, Authorization: `Bearer ${forged}` },
    body: JSON.stringify({ lang: 'py', code: 'print(1)' }),
  });
  assert.equal(res.status, 401);
  const body = await readJson(res);
  assert.equal(body.error, 'invalid_token');
  assert.match(body.detail, /signature/);
});

test('statefulSessions with a runtime hint: one kernel per user and hint, new then reused', async () => {
  const conversation = (sub) =>
    agents.createCodeExecutionTool({
      authHeaders: bearerOnly({ sub }),
      statefulSessions: true,
      runtimeSessionHint: 'conversation-e2e',
    });
  const tool = conversation(USER_ID);
  const run = (t, code) => t.invoke(toolCall(t.name, { lang: 'py', code }));
  const first = await run(tool, 'x = 41\nprint("set")');
  assert.equal(first.content, 'stdout:\nset');
  assert.equal(first.artifact.runtime_status, 'new');
  assert.equal(first.artifact.runtime_session_id, first.artifact.session_id);
  const again = await run(tool, 'print(x + 1)');
  assert.equal(again.content, 'stdout:\n42');
  assert.equal(again.artifact.runtime_status, 'reused');
  assert.equal(again.artifact.runtime_session_id, first.artifact.runtime_session_id);
  // The same hint for another LibreChat user is another kernel.
  const stranger = await run(conversation('another-user'), 'print(1)');
  assert.equal(stranger.artifact.runtime_status, 'new');
  assert.notEqual(stranger.artifact.runtime_session_id, first.artifact.runtime_session_id);
});
