// The notebook: a column of cells, each with a language, an editor and the output that
// /exec/stream sends while the cell runs. Cells run one at a time, in the order asked.

import { type Api, type DoneFrame, type FileRef, type Frame } from './api';
import { CodeEditor } from './editor';
import { bytes, el, millis, saveBlob } from './format';
import { Terminal } from './terminal';

/** What cells need from the rest of the page. */
export interface NotebookHost {
  api: Api;
  languages(): string[];
  sessionId(): string | null;
  /** A frame told us the session (the first run makes one). */
  adoptSession(id: string): void;
  runStarted(): void;
  runEnded(done: DoneFrame | null): void;
  report(error: unknown): void;
}

const IMAGE_TYPES = ['image/png', 'image/jpeg', 'image/svg+xml'];
/** The cells' code and languages, kept per tab so a reload does not lose them. */
const CELLS_STORAGE = 'code-interpreter.cells';

let nextCellNumber = 1;

export class Cell {
  readonly root: HTMLElement;
  readonly editor: CodeEditor;
  private readonly language: HTMLSelectElement;
  private readonly output: HTMLElement;
  private readonly footer: HTMLElement;
  private readonly prompt: HTMLElement;
  private readonly runButton: HTMLButtonElement;
  private lastStream: { name: string; node: HTMLElement } | null = null;
  /** One terminal per stream name, so colours carry over when stdout and stderr alternate. */
  private terminals = new Map<string, Terminal>();
  /** Asked to run and not finished yet (waiting in the queue or running). */
  queued = false;
  running = false;

  constructor(
    private readonly notebook: Notebook,
    code: string,
    lang: string,
  ) {
    const n = nextCellNumber++;
    const selectId = `cell-${n}-lang`;
    this.language = el('select', { id: selectId, class: 'lang' });
    this.fillLanguages(lang);
    this.prompt = el('span', { class: 'prompt', 'aria-hidden': 'true' }, '[ ]');
    this.runButton = el('button', { type: 'button', class: 'run', title: 'Run (Shift+Enter)' }, 'Run');
    const remove = el('button', { type: 'button', class: 'remove', 'aria-label': `Delete cell ${n}` }, 'Delete');
    const editorHost = el('div', { class: 'editor' });
    this.output = el('div', { class: 'output', 'aria-live': 'polite', 'aria-label': `Output of cell ${n}` });
    this.footer = el('div', { class: 'cell-footer' });
    this.root = el(
      'article',
      { class: 'cell', 'aria-label': `Cell ${n}` },
      el(
        'div',
        { class: 'cell-head' },
        this.prompt,
        el('label', { for: selectId }, 'Language'),
        this.language,
        this.runButton,
        remove,
      ),
      editorHost,
      this.output,
      this.footer,
    );
    this.editor = new CodeEditor(editorHost, code, lang, `Code of cell ${n}`, {
      runAndAdvance: () => {
        void this.notebook.run(this);
        this.notebook.focusAfter(this);
      },
      run: () => void this.notebook.run(this),
      changed: () => this.notebook.save(),
    });
    this.language.addEventListener('change', () => {
      this.editor.setLanguage(this.language.value);
      this.notebook.save();
    });
    this.runButton.addEventListener('click', () => void this.notebook.run(this));
    remove.addEventListener('click', () => this.notebook.remove(this));
  }

  get lang(): string {
    return this.language.value;
  }

  fillLanguages(selected = this.language.value) {
    const langs = this.notebook.host.languages();
    const all = langs.includes(selected) || !selected ? langs : [selected, ...langs];
    this.language.replaceChildren(...all.map((l) => el('option', { value: l, selected: l === selected }, l)));
  }

  clear() {
    this.output.replaceChildren();
    this.footer.replaceChildren();
    this.lastStream = null;
    this.terminals.clear();
    this.prompt.textContent = '[ ]';
    this.root.dataset.status = '';
  }

  /** Waiting for the cells before it. */
  markQueued() {
    this.prompt.textContent = '[*]';
    this.root.dataset.status = 'queued';
  }

