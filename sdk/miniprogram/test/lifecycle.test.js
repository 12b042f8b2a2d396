'use strict';
// Unit tests of the lifecycle layer, one session at a time, call objects and media handles
// against the scripted fake socket (no network). The same behaviours against a real gateway are
// in gateway.test.js (run by tests/integration/test_sdk_lifecycle.py).
const test = require('node:test');
const assert = require('node:assert/strict');
const { Mpb2buaClient, attachPusher, attachPlayer, CAUSE_SESSION_EXPIRED } = require('../mpb2bua.js');
const { createFakeWx, tick } = require('./fake-wx.js');

const RECONNECT = { baseDelay: 5, maxDelay: 40, jitter: 0, gracePeriod: 5000, graceSlack: 0, probeTimeout: 30 };
const clients = [];
test.afterEach(() => { for (const c of clients.splice(0)) c.close(); });

function makeClient(options = {}, storage) {
  const wx = createFakeWx(storage);
  const client = new Mpb2buaClient(Object.assign({
    url: 'wss://gw.example.com/ws', wx, requestTimeout: 200, pingInterval: 0, reconnect: RECONNECT,
  }, options));
  clients.push(client);
  return { wx, client };
}

async function loggedIn(options, storage) {
  const { wx, client } = makeClient(options, storage);
  const p = client.connect();
  wx.last.open();
  await p;
  const q = client.login({ user: '1000', password: '1234' });
  const frame = await wx.last.nextFrame();
  assert.equal(frame.method, 'login');
  wx.last.answer(frame, { session: 'S1', user: '1000', expires: 600 });
  await q;
  return { wx, client, task: wx.last };
}

async function withCall(ctx, state = 'active') {
  ctx.task.receive({ jsonrpc: '2.0', method: 'incoming', params: { call: 'cIn', from: '1500', to: '1000',
    video: false, push_url: 'rtmp://h/mp/push', play_url: 'rtmp://h/mp/play' } });
  const call = ctx.client.getCall('cIn');
  if (state === 'active') ctx.task.receive({ jsonrpc: '2.0', method: 'answered', params: { call: 'cIn', codec: 'PCMU' } });
  return call;
}

/** Answer the resume the client sends on its newest socket. */
async function resumeOn(wx, result = { session: 'S1', user: '1000', state: 'registered' }) {
  const task = wx.last;
  task.open();
  const frame = await task.nextFrame();
  assert.equal(frame.method, 'resume');
  assert.deepEqual(frame.params, { session: 'S1' });
  if (result instanceof Error) task.fail(frame, -32011, 'session_not_found');
  else task.answer(frame, result);
  await tick(1);
  return task;
}

function collect(client, names) {
  const seen = [];
  for (const name of names) client.on(name, (p) => seen.push([name, p]));
  return seen;
}

function fakeCtx() {
  const calls = [];
  const ctx = {};
  for (const name of ['start', 'stop', 'play']) ctx[name] = ({ success }) => { calls.push(name); success({}); };
  return { ctx, calls };
}

test('connectSocket gets a timeout shorter than the grace period', async () => {
  const { wx, client } = makeClient({ connectTimeout: 7000 });
  client.connect();
  assert.equal(wx.last.options.timeout, 7000);
});

test('the session is stored with the last contact; a cold restart resumes it before any login', async () => {
  const storage = new Map();
  const a = await loggedIn({}, storage);
  await withCall(a);
  const saved = a.wx.getStorageSync('mpb2bua.session');
  assert.equal(saved.session, 'S1');
  assert.equal(saved.calls[0].id, 'cIn');
  assert.equal(saved.calls[0].state, 'active');
  // the mini-program is killed (no close, no logout) and started again
  const { wx, client } = makeClient({}, storage);
  assert.equal(client.session, 'S1');
  assert.equal(client.getCall('cIn').state, 'active');
  const connected = client.connect();
  const task = wx.last;
  task.open();
  const frame = await task.nextFrame();
  assert.equal(frame.method, 'resume', 'resume comes before any login');
  task.answer(frame, { session: 'S1', user: '1000', state: 'registered' });
  assert.deepEqual(await connected, { resumed: true, session: 'S1', user: '1000', state: 'registered' });
  // login() with the same user keeps the resumed session: no second session on the gateway
  assert.deepEqual(await client.login({ user: '1000', password: '1234' }), { session: 'S1', user: '1000', resumed: true });
  assert.equal(task.sent.length, 1);
});

test('a stored session past the grace period is dropped', () => {
  const storage = new Map();
  storage.set('mpb2bua.session', JSON.stringify({ url: 'wss://gw.example.com/ws', session: 'S1', user: '1000',
    seenAt: Date.now() - 6000, calls: [] }));
  const { client, wx } = makeClient({}, storage);
  assert.equal(client.session, null);
  assert.equal(wx.getStorageSync('mpb2bua.session'), '');
});

