'use strict';
/**
 * The SDK against a REAL gateway, through the `ws`-backed wx shim.
 *
 * Started by tests/integration/test_sdk.py, which runs Kamailio, an mpb2bua gateway and the sipp
 * far end each case needs, then `node --test --test-name-pattern=<case> test/gateway.test.js`.
 * Skipped when MPB2BUA_WS_URL is not set (plain `npm test`). Environment:
 *   MPB2BUA_WS_URL       ws://127.0.0.1:PORT/ws of the gateway
 *   MPB2BUA_USER / MPB2BUA_PASSWORD   the SIP user to log in as (1000 / 1234)
 *   MPB2BUA_SIPP_USER    the sipp far end's user (1500)
 *   MPB2BUA_SIPP_DTMF    the digit uas_expect_info_dtmf.xml expects (5)
 *   MPB2BUA_SIGNAL_DIR   where a case writes NAME.ready when the Python side must act
 *                        (start the sipp caller of the inbound case)
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { Mpb2buaClient, Mpb2buaError } = require('../mpb2bua.js');
const { createWx } = require('./wx-shim.js');

const URL = process.env.MPB2BUA_WS_URL;
const USER = process.env.MPB2BUA_USER || '1000';
const PASSWORD = process.env.MPB2BUA_PASSWORD || '1234';
const FAR = process.env.MPB2BUA_SIPP_USER || '1500';
const DIGIT = process.env.MPB2BUA_SIPP_DTMF || '5';
const skip = URL ? false : 'MPB2BUA_WS_URL is not set (run through tests/integration/test_sdk.py)';

/** Records every event of a client so a test can wait for the next one of a name. */
function recorder(client) {
  const queue = [];
  const waiters = [];
  client.on('*', (name, payload) => {
    const i = waiters.findIndex((w) => w.name === name);
    if (i >= 0) {
      const [w] = waiters.splice(i, 1);
      clearTimeout(w.timer);
      w.resolve(payload);
    } else {
      queue.push([name, payload]);
    }
  });
  return {
    next(name, timeout = 15000) {
      const i = queue.findIndex(([n]) => n === name);
      if (i >= 0) return Promise.resolve(queue.splice(i, 1)[0][1]);
      return new Promise((resolve, reject) => {
        const w = { name, resolve };
        w.timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(w), 1);
          reject(new Error(`no "${name}" event within ${timeout} ms; seen: ${JSON.stringify(queue.map(([n]) => n))}`));
        }, timeout);
        waiters.push(w);
      });
    },
    seen: queue,
  };
}

const clients = [];
test.afterEach(() => {
  for (const client of clients.splice(0)) client.close(); // a failed case must not keep node alive
});

async function start(options = {}) {
  const wx = createWx();
  const client = new Mpb2buaClient(Object.assign({
    url: URL, wx, requestTimeout: 10000, pingInterval: 5000,
    reconnect: { baseDelay: 200, maxDelay: 2000, maxAttempts: 6, jitter: 0.2 },
  }, options));
  clients.push(client);
  const events = recorder(client);
  await client.connect();
  return { wx, client, events };
}

async function loggedIn(options) {
  const ctx = await start(options);
  const result = await ctx.client.login({ user: USER, password: PASSWORD });
  assert.equal(result.user, USER);
  assert.match(result.session, /^[A-Za-z0-9_-]+$/);
  assert.ok(result.expires > 0);
  const registered = await ctx.events.next('registered');
  assert.equal(registered.user, USER);
  return ctx;
}

function signal(name) {
  const dir = process.env.MPB2BUA_SIGNAL_DIR;
  if (dir) fs.writeFileSync(path.join(dir, `${name}.ready`), String(Date.now()));
}

test('login, ping and logout', { skip }, async () => {
  const { client } = await loggedIn();
  const pong = await client.ping();
  assert.ok(Math.abs(pong.pong - Date.now()) < 60000);
  assert.ok(pong.rtt >= 0);
  assert.deepEqual(await client.logout(), {});
  assert.equal(client.session, null);
  await assert.rejects(client.hangup('cNoSuchCall123'), (err) => err.reason === 'not_logged_in' && err.code === -32001);
  client.close();
});

test('wrong password is an Mpb2buaError with reason auth_failed', { skip }, async () => {
  const { client } = await start();
  await assert.rejects(client.login({ user: USER, password: 'wrong-password' }), (err) => {
    assert.ok(err instanceof Mpb2buaError);
    assert.equal(err.reason, 'auth_failed');
    assert.equal(err.code, -32002);
    assert.ok([401, 403, 407].includes(err.sipStatus), String(err.sipStatus));
    return true;
  });
  assert.equal(client.session, null);
  client.close();
});

