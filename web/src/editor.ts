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
    default:
      return [];
  }
}

export interface EditorHooks {
  /** Shift+Enter: run this cell, then go to the next one. */
  runAndAdvance: () => void;
  /** Ctrl+Enter (or Cmd+Enter): run this cell and stay. */
  run: () => void;
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
