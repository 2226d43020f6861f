// LibreChat's own traffic to the Code API, besides the tool: attachment upload
// (legacy entity_id and new kind/id/version), batch upload (read_only), the
// /files liveness checks, downloads and the objects probe. Plain fetch/FormData,
// with LibreChat's headers.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startServer } from '../lib/server.mjs';
import {
  NANOID_21,
  USER_AGENT,
  batchUploadCodeEnvFiles,
  checkCodeEnvFileAlive,
  checkIfActive,
  downloadCodeFile,
  hostAuthHeaders,
  isIsoDate,
  legacyFileIdentifier,
  legacyGetSessionInfo,
  probeObject,
  readJson,
  summaryRegex,
  toolCall,
  uploadCodeEnvFile,
} from '../lib/librechat.mjs';

let server;
let agents;
let codeTool;

before(async () => {
  server = await startServer();
  process.env.LIBRECHAT_CODE_BASEURL = server.baseUrl;
  agents = await import('@librechat/agents');
  codeTool = agents.createCodeExecutionTool({ authHeaders: hostAuthHeaders(server.apiKey) });
});

after(async () => {
  await server?.stop();
});

const USER_ID = '665f1c2e9b1d4a0012345678'; // a Mongo ObjectId, as LibreChat's req.user.id
const AGENT_ID = 'agent_Xk3mQ9pL2vR8tY1wZ5nB';
const SALES = 'region,amount\nnorth,10\nsouth,32\n';

function assertUploadBody(body, filename) {
  assert.equal(body.message, 'success');
  assert.match(body.session_id, NANOID_21, 'legacy session_id');
  assert.match(body.storage_session_id, NANOID_21, 'new storage_session_id');
  assert.equal(body.storage_session_id, body.session_id);
  assert.ok(Array.isArray(body.files) && body.files.length === 1);
  assert.match(body.files[0].fileId, NANOID_21);
  assert.equal(body.files[0].filename, filename);
}

describe('legacy upload (entity_id) and legacy liveness', () => {
  let up;
  let identifier;

  before(async () => {
    up = await uploadCodeEnvFile(server, {
      userId: USER_ID,
      filename: 'sales data.csv',
      content: SALES,
      type: 'text/csv',
      entity_id: AGENT_ID,
    });
    identifier = up.res.ok ? legacyFileIdentifier(up.body, AGENT_ID) : undefined;
  });

  test('POST /upload (file + entity_id, User-Id, User-Agent) answers message/session_id/files[0].fileId', () => {
    assert.equal(up.res.status, 200);
    assertUploadBody(up.body, 'sales data.csv');
    assert.equal(identifier, `${up.body.session_id}/${up.body.files[0].fileId}?entity_id=${AGENT_ID}`);
  });

  test('getSessionInfo: /files?detail=summary&entity_id= lists it by name prefix, lastModified parses and is fresh', async () => {
    const lastModified = await legacyGetSessionInfo(server, identifier);
    assert.ok(lastModified != null, 'file listed under "<session_id>/<fileId>"');
    assert.ok(isIsoDate(lastModified), `lastModified "${lastModified}" parses as a date`);
    assert.ok(Math.abs(Date.now() - new Date(lastModified).getTime()) < 10 * 60_000, 'lastModified is about now');
    assert.equal(checkIfActive(lastModified), true);
  });

  test('download by the stored identifier (`/download/{sid}/{fid}?entity_id=…`) returns the bytes', async () => {
    const res = await fetch(`${server.baseUrl}/download/${identifier}`, {
      headers: { 'User-Agent': USER_AGENT, 'X-API-Key': server.apiKey },
    });
    assert.equal(res.status, 200);
    assert.equal(await res.text(), SALES);
    assert.match(res.headers.get('content-type') ?? '', /^text\/csv/);
    assert.match(res.headers.get('content-disposition') ?? '', /filename\*=UTF-8''sales%20data\.csv/);
  });

  test('the attachment is mounted for a run given as a 2.x file {session_id, id, name}', async () => {
    const tool = agents.createCodeExecutionTool({
      authHeaders: hostAuthHeaders(server.apiKey),
      user_id: USER_ID,
      files: [{ session_id: up.body.session_id, id: up.body.files[0].fileId, name: 'sales data.csv' }],
    });
    const msg = await tool.invoke(
      toolCall(tool.name, {
        lang: 'py',
        code: 'import csv\nrows = list(csv.DictReader(open("/mnt/data/sales data.csv")))\nprint(sum(int(r["amount"]) for r in rows))',
      }),
    );
    assert.equal(msg.content, 'stdout:\n42');
  });
});

