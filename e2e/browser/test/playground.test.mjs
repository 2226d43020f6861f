// The playground in a real browser: Debian's Chromium, headless, driven by playwright-core,
// against the real server binary with an API key. One browser and one server for the file;
// the steps run in order, as a person would use the page.

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

import { startServer } from '../../librechat/lib/server.mjs';

const SCREENSHOTS = process.env.SCREENSHOT_DIR ?? path.resolve('../../target/browser-screenshots');
const NBFORMAT_PYTHON = process.env.NBFORMAT_PYTHON ?? '/opt/code-interpreter/python/bin/python';
const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-quic',
  '--no-first-run',
  '--disable-component-update',
  '--disable-sync',
];
/** How long one step may wait for the page (cells run real kernels on a busy machine). */
const WAIT = 60_000;

let server;
let context;
let page;
let profile;
let downloads;
const notebooksDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ci-e2e-notebooks-'));

before(async () => {
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  server = await startServer({ extraEnv: { NOTEBOOKS_DIR: notebooksDir, KERNEL_POOL_SIZE: '1' } });
  profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ci-e2e-chromium-'));
  downloads = fs.mkdtempSync(path.join(os.tmpdir(), 'ci-e2e-downloads-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_FLAGS,
    viewport: { width: 1280, height: 800 },
    acceptDownloads: true,
    colorScheme: 'light',
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(WAIT);
  page.on('console', (m) => m.type() === 'error' && trouble.push(`console: ${m.text()}`));
  page.on('requestfailed', (r) => trouble.push(`request failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => r.status() >= 400 && trouble.push(`response ${r.status()}: ${r.request().method()} ${r.url()}`));
  servers.add(server.root);
  // Nothing may be fetched from anywhere but the server.
  await context.route('**/*', (route) => {
    const url = new URL(route.request().url());
    if (servers.has(url.origin) || url.protocol === 'data:' || url.protocol === 'blob:') return route.continue();
    offsite.push(url.href);
    return route.abort();
  });
});

const offsite = [];
/** What went wrong in the page (console errors, failed requests, 4xx/5xx), for failure messages. */
const trouble = [];
/** The origins the page may load from: the servers these tests started. */
const servers = new Set();

after(async () => {
  await context?.close();
  await server?.stop();
  for (const dir of [profile, downloads, notebooksDir]) if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const shot = (name, fullPage = false) => page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), fullPage });

/**
 * Click something that should start a download, and return the download. When none starts,
 * the failure says what the page showed and what went wrong in it, not only "timeout".
 */
async function downloadBy(click) {
  const since = trouble.length;
  try {
    const [download] = await Promise.all([page.waitForEvent('download'), click()]);
    return download;
  } catch (err) {
    const banner = await page.locator('#banner').evaluate((b) => (b.hidden ? '' : b.textContent)).catch(() => '');
    err.message += `\nbanner: ${banner || '(none)'}\npage trouble: ${JSON.stringify(trouble.slice(since))}`;
    throw err;
  }
}

/** The n-th cell (1-based) and its parts. */
function cell(n) {
  const root = page.locator('article.cell').nth(n - 1);
  return {
    root,
    output: root.locator('.output'),
    footer: root.locator('.cell-footer'),
    async type(code) {
      await root.locator('.cm-content').click();
      await page.keyboard.press('Control+A');
      await page.keyboard.insertText(code);
    },
    /** Ctrl+Enter: run in place (Shift+Enter would also make a new cell). */
    async run() {
      await root.locator('.cm-content').focus();
      await page.keyboard.press('Control+Enter');
    },
    async waitDone() {
      await root.locator('.cell-footer .badge:not(.running)').waitFor();
      return root.getAttribute('data-status');
    },
  };
}

/** A new last cell, in Python unless `lang` says otherwise. */
async function addCell(code, lang) {
  await page.getByRole('button', { name: 'Add cell' }).click();
  const n = await page.locator('article.cell').count();
  const c = cell(n);
  // A new cell takes the language of the one above: say which one.
  await c.root.getByLabel('Language').selectOption(lang ?? 'python');
  await c.type(code);
  return c;
}

test('the page asks for the key the server needs, then works with it', async () => {
  const response = await page.goto(server.root + '/');
  assert.equal(response.status(), 200);
  assert.match(response.headers()['content-type'], /text\/html/);
  const dialog = page.getByRole('dialog', { name: 'API key' });
  await dialog.waitFor();
  await shot('01-key-prompt');
  // The key field has the focus: typing and Enter are enough.
  await page.keyboard.type(server.apiKey);
  await page.keyboard.press('Enter');
  await dialog.waitFor({ state: 'hidden' });
  assert.equal(await page.evaluate(() => localStorage.getItem('code-interpreter.api-key')), server.apiKey);
  assert.equal(await page.getByRole('button', { name: 'API key' }).isVisible(), true);
  assert.ok(!page.url().includes(server.apiKey), 'the key is never in the URL');
  // Every runtime /health reports is offered, also those whose probe ended after the page loaded.
  let health;
  for (;;) {
    health = await (await fetch(server.root + '/health')).json();
    if (!Object.values(health.readiness.runtimes).includes('pending')) break;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  await page.waitForFunction(
    (n) => document.querySelector('article.cell select').options.length === n,
    Object.keys(health.runtimes).length,
  );
  const offered = await cell(1).root.getByLabel('Language').locator('option').allTextContents();
  assert.deepEqual([...offered].sort(), Object.keys(health.runtimes).sort());
  await page.locator('#sandbox').getByText(/Sandbox: bwrap/).waitFor();
  // The limits /health reports are on the sandbox line.
  const sandbox = await page.locator('#sandbox').innerText();
  const limits = health.sandbox.limits;
  assert.match(sandbox, health.sandbox.network ? /network allowed/ : /no network/);
  assert.match(sandbox, new RegExp(`${limits.timeout_seconds} s per run`));
  assert.match(sandbox, /memory [\d.]+ [KMG]iB|memory no limit/);
  assert.match(sandbox, /output [\d.]+ [KMG]iB per stream/);
});

test('the first load is small and comes only from the server', async () => {
  const sizes = await page.evaluate(() =>
    [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')].map((e) => ({
      name: e.name,
      transfer: e.transferSize,
      decoded: e.decodedBodySize,
    })),
  );
  const assets = sizes.filter((s, i) => i === 0 || new URL(s.name).pathname.startsWith('/assets/'));
  const transferred = assets.reduce((n, s) => n + s.transfer, 0);
  const decoded = assets.reduce((n, s) => n + s.decoded, 0);
  console.log(`first load: ${transferred} bytes transferred (compressed), ${decoded} bytes decoded`);
  assert.equal(assets.length, 3, JSON.stringify(sizes));
  assert.ok(transferred > 0 && transferred <= 400 * 1024, `${transferred} bytes`);
  assert.ok(transferred < decoded / 2, 'the assets are served compressed');
  assert.deepEqual(offsite, []);
});

test('a Python cell runs with Shift+Enter and shows its output, status, time and memory', async () => {
  const c = cell(1);
  await c.type('x = 6 * 7\nprint("answer", x)\nx');
  await page.keyboard.press('Shift+Enter');
  assert.equal(await c.waitDone(), 'success');
  assert.equal(await c.output.locator('pre.stdout').textContent(), 'answer 42\n42\n');
  const footer = await c.footer.innerText();
  assert.match(footer, /success/i);
  assert.match(footer, /exit 0/);
  assert.match(footer, /wall [\d.]+ (ms|s)/);
  assert.match(footer, /mem [\d.]+ (KiB|MiB|GiB)/);
  const sid = await page.locator('#session-id').innerText();
  assert.match(sid, /^[A-Za-z0-9_-]{21}$/);
  // Shift+Enter moved on to a new cell.
  assert.equal(await page.locator('article.cell').count(), 2);
  await shot('02-python-cell');
});

test('output streams: the first line shows before the second is printed', async () => {
  const c = cell(2);
  await c.type('import time\nprint("first", flush=True)\ntime.sleep(3)\nprint("second")');
  await c.run();
  await c.output.getByText('first').waitFor();
  assert.equal(await c.root.getAttribute('data-status'), 'running');
  assert.ok(!(await c.output.innerText()).includes('second'), 'the second line is not there yet');
  assert.equal(await page.locator('#session-state').innerText(), 'running');
  await shot('03-streaming');
  assert.equal(await c.waitDone(), 'success');
  assert.equal(await c.output.locator('pre.stdout').textContent(), 'first\nsecond\n');
  assert.equal(await page.locator('#session-state').innerText(), 'idle');
});

test('a matplotlib figure shows inline and as a download link', async () => {
  const c = await addCell(
    'import matplotlib.pyplot as plt\nplt.figure(figsize=(4, 3))\nplt.plot([1, 3, 2, 4])\nplt.title("e2e")\nplt.show()',
  );
  await c.run();
  assert.equal(await c.waitDone(), 'success');
  const img = c.output.locator('figure img');
  await img.waitFor();
  const width = await img.evaluate((el) => el.naturalWidth);
  assert.ok(width > 100, `the image decoded (${width} px wide)`);
  await c.footer.getByRole('button', { name: 'figure-1.png' }).waitFor();
  // Files made by a cell appear in the panel without a reload.
  await page.locator('#file-list tr[data-name="figure-1.png"]').waitFor();
  await shot('04-matplotlib', true);
});

test('a CSV uploaded with the files panel is read in a cell', async () => {
  const csv = path.join(downloads, 'data.csv');
  fs.writeFileSync(csv, 'a,b\n1,10\n2,20\n3,12\n');
  await page.locator('#file-input').setInputFiles(csv);
  const row = page.locator('#file-list tr[data-name="data.csv"]');
  await row.waitFor();
  assert.match(await row.innerText(), /19 B/);
  const c = await addCell('import pandas as pd\ndf = pd.read_csv("data.csv")\nprint(df["b"].sum())');
  await c.run();
  assert.equal(await c.waitDone(), 'success');
  assert.equal(await c.output.locator('pre.stdout').textContent(), '42\n');
  await shot('05-csv-upload', true);

  // Download it back (fetched with the key), then delete it.
  const download = await downloadBy(() => row.getByRole('button', { name: 'data.csv', exact: true }).click());
  const saved = path.join(downloads, 'back.csv');
  await download.saveAs(saved);
  assert.equal(fs.readFileSync(saved, 'utf8'), fs.readFileSync(csv, 'utf8'));
  await row.getByRole('button', { name: 'Delete data.csv' }).click();
  await row.waitFor({ state: 'detached' });
});

test('an endless cell is stopped with Interrupt', async () => {
  const c = await addCell('print("looping", flush=True)\nwhile True:\n    pass');
  await c.run();
  await c.output.getByText('looping').waitFor();
  const interrupt = page.getByRole('button', { name: 'Interrupt' });
  assert.equal(await interrupt.isEnabled(), true);
  await interrupt.click();
  assert.equal(await c.waitDone(), 'error');
  await c.output.getByText('KeyboardInterrupt').first().waitFor();
  assert.equal(await interrupt.isEnabled(), false);
  await shot('06-interrupted', true);
});

test('a bash cell runs in the same session and sees its files', async () => {
  const c = await addCell('echo "bash $((6 * 7))"\nls /mnt/data\necho oops >&2', 'bash');
  await c.run();
  assert.equal(await c.waitDone(), 'success');
  assert.equal(await c.output.locator('pre.stdout').textContent(), 'bash 42\nfigure-1.png\n');
  assert.equal(await c.output.locator('pre.stderr').textContent(), 'oops\n');

  // Colours are rendered, not shown as escape codes; "\r" rewrites the line; the exit status shows.
  const colours = await addCell(
    "printf '\\033[1;31mred\\033[0m plain \\033[38;5;33mblue\\033[0m\\n'\nprintf 'step 1\\rstep 2\\n'\nexit 3",
    'bash',
  );
  await colours.run();
  assert.equal(await colours.waitDone(), 'error');
  const out = colours.output.locator('pre.stdout');
  assert.equal(await out.textContent(), 'red plain blue\nstep 2\n');
  assert.equal(await out.locator('span.ansi-fg-1.ansi-bold').textContent(), 'red');
  assert.match(await out.getByText('blue').getAttribute('style'), /color/);
  assert.match(await colours.footer.innerText(), /exit 3/);
  await shot('07-bash', true);
});

/** A few lines per language with a keyword, a string and a comment. */
const SAMPLES = {
  python: 'def f():\n    return "s"  # note',
  bash: 'if true; then echo "s"; fi  # note',
  sh: 'if true; then echo "s"; fi  # note',
  javascript: 'function f() { return "s"; } // note',
  typescript: 'function f(): string { return "s"; } // note',
  go: 'func f() string { return "s" } // note',
  c: 'int f(void) { return "s"[0]; } /* note */',
  cpp: 'int f() { return "s"[0]; } // note',
  rust: 'fn f() -> &\'static str { "s" } // note',
  java: 'class A { String f() { return "s"; } } // note',
  d: 'string f() { return "s"; } // note',
  fortran: 'program p\n  print *, "s" ! note\nend program p',
  r: 'f <- function(x) { "s" } # note',
  php: '<?php\nfunction f() { return "s"; } // note\n$x = 1;',
};

test('every language the server runs is highlighted, with line numbers', async () => {
  const health = await (await fetch(server.root + '/health')).json();
  const c = await addCell('');
  const picker = c.root.getByLabel('Language');
  const plainText = await c.root.locator('.cm-content').evaluate((el) => getComputedStyle(el).color);
  const missing = [];
  for (const lang of Object.keys(health.runtimes)) {
    await picker.selectOption(lang);
    await c.type(SAMPLES[lang] ?? 'if "s" # note');
    const colours = await c.root.locator('.cm-line span').evaluateAll((spans) => [
      ...new Set(spans.map((s) => getComputedStyle(s).color)),
    ]);
    if (colours.filter((colour) => colour !== plainText).length < 2) missing.push(`${lang}: ${colours.join(', ')}`);
    const numbers = await c.root.locator('.cm-lineNumbers .cm-gutterElement').allTextContents();
    assert.ok(numbers.includes('1'), `${lang}: line numbers ${numbers}`);
  }
  assert.deepEqual(missing, [], 'languages without at least two token colours');
  await c.root.getByRole('button', { name: /^Delete cell/ }).click();
});

test('every control has a name and the keyboard moves through the page', async () => {
  const unnamed = await page.evaluate(() =>
    [...document.querySelectorAll('button, select, input, textarea, [contenteditable="true"]')]
      .filter((el) => el.offsetParent !== null || el.type === 'file')
      .filter((el) => {
        const labelled = el.labels?.length > 0 || el.getAttribute('aria-label') || el.textContent.trim();
        return !labelled;
      })
      .map((el) => el.outerHTML.slice(0, 80)),
  );
  assert.deepEqual(unnamed, []);
  // Tab leaves the editor instead of inserting a tab.
  await cell(1).root.locator('.cm-content').focus();
  await page.keyboard.press('Tab');
  const inEditor = await page.evaluate(() => !!document.activeElement.closest('.cm-editor'));
  assert.equal(inEditor, false);
});

test('export gives a valid .ipynb of the Python cells', async () => {
  const download = await downloadBy(() => page.getByRole('button', { name: 'Export .ipynb' }).click());
  const file = path.join(downloads, download.suggestedFilename());
  await download.saveAs(file);
  assert.match(download.suggestedFilename(), /\.ipynb$/);
  const summary = execFileSync(
    NBFORMAT_PYTHON,
    [
      '-c',
      `import json, sys, nbformat
nb = nbformat.read(sys.argv[1], as_version=4)
nbformat.validate(nb)
kinds = sorted({o.output_type for c in nb.cells for o in c.outputs})
images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.outputs)
print(json.dumps({"cells": len(nb.cells), "kinds": kinds, "images": images}))`,
      file,
    ],
    { encoding: 'utf8' },
  );
  const nb = JSON.parse(summary);
  // Python cells only: the first, streaming, matplotlib, CSV and interrupted ones.
  assert.equal(nb.cells, 5, summary);
  assert.equal(nb.images, 1, summary);
  assert.deepEqual(nb.kinds, ['display_data', 'error', 'execute_result', 'stream'], summary);
});

test('file names, output and tracebacks are shown as text, never as HTML', async () => {
  const hostile = '<img src=x onerror="window.__xss=1">.txt';
  await page.locator('#file-input').setInputFiles({ name: hostile, mimeType: 'text/plain', buffer: Buffer.from('hi') });
  const row = page.locator('#file-list tr').filter({ hasText: 'onerror' });
  await row.waitFor();
  const c = await addCell(
    'html = \'<b id="injected">bold</b><script>window.__xss=2</script>\'\n' +
      'print(html)\n' +
      'open(\'<svg onload="window.__xss=3">.txt\', "w").write(html)\n' +
      'raise ValueError(html)',
  );
  await c.run();
  assert.equal(await c.waitDone(), 'error');
  const html = '<b id="injected">bold</b><script>window.__xss=2</script>';
  assert.equal(await c.output.locator('pre.stdout').textContent(), `${html}\n`);
  assert.match(await c.output.locator('pre.traceback').textContent(), /ValueError/);
  assert.match(await c.output.locator('.exception').textContent(), /ValueError: <b id="injected">/);
  const link = c.footer.getByRole('button', { name: '<svg onload="window.__xss=3">.txt' });
  await link.waitFor();
  const download = await downloadBy(() => link.click());
  const saved = path.join(downloads, 'hostile.txt');
  await download.saveAs(saved);
  assert.equal(fs.readFileSync(saved, 'utf8'), html);
  assert.equal(await page.locator('#injected, .output script, #file-list img, .cell-footer svg').count(), 0);
  assert.equal(await page.evaluate(() => window.__xss), undefined);
  await shot('11-text-not-html', true);
});

test('a very long output (100 000 lines, past the server cap) renders and the page keeps working', async () => {
  const c = await addCell('for i in range(100_000):\n    print("line", i)');
  await c.run();
  await c.waitDone();
  const out = c.output.locator('pre.stdout');
  const text = await out.textContent();
  assert.ok(text.startsWith('line 0\nline 1\n'), text.slice(0, 40));
  assert.ok(text.length <= 1.1 * server.health.sandbox.limits.max_output_bytes + 1024, `${text.length} chars`);
  // The block scrolls on its own; the page still answers and runs the next cell.
  assert.equal(await out.evaluate((el) => el.scrollHeight > el.clientHeight), true);
  const next = await addCell('print("still here")');
  await next.run();
  assert.equal(await next.waitDone(), 'success');
  assert.equal(await next.output.locator('pre.stdout').textContent(), 'still here\n');
  await shot('12-long-output');
  await c.root.getByRole('button', { name: /^Delete cell/ }).click();
});

test('two quick runs of the same cell run it once', async () => {
  const c = await addCell('print("once")');
  const run = c.root.getByRole('button', { name: 'Run', exact: true });
  await run.dblclick();
  assert.equal(await c.waitDone(), 'success');
  assert.equal(await c.output.locator('pre.stdout').textContent(), 'once\n');
  const prompt = await c.root.locator('.prompt').textContent();
  const again = await addCell('print("next")');
  await again.run();
  await again.waitDone();
  const number = (p) => Number(p.replace(/\D/g, ''));
  assert.equal(number(await again.root.locator('.prompt').textContent()), number(prompt) + 1);

  // Shift+Enter twice in a row: the cell runs once, the second press lands in the new empty
  // cell, which is not run, and moves on again.
  const before = await page.locator('article.cell').count();
  await again.type('print("shift")');
  await page.keyboard.press('Shift+Enter');
  await page.keyboard.press('Shift+Enter');
  assert.equal(await again.waitDone(), 'success');
  assert.equal(await again.output.locator('pre.stdout').textContent(), 'shift\n');
  assert.equal(number(await again.root.locator('.prompt').textContent()), number(prompt) + 2);
  assert.equal(await page.locator('article.cell').count(), before + 2);
  assert.equal(await cell(before + 1).root.locator('.prompt').textContent(), '[ ]');
  for (const n of [before + 2, before + 1]) await cell(n).root.getByRole('button', { name: /^Delete cell/ }).click();
});

test('a file dropped on the panel is uploaded; a binary file a cell writes downloads byte for byte', async () => {
  const dataTransfer = await page.evaluateHandle(() => {
    const dt = new DataTransfer();
    dt.items.add(new File(['dropped\n'], 'dropped.txt', { type: 'text/plain' }));
    return dt;
  });
  await page.locator('#dropzone').dispatchEvent('dragenter', { dataTransfer });
  assert.match(await page.locator('#dropzone').getAttribute('class'), /over/);
  await page.locator('#dropzone').dispatchEvent('drop', { dataTransfer });
  const row = page.locator('#file-list tr[data-name="dropped.txt"]');
  await row.waitFor();
  assert.match(await row.innerText(), /8 B/);

  const c = await addCell(
    'import hashlib, os\ndata = os.urandom(20 * 1024 * 1024)\nopen("blob.bin", "wb").write(data)\nprint(hashlib.sha256(data).hexdigest())',
  );
  await c.run();
  assert.equal(await c.waitDone(), 'success');
  const digest = (await c.output.locator('pre.stdout').textContent()).trim();
  await page.locator('#file-list tr[data-name="blob.bin"]').getByText('20 MiB').waitFor();
  // The cell's own list of the files it wrote (from the `done` frame) must name it too.
  const button = c.footer.getByRole('button', { name: 'blob.bin' });
  await button.waitFor();
  const download = await downloadBy(() => button.click());
  const saved = path.join(downloads, 'blob.bin');
  await download.saveAs(saved);
  assert.equal(createHash('sha256').update(fs.readFileSync(saved)).digest('hex'), digest);
  fs.rmSync(saved);
  for (const name of ['blob.bin', 'dropped.txt']) {
    await page.locator(`#file-list tr[data-name="${name}"]`).getByRole('button', { name: `Delete ${name}` }).click();
    await page.locator(`#file-list tr[data-name="${name}"]`).waitFor({ state: 'detached' });
  }
});

test('a large upload shows its progress', async () => {
  const big = path.join(downloads, 'big.bin');
  fs.writeFileSync(big, Buffer.alloc(3 * 1024 * 1024, 7));
  // A slow link (1 MiB/s up), so the upload takes a few seconds.
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false,
    latency: 0,
    downloadThroughput: -1,
    uploadThroughput: 1024 * 1024,
  });
  await page.evaluate(() => {
    window.__progress = [];
    new MutationObserver(() => {
      for (const p of document.querySelectorAll('#uploads progress')) window.__progress.push(Number(p.value));
    }).observe(document.getElementById('uploads'), { subtree: true, childList: true, attributes: true, characterData: true });
  });
  try {
    await page.locator('#file-input').setInputFiles(big);
    await page.locator('#uploads progress').waitFor();
    await page.locator('#file-list tr[data-name="big.bin"]').waitFor();
  } finally {
    await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
    await cdp.detach();
  }
  const seen = await page.evaluate(() => window.__progress);
  assert.ok(seen.some((v) => v > 0 && v < 1), `progress values ${seen}`);
  assert.match(await page.locator('#file-list tr[data-name="big.bin"]').innerText(), /3\.0 MiB/);
  await page.locator('#file-list tr[data-name="big.bin"]').getByRole('button', { name: 'Delete big.bin' }).click();
});

