// Bundle src/main.ts into dist/app.js and copy the static page next to it.
import { build } from 'esbuild';
import { copyFile, mkdir, rm } from 'node:fs/promises';

const outdir = 'dist';
await rm(outdir, { recursive: true, force: true });
await mkdir(outdir, { recursive: true });
await build({
  entryPoints: ['src/main.ts'],
  outfile: `${outdir}/app.js`,
  bundle: true,
  format: 'iife',
  platform: 'browser',
  target: ['es2022'],
  minify: true,
  logLevel: 'info',
});
await Promise.all(['index.html', 'style.css'].map((name) => copyFile(`public/${name}`, `${outdir}/${name}`)));
