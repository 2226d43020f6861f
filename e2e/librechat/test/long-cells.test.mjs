// A long /exec in a real LibreChat process. LibreChat is one Node process: its own
// calls (axios: the /files liveness probe, downloads) and the code tool's /exec
// (node-fetch, inside @librechat/agents) all go through `http.globalAgent`. On
// Node >= 19 that agent keeps sockets alive, and a socket that served an axios call
// with `timeout: 5000` keeps that 5 s idle timeout when node-fetch reuses it: a
// response that sends no byte for 5 s is cut (`socket hang up`). The server must start
// a long /exec's response early and keep sending bytes, so these cells, each longer
// than 5 s, come back whole.

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';

import { startServer } from '../lib/server.mjs';
import { USER_AGENT, hostAuthHeaders, toolCall, uploadCodeEnvFile } from '../lib/librechat.mjs';

const LONG_CELL = 'import time\ntime.sleep(8)\nprint(1)';
const USER_ID = '665f1c2e9b1d4a0012345678';

let server;
let codeTool;
let axios;

before(async () => {
  server = await startServer({ extraEnv: { KERNEL_POOL_SIZE: '2' } });
  // The first two cells take pooled kernels, so their logged times are the cells' own.
  for (const started = Date.now(); Date.now() - started < 60_000; ) {
    const health = await (await fetch(`${server.root}/health`)).json();
    if (health.kernels.pooled >= 2) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  process.env.LIBRECHAT_CODE_BASEURL = server.baseUrl;
  const agents = await import('@librechat/agents');
  codeTool = agents.createCodeExecutionTool({ authHeaders: hostAuthHeaders(server.apiKey) });
  ({ default: axios } = await import('axios'));
});

after(async () => {
  await server?.stop();
});

/** LibreChat `checkCodeEnvFileAlive`: axios, `?detail=summary`, 5 s timeout. */
async function probe(storageSessionId) {
  const res = await axios.get(`${server.baseUrl}/files/${storageSessionId}`, {
    params: { detail: 'summary' },
    headers: { 'User-Agent': USER_AGENT, 'X-API-Key': server.apiKey },
    timeout: 5000,
  });
  assert.equal(res.status, 200);
  return res.data;
}

/** LibreChat `getCodeOutputDownloadStream`: axios, a stream, 15 s timeout. */
async function download(sessionId, fileId) {
  const res = await axios.get(`${server.baseUrl}/download/${sessionId}/${fileId}`, {
    params: { kind: 'user', id: USER_ID },
    headers: { 'User-Agent': USER_AGENT, 'X-API-Key': server.apiKey },
    responseType: 'stream',
    timeout: 15_000,
  });
  const chunks = [];
  for await (const chunk of res.data) chunks.push(chunk);
  return Buffer.concat(chunks).toString();
}

async function uploadOne(name) {
  const up = await uploadCodeEnvFile(server, {
    userId: USER_ID,
    filename: name,
    content: 'a,b\n1,2\n',
    type: 'text/csv',
    kind: 'user',
    id: USER_ID,
  });
  assert.equal(up.res.status, 200, JSON.stringify(up.body));
  return { storage_session_id: up.body.storage_session_id, id: up.body.files[0].fileId, name };
}

/** The tool call, timed; a thrown error is returned, not raised. */
async function timedCell(code, extra = {}) {
  const started = Date.now();
  try {
    const msg = await codeTool.invoke(toolCall(codeTool.name, { lang: 'py', code }, extra));
    return { ok: true, content: msg.content, seconds: (Date.now() - started) / 1000 };
  } catch (err) {
    return { ok: false, error: err.message, seconds: (Date.now() - started) / 1000 };
  }
}

function injected(file) {
  return { _injected_files: [{ ...file, resource_id: file.id, kind: 'user' }] };
}

test('the shared agent is the one LibreChat has: keep-alive with a 5 s socket timeout', () => {
  assert.equal(http.globalAgent.keepAlive, true, `Node ${process.version} globalAgent without keep-alive`);
  assert.equal(http.globalAgent.options.timeout, 5000);
});

// The three scenarios run at once (as in a busy LibreChat); each probes right before
// its cells, so they pick up the sockets its probes left in the pool.
describe('long cells after LibreChat\'s own calls', { concurrency: true }, () => {
  test('probe, then an 8 s cell through createCodeExecutionTool: the output comes back', async () => {
    const file = await uploadOne('probe.csv');
    await probe(file.storage_session_id);
    const run = await timedCell(`${LONG_CELL}\nprint(open('/mnt/data/probe.csv').read().splitlines()[1])`, injected(file));
    assert.ok(run.ok, `Node ${process.version}: failed after ${run.seconds} s: ${run.error}`);
    assert.equal(run.content, 'stdout:\n1\n1,2');
    console.log(`# long cells (Node ${process.version}): probe, then an 8 s cell: output in ${run.seconds} s`);
  });

  test('probe, download, then an 8 s cell: the output comes back', async () => {
    const file = await uploadOne('download.csv');
    await probe(file.storage_session_id);
    assert.equal(await download(file.storage_session_id, file.id), 'a,b\n1,2\n');
    const run = await timedCell(LONG_CELL, injected(file));
    assert.ok(run.ok, `Node ${process.version}: failed after ${run.seconds} s: ${run.error}`);
    assert.equal(run.content, 'stdout:\n1');
    console.log(`# long cells (Node ${process.version}): probe, download, then an 8 s cell: output in ${run.seconds} s`);
  });

  test('20 long cells at once, each on a socket a probe left behind: all 20 come back', async () => {
    const files = await Promise.all(Array.from({ length: 20 }, (_, i) => uploadOne(`many-${i}.csv`)));
    // Twenty probes at once leave twenty pooled sockets with the 5 s timeout; the cells
    // that follow at once pick them up.
    await Promise.all(files.map((f) => probe(f.storage_session_id)));
    const runs = await Promise.all(
      files.map((f, i) => timedCell(`import time\ntime.sleep(6)\nprint(${i})`, injected(f))),
    );
    const failed = runs.map((r, i) => ({ i, ...r })).filter((r) => !r.ok || r.content !== `stdout:\n${r.i}`);
    assert.deepEqual(failed, [], `Node ${process.version}: ${failed.length} of 20 failed`);
    const seconds = runs.map((r) => r.seconds).sort((a, b) => a - b);
    console.log(
      `# long cells (Node ${process.version}): 20 six-second cells at once: 20 of 20 returned, ` +
        `in ${seconds[0]} to ${seconds[19]} s (median ${seconds[10]} s)`,
    );
  });
});