test('the page is usable on a 390 px phone and in dark mode', async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(overflow <= 390, `the page is ${overflow} px wide`);
  await shot('08-phone', true);
  await page.emulateMedia({ colorScheme: 'dark' });
  const background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.notEqual(background, 'rgb(246, 247, 249)', 'dark mode changes the colours');
  await page.setViewportSize({ width: 1280, height: 800 });
  await shot('09-dark');
  await page.emulateMedia({ colorScheme: 'light' });
});

test('a refused key (401) brings the key prompt back with a clear message', async () => {
  await page.evaluate(() => localStorage.setItem('code-interpreter.api-key', 'not-the-key'));
  await page.reload();
  const dialog = page.getByRole('dialog', { name: 'API key' });
  await dialog.waitFor();
  assert.match(await dialog.innerText(), /401/);
  await shot('10-refused-key');
  await dialog.getByLabel(/^Key/).fill(server.apiKey);
  await dialog.getByRole('button', { name: 'Save' }).click();
  await dialog.waitFor({ state: 'hidden' });
  // The tab kept its session across the reload.
  await page.locator('#file-list tr[data-name="figure-1.png"]').waitFor();
});

test('a new session starts empty, and the old one leaves its notebook in NOTEBOOKS_DIR when it ends', async () => {
  const old = await page.locator('#session-id').innerText();
  await page.getByRole('button', { name: 'New session' }).click();
  assert.match(await page.locator('#session-id').innerText(), /none yet/);
  assert.equal(await page.locator('#file-list tr').count(), 0);
  const c = cell(1);
  await c.run();
  assert.equal(await c.waitDone(), 'success');
  assert.notEqual(await page.locator('#session-id').innerText(), old);

  const res = await fetch(`${server.root}/sessions/${old}`, { method: 'DELETE', headers: { 'x-api-key': server.apiKey } });
  assert.equal(res.status, 200);
  const written = path.join(notebooksDir, `${old}.ipynb`);
  execFileSync(NBFORMAT_PYTHON, ['-c', 'import sys, nbformat; nbformat.validate(nbformat.read(sys.argv[1], as_version=4))', written]);
});

