// Programmatic tool calling through LibreChat's real tools: createProgrammaticToolCallingTool
// and createBashProgrammaticToolCallingTool of @librechat/agents 3.9.2, with real LangChain
// tools in the toolMap, as ToolNode injects them. The client drives the rounds itself
// (tool_call_required → run the tools → continuation), posts /cancel when its AbortSignal
// fires, and turns the answers into the ToolMessage the model would see.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, test } from 'node:test';

import { tool } from '@langchain/core/tools';

import { startServer } from '../lib/server.mjs';
import { NANOID_21, PNG_MAGIC, downloadCodeFile, hostAuthHeaders, toolCall } from '../lib/librechat.mjs';

let server;
let agents;
let pythonPtc;
let bashPtc;
let execute;

before(async () => {
  server = await startServer({ extraEnv: { KERNEL_POOL_SIZE: '2' } });
  process.env.LIBRECHAT_CODE_BASEURL = server.baseUrl;
  agents = await import('@librechat/agents');
  const authHeaders = hostAuthHeaders(server.apiKey);
  pythonPtc = agents.createProgrammaticToolCallingTool({ authHeaders, debug: true });
  bashPtc = agents.createBashProgrammaticToolCallingTool({ authHeaders, debug: true });
  execute = agents.createCodeExecutionTool({ authHeaders });
});

after(async () => {
  await server?.stop();
});

/** Every call a tool got, in order. */
const calls = [];

function jsonTool(name, description, properties, fn) {
  return tool(
    async (input) => {
      calls.push({ name, input });
      return fn(input);
    },
    {
      name,
      description,
      schema: { type: 'object', properties, required: Object.keys(properties) },
    },
  );
}

const weather = jsonTool('get_weather', 'Weather of a city; returns an object.', { city: { type: 'string' } }, ({ city }) => ({
  city,
  temp: { SF: 18, NY: 25, Paris: 21 }[city] ?? 10,
}));
const lookupId = jsonTool('lookup_id', 'The id of a user.', { name: { type: 'string' } }, ({ name }) => ({
  id: `u-${name.length}`,
}));
const details = jsonTool('user_details', 'Details of a user id.', { id: { type: 'string' } }, ({ id }) => ({
  id,
  owner: `owner-of-${id}`,
}));
// A hyphenated name: the program calls it as get_stock_price.
const stock = jsonTool('get-stock-price', 'Price of a symbol.', { symbol: { type: 'string' } }, ({ symbol }) => ({
  symbol,
  price: 42,
}));
const failing = jsonTool('flaky_service', 'Always fails.', {}, () => {
  throw new Error('upstream is down');
});
const TOOLS = [weather, lookupId, details, stock, failing];

/** What ToolNode injects for programmatic tool calling: the tool map and definitions. */
function injected(tools, extra = {}) {
  return {
    toolMap: new Map(tools.map((t) => [t.name, t])),
    toolDefs: tools.map((t) => ({ name: t.name, description: t.description, parameters: t.schema })),
    ...extra,
  };
}

/**
 * Invoke a programmatic tool as ToolNode does; returns the ToolMessage, the rounds the
 * client went through (its own debug count of tool_call_required answers) and the wall time.
 */
async function invoke(ptcTool, code, { tools = TOOLS, extra = {}, config = {}, timeout = 60_000 } = {}) {
  const rounds = [];
  const log = console.log;
  console.log = (...args) => {
    const line = args.join(' ');
    const m = /Round trip (\d+): (\d+) tool/.exec(line);
    if (m) rounds.push(Number(m[2]));
    else if (!line.includes('PTC Debug')) log(...args);
  };
  const started = performance.now();
  try {
    const message = await ptcTool.invoke(toolCall(ptcTool.name, { code, timeout }, injected(tools, extra)), config);
    return { message, rounds, ms: performance.now() - started };
  } finally {
    console.log = log;
  }
}

const PYTHON_PROGRAM = `
import matplotlib.pyplot as plt
with open("/mnt/data/audit.log", "a") as f:
    f.write("start\\n")
sf, ny = await asyncio.gather(get_weather(city="SF"), get_weather(city="NY"))
ident = await lookup_id(name="alice")
info = await user_details(id=ident["id"])
try:
    await flaky_service()
except Exception as err:
    print("tool error:", err)
price = await get_stock_price(symbol="ACME")
plt.plot([sf["temp"], ny["temp"], price["price"]])
plt.savefig("/mnt/data/chart.png")
with open("/mnt/data/audit.log", "a") as f:
    f.write("end\\n")
print(sf["temp"], ny["temp"], info["owner"], price["price"])
`;

