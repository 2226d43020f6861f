// The real `execute_code` tool of @librechat/agents 3.9.x against the real server.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startServer } from '../lib/server.mjs';
import {
  NANOID_21,
  PNG_MAGIC,
  downloadCodeFile,
  hostAuthHeaders,
  nextCallInjection,
  summaryRegex,
  toInjectedFileRef,
  toolCall,
} from '../lib/librechat.mjs';

let server;
let agents;
let codeTool;

before(async () => {
  server = await startServer();
  // The tool reads LIBRECHAT_CODE_BASEURL when it is created.
  process.env.LIBRECHAT_CODE_BASEURL = server.baseUrl;
  agents = await import('@librechat/agents');
  codeTool = agents.createCodeExecutionTool({ authHeaders: hostAuthHeaders(server.apiKey) });
});

after(async () => {
  await server?.stop();
});

const run = (args, extra) => codeTool.invoke(toolCall(codeTool.name, args, extra));

describe('execute_code: output', () => {
  test('the tool is the package\'s execute_code and targets LIBRECHAT_CODE_BASEURL', () => {
    assert.equal(codeTool.name, 'execute_code');
    assert.equal(agents.getCodeBaseURL(), server.baseUrl);
  });

  test('print(6*7) reaches the tool text content as 42', async () => {
    const msg = await run({ lang: 'py', code: 'print(6*7)' });
    assert.equal(msg.status, 'success');
    assert.equal(msg.content, 'stdout:\n42');
    assert.match(msg.artifact.session_id, NANOID_21);
    assert.equal(msg.artifact.files, undefined, 'no files generated, so the artifact carries none');
    assert.doesNotMatch(msg.content, /Generated files/);
  });

  test('stdout and stderr are both shown, stderr exactly once', async () => {
    const msg = await run({
      lang: 'py',
      code: 'import sys\nprint("to-out")\nprint("to-err", file=sys.stderr)',
    });
    assert.equal(msg.content, 'stdout:\nto-out\n\nstderr:\nto-err');
  });

  test('a run with no stdout gets the tool\'s "Empty" hint', async () => {
    const msg = await run({ lang: 'py', code: 'x = 1' });
    assert.equal(msg.content, "stdout: Empty. Ensure you're writing output explicitly.");
  });

  test('args reach the program (py sys.argv)', async () => {
    const msg = await run({ lang: 'py', code: 'import sys\nprint(sys.argv[1:])', args: ['a b', '--x=1'] });
    assert.equal(msg.content, "stdout:\n['a b', '--x=1']");
  });

  test('a failing Python program returns its traceback as stderr, not a tool error', async () => {
    const msg = await run({ lang: 'py', code: 'print("before")\nraise ValueError("boom-42")' });
    assert.equal(msg.status, 'success');
    assert.match(msg.content, /^stdout:\nbefore\n\nstderr:\n/);
    assert.match(msg.content, /Traceback \(most recent call last\)/);
    assert.match(msg.content, /ValueError: boom-42/);
    assert.equal(msg.content.match(/ValueError: boom-42/g).length, 1, 'traceback appears once');
    assert.match(msg.artifact.session_id, NANOID_21);
  });

  test('a non-zero exit in another language shows its stderr', async () => {
    const msg = await run({
      lang: 'js',
      code: 'console.log("partial"); console.error("fatal: js-failure"); process.exit(3);',
    });
    assert.equal(msg.content, 'stdout:\npartial\n\nstderr:\nfatal: js-failure');
  });

  test('a compile error is reported on stderr (c)', async () => {
    const msg = await run({ lang: 'c', code: 'int main(void) { return undeclared_symbol; }' });
    assert.equal(msg.status, 'success');
    assert.match(msg.content, /^stdout: Empty\./);
    assert.match(msg.content, /stderr:\n[\s\S]*undeclared_symbol/);
  });

  const hello = [
    ['py', 'print("hello py", 6 * 7)'],
    ['js', 'console.log("hello js", 6 * 7)'],
    ['ts', 'const n: number = 6 * 7;\nconsole.log(`hello ts ${n}`);'],
    ['bash', 'echo "hello bash $((6 * 7))"'],
    ['c', '#include <stdio.h>\nint main(void) { printf("hello c %d\\n", 6 * 7); return 0; }'],
    ['cpp', '#include <iostream>\nint main() { std::cout << "hello cpp " << 6 * 7 << std::endl; }'],
    ['go', 'package main\nimport "fmt"\nfunc main() { fmt.Println("hello go", 6*7) }'],
    ['rs', 'fn main() { println!("hello rs {}", 6 * 7); }'],
    ['java', 'public class Main { public static void main(String[] a) { System.out.println("hello java " + 6 * 7); } }'],
    ['r', 'cat(sprintf("hello r %d\\n", 6L * 7L))'],
    ['php', '<?php\necho "hello php ", 6 * 7, "\\n";'],
    ['f90', "program hello\n  print '(a, i0)', 'hello f90 ', 6 * 7\nend program hello\n"],
    ['d', 'import std.stdio;\nvoid main() { writeln("hello d ", 6 * 7); }\n'],
  ];
  test('every lang the tool offers the model is in this table', () => {
    const offered = codeTool.schema.properties.lang.enum;
    assert.deepEqual(hello.map(([lang]) => lang).sort(), [...offered].sort());
  });
  for (const [lang, code] of hello) {
    test(`lang ${lang} runs through the tool`, async () => {
      const msg = await run({ lang, code });
      assert.equal(msg.content, `stdout:\nhello ${lang} 42`);
    });
  }
});

