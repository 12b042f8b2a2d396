'use strict';
/**
 * The SDK's lifecycle layer against a REAL gateway (Kamailio + sipp far end), with the WeChat
 * stand-in of wx-shim.js. Started by tests/integration/test_sdk_lifecycle.py, one case per run
 * (`--test-name-pattern`); skipped without MPB2BUA_WS_URL. Environment as in gateway.test.js, plus
 *   MPB2BUA_GRACE_MS   the test gateway's websocket.grace_period, in ms
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { Mpb2buaClient, CAUSE_SESSION_EXPIRED } = require('../mpb2bua.js');
const { createWx } = require('./wx-shim.js');

const URL = process.env.MPB2BUA_WS_URL;
const USER = process.env.MPB2BUA_USER || '1000';
const PASSWORD = process.env.MPB2BUA_PASSWORD || '1234';
const FAR = process.env.MPB2BUA_SIPP_USER || '1500';
const GRACE = Number(process.env.MPB2BUA_GRACE_MS || 30000);
const skip = URL ? false : 'MPB2BUA_WS_URL is not set (run through tests/integration/test_sdk_lifecycle.py)';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const clients = [];
test.afterEach(() => { for (const c of clients.splice(0)) c.close(); });

/** Wait for `event` on `emitter` (optionally matching `pred`) within `timeout` ms. */
function next(emitter, event, timeout = 15000, pred = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error(`no "${event}" within ${timeout} ms`)); }, timeout);
    const off = emitter.on(event, (p) => {
      if (!pred(p)) return;
      clearTimeout(timer);
      off();
      resolve(p);
    });
  });
}

function makeClient(wx, options = {}) {
  const client = new Mpb2buaClient(Object.assign({
    url: URL, wx, timers: wx.timers, requestTimeout: 10000, pingInterval: 5000,
    reconnect: { baseDelay: 200, maxDelay: 1000, jitter: 0.2, gracePeriod: GRACE, graceSlack: 2000, probeTimeout: 1000 },
  }, options));
  clients.push(client);
  return client;
}

/** Logged in, an outbound call to the sipp far end answered, pusher and player attached. */
async function inCall(options) {
  const wx = createWx();
  const client = makeClient(wx, options);
  await client.connect();
  await client.login({ user: USER, password: PASSWORD });
  const call = await client.call(FAR);
  if (call.state !== 'active') await next(call, 'answered');
  const pusherCtx = wx.createLivePusherContext();
  const playerCtx = wx.createLivePlayerContext('far');
  const pusher = call.attachPusher(pusherCtx);
  const player = call.attachPlayer(playerCtx);
  pusherCtx.onStateChange = (e) => pusher.statechange(e);
  playerCtx.onStateChange = (e) => player.statechange(e);
  await pusher.start();
  await player.start();
  pusherCtx.statechange(1002);
  playerCtx.statechange(2004);
  return { wx, client, call, pusherCtx, playerCtx, pusher, player };
}

async function hangUpCleanly(client, call) {
  const ended = next(call, 'hangup');
  assert.deepEqual(await call.hangup(), {});
  const hangup = await ended;
  assert.equal(hangup.by, 'local');
  assert.equal(hangup.cause, 'NORMAL_CLEARING');
  await client.logout();
}

test('background for 10 s and back: the same session and call continue', { skip }, async () => {
  const { wx, client, call, pusherCtx, playerCtx } = await inCall();
  const session = client.session;
  const disconnected = [];
  client.on('disconnected', (e) => disconnected.push(e));
  const resumed = next(client, 'resumed', 25000);
  wx.background({ suspendAfter: 5000 }); // JS suspended after ~5 s, sockets cut
  await sleep(10000);
  const shownAt = Date.now();
  wx.show();
  const r = await resumed;
  assert.ok(Date.now() - shownAt < 3000, `resumed ${Date.now() - shownAt} ms after show`);
  assert.equal(r.session, session);
  assert.equal(client.session, session);
  assert.equal(call.state, 'active');
  assert.deepEqual(disconnected, []);
  // media restarted after 5000, keep-screen-on applied again
  assert.deepEqual(pusherCtx.calls.slice(-2), ['stop', 'start']);
  assert.deepEqual(playerCtx.calls.slice(-2), ['stop', 'play']);
  assert.equal(wx.screenOn[wx.screenOn.length - 1], true);
  assert.ok(wx.screenOn.length >= 2);
  await hangUpCleanly(client, call);
});

test('background past the grace period: a clear hangup reason on return', { skip }, async () => {
  const { wx, client, call } = await inCall();
  wx.background({ suspendAfter: 300 });
  await sleep(GRACE + 3000);
  const ended = next(call, 'hangup', 10000);
  const gone = next(client, 'disconnected', 10000);
  wx.show();
  const hangup = await ended;
  assert.equal(hangup.cause, CAUSE_SESSION_EXPIRED);
  assert.equal(call.state, 'ended');
  assert.equal((await gone).reason, 'session_not_found');
  assert.equal(client.session, null);
  assert.equal(wx.getStorageSync('mpb2bua.session'), '');
  // the socket is open again: a new login works
  await client.login({ user: USER, password: PASSWORD });
  await client.logout();
});

