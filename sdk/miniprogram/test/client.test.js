'use strict';
// Unit tests of the SDK against a scripted fake socket (no network).
const test = require('node:test');
const assert = require('node:assert/strict');
const {
  Mpb2buaClient, Mpb2buaError, Emitter, Call, backoffDelay, pusherState, playerState, attachPusher, attachPlayer,
} = require('../mpb2bua.js');
const { createFakeWx, tick } = require('./fake-wx.js');

function makeClient(options = {}) {
  const wx = createFakeWx();
  const client = new Mpb2buaClient(Object.assign({
    url: 'wss://gw.example.com/ws', wx, requestTimeout: 200, pingInterval: 0,
    reconnect: { baseDelay: 5, maxDelay: 40, maxAttempts: 4, jitter: 0, gracePeriod: 5000 },
  }, options));
  return { wx, client };
}

async function connected(options) {
  const { wx, client } = makeClient(options);
  const p = client.connect();
  wx.last.open();
  await p;
  return { wx, client, task: wx.last };
}

async function loggedIn(options) {
  const ctx = await connected(options);
  const p = ctx.client.login({ user: '1000', password: '1234' });
  const frame = await ctx.task.nextFrame();
  ctx.task.answer(frame, { session: 'S1', user: '1000', expires: 600 });
  await p;
  return ctx;
}

function collect(client, names) {
  const seen = [];
  for (const name of names) client.on(name, (p) => seen.push([name, p]));
  return seen;
}

test('constructor validates url and wx', () => {
  assert.throws(() => new Mpb2buaClient({ url: 'http://x', wx: createFakeWx() }), Mpb2buaError);
  assert.throws(() => new Mpb2buaClient({ url: 'wss://x/ws', wx: {} }), /connectSocket/);
});

test('connect resolves on open and emits connected; a failed open rejects with connect_failed', async () => {
  const { wx, client } = makeClient();
  const events = collect(client, ['connected']);
  const p = client.connect();
  assert.equal(client.state, 'connecting');
  assert.equal(wx.last.options.url, 'wss://gw.example.com/ws');
  wx.last.open();
  await p;
  assert.equal(client.state, 'open');
  assert.deepEqual(events, [['connected', { url: 'wss://gw.example.com/ws' }]]);

  const other = makeClient();
  const q = other.client.connect();
  other.wx.last.error('connectSocket:fail');
  await assert.rejects(q, (err) => err instanceof Mpb2buaError && err.reason === 'connect_failed' && err.code === null);
  assert.equal(other.client.state, 'closed');
});

test('requests carry increasing ids and answers are matched by id, in any order', async () => {
  const { client, task } = await connected();
  const a = client.request('ping', {});
  const b = client.request('echo', { x: 1 });
  const fa = await task.nextFrame();
  const fb = await task.nextFrame();
  assert.deepEqual(fa, { jsonrpc: '2.0', id: 1, method: 'ping' });
  assert.deepEqual(fb, { jsonrpc: '2.0', id: 2, method: 'echo', params: { x: 1 } });
  task.answer(fb, { b: true });
  task.answer(fa, { pong: 42 });
  assert.deepEqual(await a, { pong: 42 });
  assert.deepEqual(await b, { b: true });
});

test('error answers become Mpb2buaError with code, reason, sipStatus and data', async () => {
  const { client, task } = await connected();
  const p = client.login({ user: '1000', password: 'bad' });
  const frame = await task.nextFrame();
  assert.deepEqual(frame.params, { user: '1000', password: 'bad' });
  task.fail(frame, -32002, 'auth_failed', { sip_status: 403 });
  await assert.rejects(p, (err) => {
    assert.ok(err instanceof Mpb2buaError && err instanceof Error);
    assert.equal(err.code, -32002);
    assert.equal(err.reason, 'auth_failed');
    assert.equal(err.sipStatus, 403);
    assert.deepEqual(err.data, { reason: 'auth_failed', sip_status: 403 });
    return true;
  });
  assert.equal(client.session, null);
});

test('an unanswered request times out with reason timeout; a late answer is ignored', async () => {
  const { client, task } = await connected({ requestTimeout: 30 });
  const p = client.request('hangup', { call: 'cX' });
  const frame = await task.nextFrame();
  await assert.rejects(p, (err) => err.reason === 'timeout' && err.code === null);
  task.answer(frame, {}); // must not throw
  assert.equal(client._pending.size, 0);
});

