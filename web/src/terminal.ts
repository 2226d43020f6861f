// Terminal text in a <pre>: what a program writes is shown as text (never parsed as HTML),
// with ANSI colours (SGR) turned into styled spans, other escape sequences dropped, and a
// bare carriage return rewriting the current line, as progress bars expect. Escapes and
// "\r\n" split across two chunks are kept until the next one.

/** The SGR state: colours are 0-15 (the palette classes), or a CSS colour string. */
interface Style {
  fg: number | string | null;
  bg: number | string | null;
  bold: boolean;
  dim: boolean;
  italic: boolean;
  underline: boolean;
}

const plain = (): Style => ({ fg: null, bg: null, bold: false, dim: false, italic: false, underline: false });

const CSI = /\x1b\[([0-9;:?<=>]*)[ -/]*([@-~])/y;
const OSC = /\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)/y;
/** A sequence cut off at the end of a chunk (the rest comes with the next one). */
const PARTIAL = /\x1b(?:\[[0-9;:?<=>]*[ -/]*|\][^\x07\x1b]*|)$/;
/** Longer than this, an unfinished sequence is not waited for: it is dropped. */
const MAX_PENDING = 256;

/** xterm's 256-colour cube and grey ramp, for 38;5;n above 15. */
function xterm256(n: number): string {
  if (n >= 232) {
    const v = 8 + (n - 232) * 10;
    return `rgb(${v}, ${v}, ${v})`;
  }
  const i = n - 16;
  const level = (c: number) => (c === 0 ? 0 : 55 + c * 40);
  return `rgb(${level(Math.floor(i / 36))}, ${level(Math.floor(i / 6) % 6)}, ${level(i % 6)})`;
}

export class Terminal {
  private style = plain();
  private pending = '';
  private target: HTMLElement | null = null;

  /** Where the next text goes (a stream's output block; a new one when streams alternate). */
  attach(node: HTMLElement) {
    this.target = node;
  }

  write(chunk: string) {
    const text = this.pending + chunk;
    this.pending = '';
    let run = '';
    let i = 0;
    const special = /[\x1b\r]/g;
    while (i < text.length) {
      special.lastIndex = i;
      const found = special.exec(text);
      const j = found ? found.index : text.length;
      run += text.slice(i, j);
      if (!found) break;
      if (text[j] === '\r') {
        if (j + 1 === text.length) {
          this.pending = '\r';
          break;
        }
        if (text[j + 1] === '\n') {
          run += '\n';
          i = j + 2;
        } else {
          this.flush(run);
          run = '';
          this.eraseLine();
          i = j + 1;
        }
        continue;
      }
      CSI.lastIndex = j;
      const csi = CSI.exec(text);
      if (csi) {
        if (csi[2] === 'm') {
          this.flush(run);
          run = '';
          this.sgr(csi[1]);
        }
        i = j + csi[0].length;
        continue;
      }
      OSC.lastIndex = j;
      const osc = OSC.exec(text);
      if (osc) {
        i = j + osc[0].length;
        continue;
      }
      const rest = text.slice(j);
      if (rest.length <= MAX_PENDING && PARTIAL.test(rest)) {
        this.pending = rest;
        break;
      }
      // Any other escape: drop ESC and the character after it.
      i = j + 2;
    }
    this.flush(run);
  }

  /** The stream ended: an unfinished escape or a last bare "\r" is dropped. */
  end() {
    this.pending = '';
  }

  private flush(run: string) {
    if (run === '' || !this.target) return;
    const s = this.style;
    if (s.fg == null && s.bg == null && !s.bold && !s.dim && !s.italic && !s.underline) {
      this.target.append(run);
      return;
    }
    const span = document.createElement('span');
    const classes: string[] = [];
    if (typeof s.fg === 'number') classes.push(`ansi-fg-${s.fg}`);
    else if (s.fg) span.style.color = s.fg;
    if (typeof s.bg === 'number') classes.push(`ansi-bg-${s.bg}`);
    else if (s.bg) span.style.backgroundColor = s.bg;
    if (s.bold) classes.push('ansi-bold');
    if (s.dim) classes.push('ansi-dim');
    if (s.italic) classes.push('ansi-italic');
    if (s.underline) classes.push('ansi-underline');
    span.className = classes.join(' ');
    span.textContent = run;
    this.target.append(span);
  }

  /** A bare "\r": what was written since the last newline goes. */
  private eraseLine() {
    const node = this.target;
    while (node?.lastChild) {
      const last = node.lastChild;
      const content = last.textContent ?? '';
      const newline = content.lastIndexOf('\n');
      if (newline >= 0) {
        const keep = content.slice(0, newline + 1);
        if (last.nodeType === Node.TEXT_NODE) (last as Text).data = keep;
        else last.textContent = keep;
        return;
      }
      last.remove();
    }
  }

  private sgr(params: string) {
    const codes = params === '' ? [0] : params.split(/[;:]/).map((p) => (p === '' ? 0 : Number(p)));
    for (let k = 0; k < codes.length; k++) {
      const c = codes[k];
      if (c === 0) this.style = plain();
      else if (c === 1) this.style.bold = true;
      else if (c === 2) this.style.dim = true;
      else if (c === 3) this.style.italic = true;
      else if (c === 4) this.style.underline = true;
      else if (c === 22) this.style.bold = this.style.dim = false;
      else if (c === 23) this.style.italic = false;
      else if (c === 24) this.style.underline = false;
      else if (c >= 30 && c <= 37) this.style.fg = c - 30;
      else if (c >= 90 && c <= 97) this.style.fg = c - 90 + 8;
      else if (c === 39) this.style.fg = null;
      else if (c >= 40 && c <= 47) this.style.bg = c - 40;
      else if (c >= 100 && c <= 107) this.style.bg = c - 100 + 8;
      else if (c === 49) this.style.bg = null;
      else if (c === 38 || c === 48) {
        let colour: number | string | null = null;
        if (codes[k + 1] === 5 && k + 2 < codes.length) {
          const n = codes[k + 2];
          colour = n < 16 ? n : xterm256(n);
          k += 2;
        } else if (codes[k + 1] === 2 && k + 4 < codes.length) {
          colour = `rgb(${codes[k + 2]}, ${codes[k + 3]}, ${codes[k + 4]})`;
          k += 4;
        } else {
          break;
        }
        if (c === 38) this.style.fg = colour;
        else this.style.bg = colour;
      }
    }
  }
}
