// Starts the real code-interpreter binary for one test file: a free loopback
// port, a fresh DATA_DIR, a random API key. Stops it and removes the data dir.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const E2E_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const REPO_DIR = path.resolve(E2E_DIR, '..', '..');

/** The server binary: $CODE_INTERPRETER_BIN, else the release build, else the debug build. */
export function resolveBinary() {
  const fromEnv = process.env.CODE_INTERPRETER_BIN;
  if (fromEnv != null && fromEnv !== '') {
    const resolved = path.resolve(E2E_DIR, fromEnv);
    if (!isExecutable(resolved)) {
      throw new Error(`CODE_INTERPRETER_BIN=${fromEnv} is not an executable file (resolved to ${resolved})`);
    }
    return resolved;
  }
  const candidates = [
    path.join(REPO_DIR, 'target', 'release', 'code-interpreter'),
    path.join(REPO_DIR, 'target', 'debug', 'code-interpreter'),
  ];
  for (const candidate of candidates) {
    if (isExecutable(candidate)) return candidate;
  }
  throw new Error(
    `no server binary found; build it with \`cargo build --release\` in ${REPO_DIR} ` +
      `or set CODE_INTERPRETER_BIN (looked at: ${candidates.join(', ')})`,
  );
}

function isExecutable(file) {
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) return false;
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Sandboxed code runs as uid 65534: every parent of DATA_DIR must be o+x. */
function worldSearchableTmp() {
  const isSearchable = (dir) => {
    let current = path.resolve(dir);
    for (;;) {
      try {
        if ((fs.statSync(current).mode & 0o001) === 0) return false;
      } catch {
        return false;
      }
      const parent = path.dirname(current);
      if (parent === current) return true;
      current = parent;
    }
  };
  const preferred = os.tmpdir();
  return isSearchable(preferred) ? preferred : '/tmp';
}

async function waitForHealth(root, child, logs, deadlineMs) {
  const started = Date.now();
  let lastError;
  while (Date.now() - started < deadlineMs) {
    if (child.exitCode != null || child.signalCode != null) {
      throw new Error(`server exited early (code ${child.exitCode}, signal ${child.signalCode}):\n${logs.join('')}`);
    }
    try {
      const res = await fetch(`${root}/health`, { signal: AbortSignal.timeout(1000) });
      if (res.ok) {
        const body = await res.json();
        if (body.status === 'healthy') return body;
      }
    } catch (err) {
      lastError = err;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`server not healthy after ${deadlineMs} ms (${lastError?.message ?? 'no answer'}):\n${logs.join('')}`);
}

/**
 * Starts the server. Returns {root, baseUrl, apiKey, dataDir, binary, logs(), stop()}.
 * `baseUrl` ends in /v1, as LIBRECHAT_CODE_BASEURL does in LibreChat.
 */
export async function startServer({ extraEnv = {} } = {}) {
  const binary = resolveBinary();
  const dataDir = fs.mkdtempSync(path.join(worldSearchableTmp(), 'ci-e2e-librechat-'));
  fs.chmodSync(dataDir, 0o755);
  const apiKey = `e2e-${randomBytes(18).toString('hex')}`;
  const logs = [];

  // A port taken between freePort() and bind() makes the server exit: retry.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const env = { ...process.env };
    delete env.CODE_INTERPRETER_API_KEYS;
    Object.assign(env, {
      HOST: '127.0.0.1',
      PORT: String(port),
      DATA_DIR: dataDir,
      CODE_INTERPRETER_API_KEY: apiKey,
      LOG_LEVEL: process.env.E2E_SERVER_LOG_LEVEL ?? 'warn',
      ...extraEnv,
    });
    const child = spawn(binary, [], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    // E2E_SERVER_LOG_DIR keeps each server's whole output in a file there.
    const logDir = process.env.E2E_SERVER_LOG_DIR;
    let logFile = null;
    if (logDir) {
      fs.mkdirSync(logDir, { recursive: true });
      logFile = fs.createWriteStream(path.join(logDir, `server-${port}.log`));
    }
    const keep = (chunk) => {
      logs.push(chunk.toString());
      if (logs.length > 400) logs.splice(0, logs.length - 400);
      logFile?.write(chunk);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    const exited = new Promise((resolve) => child.once('exit', resolve));
    // Never leave a server behind if this test process dies without `stop()`.
    const killOnExit = () => {
      if (child.exitCode == null && child.signalCode == null) child.kill('SIGKILL');
    };
    process.once('exit', killOnExit);
    const root = `http://127.0.0.1:${port}`;
    try {
      const health = await waitForHealth(root, child, logs, 30_000);
      return {
        root,
        baseUrl: `${root}/v1`,
        apiKey,
        dataDir,
        binary,
        health,
        logs: () => logs.join(''),
        async stop() {
          if (child.exitCode == null && child.signalCode == null) {
            child.kill('SIGTERM');
            const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
            await exited;
            clearTimeout(timer);
          }
          process.removeListener('exit', killOnExit);
          fs.rmSync(dataDir, { recursive: true, force: true });
        },
      };
    } catch (err) {
      if (child.exitCode == null && child.signalCode == null) {
        child.kill('SIGKILL');
        await exited;
      }
      if (attempt >= 3) {
        fs.rmSync(dataDir, { recursive: true, force: true });
        throw err;
      }
    }
  }
}