test('connect() during a reconnection joins it instead of opening a socket of its own', async () => {
  const { wx, client, task } = await loggedIn({ reconnect: Object.assign({}, RECONNECT, { baseDelay: 1000, maxDelay: 1000 }) });
  task.serverClose(1006);
  assert.equal(client.state, 'reconnecting');
  const p = client.connect(); // tries at once rather than after the 1 s backoff
  assert.equal(wx.tasks.length, 2);
  await resumeOn(wx);
  assert.equal((await p).resumed, true);
  assert.equal(wx.tasks.length, 2);
});

test('offline pauses the backoff; the network coming back reconnects at once', async () => {
  const { wx, client, task } = await loggedIn();
  wx.fire('NetworkStatusChange', { isConnected: false, networkType: 'none' });
  task.serverClose(1006);
  await tick(100);
  assert.equal(wx.tasks.length, 1, 'no attempt while offline');
  assert.equal(client.state, 'reconnecting');
  const events = collect(client, ['resumed', 'networkChanged']);
  wx.fire('NetworkStatusChange', { isConnected: true, networkType: '4g' });
  assert.equal(wx.tasks.length, 2, 'an attempt at once');
  await resumeOn(wx);
  assert.deepEqual(events.map(([n]) => n), ['networkChanged', 'resumed']);
});

test('a network switch while open drops the old socket and resumes on a new one at once', async () => {
  const { wx, client, task } = await loggedIn();
  wx.fire('NetworkStatusChange', { isConnected: true, networkType: 'wifi' });
  assert.equal(wx.tasks.length, 1, 'first report: nothing changed');
  wx.fire('NetworkStatusChange', { isConnected: true, networkType: '4g' });
  assert.ok(task.closed, 'the socket bound to the old network is closed');
  assert.equal(wx.tasks.length, 2);
  await resumeOn(wx);
  assert.equal(client.state, 'open');
});

test('app show pings at once; a dead socket is then replaced within probeTimeout', async () => {
  const { wx, client, task } = await loggedIn();
  wx.fire('AppHide');
  wx.fire('AppShow');
  const ping = await task.nextFrame();
  assert.equal(ping.method, 'ping'); // left unanswered: the socket died in the background
  await tick(60);
  assert.ok(wx.tasks.length >= 2);
  await resumeOn(wx);
  assert.equal(client.state, 'open');
});

test('hangup while reconnecting is held, the call is not ended locally, and it is sent after resume', async () => {
  const ctx = await loggedIn();
  const call = await withCall(ctx);
  const ended = collect(ctx.client, ['hangup']);
  ctx.wx.fire('NetworkStatusChange', { isConnected: false, networkType: 'none' });
  ctx.task.serverClose(1006);
  let done = false;
  const p = call.hangup().then((r) => { done = true; return r; });
  await tick(20);
  assert.equal(done, false);
  assert.equal(call.state, 'active', 'the SIP call is still up');
  assert.deepEqual(call.ending, { method: 'hangup' });
  assert.deepEqual(ended, []);
  ctx.wx.fire('NetworkStatusChange', { isConnected: true, networkType: 'wifi' });
  const task = await resumeOn(ctx.wx);
  await tick(1);
  const frame = await task.nextFrame();
  assert.deepEqual([frame.method, frame.params], ['hangup', { call: 'cIn' }]);
  task.receive({ jsonrpc: '2.0', method: 'hangup', params: { call: 'cIn', cause: 'NORMAL_CLEARING', by: 'local', reason: 'bye' } });
  task.answer(frame, {});
  assert.deepEqual(await p, {});
  assert.equal(call.state, 'ended');
  assert.equal(ended.length, 1);
});

test('resume refused after the grace period ends the calls with SESSION_EXPIRED', async () => {
  const ctx = await loggedIn();
  const call = await withCall(ctx);
  const events = collect(ctx.client, ['hangup', 'disconnected']);
  ctx.task.serverClose(1006);
  await tick(10);
  await resumeOn(ctx.wx, new Error('gone'));
  assert.equal(call.state, 'ended');
  assert.equal(call.end.cause, CAUSE_SESSION_EXPIRED);
  assert.deepEqual(events.map(([n, p]) => [n, p.cause || p.reason]), [['hangup', CAUSE_SESSION_EXPIRED], ['disconnected', 'session_not_found']]);
  assert.equal(ctx.wx.getStorageSync('mpb2bua.session'), '');
});