  /** Run through /exec/stream, showing each frame as it arrives. */
  async execute(count: number): Promise<DoneFrame | null> {
    const host = this.notebook.host;
    this.clear();
    this.running = true;
    this.root.dataset.status = 'running';
    this.prompt.textContent = '[*]';
    this.footer.append(el('span', { class: 'badge running' }, 'running…'));
    let done: DoneFrame | null = null;
    try {
      await host.api.stream(
        { code: this.editor.text, lang: this.lang, session_id: host.sessionId() ?? undefined },
        (frame) => {
          if (frame.type === 'done') done = frame as DoneFrame;
          this.show(frame);
        },
      );
      if (!done) this.problem('The stream ended without a result; the server may have restarted.');
    } catch (err) {
      this.problem(err instanceof Error ? err.message : String(err));
      host.report(err);
    } finally {
      this.running = false;
      this.prompt.textContent = `[${count}]`;
    }
    return done;
  }

  private problem(message: string) {
    this.footer.replaceChildren(el('span', { class: 'badge error' }, 'not run'), el('span', {}, message));
    this.root.dataset.status = 'error';
  }

  private show(frame: Frame) {
    switch (frame.type) {
      case 'session':
        this.notebook.host.adoptSession(String(frame.session_id));
        break;
      case 'stream':
        this.text(String(frame.name), String(frame.text));
        break;
      case 'display':
      case 'result':
        this.rich(frame.data as Record<string, unknown>, frame.file as FileRef | null);
        break;
      case 'error':
        this.error(frame);
        break;
      case 'done':
        this.finish(frame as DoneFrame);
        break;
    }
  }

  private text(name: string, text: string) {
    let terminal = this.terminals.get(name);
    if (!terminal) {
      terminal = new Terminal();
      this.terminals.set(name, terminal);
    }
    if (this.lastStream?.name !== name) {
      const node = el('pre', { class: `stream ${name}`, 'data-stream': name });
      if (name === 'stderr') node.setAttribute('aria-label', 'standard error');
      this.output.append(node);
      this.lastStream = { name, node };
      terminal.attach(node);
    }
    terminal.write(text);
  }

  /** A Python exception: the server has already sent its traceback (plain text, without
   * colours) on stderr, which is marked as such; otherwise it is shown here. Then a
   * one-line summary. */
  private error(frame: Frame) {
    const lines = Array.isArray(frame.traceback) ? frame.traceback.map(String) : [];
    const tail = lines.filter((l) => l.trim() !== '').pop() ?? '';
    const stderr = this.lastStream?.name === 'stderr' ? this.lastStream.node : null;
    if (stderr && (tail === '' || (stderr.textContent ?? '').includes(tail))) {
      stderr.classList.add('traceback');
    } else if (tail !== '') {
      const node = el('pre', { class: 'stream stderr traceback', 'data-stream': 'traceback', 'aria-label': 'traceback' });
      const terminal = new Terminal();
      terminal.attach(node);
      terminal.write(`${lines.join('\n')}\n`);
      this.output.append(node);
    }
    this.output.append(
      el(
        'p',
        { class: 'exception' },
        el('strong', {}, String(frame.ename)),
        frame.evalue ? `: ${String(frame.evalue)}` : '',
      ),
    );
    this.lastStream = null;
  }

  /** Images inline (as <img>, so nothing a cell displays can run script); text is in stdout. */
  private rich(data: Record<string, unknown>, file: FileRef | null) {
    const mime = IMAGE_TYPES.find((m) => typeof data?.[m] === 'string');
    if (!mime) return;
    const raw = String(data[mime]);
    const src =
      mime === 'image/svg+xml'
        ? `data:image/svg+xml;charset=utf-8,${encodeURIComponent(raw)}`
        : `data:${mime};base64,${raw.replace(/\s/g, '')}`;
    const alt = file ? `Figure ${file.name}` : 'Figure';
    this.output.append(el('figure', {}, el('img', { src, alt })));
    this.lastStream = null;
  }

