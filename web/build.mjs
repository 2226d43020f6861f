// Builds the playground into dist/: app.js and app.css (TypeScript and CSS bundled and
// minified by esbuild) and index.html. The output depends only on the sources and the locked packages,
// so a fresh build reproduces the committed dist/ byte for byte (e2e/browser checks this).
//
//   node build.mjs                 # build into dist/
//   node build.mjs --out DIR       # build into DIR (the reproducibility check)
//   node build.mjs --watch         # rebuild on change (make ui-dev)
import * as esbuild from 'esbuild';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const watch = args.includes('--watch');
const outIndex = args.indexOf('--out');
const outDir = path.resolve(outIndex >= 0 ? args[outIndex + 1] : path.join(here, 'dist'));

const options = {
  absWorkingDir: here,
  entryPoints: { app: 'src/main.ts' },
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['chrome110', 'firefox115', 'safari16'],
  outdir: outDir,
  legalComments: 'none',
  charset: 'utf8',
  logLevel: 'warning',
  // Every byte the browser gets comes from this repository and the lock file.
  platform: 'browser',
};

function copyStatic() {
  fs.mkdirSync(outDir, { recursive: true });
  fs.copyFileSync(path.join(here, 'src', 'index.html'), path.join(outDir, 'index.html'));
}

if (watch) {
  const ctx = await esbuild.context({
    ...options,
    plugins: [{ name: 'static', setup: (b) => b.onEnd(copyStatic) }],
  });
  await ctx.watch();
  console.log(`watching src/, writing ${outDir}; the server embeds dist/ when it is built (cargo build)`);
} else {
  copyStatic();
  await esbuild.build(options);
}
