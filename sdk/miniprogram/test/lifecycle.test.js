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
  // no probe of the call itself: a ping tells whether the socket still delivers its events
  const ping = await ctx.task.nextFrame();
  assert.equal(ping.method, 'ping');
  await handle.restart();
  assert.deepEqual(player.calls, []);
  // the ping goes unanswered (the socket died silently): a new socket, and the resume says the
  // call is gone
  await tick(60);
  assert.equal(ctx.client.state, 'reconnecting');
  const task = await resumeOn(ctx.wx, { session: 'S1', user: '1000', state: 'registered', grace_period: 5, calls: [] });
  task.answer(await task.nextFrame(), { pong: 1 });
  await tick(1);
  assert.equal(call.state, 'ended');
  assert.equal(call.end.cause, 'NORMAL_UNSPECIFIED');
  assert.deepEqual(player.calls, ['stop']);
  assert.deepEqual(ctx.task.sent.map((f) => f.method), ['login', 'ping'], 'no answer sent to probe the call');
});

/** Two calls (cIn active, cOut calling), the socket lost, a new one opened: `resumeResult` answers the resume. */
async function dropAndResume(ctx, resumeResult) {
  ctx.task.serverClose(1006);
  await tick(20);
  const task = await resumeOn(ctx.wx, Object.assign({ session: 'S1', user: '1000', state: 'registered', grace_period: 5 }, resumeResult));
  return task;
}

test('resume `calls`: a call missing from it ends with a clear cause once the queued events are in', async () => {
  const ctx = await loggedIn();
  const call = await withCall(ctx, 'incoming'); // still ringing in: the old probe could not check it
  const events = collect(ctx.client, ['hangup', 'resumed']);
  const task = await dropAndResume(ctx, { calls: [] });
  assert.equal(events[0][0], 'resumed');
  // the gateway's queued events come before the answer to the ping the SDK sends now
  const ping = await task.nextFrame();
  assert.equal(ping.method, 'ping');
  assert.equal(call.state, 'incoming', 'not ended before the queued events had their chance');
  task.answer(ping, { pong: 1 });
  await tick(1);
  assert.equal(call.state, 'ended');
  const expected = { call: 'cIn', cause: 'NORMAL_UNSPECIFIED', reason: 'ended while disconnected', by: 'remote' };
  assert.deepEqual(call.end, expected);
  assert.deepEqual(events.slice(1), [['hangup', expected]]);
  assert.equal(ctx.client.calls.size, 0);
  assert.deepEqual(task.sent.map((f) => f.method), ['resume', 'ping'], 'no request on the ended call');
});

test('resume `calls`: a queued hangup event keeps its own cause, and is reported once', async () => {
  const ctx = await loggedIn();
  const call = await withCall(ctx);
  const events = collect(ctx.client, ['hangup']);
  const task = await dropAndResume(ctx, { calls: [] });
  const ping = await task.nextFrame();
  task.receive({ jsonrpc: '2.0', method: 'hangup', params: { call: 'cIn', cause: 'NORMAL_CLEARING', by: 'remote' } });
  task.answer(ping, { pong: 1 });
  await tick(1);
  assert.equal(call.end.cause, 'NORMAL_CLEARING');
  assert.deepEqual(events.map(([, p]) => p.cause), ['NORMAL_CLEARING']);
});

test('resume `calls`: a differing state is the gateway\'s; stale queued events do not move a call back', async () => {
  const ctx = await loggedIn();
  const inbound = await withCall(ctx, 'incoming');
  const answering = inbound.answer();
  const frame = await ctx.task.nextFrame();
  ctx.task.answer(frame, { call: 'cIn' });
  await answering;
  assert.equal(inbound.state, 'answering');
  const p = ctx.client.call('1500');
  const callFrame = await ctx.task.nextFrame();
  ctx.task.answer(callFrame, { call: 'cOut', push_url: 'rtmp://h/mp/a', play_url: 'rtmp://h/mp/b' });
  const outbound = await p;
  const states = collect(ctx.client, ['callState']);
  // `answered` (inbound) and `ringing` + `answered` (outbound) were written to the dead socket
  const task = await dropAndResume(ctx, { calls: [
    { call: 'cIn', state: 'active', direction: 'inbound' }, { call: 'cOut', state: 'active', direction: 'outbound' }] });
  assert.equal(inbound.state, 'active');
  assert.equal(outbound.state, 'active');
  assert.ok(inbound.answeredAt && outbound.answeredAt);
  // an event queued before the snapshot arrives after the result: it does not move the call back
  task.receive({ jsonrpc: '2.0', method: 'ringing', params: { call: 'cOut', status: 180 } });
  task.receive({ jsonrpc: '2.0', method: 'early_media', params: { call: 'cOut', status: 183 } });
  assert.equal(outbound.state, 'active');
  assert.deepEqual(states.map(([, e]) => [e.call.id, e.previous, e.state]), [['cIn', 'answering', 'active'], ['cOut', 'calling', 'active']]);
  assert.deepEqual(task.sent.map((f) => f.method), ['resume'], 'nothing to end: no ping barrier');
});

