// LibreChat talks to the Code API through keep-alive agents, so a busy server
// holds many open sockets (and so many file descriptors). Code runs must keep
// working whatever descriptor numbers the server happens to be using.

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';

import { startServer } from '../lib/server.mjs';
import { hostAuthHeaders, toolCall } from '../lib/librechat.mjs';

let server;
let bashTool;
const sockets = [];

before(async () => {
  server = await startServer();
  process.env.LIBRECHAT_CODE_BASEURL = server.baseUrl;
  const agents = await import('@librechat/agents');
  bashTool = agents.createBashExecutionTool({ authHeaders: hostAuthHeaders(server.apiKey) });
});

after(async () => {
  for (const socket of sockets) socket.destroy();
  await server?.stop();
});

function openIdleConnection(port) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => resolve(socket));
    socket.once('error', reject);
  });
}

test('every run succeeds while idle client connections climb from 0 to 160', async () => {
  const port = Number(new URL(server.root).port);
  const failures = [];
  for (let open = 0; open <= 160; open++) {
    if (open > 0) sockets.push(await openIdleConnection(port));
    const msg = await bashTool.invoke(toolCall(bashTool.name, { command: 'echo ok' }));
    if (msg.content !== 'stdout:\nok') failures.push({ openConnections: open, content: msg.content });
  }
  assert.deepEqual(failures, [], `runs failed at some descriptor counts:\n${JSON.stringify(failures, null, 2)}`);
});
