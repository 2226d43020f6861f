// The real `bash_tool` (createBashExecutionTool) of @librechat/agents 3.9.x.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { startServer } from '../lib/server.mjs';
import {
  NANOID_21,
  downloadCodeFile,
  hostAuthHeaders,
  nextCallInjection,
  summaryRegex,
  toolCall,
} from '../lib/librechat.mjs';

let server;
let agents;
let bashTool;

before(async () => {
  server = await startServer();
  process.env.LIBRECHAT_CODE_BASEURL = server.baseUrl;
  agents = await import('@librechat/agents');
  bashTool = agents.createBashExecutionTool({ authHeaders: hostAuthHeaders(server.apiKey) });
});

after(async () => {
  await server?.stop();
});

const run = (args, extra) => bashTool.invoke(toolCall(bashTool.name, args, extra));

test('the package exports createBashExecutionTool and it posts lang bash to /exec', async () => {
  assert.equal(typeof agents.createBashExecutionTool, 'function');
  assert.equal(bashTool.name, agents.Constants.BASH_TOOL);
  const msg = await run({ command: 'echo "$BASH_VERSION" | cut -d. -f1; echo out; echo err >&2' });
  assert.equal(msg.status, 'success');
  assert.match(msg.content, /^stdout:\n\d+\nout\n\nstderr:\nerr$/);
  assert.match(msg.artifact.session_id, NANOID_21);
});

test('args are passed as positional parameters', async () => {
  const msg = await run({ command: 'printf "[%s]" "$@"; echo', args: ['one two', 'three'] });
  assert.equal(msg.content, 'stdout:\n[one two][three]');
});

test('a failing command shows stderr and the exit does not crash the tool', async () => {
  const msg = await run({ command: 'echo partial; ls /definitely/not/here; exit 7' });
  assert.match(msg.content, /^stdout:\npartial\n\nstderr:\n.*\/definitely\/not\/here.*No such file or directory/s);
});

test('files written by bash are generated files, and a later bash call reads them', async () => {
  const first = await run({ command: 'printf "a\\nb\\nc\\n" > /mnt/data/lines.txt && echo done' });
  assert.match(first.content, /^stdout:\ndone/);
  assert.match(first.content, summaryRegex(1, 0));
  const file = first.artifact.files.find((f) => f.name === 'lines.txt');
  assert.ok(file, 'lines.txt in the artifact');
  assert.match(file.id, NANOID_21);
  const dl = await downloadCodeFile(server, file.storage_session_id ?? first.artifact.session_id, file.id, {
    kind: 'user',
    id: 'u1',
  });
  assert.equal(dl.res.status, 200);
  assert.equal(dl.bytes.toString(), 'a\nb\nc\n');

  const second = await run({ command: 'wc -l < /mnt/data/lines.txt' }, nextCallInjection(first.artifact));
  assert.equal(second.content, 'stdout:\n3');
});

test('a /tmp write gets the tool\'s scratch reminder and is not a generated file', async () => {
  const msg = await run({ command: 'echo x > /tmp/scratch.txt && cat /tmp/scratch.txt' });
  assert.match(msg.content, /^stdout:\nx\n/);
  assert.match(msg.content, /Note: \/tmp files are same-call scratch only/);
  assert.equal(msg.artifact.files, undefined);
});