test('a multi-round Python program: parallel calls, a chained call, a tool error, a figure; nothing replayed', async () => {
  calls.length = 0;
  const { message, rounds } = await invoke(pythonPtc, PYTHON_PROGRAM);
  assert.equal(message.status, 'success', message.content);
  assert.match(message.content, /^stdout:\ntool error: upstream is down\n18 25 owner-of-u-5 42\n/);
  // asyncio.gather's two calls came in one round; every other call is a round of its own.
  assert.deepEqual(rounds, [2, 1, 1, 1, 1]);
  // Each tool ran once per call: the client was never asked again for an answered call.
  assert.deepEqual(
    calls.map((c) => c.name),
    ['get_weather', 'get_weather', 'lookup_id', 'user_details', 'flaky_service', 'get-stock-price'],
  );
  assert.deepEqual(calls[3].input, { id: 'u-5' }, 'the chained call got the first result');
  const { artifact } = message;
  assert.match(artifact.session_id, NANOID_21);
  const names = artifact.files.map((f) => f.name).sort();
  assert.deepEqual(names, ['audit.log', 'chart.png']);
  const audit = artifact.files.find((f) => f.name === 'audit.log');
  const log = await downloadCodeFile(server, audit.storage_session_id ?? artifact.session_id, audit.id);
  assert.equal(log.bytes.toString(), 'start\nend\n', 'each line exactly once: the program was resumed, never re-run');
  const chart = artifact.files.find((f) => f.name === 'chart.png');
  const png = await downloadCodeFile(server, chart.storage_session_id ?? artifact.session_id, chart.id);
  assert.equal(png.res.headers.get('content-type'), 'image/png');
  assert.ok(png.bytes.subarray(0, 8).equals(PNG_MAGIC), 'a PNG');
});

test('a bash program: tools are shell functions, parallel calls with & and wait, nothing replayed', async () => {
  calls.length = 0;
  const code = [
    'echo start >> /mnt/data/bash-audit.log',
    'w=$(get_weather \'{"city":"Paris"}\')',
    'echo "weather: $w"',
    '{ a=$(get_weather \'{"city":"SF"}\'); printf \'%s\\n\' "$a" > /mnt/data/a.json; } &',
    '{ b=$(get_weather \'{"city":"NY"}\'); printf \'%s\\n\' "$b" > /mnt/data/b.json; } &',
    'wait',
    'cat /mnt/data/a.json /mnt/data/b.json',
    'if ! flaky_service \'{}\' 2>/dev/null; then echo "flaky failed"; fi',
    'echo end >> /mnt/data/bash-audit.log',
  ].join('\n');
  const { message, rounds } = await invoke(bashPtc, code);
  assert.equal(message.status, 'success', message.content);
  assert.match(
    message.content,
    /^stdout:\nweather: \{"city":"Paris","temp":21\}\n\{"city":"SF","temp":18\}\n\{"city":"NY","temp":25\}\nflaky failed\n/,
  );
  // Background calls announced within moments of each other share a round; on a loaded
  // machine they may come one by one.
  assert.equal(calls.length, 4);
  assert.equal(rounds.reduce((a, b) => a + b, 0), 4);
  assert.ok(rounds.length >= 3 && rounds.length <= 4, `rounds ${rounds}`);
  const audit = message.artifact.files.find((f) => f.name === 'bash-audit.log');
  const log = await downloadCodeFile(server, audit.storage_session_id ?? message.artifact.session_id, audit.id);
  assert.equal(log.bytes.toString(), 'start\nend\n');
});

test('a tool error the program does not catch fails the run with the error in its traceback', async () => {
  // The tool throws (ToolNode turns that into an error ToolMessage for the model).
  await assert.rejects(invoke(pythonPtc, 'print("before")\nawait flaky_service()', { tools: [failing] }), (err) => {
    assert.match(err.message, /^Programmatic execution failed: Code execution failed\. Execution exited with code 1\n\nStderr:\n/);
    assert.match(err.message, /File "<program>", line 2, in <module>\n {4}await flaky_service\(\)\nToolExecutionError: upstream is down/);
    return true;
  });
  await assert.rejects(invoke(bashPtc, 'r=$(flaky_service \'{}\')\necho "not reached"', { tools: [failing] }), (err) => {
    assert.match(err.message, /^Bash programmatic execution failed: Code execution failed\. Execution exited with code 1\n\nStderr:\nupstream is down\n/);
    return true;
  });
});

/** LibreChat's /exec body, in a given session (the 3.x tool sends no session_id). */
async function execIn(sessionId, lang, code) {
  const res = await fetch(`${server.baseUrl}/exec`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'User-Agent': 'LibreChat/1.0', 'X-API-Key': server.apiKey },
    body: JSON.stringify({ lang, code, session_id: sessionId }),
  });
  assert.equal(res.status, 200);
  return res.json();
}

