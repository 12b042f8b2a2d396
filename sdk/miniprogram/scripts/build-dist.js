#!/usr/bin/env node
// Builds miniprogram_dist/, the folder WeChat DevTools' "build npm" copies into
// miniprogram_npm/mpb2bua-miniprogram/ (package.json "miniprogram" field): the SDK as index.js
// and the <mpb2bua-call> component. A page then uses the component as
// "usingComponents": {"mpb2bua-call": "mpb2bua-miniprogram/components/mpb2bua-call/index"}
// and the SDK with require('mpb2bua-miniprogram').
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const dist = path.join(root, 'miniprogram_dist');

function build() {
  fs.rmSync(dist, { recursive: true, force: true });
  fs.mkdirSync(path.join(dist, 'components', 'mpb2bua-call'), { recursive: true });
  fs.copyFileSync(path.join(root, 'mpb2bua.js'), path.join(dist, 'index.js'));
  fs.copyFileSync(path.join(root, 'mpb2bua.d.ts'), path.join(dist, 'index.d.ts'));
  for (const ext of ['js', 'json', 'wxml', 'wxss']) {
    const file = path.join('components', 'mpb2bua-call', `index.${ext}`);
    fs.copyFileSync(path.join(root, file), path.join(dist, file));
  }
  return dist;
}

module.exports = { build };
if (require.main === module) console.log(`built ${build()}`);