describe('new upload (kind/id/version) and checkCodeEnvFileAlive', () => {
  let up;
  let ref;

  before(async () => {
    up = await uploadCodeEnvFile(server, {
      userId: USER_ID,
      filename: 'notes.md',
      content: '# Notes\nhello from an attachment\n',
      type: 'text/markdown',
      kind: 'user',
      id: USER_ID,
    });
    if (up.res.ok) {
      ref = {
        kind: 'user',
        id: USER_ID,
        storage_session_id: up.body.storage_session_id ?? up.body.session_id,
        file_id: up.body.files[0].fileId,
        provisionedAt: Date.now(),
      };
    }
  });

  test('POST /upload with kind=user&id=<userId> answers storage_session_id and files[0].fileId', () => {
    assert.equal(up.res.status, 200);
    assertUploadBody(up.body, 'notes.md');
  });

  test('a non-ASCII file name survives upload, listing, mount and download', async () => {
    const name = 'résumé – 2024 (v2).csv';
    const up2 = await uploadCodeEnvFile(server, {
      userId: USER_ID, filename: name, content: 'é,1\n', type: 'text/csv', kind: 'user', id: USER_ID,
    });
    assert.equal(up2.res.status, 200);
    assertUploadBody(up2.body, name);
    const ref = { storage_session_id: up2.body.storage_session_id, file_id: up2.body.files[0].fileId };
    const alive = await checkCodeEnvFileAlive(server, ref);
    assert.equal(alive.item.metadata['original-filename'], name);
    const msg = await codeTool.invoke(
      toolCall(codeTool.name, { lang: 'py', code: `print(open(${JSON.stringify(`/mnt/data/${name}`)}, encoding="utf-8").read().strip())` }, {
        _injected_files: [{ id: ref.file_id, resource_id: USER_ID, name, storage_session_id: ref.storage_session_id, kind: 'user' }],
      }),
    );
    assert.equal(msg.content, 'stdout:\né,1');
    const dl = await downloadCodeFile(server, ref.storage_session_id, ref.file_id, { kind: 'user', id: USER_ID });
    assert.equal(dl.bytes.toString(), 'é,1\n');
    const disposition = dl.res.headers.get('content-disposition') ?? '';
    const star = /filename\*=UTF-8''([^;\s]+)/i.exec(disposition);
    assert.ok(star, `content-disposition has filename*: ${disposition}`);
    assert.equal(decodeURIComponent(star[1]), name);
  });

  test('kind=agent and kind=skill (+version) uploads are accepted', async () => {
    const agent = await uploadCodeEnvFile(server, {
      userId: USER_ID, filename: 'agent.txt', content: 'agent file', kind: 'agent', id: AGENT_ID,
    });
    assert.equal(agent.res.status, 200);
    assertUploadBody(agent.body, 'agent.txt');
    const skill = await uploadCodeEnvFile(server, {
      userId: USER_ID, filename: 'SKILL.md', content: '# skill', kind: 'skill', id: '6650aa000000000000000001', version: 2,
    });
    assert.equal(skill.res.status, 200);
    assertUploadBody(skill.body, 'SKILL.md');
    const dl = await downloadCodeFile(server, skill.body.storage_session_id, skill.body.files[0].fileId, {
      kind: 'skill', id: '6650aa000000000000000001', version: '2',
    });
    assert.equal(dl.res.status, 200);
    assert.equal(dl.bytes.toString(), '# skill');
  });

  test('GET /files/{sid}?detail=summary lists it with fileId, name, lastModified, metadata, storage_session_id', async () => {
    const alive = await checkCodeEnvFileAlive(server, ref);
    assert.equal(alive.state, 'alive');
    const item = alive.item;
    assert.equal(item.fileId, ref.file_id);
    assert.equal(item.id, ref.file_id);
    assert.equal(item.name, `${ref.storage_session_id}/${ref.file_id}`);
    assert.ok(isIsoDate(item.lastModified), `lastModified "${item.lastModified}" parses`);
    assert.equal(checkIfActive(item.lastModified), true);
    assert.equal(item.metadata['original-filename'], 'notes.md');
    assert.equal(item.storage_session_id, ref.storage_session_id);
  });

  test('the same probe with &kind=&id= (scoped) ignores the extra query and still finds it', async () => {
    const alive = await checkCodeEnvFileAlive(server, ref, { extraQuery: { kind: 'user', id: USER_ID } });
    assert.equal(alive.state, 'alive');
  });

  test('download with ?kind=user&id=<userId> returns the bytes', async () => {
    const { res, bytes } = await downloadCodeFile(server, ref.storage_session_id, ref.file_id, { kind: 'user', id: USER_ID });
    assert.equal(res.status, 200);
    assert.equal(bytes.toString(), '# Notes\nhello from an attachment\n');
  });

  test('GET /sessions/{sid}/objects/{fid} answers the object fields', async () => {
    const { res, body } = await probeObject(server, ref.storage_session_id, ref.file_id, { kind: 'user', id: USER_ID });
    assert.equal(res.status, 200);
    assert.equal(body.originalFilename, 'notes.md');
    assert.equal(body.size, Buffer.byteLength('# Notes\nhello from an attachment\n'));
    assert.ok(isIsoDate(body.lastModified));
    assert.equal(typeof body.etag, 'string');
    assert.ok(body.etag.length > 0);
    assert.match(body.contentType, /^text\/markdown/);
    assert.equal(body.readOnly, false);
    assert.equal(typeof body.name, 'string');
  });

  test('the attachment injected in the 3.x shape (kind user) is mounted for the tool', async () => {
    const msg = await codeTool.invoke(
      toolCall(codeTool.name, { lang: 'bash', code: 'tail -n 1 /mnt/data/notes.md' }, {
        _injected_files: [{
          id: ref.file_id,
          resource_id: USER_ID,
          name: 'notes.md',
          storage_session_id: ref.storage_session_id,
          kind: 'user',
        }],
      }),
    );
    assert.equal(msg.content, 'stdout:\nhello from an attachment');
  });

  test('after DELETE /sessions/{sid}/objects/{fid}: listing answers 2xx without it (expired), probe and download 404', async () => {
    const del = await fetch(`${server.baseUrl}/sessions/${ref.storage_session_id}/objects/${ref.file_id}`, {
      method: 'DELETE',
      headers: { 'User-Agent': USER_AGENT, 'X-API-Key': server.apiKey },
    });
    assert.ok(del.status === 200 || del.status === 204, `DELETE answered ${del.status}`);
    const alive = await checkCodeEnvFileAlive(server, ref);
    assert.equal(alive.state, 'expired');
    const probe = await probeObject(server, ref.storage_session_id, ref.file_id);
    assert.equal(probe.res.status, 404);
    const dl = await downloadCodeFile(server, ref.storage_session_id, ref.file_id, { kind: 'user', id: USER_ID });
    assert.equal(dl.res.status, 404);
  });

  test('an unknown session is never reported alive (2xx empty list or 404)', async () => {
    const alive = await checkCodeEnvFileAlive(server, {
      storage_session_id: 'AAAAAAAAAAAAAAAAAAAAA',
      file_id: 'BBBBBBBBBBBBBBBBBBBBB',
    });
    assert.ok(['expired', 'not_found'].includes(alive.state), `state ${alive.state}`);
  });

  test('an upload without the key is refused with 401', async () => {
    // The body is sent as one buffer: with a streamed body the server may close
    // the connection before the client has finished writing (see README).
    const form = new FormData();
    form.append('kind', 'user');
    form.append('id', USER_ID);
    form.append('file', new Blob(['x']), 'x.txt');
    const encoded = new Request('http://unused.invalid/', { method: 'POST', body: form });
    const res = await fetch(`${server.baseUrl}/upload`, {
      method: 'POST',
      headers: {
        'Content-Type': encoded.headers.get('content-type'),
        'User-Agent': USER_AGENT,
        'User-Id': USER_ID,
        'X-API-Key': 'not-the-key',
      },
      body: Buffer.from(await encoded.arrayBuffer()),
    });
    assert.equal(res.status, 401);
    const body = await readJson(res);
    assert.equal(typeof body.detail, 'string');
  });
});

