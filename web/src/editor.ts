// The code editor of a cell: CodeMirror 6 with line numbers, highlighting per language and
// the notebook's keys (Shift+Enter runs and moves on, Ctrl+Enter runs in place). Tab is left
// to move focus, so the page stays usable with the keyboard alone.

import { defaultKeymap, history, historyKeymap } from '@codemirror/commands';
import { cpp } from '@codemirror/lang-cpp';
import { go } from '@codemirror/lang-go';
import { java } from '@codemirror/lang-java';
import { javascript } from '@codemirror/lang-javascript';
import { python } from '@codemirror/lang-python';
import { rust } from '@codemirror/lang-rust';
import {
  bracketMatching,
  HighlightStyle,
  indentOnInput,
  StreamLanguage,
  syntaxHighlighting,
} from '@codemirror/language';
import { clike } from '@codemirror/legacy-modes/mode/clike';
import { d } from '@codemirror/legacy-modes/mode/d';
import { fortran } from '@codemirror/legacy-modes/mode/fortran';
import { r } from '@codemirror/legacy-modes/mode/r';
import { shell } from '@codemirror/legacy-modes/mode/shell';
import { Compartment, EditorState, type Extension } from '@codemirror/state';
import {
  drawSelection,
  EditorView,
  highlightActiveLine,
  highlightActiveLineGutter,
  keymap,
  lineNumbers,
} from '@codemirror/view';
import { tags as t } from '@lezer/highlight';

/** Token colours come from CSS variables, so light and dark follow the system. */
const highlight = HighlightStyle.define([
  { tag: [t.keyword, t.controlKeyword, t.moduleKeyword, t.operatorKeyword], color: 'var(--tok-keyword)' },
  { tag: [t.string, t.special(t.string), t.regexp], color: 'var(--tok-string)' },
  { tag: [t.number, t.bool, t.null, t.atom], color: 'var(--tok-number)' },
  { tag: [t.comment, t.lineComment, t.blockComment], color: 'var(--tok-comment)', fontStyle: 'italic' },
  { tag: [t.function(t.variableName), t.function(t.propertyName)], color: 'var(--tok-function)' },
  { tag: [t.definition(t.variableName), t.className, t.typeName], color: 'var(--tok-definition)' },
  { tag: [t.meta, t.processingInstruction, t.annotation], color: 'var(--tok-meta)' },
  { tag: t.invalid, color: 'var(--tok-invalid)' },
]);

const words = (list: string) => Object.fromEntries(list.split(' ').map((w) => [w, true]));

/** PHP as the C-like tokenizer sees it, plus `$variables` and `#` comments (no npm
 * package of the lock file has a PHP mode short of a full HTML-embedding grammar). */
const php = clike({
  name: 'php',
  keywords: words(
    'abstract and as break case catch class clone const continue declare default do echo else elseif ' +
      'enddeclare endfor endforeach endif endswitch endwhile enum extends final finally fn for foreach ' +
      'function global goto if implements include include_once instanceof insteadof interface match ' +
      'namespace new or print private protected public readonly require require_once return static ' +
      'switch throw trait try use var while xor yield',
  ),
  types: words('array bool callable float int iterable mixed never object self string void'),
  atoms: words('true false null TRUE FALSE NULL __CLASS__ __DIR__ __FILE__ __FUNCTION__ __LINE__'),
  builtin: words('isset unset empty list die exit eval array_map count strlen printf sprintf var_dump'),
  multiLineStrings: true,
  hooks: {
    $: (stream: { eatWhile(re: RegExp): boolean }) => {
      stream.eatWhile(/[\w$]/);
      return 'variableName.special';
    },
    '#': (stream: { skipToEnd(): void }) => {
      stream.skipToEnd();
      return 'comment';
    },
  },
});

function languageSupport(lang: string): Extension {
  switch (lang) {
    case 'python':
      return python();
    case 'bash':
    case 'sh':
      return StreamLanguage.define(shell);
    case 'javascript':
      return javascript();
    case 'typescript':
      return javascript({ typescript: true });
    case 'go':
      return go();
    case 'c':
    case 'cpp':
      return cpp();
    case 'rust':
      return rust();
    case 'java':
      return java();
    case 'd':
      return StreamLanguage.define(d);
    case 'fortran':
      return StreamLanguage.define(fortran);
    case 'r':
      return StreamLanguage.define(r);
    case 'php':
      return StreamLanguage.define(php);
    default:
      return [];
  }
}

export interface EditorHooks {
  /** Shift+Enter: run this cell, then go to the next one. */
  runAndAdvance: () => void;
  /** Ctrl+Enter (or Cmd+Enter): run this cell and stay. */
  run: () => void;
  /** The text changed. */
  changed: () => void;
}

export class CodeEditor {
  readonly view: EditorView;
  private readonly language = new Compartment();

  constructor(parent: HTMLElement, doc: string, lang: string, label: string, hooks: EditorHooks) {
    const keys = keymap.of([
      { key: 'Shift-Enter', run: () => (hooks.runAndAdvance(), true) },
      { key: 'Mod-Enter', run: () => (hooks.run(), true) },
      ...defaultKeymap,
      ...historyKeymap,
    ]);
    this.view = new EditorView({
      parent,
      state: EditorState.create({
        doc,
        extensions: [
          lineNumbers(),
          highlightActiveLineGutter(),
          highlightActiveLine(),
          history(),
          drawSelection(),
          indentOnInput(),
          bracketMatching(),
          syntaxHighlighting(highlight),
          EditorState.tabSize.of(4),
          keys,
          this.language.of(languageSupport(lang)),
          EditorView.contentAttributes.of({ 'aria-label': label }),
          EditorView.updateListener.of((update) => {
            if (update.docChanged) hooks.changed();
          }),
        ],
      }),
    });
  }

  get text(): string {
    return this.view.state.doc.toString();
  }

  setLanguage(lang: string) {
    this.view.dispatch({ effects: this.language.reconfigure(languageSupport(lang)) });
  }

  focus() {
    this.view.focus();
  }
}