test('resume `calls`: a hold whose result was lost is taken from the gateway', async () => {
  const ctx = await loggedIn();
  const call = await withCall(ctx);
  const held = call.hold();
  await ctx.task.nextFrame();
  ctx.task.serverClose(1006);
  await assert.rejects(held, (err) => err.reason === 'disconnected');
  assert.equal(call.state, 'active');
  await tick(20);
  await resumeOn(ctx.wx, { session: 'S1', user: '1000', state: 'registered', grace_period: 5,
    calls: [{ call: 'cIn', state: 'held', direction: 'inbound' }] });
  assert.equal(call.state, 'held');
});

test('resume `calls`: a hangup held while reconnecting for a call that ended meanwhile resolves, nothing sent', async () => {
  const ctx = await loggedIn();
  const call = await withCall(ctx);
  ctx.task.serverClose(1006);
  const p = call.hangup();
  const task = await dropAndResume(ctx, { calls: [] });
  task.answer(await task.nextFrame(), { pong: 1 });
  assert.deepEqual(await p, {});
  assert.equal(call.end.by, 'local');
  assert.deepEqual(task.sent.map((f) => f.method), ['resume', 'ping']);
});

test('a resume result without `calls` (an older gateway) changes no call', async () => {
  const ctx = await loggedIn();
  const call = await withCall(ctx);
  await dropAndResume(ctx, { calls: undefined });
  await tick(5);
  assert.equal(call.state, 'active');
});

test('grace_period of the login result replaces the gracePeriod option; it is stored for a cold restart', async () => {
  const storage = new Map();
  const { wx, client } = makeClient({ reconnect: Object.assign({}, RECONNECT, { gracePeriod: 60000 }) }, storage);
  const p = client.connect();
  wx.last.open();
  await p;
  const q = client.login({ user: '1000', password: '1234' });
  wx.last.answer(await wx.last.nextFrame(), { session: 'S1', user: '1000', expires: 600, grace_period: 2 });
  await q;
  assert.equal(client.gracePeriod, 2000);
  assert.equal(wx.getStorageSync('mpb2bua.session').serverGrace, 2000);
  // a cold restart 2.5 s later: past the gateway's grace, though within the option's 60 s
  const saved = wx.getStorageSync('mpb2bua.session');
  saved.seenAt -= 2500;
  storage.set('mpb2bua.session', JSON.stringify(saved));
  const again = makeClient({ reconnect: Object.assign({}, RECONNECT, { gracePeriod: 60000 }) }, storage);
  assert.equal(again.client.session, null);
  // and from a resume result
  const other = makeClient({ reconnect: Object.assign({}, RECONNECT, { gracePeriod: 60000 }) });
  assert.equal(other.client.gracePeriod, 60000, 'the option until the gateway has told');
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

test('resume `calls`: a call ringing in whose incoming event was lost is announced from the resume, once', async () => {
  const ctx = await loggedIn();
  const events = collect(ctx.client, ['incoming']);
  const task = await dropAndResume(ctx, { calls: [{ call: 'cNew', state: 'incoming', direction: 'inbound',
    from: '1500', to: '1000', video: false, push_url: 'rtmp://h/mp/p2', play_url: 'rtmp://h/mp/q2' }] });
  const call = ctx.client.getCall('cNew');
  assert.ok(call, 'the call is known now');
  assert.equal(call.state, 'incoming');
  assert.equal(call.pushUrl, 'rtmp://h/mp/p2');
  assert.deepEqual(events.map(([, p]) => p.from), ['1500']);
  // the same incoming, queued while detached, arrives after the result: not a second announcement
  task.receive({ jsonrpc: '2.0', method: 'incoming', params: { call: 'cNew', from: '1500', to: '1000',
    video: false, push_url: 'rtmp://h/mp/p2', play_url: 'rtmp://h/mp/q2' } });
  await tick(1);
  assert.equal(events.length, 1);
});

test('resume `calls`: an outbound call whose call result was lost is hung up', async () => {
  const ctx = await loggedIn();
  const task = await dropAndResume(ctx, { calls: [{ call: 'cGhost', state: 'calling', direction: 'outbound',
    push_url: 'rtmp://h/mp/p3', play_url: 'rtmp://h/mp/q3' }] });
  const frame = await task.nextFrame();
  assert.equal(frame.method, 'hangup');
  assert.deepEqual(frame.params, { call: 'cGhost' });
  assert.equal(ctx.client.getCall('cGhost'), undefined);
});