test('outbound call answered by the far end, then hung up locally', { skip }, async () => {
  const { client, events } = await loggedIn();
  const result = await client.call(FAR);
  assert.match(result.call, /^c/);
  assert.match(result.push_url, /^rtmp:\/\//);
  assert.match(result.play_url, /^rtmp:\/\//);
  assert.notEqual(result.push_url, result.play_url);
  const ringing = await events.next('ringing');
  assert.deepEqual(ringing, { call: result.call, status: 180 });
  const answered = await events.next('answered');
  assert.equal(answered.call, result.call);
  assert.equal(answered.codec, 'PCMU');
  assert.deepEqual(await client.hangup(result.call), {});
  const hangup = await events.next('hangup');
  assert.equal(hangup.call, result.call);
  assert.equal(hangup.by, 'local');
  assert.equal(hangup.cause, 'NORMAL_CLEARING');
  client.close();
});

test('dtmf during a call goes out and is accepted', { skip }, async () => {
  const { client, events } = await loggedIn();
  const { call } = await client.call(FAR);
  await events.next('answered');
  await assert.rejects(client.dtmf(call, '12x'), (err) => err.reason === 'bad_request');
  // the far end expects SIP INFO: test_sdk.py sets the gateway's media.dtmf to "info" where it exists;
  // gateways before that setting answer {}, newer ones say how the digits went
  const sent = await client.dtmf(call, DIGIT);
  assert.ok(sent.via === undefined || sent.via === 'info', JSON.stringify(sent));
  await client.hangup(call);
  assert.equal((await events.next('hangup')).by, 'local');
  client.close();
});

test('remote hangup ends the call with a hangup event', { skip }, async () => {
  const { client, events } = await loggedIn();
  const { call } = await client.call(FAR);
  await events.next('answered');
  const hangup = await events.next('hangup');
  assert.equal(hangup.call, call);
  assert.equal(hangup.by, 'remote');
  assert.equal(hangup.cause, 'NORMAL_CLEARING');
  await assert.rejects(client.hangup(call), (err) => err.reason === 'call_not_found');
  client.close();
});

test('inbound call is announced and answered', { skip }, async () => {
  const { client, events } = await loggedIn();
  signal('inbound'); // the Python side now starts sipp uac_call.xml calling USER
  const incoming = await events.next('incoming', 20000);
  assert.equal(incoming.from, FAR);
  assert.equal(incoming.to, USER);
  assert.equal(incoming.video, false);
  assert.match(incoming.push_url, /^rtmp:\/\//);
  assert.match(incoming.play_url, /^rtmp:\/\//);
  assert.deepEqual(await client.answer(incoming), { call: incoming.call });
  await assert.rejects(client.answer(incoming), (err) => err.reason === 'bad_state');
  const answered = await events.next('answered');
  assert.equal(answered.call, incoming.call);
  const hangup = await events.next('hangup', 20000);
  assert.equal(hangup.call, incoming.call);
  assert.equal(hangup.by, 'remote');
  client.close();
});

test('a dropped socket is resumed and the call survives', { skip }, async () => {
  const { wx, client, events } = await loggedIn();
  const { call } = await client.call(FAR);
  await events.next('answered');
  const session = client.session;

  const inFlight = client.ping();
  wx.lastSocket.kill(); // the network goes away: no close handshake
  await assert.rejects(inFlight, (err) => err.reason === 'disconnected');
  const reconnecting = await events.next('reconnecting');
  assert.equal(reconnecting.attempt, 1);
  const resumed = await events.next('resumed');
  assert.equal(resumed.session, session);
  assert.equal(resumed.user, USER);
  assert.equal(resumed.state, 'registered');
  assert.equal(resumed.grace_period, 30);
  assert.equal(resumed.calls.length, 1); // the call is still up at the gateway
  assert.equal(resumed.calls[0].call, call);
  assert.equal(resumed.calls[0].state, 'active');
  assert.equal(resumed.calls[0].direction, 'outbound');
  assert.equal(client.gracePeriod, 30000, "the gateway's grace period");
  assert.equal(client.state, 'open');
  assert.equal(wx.sockets.length, 2);

  // the call is still there on the gateway: hang it up cleanly through the new socket
  assert.deepEqual(await client.hangup(call), {});
  const hangup = await events.next('hangup');
  assert.equal(hangup.call, call);
  assert.equal(hangup.by, 'local');
  assert.equal(hangup.cause, 'NORMAL_CLEARING');
  assert.ok(!events.seen.some(([n]) => n === 'disconnected'), JSON.stringify(events.seen.map(([n]) => n)));
  await client.logout();
  client.close();
});

test('an incoming call cancelled while the socket is silently dead ends on resume', { skip }, async () => {
  const { wx, client, events } = await loggedIn();
  signal('inbound'); // the Python side now starts sipp uac_cancel.xml calling USER (CANCEL after 2 s)
  const incoming = await events.next('incoming', 20000);
  const call = client.getCall(incoming.call);
  assert.equal(call.state, 'incoming');
  wx.lastSocket.blackhole(); // the network dies without a word: the gateway writes on
  const hangup = new Promise((resolve) => call.once('hangup', resolve));
  await new Promise((r) => setTimeout(r, 3000)); // the caller has cancelled meanwhile
  assert.equal(call.state, 'incoming', 'the hangup event went to the dead socket');
  wx.switchNetwork('4g'); // a new network: the SDK resumes on a new socket at once
  const resumed = await events.next('resumed', 10000);
  assert.deepEqual(resumed.calls, []);
  const end = await hangup;
  assert.deepEqual(end, { call: incoming.call, cause: 'NORMAL_UNSPECIFIED', reason: 'ended while disconnected', by: 'remote' });
  assert.equal(call.state, 'ended');
  assert.equal(client.calls.size, 0);
  await client.logout();
  client.close();
});
