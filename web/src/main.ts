// The playground page: wires the session bar, the notebook, the files panel and the key
// dialog to the server. Everything is served by the code-interpreter binary itself.

import './style.css';
import { Api, ApiError, type DoneFrame, type Health, Unauthorized } from './api';
import { FilesPanel } from './files';
import { bytes, saveBlob } from './format';
import { Notebook } from './notebook';

const SESSION_STORAGE = 'code-interpreter.session';
const WELCOME = 'import sys\nprint(f"Python {sys.version.split()[0]}, working in /mnt/data")\n';
/** A well-formed session id that names no session: listing it costs nothing and shows
 * whether a key is accepted (200) or not (401). */
const PROBE_SESSION = 'AAAAAAAAAAAAAAAAAAAAA';

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;

class Playground {
  readonly api = new Api();
  private session: string | null = sessionStorage.getItem(SESSION_STORAGE);
  private runtimes: string[] = ['python'];
  private restarted = false;
  readonly notebook: Notebook;
  readonly files: FilesPanel;

  constructor() {
    this.api.onUnauthorized = () => this.askForKey(true);
    const host = {
      api: this.api,
      languages: () => this.runtimes,
      sessionId: () => this.session,
      adoptSession: (id: string) => this.adopt(id),
      runStarted: () => this.showState(),
      runEnded: (done: DoneFrame | null) => this.runEnded(done),
      report: (err: unknown) => this.report(err),
    };
    this.notebook = new Notebook(host, $('cells'));
    this.files = new FilesPanel(host);
    this.bindSessionBar();
    this.bindKeyDialog();
    $('run-all').addEventListener('click', () => void this.notebook.runAll());
    $('add-cell').addEventListener('click', () => this.notebook.add().editor.focus());
    if (!this.notebook.restore()) this.notebook.add(WELCOME, 'python');
    this.showSession();
  }

  async start() {
    const [root, health] = await Promise.all([this.api.root(), this.api.health()]);
    $('version').textContent = `v${root.version}`;
    this.showHealth(health);
    void this.followProbes(health);
    // The key setting is there only when the server needs one (or refused one: askForKey).
    $('settings-button').hidden = !root.auth_required;
    if (root.auth_required && !this.api.key) {
      this.askForKey(false);
      return;
    }
    await this.resume();
  }