describe('LibreChat\'s own HTTP client: axios + form-data, headers exactly as crud.js', () => {
  // crud.js spreads form.getHeaders() and then sets 'Content-Type':
  // 'multipart/form-data' (no boundary); axios puts the boundary back.
  const post = async (route, form) => {
    const { default: axios } = await import('axios');
    return axios.post(`${server.baseUrl}${route}`, form, {
      headers: {
        ...form.getHeaders(),
        'Content-Type': 'multipart/form-data',
        'User-Agent': USER_AGENT,
        'User-Id': USER_ID,
        'X-API-Key': server.apiKey,
      },
      timeout: 120_000,
      maxContentLength: 150 * 1024 * 1024,
      maxBodyLength: 150 * 1024 * 1024,
      validateStatus: () => true,
    });
  };

  test('uploadCodeEnvFile with a stream (entity_id form)', async () => {
    const { default: FormData } = await import('form-data');
    const { Readable } = await import('node:stream');
    const form = new FormData();
    form.append('entity_id', AGENT_ID);
    form.append('file', Readable.from([Buffer.from('streamed,1\n'), Buffer.from('bytes,2\n')]), 'streamed.csv');
    const res = await post('/upload', form);
    assert.equal(res.status, 200, JSON.stringify(res.data));
    assertUploadBody(res.data, 'streamed.csv');
    const dl = await downloadCodeFile(server, res.data.session_id, res.data.files[0].fileId);
    assert.equal(dl.bytes.toString(), 'streamed,1\nbytes,2\n');
  });

  test('batchUploadCodeEnvFiles with streams (kind/id/version, read_only)', async () => {
    const { default: FormData } = await import('form-data');
    const { Readable } = await import('node:stream');
    const form = new FormData();
    form.append('kind', 'skill');
    form.append('id', '6650aa0000000000000000aa');
    form.append('version', '1');
    form.append('read_only', 'true');
    form.append('file', Readable.from([Buffer.from('one')]), 'one.txt');
    form.append('file', Readable.from([Buffer.from('two')]), 'two.txt');
    const res = await post('/upload/batch', form);
    assert.equal(res.status, 200, JSON.stringify(res.data));
    assert.equal(res.data.message, 'success');
    assert.match(res.data.storage_session_id ?? res.data.session_id, NANOID_21);
    assert.equal(res.data.succeeded, 2);
    assert.equal(res.data.failed, 0);
    assert.deepEqual(res.data.files.map((f) => [f.status, f.filename]), [['success', 'one.txt'], ['success', 'two.txt']]);
  });
});

