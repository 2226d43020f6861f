// The tool's error handling: a server over a limit must answer 429 with
// {error: 'rate_limited', retry_after_seconds}, which the 3.x tool turns into
// "Code execution is temporarily rate-limited. Retry after N seconds."
// Here the limit is the Python kernel count: one kernel, no queueing, no pool.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { startServer } from '../lib/server.mjs';
import { USER_AGENT, hostAuthHeaders, toolCall } from '../lib/librechat.mjs';

let server;
let codeTool;

before(async () => {
  server = await startServer({
    extraEnv: { MAX_SESSIONS: '1', QUEUE_WAIT_SECONDS: '0', KERNEL_POOL_SIZE: '0' },
  });
  process.env.LIBRECHAT_CODE_BASEURL = server.baseUrl;
  const agents = await import('@librechat/agents');
  codeTool = agents.createCodeExecutionTool({ authHeaders: hostAuthHeaders(server.apiKey) });
  await makeBusyWindow();
});

after(async () => {
  await server?.stop();
});

// One conversation holds the only kernel (a 6 s run). 2.5 s later, when it surely
// runs, another conversation asks for Python twice: once through the real tool,
// once raw, to read the 429 itself.
let viaTool;
let viaHttp;
let holder;

async function makeBusyWindow() {
  holder = codeTool.invoke(toolCall(codeTool.name, { lang: 'py', code: 'import time\ntime.sleep(6)\nprint("holder")' }));
  await new Promise((resolve) => setTimeout(resolve, 2500));
  [viaTool, viaHttp] = await Promise.allSettled([
    codeTool.invoke(toolCall(codeTool.name, { lang: 'py', code: 'print("second")' })),
    fetch(`${server.baseUrl}/exec`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'User-Agent': USER_AGENT, 'X-API-Key': server.apiKey },
      body: JSON.stringify({ lang: 'py', code: 'print("third")' }),
    }).then(async (res) => ({ status: res.status, retryAfter: res.headers.get('retry-after'), body: await res.json() })),
  ]);
  holder = await holder;
}

test('the conversation holding the kernel finishes normally', () => {
  assert.equal(holder.content, 'stdout:\nholder');
});

test('with every Python kernel busy, the tool reports "rate-limited, retry after N seconds"', () => {
  assert.equal(
    viaTool.status,
    'rejected',
    `the call must be refused with a 429, but the tool returned ${JSON.stringify(viaTool.value?.content)}`,
  );
  assert.match(
    viaTool.reason.message,
    /^Execution error:\n\nCode execution is temporarily rate-limited\. Retry after \d+ seconds\.$/,
  );
});

test('the 429 body carries error "rate_limited", retry_after_seconds, and a Retry-After header', () => {
  assert.equal(viaHttp.status, 'fulfilled', String(viaHttp.reason));
  const { status, retryAfter, body } = viaHttp.value;
  assert.equal(status, 429, `expected 429, got ${status} ${JSON.stringify(body).slice(0, 300)}`);
  assert.equal(body.error, 'rate_limited');
  assert.equal(typeof body.retry_after_seconds, 'number');
  assert.ok(body.retry_after_seconds > 0);
  assert.match(retryAfter ?? '', /^\d+$/);
});
