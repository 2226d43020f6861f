// The files panel: what /mnt/data holds, uploads by drag-and-drop or the picker (with
// progress), downloads (fetched with the key, saved as a blob) and deletes.

import { type Api, type FileObject } from './api';
import { bytes, el, saveBlob, time } from './format';

export interface FilesHost {
  api: Api;
  sessionId(): string | null;
  adoptSession(id: string): void;
  report(error: unknown): void;
}

export class FilesPanel {
  private readonly list = document.getElementById('file-list') as HTMLTableSectionElement;
  private readonly empty = document.getElementById('files-empty') as HTMLElement;
  private readonly uploads = document.getElementById('uploads') as HTMLElement;
  private generation = 0;

  constructor(private readonly host: FilesHost) {
    const input = document.getElementById('file-input') as HTMLInputElement;
    input.addEventListener('change', () => {
      if (input.files && input.files.length > 0) void this.upload([...input.files]);
      input.value = '';
    });
    const zone = document.getElementById('dropzone') as HTMLElement;
    const stop = (ev: Event) => {
      ev.preventDefault();
      ev.stopPropagation();
    };
    for (const name of ['dragenter', 'dragover']) {
      zone.addEventListener(name, (ev) => {
        stop(ev);
        zone.classList.add('over');
      });
    }
    zone.addEventListener('dragleave', (ev) => {
      stop(ev);
      zone.classList.remove('over');
    });
    zone.addEventListener('drop', (ev) => {
      stop(ev);
      zone.classList.remove('over');
      const files = [...(ev.dataTransfer?.files ?? [])];
      if (files.length > 0) void this.upload(files);
    });
  }

  async refresh() {
    const sid = this.host.sessionId();
    const generation = ++this.generation;
    if (!sid) {
      this.render([]);
      return;
    }
    try {
      const files = await this.host.api.json<FileObject[]>('GET', `files/${sid}?detail=full`);
      // A newer refresh (or another session) won the race.
      if (generation === this.generation) this.render(files);
    } catch (err) {
      this.host.report(err);
    }
  }

  private render(files: FileObject[]) {
    files.sort((a, b) => a.filename.localeCompare(b.filename));
    this.empty.hidden = files.length > 0;
    this.list.replaceChildren(...files.map((f) => this.row(f)));
  }

  private row(file: FileObject): HTMLTableRowElement {
    const name = file.filename;
    const download = el('button', { type: 'button', class: 'link', title: `Download ${name}` }, name);
    download.addEventListener('click', () => {
      this.host.api
        .blob(file.path)
        .then((blob) => saveBlob(blob, name.split('/').pop() ?? name))
        .catch((err) => this.host.report(err));
    });
    const remove = el('button', { type: 'button', class: 'remove', 'aria-label': `Delete ${name}` }, '✕');
    remove.addEventListener('click', () => {
      this.host.api
        .request('DELETE', `files/${file.session_id}/${file.id}`)
        .then(() => this.refresh())
        .catch((err) => this.host.report(err));
    });
    return el(
      'tr',
      { 'data-name': name },
      el('td', { class: 'name' }, download),
      el('td', { class: 'size' }, bytes(file.size)),
      el('td', { class: 'time' }, el('time', { datetime: file.lastModified }, time(file.lastModified))),
      el('td', {}, remove),
    );
  }

  async upload(files: File[]) {
    const total = files.reduce((n, f) => n + f.size, 0);
    const label = files.length === 1 ? files[0].name : `${files.length} files`;
    const progress = el('progress', { max: '1', value: '0', 'aria-label': `Uploading ${label}` });
    const status = el('span', {}, `${label}: 0 of ${bytes(total)}`);
    const item = el('div', { class: 'upload' }, status, progress);
    this.uploads.append(item);
    try {
      const answer = await this.host.api.upload(this.host.sessionId(), files, (sent, all) => {
        progress.value = all > 0 ? sent / all : 1;
        status.textContent = `${label}: ${bytes(sent)} of ${bytes(all)}`;
      });
      this.host.adoptSession(answer.session_id);
      item.remove();
      await this.refresh();
    } catch (err) {
      item.classList.add('failed');
      status.textContent = `${label}: ${err instanceof Error ? err.message : String(err)}`;
      progress.remove();
      this.host.report(err);
      setTimeout(() => item.remove(), 10_000);
    }
  }
}