test('a failed send rejects with send_failed; requests without a socket reject with not_connected', async () => {
  const { client } = makeClient();
  await assert.rejects(client.ping(), (err) => err.reason === 'not_connected');
  const c = await connected();
  c.task.failSends = true;
  await assert.rejects(c.client.ping(), (err) => err.reason === 'send_failed');
});

test('login variants send exactly the documented params and keep the session', async () => {
  const { client, task } = await connected();
  const p = client.login({ token: 'tok' });
  const frame = await task.nextFrame();
  assert.deepEqual(frame.params, { token: 'tok' });
  task.answer(frame, { session: 'S9', user: '1001', expires: 300 });
  assert.deepEqual(await p, { session: 'S9', user: '1001', expires: 300 });
  assert.equal(client.session, 'S9');
  assert.equal(client.user, '1001');
  const q = client.logout();
  const f2 = await task.nextFrame();
  assert.equal(f2.method, 'logout');
  task.answer(f2, {});
  await q;
  assert.equal(client.session, null);
  const r = client.login({ user: '1000', ha1: 'a'.repeat(32) });
  assert.deepEqual((await task.nextFrame()).params, { user: '1000', ha1: 'a'.repeat(32) });
  client.close();
  await assert.rejects(r, (err) => err.reason === 'closed');
});

test('call-control methods map to the protocol methods and params', async () => {
  const { client, task } = await connected();
  const cases = [
    [() => client.call('1500'), 'call', { to: '1500' }],
    [() => client.call('1500', { video: true, headers: { 'X-Ticket': '1' } }), 'call',
      { to: '1500', video: true, headers: { 'X-Ticket': '1' } }],
    [() => client.answer({ call: 'cA', from: '1500' }), 'answer', { call: 'cA' }],
    [() => client.reject('cA', 603), 'reject', { call: 'cA', status: 603 }],
    [() => client.reject('cA'), 'reject', { call: 'cA' }],
    [() => client.hangup('cA'), 'hangup', { call: 'cA' }],
    [() => client.dtmf('cA', 123), 'dtmf', { call: 'cA', digits: '123' }],
    [() => client.dtmf('cA', '#', { mode: 'info' }), 'dtmf', { call: 'cA', digits: '#', mode: 'info' }],
    [() => client.hold('cA'), 'hold', { call: 'cA' }],
    [() => client.unhold('cA'), 'unhold', { call: 'cA' }],
    [() => client.transfer('cA', '9196'), 'transfer', { call: 'cA', to: '9196' }],
    [() => client.sendInfo('cA', 'application/json', { a: 1 }), 'send_info',
      { call: 'cA', content_type: 'application/json', body: { a: 1 } }],
    [() => client.message('1500', 'text/plain', 'hi'), 'message', { to: '1500', content_type: 'text/plain', body: 'hi' }],
  ];
  for (const [fn, method, params] of cases) {
    const p = fn();
    const frame = await task.nextFrame();
    assert.equal(frame.method, method);
    assert.deepEqual(frame.params, params);
    if (method === 'call') {
      task.answer(frame, { call: 'cOut', push_url: 'rtmp://h/mp/p', play_url: 'rtmp://h/mp/q' });
      const call = await p;
      assert.ok(call instanceof Call);
      assert.deepEqual([call.call, call.push_url, call.play_url, call.state], ['cOut', 'rtmp://h/mp/p', 'rtmp://h/mp/q', 'calling']);
      continue;
    }
    task.answer(frame, { ok: method });
    assert.deepEqual(await p, { ok: method });
  }
  assert.throws(() => client.hangup(42), (err) => err.reason === 'bad_argument');
});

test('events are emitted with their params; unknown events too; * sees everything', async () => {
  const { client, task } = await connected();
  const all = [];
  client.on('*', (name, payload) => all.push(name));
  const got = [];
  client.on('incoming', (p) => got.push(p));
  task.receive({ jsonrpc: '2.0', method: 'incoming', params: { call: 'c1', from: '1500' } });
  task.receive({ jsonrpc: '2.0', method: 'brand_new_event', params: { x: 1 } });
  task.receive('not json');
  assert.deepEqual(got, [{ call: 'c1', from: '1500' }]);
  assert.deepEqual(all, ['call', 'incoming', 'brand_new_event', 'error']);
  assert.equal(client.getCall('c1').state, 'incoming');
});