describe('execute_code: errors', () => {
  test('a language outside the tool schema is refused by the tool itself', async () => {
    await assert.rejects(run({ lang: 'cobol', code: 'DISPLAY 1' }), /did not match expected schema|schema/i);
  });

  test('a wrong key gives the tool\'s "not authorized" text', async () => {
    const badTool = agents.createCodeExecutionTool({ authHeaders: { 'X-API-Key': 'wrong-key' } });
    await assert.rejects(
      badTool.invoke(toolCall(badTool.name, { lang: 'py', code: 'print(1)' })),
      (err) => err.message === 'Execution error:\n\nCode execution is not authorized. Verify access before trying again.',
    );
  });

  test('no auth headers at all gives "not authorized"', async () => {
    const bareTool = agents.createCodeExecutionTool({});
    await assert.rejects(
      bareTool.invoke(toolCall(bareTool.name, { lang: 'py', code: 'print(1)' })),
      /Code execution is not authorized/,
    );
  });
});

describe('execute_code: auth the way LibreChat 3.x passes it', () => {
  test('authHeaders as an async function (resolved per call)', async () => {
    let calls = 0;
    const fnTool = agents.createCodeExecutionTool({
      authHeaders: async () => {
        calls += 1;
        return hostAuthHeaders(server.apiKey);
      },
    });
    const msg = await fnTool.invoke(toolCall(fnTool.name, { lang: 'py', code: 'print("fn-auth")' }));
    assert.equal(msg.content, 'stdout:\nfn-auth');
    assert.equal(calls, 1);
  });

  test('X-API-Key next to a JWT bearer (CODEAPI_JWT_ENABLED) is accepted', async () => {
    const jwtLike = 'eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1c2VyLTEiLCJpc3MiOiJsaWJyZWNoYXQiLCJhdWQiOiJjb2RlYXBpIn0.c2ln';
    const bothTool = agents.createCodeExecutionTool({
      authHeaders: { ...hostAuthHeaders(server.apiKey), Authorization: `Bearer ${jwtLike}` },
    });
    const msg = await bothTool.invoke(toolCall(bothTool.name, { lang: 'py', code: 'print("both")' }));
    assert.equal(msg.content, 'stdout:\nboth');
  });

  test('factory user_id and an expected execution profile of "default" are accepted', async () => {
    const t2 = agents.createCodeExecutionTool({
      authHeaders: hostAuthHeaders(server.apiKey),
      user_id: 'librechat-user-1',
      executionProfile: 'default',
    });
    const msg = await t2.invoke(toolCall(t2.name, { lang: 'py', code: 'print("profile ok")' }));
    assert.equal(msg.content, 'stdout:\nprofile ok');
  });

  test('an expected "stateful" profile on a default server gives the capability error', async () => {
    const t3 = agents.createCodeExecutionTool({
      authHeaders: hostAuthHeaders(server.apiKey),
      executionProfile: 'stateful',
    });
    await assert.rejects(
      t3.invoke(toolCall(t3.name, { lang: 'py', code: 'print(1)' })),
      (err) => {
        assert.match(err.message, /^Execution error:\n\nCode execution is not supported by the selected environment\./);
        assert.match(err.message, /does not provide the requested execution profile/);
        return true;
      },
    );
  });
});