test('an audio interruption holds active calls and unholds them after; media restarts after 5001', async () => {
  const ctx = await loggedIn();
  const call = await withCall(ctx);
  const pusher = fakeCtx();
  const handle = call.attachPusher(pusher.ctx);
  const events = collect(ctx.client, ['mediaInterrupted', 'mediaResumed']);
  ctx.wx.fire('AudioInterruptionBegin');
  handle.statechange(5001);
  const hold = await ctx.task.nextFrame();
  assert.deepEqual([hold.method, hold.params], ['hold', { call: 'cIn' }]);
  ctx.task.answer(hold, { call: 'cIn', held: true });
  await tick(1);
  assert.equal(call.state, 'held');
  assert.deepEqual(pusher.calls, [], '5001 alone does not restart (the microphone is taken)');
  ctx.wx.fire('AudioInterruptionEnd');
  const unhold = await ctx.task.nextFrame();
  assert.deepEqual([unhold.method, unhold.params], ['unhold', { call: 'cIn' }]);
  ctx.task.answer(unhold, { call: 'cIn', held: false });
  await tick(1);
  assert.equal(call.state, 'active');
  assert.deepEqual(pusher.calls, ['stop', 'start']);
  assert.deepEqual(events.map(([n, p]) => [n, p.reason, p.calls]), [
    ['mediaInterrupted', 'audio_interruption', ['cIn']], ['mediaResumed', 'audio_interruption', ['cIn']]]);
});

test('back from the background: pusher and player restarted, keep-screen-on applied again', async () => {
  const ctx = await loggedIn();
  const call = await withCall(ctx);
  const pusher = fakeCtx();
  const player = fakeCtx();
  const ph = call.attachPusher(pusher.ctx);
  call.attachPlayer(player.ctx);
  assert.deepEqual(ctx.wx.screenOn, [true]);
  ctx.wx.fire('AppHide');
  ph.statechange(5000);
  ctx.wx.fire('AppShow');
  await tick(1);
  assert.deepEqual(pusher.calls, ['stop', 'start']);
  assert.deepEqual(player.calls, ['stop', 'play']);
  assert.deepEqual(ctx.wx.screenOn, [true, true]);
});

test('3004 is final: no restart, and the connection is checked at once', async () => {
  const ctx = await loggedIn();
  const call = await withCall(ctx);
  const player = fakeCtx();
  const handle = call.attachPlayer(player.ctx);
  handle.statechange(2004);
  assert.equal(handle.statechange(3004), 'ended');
  assert.equal(handle.statechange(-2301), 'ended');
  // is the call still there? `answer` on an answered call is bad_state, on an ended one call_not_found
  const verify = await ctx.task.nextFrame();
  assert.deepEqual([verify.method, verify.params], ['answer', { call: 'cIn' }]);
  const ping = await ctx.task.nextFrame();
  assert.equal(ping.method, 'ping');
  await handle.restart();
  assert.deepEqual(player.calls, []);
  ctx.task.fail(verify, -32014, 'call_not_found');
  await tick(1);
  assert.equal(call.state, 'ended');
  assert.deepEqual(player.calls, ['stop']);
});

test('call objects follow the states of protocol.md 7.2 and the quality indicator', async () => {
  const ctx = await loggedIn();
  const p = ctx.client.call('1500');
  const frame = await ctx.task.nextFrame();
  ctx.task.answer(frame, { call: 'cOut', push_url: 'rtmp://h/mp/a', play_url: 'rtmp://h/mp/b' });
  const call = await p;
  const states = [];
  call.on('state', (e) => states.push(e.state));
  const quality = [];
  call.on('quality', (e) => quality.push(e.level));
  for (const [method, params] of [['ringing', { status: 180 }], ['early_media', { status: 183, codec: 'PCMA' }], ['answered', { codec: 'PCMA' }]]) {
    ctx.task.receive({ jsonrpc: '2.0', method, params: Object.assign({ call: 'cOut' }, params) });
  }
  const player = call.attachPlayer(fakeCtx().ctx);
  player.statechange(2004);
  player.netstatus({ detail: { info: { netJitter: 200, audioBitrate: 30 } } });
  player.netstatus({ detail: { info: { netJitter: 10, audioBitrate: 30 } } });
  ctx.task.receive({ jsonrpc: '2.0', method: 'media', params: { call: 'cOut', stream: 'publisher', state: 'gone', reason: 'disconnected' } });
  ctx.task.receive({ jsonrpc: '2.0', method: 'hangup', params: { call: 'cOut', cause: 'NORMAL_CLEARING', by: 'remote' } });
  assert.deepEqual(states, ['ringing', 'early', 'active', 'ended']);
  assert.deepEqual(quality, ['good', 'poor', 'good', 'lost']);
  assert.equal(call.codec, 'PCMA');
  assert.equal(ctx.client.getCall('cOut'), undefined);
  assert.equal(player.state, 'stopped', 'media handles stop with the call');
});

test('media helpers take rtmp:// only (the tags document no rtmps)', () => {
  assert.throws(() => attachPusher({}, 'rtmps://h/mp/a'), (err) => err.reason === 'bad_argument');
  assert.throws(() => attachPlayer({}, 'rtmps://h/mp/a'), (err) => err.reason === 'bad_argument');
});

test('close() unbinds the lifecycle listeners', async () => {
  const { wx, client } = await loggedIn();
  assert.equal(wx.listenerCount('AppShow'), 1);
  client.close();
  assert.equal(wx.listenerCount('AppShow'), 0);
});