/** Host processes whose command line holds `marker`. */
function processesWith(marker) {
  let count = 0;
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (fs.readFileSync(`/proc/${entry}/cmdline`).includes(marker)) count += 1;
    } catch {
      // The process ended meanwhile.
    }
  }
  return count;
}

async function waitFor(what, cond, ms = 30_000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('aborting the tool mid-run posts /cancel: the run stops and its session goes on', async () => {
  for (const [ptcTool, lang] of [
    [bashPtc, 'bash'],
    [pythonPtc, 'py'],
  ]) {
    const first = await execute.invoke(toolCall(execute.name, { lang, code: lang === 'py' ? 'kept = 41' : 'true' }));
    const sessionId = first.artifact.session_id;
    if (lang === 'py') await execIn(sessionId, 'py', 'kept = 41');
    const marker = `${700000 + process.pid}.${Date.now() % 100000}`;
    const code = lang === 'py' ? `import subprocess\nsubprocess.run(["sleep", "${marker}"])` : `sleep ${marker}`;
    const controller = new AbortController();
    const run = invoke(ptcTool, code, {
      tools: [weather],
      extra: { session_id: sessionId },
      config: { signal: controller.signal },
      timeout: 120_000,
    });
    await waitFor(`the ${lang} program to start`, () => processesWith(marker) > 0);
    controller.abort();
    await assert.rejects(run);
    await waitFor(`the ${lang} program to stop`, () => processesWith(marker) === 0);
    // The session is free at once (the cancelled run no longer holds its turn), and a
    // Python kernel keeps its state.
    const next = await execIn(sessionId, lang, lang === 'py' ? 'print(kept + 1)' : 'echo next');
    assert.equal(next.stdout, lang === 'py' ? '42\n' : 'next\n');
    assert.equal(next.stderr, '');
  }
});

// The same work straight through: the tools inlined as local functions, one /exec call.
const INLINE_PROGRAM = `
import asyncio
calls = []
async def get_weather(city):
    return {"city": city, "temp": {"SF": 18, "NY": 25}.get(city, 10)}
async def lookup_id(name):
    return {"id": f"u-{len(name)}"}
async def user_details(id):
    return {"id": id, "owner": f"owner-of-{id}"}
async def get_stock_price(symbol):
    return {"symbol": symbol, "price": 42}
async def main():
    sf, ny = await asyncio.gather(get_weather(city="SF"), get_weather(city="NY"))
    ident = await lookup_id(name="alice")
    info = await user_details(id=ident["id"])
    price = await get_stock_price(symbol="ACME")
    total = 0
    for i in range(5):
        total += (await get_weather(city="SF"))["temp"]
    print(sf["temp"], ny["temp"], info["owner"], price["price"], total)
await main()
`;

const MEASURED_PROGRAM = `
sf, ny = await asyncio.gather(get_weather(city="SF"), get_weather(city="NY"))
ident = await lookup_id(name="alice")
info = await user_details(id=ident["id"])
price = await get_stock_price(symbol="ACME")
total = 0
for i in range(5):
    total += (await get_weather(city="SF"))["temp"]
print(sf["temp"], ny["temp"], info["owner"], price["price"], total)
`;

test('rounds and wall time against the same program run straight through (logged)', async () => {
  const tools = [weather, lookupId, details, stock];
  // Warm both paths once (a kernel for each session).
  // Both run in one session, on its warm kernel.
  const warm = await invoke(pythonPtc, MEASURED_PROGRAM, { tools });
  const sessionId = warm.message.artifact.session_id;
  await execIn(sessionId, 'py', INLINE_PROGRAM);
  const ptcRuns = [];
  const inlineRuns = [];
  for (let i = 0; i < 3; i++) {
    const { message, rounds, ms } = await invoke(pythonPtc, MEASURED_PROGRAM, { tools, extra: { session_id: sessionId } });
    assert.equal(message.content, 'stdout:\n18 25 owner-of-u-5 42 90');
    assert.deepEqual(rounds, [2, 1, 1, 1, 1, 1, 1, 1, 1]);
    ptcRuns.push(ms);
    const started = performance.now();
    const inline = await execIn(sessionId, 'py', INLINE_PROGRAM);
    inlineRuns.push(performance.now() - started);
    assert.equal(inline.stdout, '18 25 owner-of-u-5 42 90\n');
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  console.log(
    `# programmatic: 9 rounds (10 tool calls), median ${median(ptcRuns).toFixed(0)} ms; ` +
      `the same program with the tools inlined through /exec: median ${median(inlineRuns).toFixed(0)} ms`,
  );
});
