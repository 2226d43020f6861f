// Talking to the server: JSON calls, the /exec/stream SSE reader, downloads as blobs and
// uploads with progress. The API key travels only in the x-api-key header, never in a URL.

const KEY_STORAGE = 'code-interpreter.api-key';

/** The server said 401: the key is missing or wrong. */
export class Unauthorized extends Error {
  constructor() {
    super('The server refused the API key (401). Enter a valid key.');
  }
}

/** Any other refusal, with the server's one-sentence reason. */
export class ApiError extends Error {
  constructor(readonly status: number, message: string, readonly code?: string) {
    super(message);
  }
}

export interface Frame {
  type: string;
  [field: string]: unknown;
}

export interface FileRef {
  id: string;
  name: string;
  session_id: string;
  path: string;
}

export interface RunInfo {
  status: string;
  code: number | null;
  signal: string | null;
  message: string | null;
  wall_time: number;
  cpu_time: number | null;
  memory: number | null;
}

export interface DoneFrame extends Frame {
  session_id: string;
  language?: string;
  run: RunInfo;
  files: FileRef[];
  runtime_status?: string;
}

export interface FileObject {
  id: string;
  filename: string;
  session_id: string;
  path: string;
  size: number;
  lastModified: string;
}

export interface Health {
  version: string;
  runtimes: Record<string, string>;
  /** Each language's probe: `available`, `unavailable` or `pending` (right after start). */
  readiness?: { runtimes?: Record<string, string> };
  sandbox: {
    mode: string;
    network: boolean;
    cgroups: boolean;
    seccomp: boolean;
    unprivileged_uid: number | null;
    warning?: string;
    limits?: Record<string, number | null>;
  };
}

export interface RootInfo {
  name: string;
  version: string;
  auth_required?: boolean;
}

export class Api {
  key: string | null;
  /** Called on every 401, so the page can ask for a key. */
  onUnauthorized: () => void = () => {};

  constructor() {
    this.key = localStorage.getItem(KEY_STORAGE);
  }

  setKey(key: string | null) {
    this.key = key && key.trim() !== '' ? key.trim() : null;
    if (this.key) localStorage.setItem(KEY_STORAGE, this.key);
    else localStorage.removeItem(KEY_STORAGE);
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return this.key ? { 'x-api-key': this.key, ...extra } : extra;
  }

  /** A URL relative to the page, so the playground works behind a path prefix too. */
  url(path: string): string {
    return new URL(path.replace(/^\//, ''), document.baseURI).toString();
  }

  private async check(res: Response): Promise<Response> {
    if (res.status === 401) {
      this.onUnauthorized();
      throw new Unauthorized();
    }
    if (!res.ok) {
      let message = `The server answered ${res.status}.`;
      let code: string | undefined;
      try {
        const body = await res.json();
        if (typeof body.detail === 'string') message = body.detail;
        if (typeof body.error === 'string') code = body.error;
      } catch {
        // Not JSON: keep the status sentence.
      }
      throw new ApiError(res.status, message, code);
    }
    return res;
  }

  async request(method: string, path: string, body?: unknown): Promise<Response> {
    const init: RequestInit = { method, headers: this.headers() };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers = this.headers({ 'content-type': 'application/json' });
    }
    return this.check(await fetch(this.url(path), init));
  }

  async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    return (await this.request(method, path, body)).json() as Promise<T>;
  }

  async root(): Promise<RootInfo> {
    const res = await fetch(this.url('./'), { headers: { accept: 'application/json' } });
    return res.json();
  }

  async health(): Promise<Health> {
    return (await fetch(this.url('health'))).json();
  }

  /** Download a server path as a Blob (the key goes in a header, so a plain link cannot). */
  async blob(path: string): Promise<Blob> {
    return (await this.check(await fetch(this.url(path), { headers: this.headers() }))).blob();
  }

  /**
   * POST /exec/stream and call `onFrame` for every frame as it arrives. Resolves when the
   * stream ends (after the `done` frame).
   */
  async stream(body: unknown, onFrame: (frame: Frame) => void, signal?: AbortSignal): Promise<void> {
    const res = await this.check(
      await fetch(this.url('exec/stream'), {
        method: 'POST',
        headers: this.headers({ 'content-type': 'application/json', accept: 'text/event-stream' }),
        body: JSON.stringify(body),
        signal,
      }),
    );
    if (!res.body) throw new ApiError(res.status, 'The server sent no stream.');
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new SseParser(onFrame);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(value);
    }
    parser.push('\n\n');
  }

  /** Upload files with XHR, whose upload events report progress (fetch has none). */
  upload(
    sessionId: string | null,
    files: File[],
    onProgress: (sent: number, total: number) => void,
  ): Promise<{ session_id: string; files: FileObject[] }> {
    const form = new FormData();
    if (sessionId) form.append('session_id', sessionId);
    for (const file of files) form.append('files', file, file.name);
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open('POST', this.url('upload'));
      if (this.key) xhr.setRequestHeader('x-api-key', this.key);
      xhr.upload.onprogress = (ev) => {
        if (ev.lengthComputable) onProgress(ev.loaded, ev.total);
      };
      xhr.onerror = () => reject(new ApiError(0, 'The upload failed: the connection was lost.'));
      xhr.onload = () => {
        if (xhr.status === 401) {
          this.onUnauthorized();
          reject(new Unauthorized());
          return;
        }
        let body: { detail?: string; session_id: string; files: FileObject[] };
        try {
          body = JSON.parse(xhr.responseText);
        } catch {
          reject(new ApiError(xhr.status, `The server answered ${xhr.status}.`));
          return;
        }
        if (xhr.status >= 200 && xhr.status < 300) resolve(body);
        else reject(new ApiError(xhr.status, body.detail ?? `The server answered ${xhr.status}.`));
      };
      xhr.send(form);
    });
  }
}

/** Server-Sent Events framing: `data:` lines up to a blank line make one frame. */
export class SseParser {
  private buffer = '';
  private data: string[] = [];

  constructor(private readonly onFrame: (frame: Frame) => void) {}

  push(chunk: string) {
    this.buffer += chunk;
    let newline: number;
    while ((newline = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, newline).replace(/\r$/, '');
      this.buffer = this.buffer.slice(newline + 1);
      this.line(line);
    }
  }

  private line(line: string) {
    if (line === '') {
      if (this.data.length > 0) {
        const text = this.data.join('\n');
        this.data = [];
        try {
          this.onFrame(JSON.parse(text) as Frame);
        } catch (err) {
          console.warn('unreadable frame', err, text);
        }
      }
      return;
    }
    if (line.startsWith(':')) return; // a comment: keep-alive
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') this.data.push(value);
  }
}