describe('execute_code: other request shapes the 3.x tool can send', () => {
  test('a base URL with a trailing slash (buildCodeApiEndpoint strips it)', async () => {
    const t = agents.createCodeExecutionTool({ baseUrl: `${server.baseUrl}/`, authHeaders: hostAuthHeaders(server.apiKey) });
    const msg = await t.invoke(toolCall(t.name, { lang: 'py', code: 'print("slash")' }));
    assert.equal(msg.content, 'stdout:\nslash');
  });

  test('the model\'s `intent` label is stripped and the call runs', async () => {
    const msg = await run({ intent: 'Compute the answer', lang: 'py', code: 'print(40 + 2)' });
    assert.equal(msg.content, 'stdout:\n42');
  });

  test('a host-given factory session_id (sent in the body) is accepted', async () => {
    const prev = await run({ lang: 'py', code: 'print("prev")' });
    const t = agents.createCodeExecutionTool({
      authHeaders: hostAuthHeaders(server.apiKey),
      session_id: prev.artifact.session_id,
    });
    const msg = await t.invoke(toolCall(t.name, { lang: 'py', code: 'print("with session")' }));
    assert.equal(msg.content, 'stdout:\nwith session');
    assert.match(msg.artifact.session_id, NANOID_21);
  });

  test('statefulSessions with a runtime_session_hint is accepted', async () => {
    const t = agents.createCodeExecutionTool({
      authHeaders: hostAuthHeaders(server.apiKey),
      statefulSessions: true,
      runtimeSessionHint: 'conversation-7f3a',
    });
    const msg = await t.invoke(toolCall(t.name, { lang: 'bash', code: 'echo hinted' }));
    assert.equal(msg.content, 'stdout:\nhinted');
  });
});