describe('limits and auth forms of LibreChat\'s uploads', () => {
  test('an upload just under LibreChat\'s 150 MiB body limit is accepted and stored whole', async () => {
    const size = 150 * 1024 * 1024 - 4096; // the multipart envelope must fit in maxBodyLength too
    const up = await uploadCodeEnvFile(server, {
      userId: USER_ID, filename: 'big.bin', content: Buffer.alloc(size, 0x61), kind: 'user', id: USER_ID,
    });
    assert.equal(up.res.status, 200, JSON.stringify(up.body).slice(0, 300));
    assertUploadBody(up.body, 'big.bin');
    const probe = await probeObject(server, up.body.storage_session_id, up.body.files[0].fileId);
    assert.equal(probe.body.size, size);
    const del = await fetch(`${server.baseUrl}/sessions/${up.body.storage_session_id}`, {
      method: 'DELETE',
      headers: { 'User-Agent': USER_AGENT, 'X-API-Key': server.apiKey },
    });
    assert.ok(del.ok, `DELETE /sessions answered ${del.status}`);
  });

  test('the key in the base URL (axios turns it into Basic auth) is accepted', async () => {
    const { default: axios } = await import('axios');
    const up = await uploadCodeEnvFile(server, {
      userId: USER_ID, filename: 'basic.txt', content: 'basic-auth', kind: 'user', id: USER_ID,
    });
    const base = server.baseUrl.replace('http://', `http://librechat:${server.apiKey}@`);
    const res = await axios.get(`${base}/download/${up.body.storage_session_id}/${up.body.files[0].fileId}`, {
      headers: { 'User-Agent': USER_AGENT },
      responseType: 'arraybuffer',
      timeout: 15_000,
      validateStatus: () => true,
    });
    assert.equal(res.status, 200);
    assert.equal(Buffer.from(res.data).toString(), 'basic-auth');
  });
});