  /** Keep the tab's session across reloads while the server still has it. */
  private async resume() {
    if (!this.session) return;
    try {
      await this.api.request('GET', `sessions/${this.session}/notebook`);
      await this.files.refresh();
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) this.adopt(null);
      else this.report(err);
    }
  }

  /** Right after the server starts, languages appear in /health as their probes end: ask
   * again until none is pending, so the picker ends up with every one. */
  private async followProbes(health: Health) {
    const pending = (h: Health) => Object.values(h.readiness?.runtimes ?? {}).includes('pending');
    for (let tries = 0; pending(health) && tries < 60; tries++) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      try {
        health = await this.api.health();
      } catch {
        continue;
      }
      this.showHealth(health);
    }
  }

  private showHealth(health: Health) {
    const names = Object.keys(health.runtimes);
    if (names.length > 0) {
      // Python first, then the rest as the server lists them.
      this.runtimes = names.sort((a, b) => Number(b === 'python') - Number(a === 'python'));
      this.notebook.refreshLanguages();
    }
    const s = health.sandbox;
    const parts = [
      `Sandbox: ${s.mode}`,
      s.network ? 'network allowed' : 'no network',
      s.cgroups ? 'cgroup limits' : 'rlimits only',
      s.seccomp ? 'seccomp' : 'no seccomp',
    ];
    if (s.unprivileged_uid != null) parts.push(`uid ${s.unprivileged_uid}`);
    const l = s.limits ?? {};
    const mib = (v: number | null | undefined) => (v ? bytes(v * 1024 * 1024) : 'no limit');
    if ('memory_mb' in l) parts.push(`memory ${mib(l.memory_mb)}`);
    if ('processes' in l) parts.push(`${l.processes ?? 'any number of'} processes`);
    if ('timeout_seconds' in l) parts.push(`${l.timeout_seconds} s per run`);
    if ('disk_quota_mb' in l) parts.push(`disk ${mib(l.disk_quota_mb)}`);
    if ('max_output_bytes' in l) parts.push(`output ${bytes(l.max_output_bytes)} per stream`);
    const line = $('sandbox');
    line.textContent = parts.join(' · ');
    if (s.warning) line.append(' — ', Object.assign(document.createElement('strong'), { textContent: s.warning }));
  }

  private adopt(id: string | null) {
    if (id === this.session) return;
    this.session = id;
    if (id) sessionStorage.setItem(SESSION_STORAGE, id);
    else sessionStorage.removeItem(SESSION_STORAGE);
    this.showSession();
  }

  private showSession() {
    $('session-id').textContent = this.session ?? 'none yet (the first run or upload makes one)';
    $<HTMLButtonElement>('restart').disabled = !this.session;
    $<HTMLButtonElement>('export').disabled = !this.session;
    this.showState();
  }

  private showState() {
    const running = this.notebook?.busy ?? false;
    const state = running ? 'running' : this.restarted ? 'restarted' : 'idle';
    const node = $('session-state');
    node.textContent = state;
    node.dataset.state = state;
    $<HTMLButtonElement>('interrupt').disabled = !running || !this.session;
  }

  private runEnded(done: DoneFrame | null) {
    // Only Python keeps state between runs: its runs say whether the kernel did.
    if (done && done.language === 'python') {
      const stderr = String((done as { stderr?: string }).stderr ?? '');
      this.restarted = stderr.includes('[kernel] The previous Python state');
      const status = $('runtime-status');
      status.hidden = !done.runtime_status;
      status.textContent = done.runtime_status ? `kernel ${done.runtime_status}` : '';
      status.title =
        done.runtime_status === 'reused'
          ? 'The last Python run continued the kernel, with its variables and imports'
          : 'The last Python run started on a fresh kernel: only the files were there';
    }
    this.showState();
    void this.files.refresh();
  }

  private bindSessionBar() {
    $('interrupt').addEventListener('click', () => {
      if (!this.session) return;
      this.api.request('POST', `sessions/${this.session}/interrupt`).catch((e) => this.report(e));
    });
    $('restart').addEventListener('click', async () => {
      if (!this.session) return;
      try {
        await this.api.request('POST', `sessions/${this.session}/restart`);
        this.restarted = true;
        this.showState();
      } catch (err) {
        this.report(err);
      }
    });
    $('new-session').addEventListener('click', () => {
      this.adopt(null);
      this.restarted = false;
      this.notebook.reset();
      $('runtime-status').hidden = true;
      this.showState();
      void this.files.refresh();
    });
    $('export').addEventListener('click', async () => {
      if (!this.session) return;
      try {
        const blob = await this.api.blob(`sessions/${this.session}/notebook`);
        saveBlob(blob, `session-${this.session}.ipynb`);
      } catch (err) {
        this.report(err);
      }
    });
  }

  private bindKeyDialog() {
    const dialog = $<HTMLDialogElement>('key-dialog');
    const input = $<HTMLInputElement>('key-input');
    const error = $('key-error');
    $('settings-button').addEventListener('click', () => this.askForKey(false));
    $('key-cancel').addEventListener('click', () => dialog.close());
    $('key-forget').addEventListener('click', () => {
      this.api.setKey(null);
      input.value = '';
      error.hidden = true;
      dialog.close();
    });
    $('key-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      this.api.setKey(input.value);
      error.hidden = true;
      try {
        await this.api.request('GET', `files/${PROBE_SESSION}`);
        dialog.close();
        this.hideBanner();
        await this.resume();
      } catch (err) {
        error.textContent =
          err instanceof Unauthorized ? 'That key was refused (401): check it and try again.' : String(err);
        error.hidden = false;
        if (!dialog.open) dialog.showModal();
        input.select();
      }
    });
  }

  private askForKey(refused: boolean) {
    $('settings-button').hidden = false;
    const dialog = $<HTMLDialogElement>('key-dialog');
    const input = $<HTMLInputElement>('key-input');
    $('key-reason').textContent = refused
      ? 'The server refused the request (401): it needs a valid API key.'
      : 'This server needs an API key (CODE_INTERPRETER_API_KEY or one of CODE_INTERPRETER_API_KEYS).';
    const error = $('key-error');
    error.hidden = !refused;
    error.textContent = refused ? (this.api.key ? 'The saved key was refused.' : 'No key is saved yet.') : '';
    input.value = this.api.key ?? '';
    if (!dialog.open) dialog.showModal();
    input.focus();
  }

  private report(err: unknown) {
    if (err instanceof Unauthorized) return; // the key dialog says it
    const banner = $('banner');
    banner.textContent = err instanceof Error ? err.message : String(err);
    banner.hidden = false;
    clearTimeout(this.bannerTimer);
    this.bannerTimer = window.setTimeout(() => this.hideBanner(), 10_000);
  }

  private bannerTimer = 0;

  private hideBanner() {
    $('banner').hidden = true;
  }
}

const playground = new Playground();
playground.start().catch((err) => {
  const banner = $('banner');
  banner.textContent = `The server could not be reached: ${err instanceof Error ? err.message : String(err)}`;
  banner.hidden = false;
});