test('emitter: on returns an unsubscribe, once fires once, off removes, a throwing listener is isolated', () => {
  const e = new Emitter();
  const seen = [];
  const un = e.on('x', (v) => seen.push(['on', v]));
  const fn = (v) => seen.push(['once', v]);
  e.once('x', fn);
  const orig = console.error;
  console.error = () => {};
  e.on('x', () => { throw new Error('listener bug'); });
  e.emit('x', 1);
  e.emit('x', 2);
  un();
  e.emit('x', 3);
  e.once('y', fn);
  e.off('y', fn);
  assert.equal(e.emit('y', 4), false);
  console.error = orig;
  assert.deepEqual(seen, [['on', 1], ['once', 1], ['on', 2]]);
});

test('backoffDelay doubles from baseDelay up to maxDelay and jitter only shortens it', () => {
  const o = { baseDelay: 500, maxDelay: 8000, jitter: 0 };
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7].map((n) => backoffDelay(n, o)), [500, 1000, 2000, 4000, 8000, 8000, 8000]);
  const j = { baseDelay: 1000, maxDelay: 8000, jitter: 0.5 };
  assert.equal(backoffDelay(1, j, () => 0), 1000);
  assert.equal(backoffDelay(1, j, () => 0.999999), 500);
  for (let i = 0; i < 100; i++) {
    const d = backoffDelay(3, j);
    assert.ok(d >= 2000 && d <= 4000, String(d));
  }
});

test('a lost socket rejects what was in flight, reconnects with backoff and resumes; nothing is re-sent', async () => {
  const { wx, client, task } = await loggedIn();
  const events = collect(client, ['reconnecting', 'resumed', 'disconnected']);
  const inFlight = client.hangup('cA');
  await task.nextFrame();
  task.serverClose(1006);
  await assert.rejects(inFlight, (err) => err.reason === 'disconnected');
  assert.equal(client.state, 'reconnecting');
  await assert.rejects(client.ping(), (err) => err.reason === 'not_connected');
  assert.deepEqual(events, [['reconnecting', { attempt: 1, delay: 5, reason: 'socket closed (1006)' }]]);
  await tick(20);
  assert.equal(wx.tasks.length, 2);
  const second = wx.last;
  second.open();
  await assert.rejects(client.ping(), (err) => err.reason === 'not_connected'); // only resume until resumed
  const resume = await second.nextFrame();
  assert.deepEqual(resume.params, { session: 'S1' });
  assert.equal(resume.method, 'resume');
  second.answer(resume, { session: 'S1', user: '1000', state: 'registered' });
  await tick(1);
  assert.deepEqual(events[1], ['resumed', { session: 'S1', user: '1000', state: 'registered' }]);
  assert.equal(client.state, 'open');
  assert.deepEqual(second.sent.map((f) => f.method), ['resume']);
  // events queued by the gateway during the drop arrive after the result
  const hung = [];
  client.on('hangup', (p) => hung.push(p));
  second.receive({ jsonrpc: '2.0', method: 'hangup', params: { call: 'cA', by: 'remote' } });
  assert.equal(hung.length, 1);
  // a late close of the old socket changes nothing
  task.serverClose(1006);
  assert.equal(client.state, 'open');
});

test('failed reconnection attempts back off exponentially and do not give up before the grace period', async () => {
  // maxAttempts used to end the session after 4 tries (~75 ms here) while the gateway kept it
  const { wx, client, task } = await loggedIn();
  const events = collect(client, ['reconnecting', 'disconnected']);
  wx.onConnect = (t) => setTimeout(() => t.error('connectSocket:fail'), 0);
  task.serverClose(1006);
  await tick(300);
  assert.deepEqual(events.slice(0, 5).map(([, p]) => p.delay), [5, 10, 20, 40, 40]);
  assert.ok(!events.some(([n]) => n === 'disconnected'), JSON.stringify(events));
  assert.equal(client.state, 'reconnecting');
  assert.equal(client.session, 'S1');
  client.close();
});

test('reconnection stops at the grace period', async () => {
  const { wx, client, task } = await loggedIn({
    reconnect: { baseDelay: 20, maxDelay: 20, maxAttempts: 100, jitter: 0, gracePeriod: 50, graceSlack: 0 },
  });
  const events = collect(client, ['reconnecting', 'disconnected']);
  wx.onConnect = (t) => setTimeout(() => t.serverClose(1006), 0);
  task.serverClose(1006);
  await tick(150);
  const last = events[events.length - 1];
  assert.deepEqual(last, ['disconnected', { reason: 'grace_expired' }]);
  assert.ok(events.length >= 2 && events.length <= 4, JSON.stringify(events));
});