test('a reload in the middle of a run keeps the session and the cells, and the next run works', async () => {
  const c = await addCell('import time\nprint("sleeping", flush=True)\ntime.sleep(600)');
  await c.run();
  await c.output.getByText('sleeping').waitFor();
  const sid = await page.locator('#session-id').innerText();
  const cells = await page.locator('article.cell').count();
  await page.reload();
  // The tab's cells come back (code and language, not outputs) and the session is kept.
  await page.locator('#session-id').getByText(sid).waitFor();
  assert.equal(await page.locator('article.cell').count(), cells);
  assert.match(await cell(cells).root.locator('.cm-content').innerText(), /time\.sleep\(600\)/);
  assert.equal(await page.locator('#session-state').innerText(), 'idle');
  // Leaving the page stopped the sleeping cell: the kernel takes the next one.
  const next = cell(cells);
  await next.type('print("after the reload")');
  await next.run();
  assert.equal(await next.waitDone(), 'success');
  assert.equal(await next.output.locator('pre.stdout').textContent(), 'after the reload\n');
});

test('run all runs every cell in order; restart empties the kernel and the traceback says so', async () => {
  await page.getByRole('button', { name: 'New session' }).click();
  while ((await page.locator('article.cell').count()) > 0) {
    await page.locator('article.cell').first().getByRole('button', { name: /^Delete cell/ }).click();
  }
  const a = await addCell('a = 1\nprint("a", a)');
  const b = await addCell('b = a + 1\nprint("b", b)');
  const sum = await addCell('print("sum", a + b)');
  await page.getByRole('button', { name: 'Run all' }).click();
  assert.equal(await sum.waitDone(), 'success');
  assert.equal(await a.output.innerText(), 'a 1\n');
  assert.equal(await b.output.innerText(), 'b 2\n');
  assert.equal(await sum.output.innerText(), 'sum 3\n');
  const prompts = await page.locator('article.cell .prompt').allTextContents();
  assert.deepEqual(prompts, ['[1]', '[2]', '[3]']);
  assert.equal(await page.locator('#runtime-status').innerText(), 'kernel reused');

  await page.getByRole('button', { name: 'Restart kernel' }).click();
  await page.locator('#session-state[data-state="restarted"]').waitFor();
  await shot('13-restarted');
  await sum.run();
  assert.equal(await sum.waitDone(), 'error');
  const traceback = await sum.output.locator('pre.traceback').textContent();
  assert.match(traceback, /NameError/);
  assert.match(traceback, /print\("sum", a \+ b\)/);
  assert.ok(!traceback.includes('\x1b'), 'no escape codes');
  assert.match(await sum.output.locator('.exception').innerText(), /NameError: name 'a' is not defined/);
  assert.equal(await page.locator('#runtime-status').innerText(), 'kernel new');
  await shot('14-traceback-after-restart');
});

test('a server without keys asks for none and hides the key setting', async () => {
  const open = await startServer({ extraEnv: { CODE_INTERPRETER_API_KEY: '', KERNEL_POOL_SIZE: '0' } });
  servers.add(open.root);
  const tab = await context.newPage();
  tab.setDefaultTimeout(WAIT);
  try {
    await tab.goto(open.root + '/');
    await tab.locator('#sandbox').getByText(/Sandbox:/).waitFor();
    assert.equal(await tab.getByRole('button', { name: 'API key' }).isVisible(), false);
    assert.equal(await tab.getByRole('dialog').isVisible(), false);
    const c = tab.locator('article.cell').first();
    await c.locator('.cm-content').click();
    await tab.keyboard.press('Control+A');
    await tab.keyboard.insertText('echo open');
    await c.getByLabel('Language').selectOption('bash');
    await c.getByRole('button', { name: 'Run', exact: true }).click();
    await c.locator('.cell-footer .badge:not(.running)').waitFor();
    assert.equal(await c.locator('pre.stdout').textContent(), 'open\n');
  } finally {
    await tab.close();
    await open.stop();
  }
});
