'use strict';
// The package as WeChat's "build npm" sees it: the "miniprogram" folder holds the SDK and the
// component, and `npm pack` ships that folder.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { build } = require('../scripts/build-dist.js');

const root = path.join(__dirname, '..');

test('npm build finds the SDK and the call component in the miniprogram folder', () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
  assert.equal(pkg.private, undefined);
  assert.equal(pkg.miniprogram, 'miniprogram_dist');
  const dist = build();
  assert.equal(fs.readFileSync(path.join(dist, 'index.js'), 'utf8'), fs.readFileSync(path.join(root, 'mpb2bua.js'), 'utf8'));
  const component = JSON.parse(fs.readFileSync(path.join(dist, 'components/mpb2bua-call/index.json'), 'utf8'));
  assert.equal(component.component, true);
  for (const ext of ['js', 'wxml', 'wxss']) assert.ok(fs.existsSync(path.join(dist, `components/mpb2bua-call/index.${ext}`)));
  const sdk = require(path.join(dist, 'index.js'));
  assert.equal(typeof sdk.Mpb2buaClient, 'function');
});

test('npm pack ships the miniprogram folder (built by prepack)', () => {
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, encoding: 'utf8' });
  const files = JSON.parse(out)[0].files.map((f) => f.path);
  for (const f of ['miniprogram_dist/index.js', 'miniprogram_dist/components/mpb2bua-call/index.js', 'mpb2bua.js', 'mpb2bua.d.ts']) {
    assert.ok(files.includes(f), `${f} in ${files.join(', ')}`);
  }
  assert.ok(!files.some((f) => f.startsWith('test/') || f.startsWith('example/')), 'no tests or example in the package');
});