describe('execute_code: generated files and the next call', () => {
  const CSV = 'city,temp\nOslo,4\nLima,19\n';
  let first;
  let csvFile;
  let pngFile;

  before(async () => {
    first = await run({
      lang: 'py',
      code: [
        'import matplotlib',
        'matplotlib.use("Agg")',
        'import matplotlib.pyplot as plt',
        `open("/mnt/data/out.csv", "w").write(${JSON.stringify(CSV)})`,
        'plt.plot([1, 2, 3], [4, 19, 7])',
        'plt.savefig("/mnt/data/plot.png")',
        'print("made files")',
      ].join('\n'),
    });
    csvFile = first.artifact.files?.find((f) => f.name === 'out.csv');
    pngFile = first.artifact.files?.find((f) => f.name === 'plot.png');
  });

  test('CSV and PNG appear in the artifact with 21-char ids and relative names', () => {
    assert.match(first.content, /^stdout:\nmade files/);
    assert.match(first.artifact.session_id, NANOID_21);
    assert.ok(Array.isArray(first.artifact.files), 'artifact.files is an array');
    assert.deepEqual(first.artifact.files.map((f) => f.name).sort(), ['out.csv', 'plot.png']);
    for (const file of [csvFile, pngFile]) {
      assert.match(file.id, NANOID_21, `file id ${file.id}`);
      assert.notEqual(file.inherited, true);
      const storage = file.storage_session_id ?? first.artifact.session_id;
      assert.match(storage, NANOID_21);
    }
  });

  test('the "Generated files" summary counts 2 files, 1 image', () => {
    assert.match(first.content, summaryRegex(2, 1));
    assert.ok(first.content.endsWith('do not invent download links or wrap generated images in Markdown.'));
  });

  test('plt.savefig without picking a backend (as the tool tells the model) gives exactly that one image', async () => {
    // The tool's schema says: "py: Matplotlib: Use `plt.savefig()` to save plots as
    // files" and "This is not a Jupyter notebook environment". A figure the code saved
    // must not come back a second time as an auto-displayed inline image.
    const msg = await run({
      lang: 'py',
      code: 'import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.title("once")\nplt.savefig("/mnt/data/chart.png")\nprint("saved")',
    });
    assert.match(msg.content, /^stdout:\nsaved\n/);
    assert.deepEqual((msg.artifact.files ?? []).map((f) => f.name), ['chart.png']);
    assert.match(msg.content, summaryRegex(1, 1));
  });

  test('LibreChat downloads both outputs (new ?kind=user&id= and old no-query forms)', async () => {
    for (const [file, query] of [
      [csvFile, { kind: 'user', id: 'librechat-user-1' }],
      [pngFile, { kind: 'user', id: 'librechat-user-1' }],
      [csvFile, undefined],
      [pngFile, undefined],
    ]) {
      const sid = file.storage_session_id ?? first.artifact.session_id;
      const { res, bytes } = await downloadCodeFile(server, sid, file.id, query);
      assert.equal(res.status, 200, `download ${file.name} ${JSON.stringify(query)}`);
      if (file === csvFile) {
        assert.equal(bytes.toString('utf8'), CSV);
        assert.match(res.headers.get('content-type') ?? '', /^text\/csv/);
      } else {
        assert.ok(bytes.subarray(0, 8).equals(PNG_MAGIC), 'PNG signature');
        assert.ok(bytes.length > 1000, `PNG has a plausible size (${bytes.length} bytes)`);
        assert.equal(res.headers.get('content-type'), 'image/png');
      }
    }
  });

  test('the artifact session id (what older LibreChat stores) also downloads the file', async () => {
    const { res, bytes } = await downloadCodeFile(server, first.artifact.session_id, csvFile.id);
    assert.equal(res.status, 200);
    assert.equal(bytes.toString('utf8'), CSV);
  });

  test('next call, files injected in the 3.x shape (ToolNode), reads them at /mnt/data/<name>', async () => {
    const injection = nextCallInjection(first.artifact);
    assert.equal(injection._injected_files.length, 2);
    for (const ref of injection._injected_files) {
      assert.deepEqual(Object.keys(ref).sort(), ['id', 'kind', 'name', 'resource_id', 'storage_session_id']);
      assert.equal(ref.kind, 'user');
    }
    const second = await run(
      {
        lang: 'py',
        code: [
          'import os',
          'print(open("/mnt/data/out.csv").read().strip().splitlines()[2])',
          'print(open("/mnt/data/plot.png", "rb").read(4)[1:].decode())',
          'print(sorted(os.listdir("/mnt/data")))',
        ].join('\n'),
      },
      injection,
    );
    assert.equal(second.content, "stdout:\nLima,19\nPNG\n['out.csv', 'plot.png']");
    // Echoed input files must be marked inherited, or the tool would announce them as new.
    for (const file of second.artifact.files ?? []) {
      assert.equal(file.inherited, true, `unchanged input ${file.name} echoed without inherited: true`);
    }
    assert.doesNotMatch(second.content, /Generated files/);
  });

  test('a modified input file is reported as generated, with a new id', async () => {
    const injection = nextCallInjection(first.artifact);
    const third = await run(
      { lang: 'py', code: 'open("/mnt/data/out.csv", "a").write("Rome,12\\n")\nprint("appended")' },
      injection,
    );
    assert.match(third.content, summaryRegex(1, 0));
    const generated = (third.artifact.files ?? []).filter((f) => f.inherited !== true);
    assert.deepEqual(generated.map((f) => f.name), ['out.csv']);
    assert.match(generated[0].id, NANOID_21);
    assert.notEqual(generated[0].id, csvFile.id);
    const sid = generated[0].storage_session_id ?? third.artifact.session_id;
    const { res, bytes } = await downloadCodeFile(server, sid, generated[0].id, { kind: 'user', id: 'u1' });
    assert.equal(res.status, 200);
    assert.equal(bytes.toString('utf8'), `${CSV}Rome,12\n`);
    // The source file the run was given is unchanged.
    const orig = await downloadCodeFile(server, csvFile.storage_session_id ?? first.artifact.session_id, csvFile.id);
    assert.equal(orig.bytes.toString('utf8'), CSV);
  });

  test('a deleted input file is listed in deleted_files', async () => {
    const injection = nextCallInjection(first.artifact);
    const msg = await run(
      { lang: 'py', code: 'import os\nos.remove("/mnt/data/out.csv")\nprint("removed")' },
      injection,
    );
    assert.equal(msg.content.split('\n\n')[0], 'stdout:\nremoved');
    assert.deepEqual(msg.artifact.deleted_files, ['out.csv']);
  });

  test('a file in a subdirectory keeps its relative name and mounts back at the same path', async () => {
    const made = await run({
      lang: 'py',
      code: 'import os\nos.makedirs("/mnt/data/reports/q1", exist_ok=True)\nopen("/mnt/data/reports/q1/sum.txt", "w").write("nested")\nprint("ok")',
    });
    const nested = (made.artifact.files ?? []).find((f) => f.name.endsWith('sum.txt'));
    assert.ok(nested, `artifact files: ${JSON.stringify(made.artifact.files)}`);
    assert.equal(nested.name, 'reports/q1/sum.txt');
    const back = await run({ lang: 'bash', code: 'cat /mnt/data/reports/q1/sum.txt' }, nextCallInjection(made.artifact));
    assert.equal(back.content, 'stdout:\nnested');
  });

  test('files given by the host at construction (`files` param, 3.x shape) are mounted', async () => {
    const preTool = agents.createCodeExecutionTool({
      authHeaders: hostAuthHeaders(server.apiKey),
      files: [toInjectedFileRef(csvFile, first.artifact.session_id)],
    });
    const msg = await preTool.invoke(
      toolCall(preTool.name, { lang: 'bash', code: 'wc -l < /mnt/data/out.csv' }),
    );
    assert.equal(msg.content, 'stdout:\n3');
  });
});