describe('batch upload (skills, read_only) and its files in a run', () => {
  const SKILL_ID = '6650aa0000000000000000ff';
  const files = [
    { filename: 'SKILL.md', content: '# Brand skill\n', type: 'text/markdown' },
    { filename: 'palette.json', content: '{"primary": "#123456"}', type: 'application/json' },
    { filename: 'helper.py', content: 'def answer():\n    return 42\n', type: 'text/x-python' },
  ];
  let batch;

  before(async () => {
    batch = await batchUploadCodeEnvFiles(server, {
      userId: USER_ID, files, kind: 'skill', id: SKILL_ID, version: 3, read_only: true,
    });
  });

  test('POST /upload/batch answers message, storage session, per-file status, succeeded/failed', () => {
    assert.equal(batch.res.status, 200);
    const body = batch.body;
    assert.equal(body.message, 'success');
    const sid = body.storage_session_id ?? body.session_id;
    assert.match(sid, NANOID_21);
    assert.equal(body.succeeded, 3);
    assert.equal(body.failed, 0);
    assert.equal(body.files.length, 3);
    for (const [i, f] of body.files.entries()) {
      assert.equal(f.status, 'success');
      assert.match(f.fileId, NANOID_21);
      assert.equal(f.filename, files[i].filename);
    }
  });

  test('read-only files probe as readOnly and download unchanged', async () => {
    const sid = batch.body.storage_session_id ?? batch.body.session_id;
    const f = batch.body.files[1];
    const probe = await probeObject(server, sid, f.fileId, { kind: 'skill', id: SKILL_ID, version: '3' });
    assert.equal(probe.res.status, 200);
    assert.equal(probe.body.readOnly, true);
    const dl = await downloadCodeFile(server, sid, f.fileId, { kind: 'skill', id: SKILL_ID, version: '3' });
    assert.equal(dl.res.status, 200);
    assert.equal(dl.bytes.toString(), files[1].content);
    assert.equal(dl.res.headers.get('x-read-only'), 'true');
  });

  test('skill files injected with kind skill + version are usable; touching a read-only file never counts as generated', async () => {
    const sid = batch.body.storage_session_id ?? batch.body.session_id;
    const injected = batch.body.files.map((f) => ({
      id: f.fileId,
      resource_id: SKILL_ID,
      name: f.filename,
      storage_session_id: sid,
      kind: 'skill',
      version: 3,
    }));
    const msg = await codeTool.invoke(
      toolCall(codeTool.name, {
        lang: 'py',
        code: [
          'import sys, json',
          'sys.path.insert(0, "/mnt/data")',
          'from helper import answer',
          'print(answer(), json.load(open("/mnt/data/palette.json"))["primary"])',
          'try:',
          '    open("/mnt/data/palette.json", "w").write("{}")',
          'except OSError as e:',
          '    print("write refused", file=sys.stderr)',
          'open("/mnt/data/derived.txt", "w").write("new")',
        ].join('\n'),
      }, { _injected_files: injected }),
    );
    assert.match(msg.content, /^stdout:\n42 #123456\n/);
    const outFiles = msg.artifact.files ?? [];
    const generated = outFiles.filter((f) => f.inherited !== true).map((f) => f.name);
    assert.deepEqual(generated, ['derived.txt'], `generated files: ${JSON.stringify(outFiles)}`);
    assert.match(msg.content, summaryRegex(1, 0));
    for (const f of outFiles.filter((o) => files.some((s) => s.filename === o.name))) {
      assert.equal(f.inherited, true, `${f.name} echoed without inherited: true`);
    }
    // The stored skill file is untouched whatever the sandbox did.
    const dl = await downloadCodeFile(server, sid, batch.body.files[1].fileId);
    assert.equal(dl.bytes.toString(), files[1].content);
  });

  test('a batch with one bad name reports it per file, the rest succeed', async () => {
    const mixed = await batchUploadCodeEnvFiles(server, {
      userId: USER_ID,
      kind: 'agent',
      id: AGENT_ID,
      files: [
        { filename: 'fine.txt', content: 'fine' },
        { filename: '../escape.txt', content: 'nope' },
      ],
    });
    assert.equal(mixed.res.status, 200);
    assert.notEqual(mixed.body.message, 'error');
    assert.equal(mixed.body.succeeded, 1);
    assert.equal(mixed.body.failed, 1);
    const bad = mixed.body.files.find((f) => f.status === 'error');
    assert.equal(bad.filename, '../escape.txt');
    assert.equal(typeof bad.error, 'string');
    const good = mixed.body.files.find((f) => f.status === 'success');
    assert.match(good.fileId, NANOID_21);
  });

  test('a batch in which every file fails answers message "error"', async () => {
    const res = await batchUploadCodeEnvFiles(server, {
      userId: USER_ID,
      files: [{ filename: '../a.txt', content: 'a' }],
    });
    assert.equal(res.body.message, 'error');
    assert.equal(res.body.failed, 1);
    assert.equal(res.body.succeeded, 0);
  });
});

describe('generated output, as LibreChat processes it', () => {
  test('an image output downloads as arraybuffer with image content type; the non-image lazily by id', async () => {
    const msg = await codeTool.invoke(
      toolCall(codeTool.name, {
        lang: 'py',
        code: [
          'import matplotlib',
          'matplotlib.use("Agg")',
          'import matplotlib.pyplot as plt',
          'fig, ax = plt.subplots()',
          'ax.bar(["a", "b"], [3, 5])',
          'fig.savefig("/mnt/data/bars.png")',
          'open("/mnt/data/summary.json", "w").write("{\\"total\\": 8}")',
          'print("ok")',
        ].join('\n'),
      }),
    );
    assert.match(msg.content, summaryRegex(2, 1));
    for (const file of msg.artifact.files) {
      const sid = file.storage_session_id ?? msg.artifact.session_id;
      // LibreChat's own download route validates both ids.
      assert.match(sid, NANOID_21);
      assert.match(file.id, NANOID_21);
      const { res, bytes } = await downloadCodeFile(server, sid, file.id, { kind: 'user', id: USER_ID });
      assert.equal(res.status, 200);
      if (file.name === 'bars.png') {
        assert.equal(res.headers.get('content-type'), 'image/png');
        assert.equal(bytes.subarray(1, 4).toString(), 'PNG');
      } else {
        assert.equal(file.name, 'summary.json');
        assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
        assert.deepEqual(JSON.parse(bytes.toString()), { total: 8 });
      }
    }
  });

  test('generated files are listed by /files?detail=summary under their storage session', async () => {
    const msg = await codeTool.invoke(
      toolCall(codeTool.name, { lang: 'bash', code: 'echo data > /mnt/data/gen.txt' }),
    );
    const file = msg.artifact.files[0];
    const sid = file.storage_session_id ?? msg.artifact.session_id;
    const alive = await checkCodeEnvFileAlive(server, { storage_session_id: sid, file_id: file.id });
    assert.equal(alive.state, 'alive');
    assert.equal(alive.item.metadata['original-filename'], 'gen.txt');
    const res = await fetch(`${server.baseUrl}/files/${sid}?detail=full`, {
      headers: { 'User-Agent': USER_AGENT, 'X-API-Key': server.apiKey },
    });
    const full = await readJson(res);
    assert.equal(full[0].name, `${sid}/${file.id}`);
  });
});