  private finish(done: DoneFrame) {
    for (const terminal of this.terminals.values()) terminal.end();
    const run = done.run;
    this.root.dataset.status = run.status;
    const parts: (Node | string)[] = [
      el('span', { class: `badge ${run.status}` }, run.status),
      el('span', {}, run.signal ? `signal ${run.signal}` : `exit ${run.code ?? '—'}`),
      el('span', { title: 'wall time' }, `wall ${millis(run.wall_time)}`),
    ];
    if (run.memory != null) parts.push(el('span', { title: 'peak memory' }, `mem ${bytes(run.memory)}`));
    if (run.message) parts.push(el('span', { class: 'message' }, run.message));
    this.footer.replaceChildren(...parts);
    if (done.files.length > 0) {
      const list = el('ul', { class: 'out-files', 'aria-label': 'Files this cell wrote' });
      for (const file of done.files) {
        const button = el('button', { type: 'button', class: 'link' }, file.name);
        button.addEventListener('click', () => {
          this.notebook.host.api
            .blob(file.path)
            .then((blob) => saveBlob(blob, file.name.split('/').pop() ?? file.name))
            .catch((err) => this.notebook.host.report(err));
        });
        list.append(el('li', {}, button));
      }
      this.footer.append(list);
    }
  }
}

export class Notebook {
  readonly cells: Cell[] = [];
  private queue: Promise<unknown> = Promise.resolve();
  private count = 0;
  private pending = 0;

  constructor(
    readonly host: NotebookHost,
    private readonly container: HTMLElement,
  ) {}

  add(code = '', lang = this.defaultLanguage(), after?: Cell): Cell {
    const cell = new Cell(this, code, lang);
    const index = after ? this.cells.indexOf(after) + 1 : this.cells.length;
    this.cells.splice(index, 0, cell);
    const next = this.cells[index + 1];
    if (next) this.container.insertBefore(cell.root, next.root);
    else this.container.append(cell.root);
    this.save();
    return cell;
  }

  /** The cells this tab had before a reload; false when there were none. */
  restore(): boolean {
    let saved: unknown;
    try {
      saved = JSON.parse(sessionStorage.getItem(CELLS_STORAGE) ?? 'null');
    } catch {
      saved = null;
    }
    if (!Array.isArray(saved) || saved.length === 0) return false;
    for (const c of saved) {
      if (c && typeof c.code === 'string' && typeof c.lang === 'string') this.add(c.code, c.lang);
    }
    return this.cells.length > 0;
  }

  save() {
    const cells = this.cells.map((c) => ({ code: c.editor.text, lang: c.lang }));
    try {
      sessionStorage.setItem(CELLS_STORAGE, JSON.stringify(cells));
    } catch {
      // Storage full or disabled: the cells just do not survive a reload.
    }
  }

  private defaultLanguage(): string {
    const last = this.cells[this.cells.length - 1];
    return last?.lang ?? this.host.languages()[0] ?? 'python';
  }

  remove(cell: Cell) {
    if (cell.queued) return;
    const index = this.cells.indexOf(cell);
    this.cells.splice(index, 1);
    cell.root.remove();
    this.save();
    (this.cells[index] ?? this.cells[index - 1])?.editor.focus();
  }

  /** Focus the next cell, making one when this is the last. */
  focusAfter(cell: Cell) {
    const next = this.cells[this.cells.indexOf(cell) + 1] ?? this.add('', cell.lang);
    next.editor.focus();
    next.root.scrollIntoView({ block: 'nearest' });
  }

  get busy(): boolean {
    return this.pending > 0;
  }

  /** Queue a cell's run behind the ones already asked for. A cell already waiting or
   * running is not queued twice (a double Shift+Enter runs it once); an empty one is skipped. */
  run(cell: Cell): Promise<unknown> {
    if (cell.queued) return Promise.resolve();
    if (cell.editor.text.trim() === '') {
      cell.clear();
      return Promise.resolve();
    }
    cell.queued = true;
    cell.markQueued();
    this.pending += 1;
    this.host.runStarted();
    const turn = this.queue.then(async () => {
      let done: DoneFrame | null = null;
      try {
        done = await cell.execute(++this.count);
      } finally {
        cell.queued = false;
        this.pending -= 1;
        this.host.runEnded(done);
      }
    });
    this.queue = turn.catch(() => {});
    return turn;
  }

  runAll(): Promise<unknown> {
    return Promise.all(this.cells.map((c) => this.run(c)));
  }

  /** A new session: outputs and counts start over, the code stays. */
  reset() {
    this.count = 0;
    for (const cell of this.cells) cell.clear();
  }

  refreshLanguages() {
    for (const cell of this.cells) cell.fillLanguages();
  }
}