test('network switch: resumed within 2 s of the new network', { skip }, async () => {
  const { wx, client, call } = await inCall();
  const session = client.session;
  const resumed = next(client, 'resumed', 5000);
  const switchedAt = Date.now();
  wx.switchNetwork('4g');
  const r = await resumed;
  const took = Date.now() - switchedAt;
  assert.ok(took < 2000, `resumed after ${took} ms`);
  assert.equal(r.session, session);
  assert.equal(call.state, 'active');
  await hangUpCleanly(client, call);
});

test('audio interruption: the call is held, then unheld', { skip }, async () => {
  const { wx, client, call, pusherCtx } = await inCall();
  const interrupted = next(client, 'mediaInterrupted');
  const held = next(call, 'state', 10000, (e) => e.state === 'held');
  wx.interrupt();
  assert.deepEqual((await interrupted).calls, [call.id]);
  await held;
  const resumed = next(client, 'mediaResumed');
  const active = next(call, 'state', 10000, (e) => e.state === 'active');
  wx.endInterruption();
  await active;
  assert.equal((await resumed).reason, 'audio_interruption');
  assert.deepEqual(pusherCtx.calls.slice(-2), ['stop', 'start']);
  await hangUpCleanly(client, call);
});

test('3004 from the player: the call ends and nothing retries', { skip }, async () => {
  // the far end hangs up after 1.5 s while the signalling socket is silently dead (its hangup
  // event is lost with it); the player then gets 3004 as the gateway closes the dead stream
  const { wx, client, call, playerCtx, player } = await inCall();
  wx.lastSocket.blackhole();
  await sleep(2500);
  const ended = next(call, 'hangup', 8000);
  const before = playerCtx.calls.length;
  playerCtx.statechange(3004);
  assert.equal(player.state, 'ended');
  const hangup = await ended;
  assert.equal(call.state, 'ended');
  // the ping after 3004 fails on the dead socket; the resume result no longer lists the call
  assert.equal(hangup.reason, 'ended while disconnected', JSON.stringify(hangup));
  await sleep(1000);
  playerCtx.statechange(-2301); // even a later give-up code does not restart a dead key
  assert.deepEqual(playerCtx.calls.slice(before), ['stop'], 'stopped once with the call, never replayed');
  assert.equal(client.state, 'open');
  await client.logout();
});

test('a call that ends while the socket is silently dead is ended by the resume result', { skip }, async () => {
  // the far end hangs up after 1.5 s; its hangup event is written to the dead socket and lost
  const { wx, client, call } = await inCall();
  const session = client.session;
  wx.lastSocket.blackhole();
  await sleep(2500);
  assert.equal(call.state, 'active', 'the hangup event went to the dead socket');
  const ended = next(call, 'hangup', 8000);
  const resumed = next(client, 'resumed', 8000);
  wx.switchNetwork('4g'); // a new network: the SDK resumes at once on a new socket
  const r = await resumed;
  assert.equal(r.session, session);
  assert.deepEqual(r.calls, []);
  assert.equal(r.grace_period * 1000, GRACE);
  const hangup = await ended;
  assert.deepEqual(hangup, { call: call.id, cause: 'NORMAL_UNSPECIFIED', reason: 'ended while disconnected', by: 'remote' });
  assert.equal(call.state, 'ended');
  assert.equal(client.calls.size, 0);
  await client.logout();
});

test('hang-up while reconnecting: sent after the resume, the far end gets its BYE', { skip }, async () => {
  const { wx, client, call } = await inCall();
  wx.offline();
  await sleep(300);
  let done = false;
  const p = call.hangup().then((r) => { done = true; return r; });
  await sleep(1000);
  assert.equal(done, false);
  assert.equal(call.state, 'active', 'not ended locally: the SIP call is still up');
  assert.deepEqual(call.ending, { method: 'hangup' });
  const ended = next(call, 'hangup', 10000);
  const resumed = next(client, 'resumed', 5000);
  wx.online('wifi');
  await resumed;
  assert.deepEqual(await p, {});
  const hangup = await ended;
  assert.equal(hangup.by, 'local');
  assert.equal(hangup.cause, 'NORMAL_CLEARING');
  await client.logout();
});

test('cold restart within the grace period resumes the same session and call', { skip }, async () => {
  const first = await inCall();
  const { id } = first.call;
  const session = first.client.session;
  first.wx.destroy(); // killed by the system: no close, no logout
  await sleep(1000);
  const wx = createWx({ storage: first.wx.storage });
  const client = makeClient(wx);
  assert.equal(client.session, session);
  const result = await client.connect();
  assert.equal(result.resumed, true);
  assert.equal(result.session, session);
  const call = client.getCall(id);
  assert.ok(call, 'the call came back from storage');
  assert.equal(call.state, 'active');
  // a login() now keeps the resumed session
  assert.equal((await client.login({ user: USER, password: PASSWORD })).session, session);
  await sleep(500);
  assert.equal(call.state, 'active', 'listed by the resume result');
  await hangUpCleanly(client, call);
});