test('resume refused with session_not_found ends in disconnected', async () => {
  const { wx, client, task } = await loggedIn();
  const events = collect(client, ['disconnected']);
  task.serverClose(1006);
  await tick(20);
  wx.last.open();
  const frame = await wx.last.nextFrame();
  wx.last.fail(frame, -32011, 'session_not_found');
  await tick(1);
  assert.equal(events.length, 1);
  assert.equal(events[0][1].reason, 'session_not_found');
  assert.equal(events[0][1].error.reason, 'session_not_found');
  // the socket stays open for a new login; the session is forgotten
  assert.equal(client.state, 'open');
  assert.equal(client.session, null);
  assert.equal(wx.last.closed, null);
});

test('resume rate-limited waits retry_after and tries again', async () => {
  const { wx, client, task } = await loggedIn();
  const events = collect(client, ['reconnecting', 'resumed']);
  task.serverClose(1006);
  await tick(20);
  wx.last.open();
  wx.last.fail(await wx.last.nextFrame(), -32006, 'rate_limited', { retry_after: 0.03 });
  await tick(1);
  assert.deepEqual(events[1], ['reconnecting', { attempt: 2, delay: 30, reason: 'resume failed: rate_limited' }]);
  await tick(50);
  wx.last.open();
  wx.last.answer(await wx.last.nextFrame(), { session: 'S1', user: '1000', state: 'registered' });
  await tick(1);
  assert.equal(events[2][0], 'resumed');
});

test('close 4001 (replaced) and 1001 (shutdown) end the connection without reconnecting', async () => {
  for (const [code, reason] of [[4001, 'replaced'], [1001, 'shutdown']]) {
    const { wx, client, task } = await loggedIn();
    const events = collect(client, ['reconnecting', 'disconnected']);
    task.serverClose(code, reason);
    await tick(20);
    assert.deepEqual(events, [['disconnected', { reason }]]);
    assert.equal(wx.tasks.length, 1);
  }
});

test('a socket lost before login or after the session ended is just disconnected', async () => {
  const a = await connected();
  const ea = collect(a.client, ['disconnected', 'reconnecting']);
  a.task.serverClose(1006);
  assert.deepEqual(ea, [['disconnected', { reason: 'socket_closed' }]]);

  const b = await loggedIn();
  b.task.receive({ jsonrpc: '2.0', method: 'registration_failed',
    params: { user: '1000', reason: 'auth_failed', retrying: false } });
  assert.equal(b.client.session, null);
  const eb = collect(b.client, ['disconnected', 'reconnecting']);
  b.task.serverClose(1006);
  assert.deepEqual(eb, [['disconnected', { reason: 'socket_closed' }]]);
});

test('keep-alive pings; an unanswered ping counts as a lost socket', async () => {
  const { wx, client, task } = await loggedIn({ pingInterval: 20, requestTimeout: 15 });
  const events = collect(client, ['reconnecting']);
  const ping = await task.nextFrame();
  assert.equal(ping.method, 'ping');
  task.answer(ping, { pong: Date.now() });
  await tick(5);
  assert.ok(client.lastRtt !== null);
  await task.nextFrame(); // the next ping: left unanswered
  await tick(30);
  assert.equal(events.length >= 1, true);
  assert.equal(events[0][1].attempt, 1);
  assert.ok(task.closed, 'the dead socket was closed');
  client.close();
  assert.equal(wx.tasks.length >= 1, true);
});

test('close() rejects pending requests with closed and emits disconnected once', async () => {
  const { client, task } = await loggedIn();
  const events = collect(client, ['disconnected']);
  const p = client.ping();
  await task.nextFrame();
  client.close();
  client.close();
  await assert.rejects(p, (err) => err.reason === 'closed');
  assert.deepEqual(events, [['disconnected', { reason: 'closed' }]]);
  assert.deepEqual(task.closed, { code: 1000, reason: 'bye' });
  await assert.rejects(client.ping(), (err) => err.reason === 'closed');
});