describe('the real ToolNode threads files between calls', () => {
  test('write in call 1, read in call 2, through ToolNode and its sessions map', async () => {
    const { ToolNode } = agents;
    const { AIMessage } = await import('@langchain/core/messages');
    const sessions = new Map();
    const node = new ToolNode({ tools: [codeTool], sessions });
    const invoke = async (args) => {
      const call = toolCall(codeTool.name, args);
      const out = await node.invoke({
        messages: [new AIMessage({ content: '', tool_calls: [{ id: call.id, name: call.name, args }] })],
      });
      assert.equal(out.messages.length, 1);
      return out.messages[0];
    };

    const m1 = await invoke({ lang: 'py', code: 'open("/mnt/data/notes.txt", "w").write("kept-across-calls")\nprint("w")' });
    assert.equal(m1.status, 'success');
    assert.match(m1.content, summaryRegex(1, 0));
    const ctx = sessions.get('execute_code');
    assert.ok(ctx, 'ToolNode stored a code session');
    assert.equal(ctx.session_id, m1.artifact.session_id);
    assert.deepEqual(ctx.files.map((f) => f.name), ['notes.txt']);
    assert.match(ctx.files[0].storage_session_id, NANOID_21);

    const m2 = await invoke({ lang: 'bash', code: 'cat /mnt/data/notes.txt' });
    assert.equal(m2.content, 'stdout:\nkept-across-calls');

    const m3 = await invoke({ lang: 'py', code: 'print(len(open("/mnt/data/notes.txt").read()))' });
    assert.equal(m3.content, 'stdout:\n17');
    assert.deepEqual(sessions.get('execute_code').files.map((f) => f.name), ['notes.txt']);
  });

  test('two code calls in one model turn run in parallel through ToolNode', async () => {
    const { ToolNode } = agents;
    const { AIMessage } = await import('@langchain/core/messages');
    const node = new ToolNode({ tools: [codeTool], sessions: new Map() });
    const calls = [
      { id: toolCall(codeTool.name, {}).id, name: codeTool.name, args: { lang: 'py', code: 'import time\ntime.sleep(0.3)\nprint("first")' } },
      { id: toolCall(codeTool.name, {}).id, name: codeTool.name, args: { lang: 'bash', code: 'sleep 0.3; echo second' } },
    ];
    const out = await node.invoke({ messages: [new AIMessage({ content: '', tool_calls: calls })] });
    assert.deepEqual(out.messages.map((m) => [m.tool_call_id, m.status, m.content]), [
      [calls[0].id, 'success', 'stdout:\nfirst'],
      [calls[1].id, 'success', 'stdout:\nsecond'],
    ]);
  });

  test('a tool error becomes an error ToolMessage, not a crash of the graph', async () => {
    const { ToolNode } = agents;
    const { AIMessage } = await import('@langchain/core/messages');
    const badTool = agents.createCodeExecutionTool({ authHeaders: { 'X-API-Key': 'wrong-key' } });
    const node = new ToolNode({ tools: [badTool], sessions: new Map() });
    const id = toolCall(badTool.name, {}).id;
    const out = await node.invoke({
      messages: [new AIMessage({ content: '', tool_calls: [{ id, name: badTool.name, args: { lang: 'py', code: 'print(1)' } }] })],
    });
    assert.equal(out.messages.length, 1);
    assert.equal(out.messages[0].status, 'error');
    assert.match(String(out.messages[0].content), /Code execution is not authorized/);
  });
});
