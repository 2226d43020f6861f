// The playground in a real browser: Debian's Chromium, headless, driven by playwright-core,
// against the real server binary with an API key. One browser and one server for the file;
// the steps run in order, as a person would use the page.

import { execFileSync } from 'node:child_process';
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
  // Nothing may be fetched from anywhere but the server.
  await context.route('**/*', (route) => {
    const url = new URL(route.request().url());
    if (url.origin === server.root || url.protocol === 'data:' || url.protocol === 'blob:') return route.continue();
    offsite.push(url.href);
    return route.abort();
  });
});

const offsite = [];

after(async () => {
  await context?.close();
  await server?.stop();
  for (const dir of [profile, downloads, notebooksDir]) if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const shot = (name, fullPage = false) => page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), fullPage });

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

async function addCell(code, lang) {
  await page.getByRole('button', { name: 'Add cell' }).click();
  const n = await page.locator('article.cell').count();
  const c = cell(n);
  if (lang) await c.root.getByLabel('Language').selectOption(lang);
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
  await dialog.getByLabel(/^Key/).fill(server.apiKey);
  await dialog.getByRole('button', { name: 'Save' }).click();
  await dialog.waitFor({ state: 'hidden' });
  assert.equal(await page.evaluate(() => localStorage.getItem('code-interpreter.api-key')), server.apiKey);
  assert.ok(!page.url().includes(server.apiKey), 'the key is never in the URL');
  // Every runtime /health reports is offered.
  const health = await (await fetch(server.root + '/health')).json();
  const offered = await cell(1).root.getByLabel('Language').locator('option').allTextContents();
  assert.deepEqual([...offered].sort(), Object.keys(health.runtimes).sort());
  await page.locator('#sandbox').getByText(/Sandbox: bwrap/).waitFor();
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
  const [download] = await Promise.all([page.waitForEvent('download'), row.getByRole('button', { name: 'data.csv', exact: true }).click()]);
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
  await shot('07-bash', true);
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
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.getByRole('button', { name: 'Export .ipynb' }).click(),
  ]);
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