test('pusherState and playerState map the documented statechange codes', () => {
  assert.equal(pusherState(1001), 'connecting');
  assert.equal(pusherState(1002), 'publishing');
  assert.equal(pusherState(1102), 'reconnecting');
  assert.equal(pusherState(3004), 'ended');
  assert.equal(playerState(3004), 'ended');
  assert.equal(pusherState(1101), 'degraded');
  assert.equal(pusherState(-1307), 'failed');
  assert.equal(pusherState(-1302), 'failed');
  assert.equal(pusherState(5000), 'stopped');
  assert.equal(pusherState(5001), 'interrupted');
  assert.equal(pusherState(1008), 'info');
  assert.equal(pusherState(12345), 'unknown');
  assert.equal(pusherState({ detail: { code: 1002 } }), 'publishing');
  assert.equal(playerState(2001), 'connecting');
  assert.equal(playerState(2004), 'playing');
  assert.equal(playerState(2007), 'buffering');
  assert.equal(playerState(2103), 'reconnecting');
  assert.equal(playerState(-2301), 'failed');
  assert.equal(playerState(2006), 'stopped');
  assert.equal(playerState({ detail: { code: '2105' } }), 'degraded');
});

function fakeCtx() {
  const calls = [];
  const ctx = {};
  for (const name of ['start', 'stop', 'play']) ctx[name] = ({ success }) => { calls.push(name); success({}); };
  return { ctx, calls };
}

test('attachPusher sets the url, starts, tracks states and restarts after -1307', async () => {
  const { ctx, calls } = fakeCtx();
  const urls = [];
  const pusher = attachPusher(ctx, 'rtmp://gw/mp/up', { setUrl: (u) => { urls.push(u); }, maxRestarts: 1 });
  await pusher.start();
  assert.deepEqual(urls, ['rtmp://gw/mp/up']);
  assert.deepEqual(calls, ['start']);
  const states = [];
  pusher.on('state', (s) => states.push(s.state));
  assert.equal(pusher.statechange({ detail: { code: 1002 } }), 'publishing');
  assert.equal(pusher.state, 'publishing');
  pusher.statechange(1008);
  assert.equal(pusher.state, 'publishing', 'info codes do not change the state');
  pusher.statechange(-1307);
  await tick(1);
  assert.deepEqual(calls, ['start', 'stop', 'start']);
  pusher.statechange(-1307);
  await tick(1);
  assert.deepEqual(calls, ['start', 'stop', 'start'], 'maxRestarts reached');
  await pusher.stop();
  assert.equal(pusher.state, 'stopped');
  assert.deepEqual(states, ['publishing', 'info', 'failed', 'failed']);
  assert.throws(() => attachPusher(ctx, 'http://nope'), (err) => err.reason === 'bad_argument');
});

test('attachPlayer plays the play_url', async () => {
  const { ctx, calls } = fakeCtx();
  const player = attachPlayer(ctx, 'rtmp://gw/mp/down');
  await player.start();
  assert.deepEqual(calls, ['play']);
  assert.equal(player.statechange(2004), 'playing');
});

test('the example app carries current copies of the SDK and the call component, and valid JSON configs', () => {
  const fs = require('node:fs');
  const path = require('node:path');
  const root = path.join(__dirname, '..');
  const example = path.join(root, 'example');
  assert.equal(fs.readFileSync(path.join(example, 'mpb2bua.js'), 'utf8'), fs.readFileSync(path.join(root, 'mpb2bua.js'), 'utf8'),
    'example/mpb2bua.js is stale: cp mpb2bua.js example/');
  for (const ext of ['js', 'wxml', 'wxss', 'json']) {
    const file = path.join('components', 'mpb2bua-call', `index.${ext}`);
    assert.equal(fs.readFileSync(path.join(example, file), 'utf8'), fs.readFileSync(path.join(root, file), 'utf8'),
      `example/${file} is stale: cp -r components example/`);
  }
  for (const f of ['app.json', 'project.config.json', 'call.json', 'sitemap.json']) JSON.parse(fs.readFileSync(path.join(example, f), 'utf8'));
  const using = JSON.parse(fs.readFileSync(path.join(example, 'call.json'), 'utf8')).usingComponents;
  for (const ref of Object.values(using)) assert.ok(fs.existsSync(path.join(example, `${ref}.js`)), ref);
  assert.ok(fs.existsSync(path.join(example, 'assets', 'ring.wav')), 'the ringtone the page names');
  const app = JSON.parse(fs.readFileSync(path.join(example, 'app.json'), 'utf8'));
  for (const page of app.pages) {
    for (const ext of ['js', 'wxml', 'wxss', 'json']) assert.ok(fs.existsSync(path.join(example, `${page}.${ext}`)), `${page}.${ext}`);
  }
});
