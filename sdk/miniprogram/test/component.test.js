'use strict';
// Unit tests of the <mpb2bua-call> component (components/mpb2bua-call) with miniprogram-simulate
// (WeChat's custom-component test tool) on jsdom, against a fake SDK client whose Call objects
// record what the component asks of them.
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { JSDOM } = require('jsdom');

const dom = new JSDOM('<!doctype html><html><body></body></html>', { pretendToBeVisual: true });
for (const k of ['window', 'document', 'navigator', 'HTMLElement', 'Node', 'Event', 'CustomEvent', 'getComputedStyle', 'requestAnimationFrame']) {
  global[k] = k === 'window' ? dom.window : dom.window[k];
}
const simulate = require('miniprogram-simulate'); // installs its own global `wx`, patched below
const { Emitter } = require('../mpb2bua.js');

const COMPONENT = path.join(__dirname, '..', 'components', 'mpb2bua-call', 'index');
const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

/** The wx APIs the component uses, recording their calls. */
function fakeWx() {
  const log = [];
  const audios = [];
  const ctx = (kind) => ({ kind, start: ({ success }) => success({}), play: ({ success }) => success({}), stop: ({ success }) => success({}) });
  Object.assign(global.wx, {
    createInnerAudioContext() {
      const audio = { src: '', loop: false, playing: false, destroyed: false,
        play() { this.playing = true; log.push('ring.play'); }, stop() { this.playing = false; log.push('ring.stop'); },
        destroy() { this.destroyed = true; } };
      audios.push(audio);
      return audio;
    },
    vibrateLong() { log.push('vibrate'); },
    setInnerAudioOption(o) { log.push(`speakerOn=${o.speakerOn}`); },
    authorize({ scope, success }) { log.push(`authorize ${scope}`); success({}); },
    createLivePusherContext() { log.push('pusherContext'); return ctx('pusher'); },
    createLivePlayerContext(id) { log.push(`playerContext ${id}`); return ctx('player'); },
  });
  return { log, audios };
}

/** A stand-in for the SDK's Call: the same members and events, requests recorded. */
class FakeCall extends Emitter {
  constructor(fields) {
    super();
    Object.assign(this, { video: false, remoteHeld: false, ending: null, answeredAt: null, quality: 'unknown',
      pushUrl: 'rtmp://h/mp/push', playUrl: 'rtmp://h/mp/play', display: null, handles: [] }, fields);
    this.requests = [];
  }

  get live() { return this.state !== 'ended'; }
  get duration() { return this.answeredAt ? Math.round((Date.now() - this.answeredAt) / 1000) : 0; }

  set(state) {
    const previous = this.state;
    this.state = state;
    if (state === 'active' && !this.answeredAt) this.answeredAt = Date.now();
    this.emit('state', { state, previous });
  }

  _req(method, ...args) { this.requests.push([method, ...args]); return Promise.resolve({}); }
  answer() { return this._req('answer').then(() => this.set('answering')); }
  reject(status) { return this._req('reject', status); }
  hangup() { return this._req('hangup'); }
  hold() { return this._req('hold').then(() => this.set('held')); }
  unhold() { return this._req('unhold').then(() => this.set('active')); }
  dtmf(digits) { return this._req('dtmf', digits); }
  attachPusher(ctx) { return this._media('pusher', ctx); }
  attachPlayer(ctx) { return this._media('player', ctx); }
  _media(kind, ctx) {
    const handle = { kind, ctx, states: [], nets: [], statechange(e) { this.states.push(e.detail.code); }, netstatus(e) { this.nets.push(e); } };
    this.handles.push(handle);
    return handle;
  }

  end(params) {
    this.state = 'ended';
    this.emit('hangup', Object.assign({ call: this.id }, params));
  }
}

class FakeClient extends Emitter {
  constructor() {
    super();
    this.calls = new Map();
    this.placed = [];
  }

  incoming(fields) {
    const call = new FakeCall(Object.assign({ id: 'cIn', direction: 'inbound', state: 'incoming', from: '1500', to: '1000' }, fields));
    this.calls.set(call.id, call);
    this.emit('call', call);
    return call;
  }

  async call(to, options) {
    this.placed.push([to, options]);
    const call = new FakeCall({ id: 'cOut', direction: 'outbound', state: 'calling', to });
    this.calls.set(call.id, call);
    this.emit('call', call);
    return call;
  }
}

function render(props = {}) {
  const id = simulate.load(COMPONENT);
  const comp = simulate.render(id, Object.assign({ ringtone: '/assets/ring.mp3' }, props));
  comp.attach(document.createElement('parent-wrapper'));
  const client = new FakeClient();
  comp.instance.setClient(client);
  const events = [];
  for (const name of ['incoming', 'answered', 'ended', 'statechange', 'dtmf', 'error', 'mute', 'speaker']) {
    comp.addEventListener(name, (e) => events.push([name, e.detail]));
  }
  rendered.push(comp);
  // j-component delivers a tap on the next tick
  const tap = async (sel) => { comp.querySelector(sel).dispatchEvent('tap'); await tick(); };
  return { comp, client, events, tap };
}

const rendered = [];
test.afterEach(() => { for (const comp of rendered.splice(0)) comp.detach(); }); // stops ringing and timers

test('renders nothing while idle, the incoming screen for an incoming call', async () => {
  fakeWx();
  const { comp, client } = render();
  assert.equal(comp.querySelector('.mpb2bua-call'), undefined);
  client.incoming({ display: 'Alice' });
  await tick();
  assert.equal(comp.instance.data.view, 'incoming');
  assert.ok(comp.querySelector('.answer'));
  assert.ok(comp.querySelector('.decline'));
  assert.match(comp.dom.textContent, /Alice/);
  assert.match(comp.dom.textContent, /Incoming call/);
  assert.equal(comp.querySelector('.media'), undefined, 'no media before the answer');
});

test('incoming: ringtone loops and the phone vibrates; answering stops them and starts media', async () => {
  const { log, audios } = fakeWx();
  const { comp, client, events, tap } = render();
  const call = client.incoming();
  await tick();
  assert.equal(audios.length, 1);
  assert.equal(audios[0].src, '/assets/ring.mp3');
  assert.equal(audios[0].loop, true);
  assert.equal(audios[0].playing, true);
  assert.ok(log.includes('vibrate'));
  assert.deepEqual(events.find(([n]) => n === 'incoming'), ['incoming', { call: 'cIn', from: '1500', display: null, video: false }]);
  await tap('.answer');
  await tick(5);
  assert.equal(audios[0].playing, false);
  assert.equal(audios[0].destroyed, true);
  assert.deepEqual(call.requests, [['answer']]);
  assert.ok(log.includes('authorize scope.record'));
  assert.equal(comp.instance.data.pushUrl, 'rtmp://h/mp/push');
  assert.equal(comp.instance.data.playUrl, 'rtmp://h/mp/play');
  assert.ok(comp.querySelector('.media'));
  assert.ok(log.includes('pusherContext') && log.includes('playerContext mpb2bua-far'));
  assert.deepEqual(call.handles.map((h) => h.kind), ['pusher', 'player']);
  const vibrations = log.filter((l) => l === 'vibrate').length;
  await tick(2100);
  assert.equal(log.filter((l) => l === 'vibrate').length, vibrations, 'no vibration after the answer');
});

test('decline rejects with the declineStatus and stops the ringing; the hangup event ends the screen', async () => {
  const { audios } = fakeWx();
  const { comp, client, events, tap } = render({ declineStatus: 486 });
  const call = client.incoming();
  await tick();
  await tap('.decline');
  await tick();
  assert.deepEqual(call.requests, [['reject', 486]]);
  assert.equal(audios[0].playing, false);
  assert.equal(comp.instance.data.view, 'incoming', 'still shown until the gateway says it ended');
  call.end({ cause: 'CALL_REJECTED', by: 'local', sip_status: 486 });
  await tick();
  assert.equal(comp.instance.data.view, 'idle');
  assert.equal(comp.querySelector('.mpb2bua-call'), undefined);
  assert.deepEqual(events.find(([n]) => n === 'ended')[1], { duration: 0, call: 'cIn', cause: 'CALL_REJECTED', by: 'local', sip_status: 486 });
});

test('the far end giving up while ringing stops the ringtone', async () => {
  const { audios } = fakeWx();
  const { client } = render();
  const call = client.incoming();
  await tick();
  call.end({ cause: 'ORIGINATOR_CANCEL', by: 'remote' });
  assert.equal(audios[0].playing, false);
});

test('in call: mute, hold/unhold, speaker/earpiece, hang up', async () => {
  const { log } = fakeWx();
  const { comp, client, events, tap } = render();
  const call = client.incoming();
  await tick();
  await tap('.answer');
  await tick(5);
  call.set('active');
  await tick();
  assert.equal(comp.instance.data.view, 'call');
  await tap('.mute');
  assert.equal(comp.instance.data.muted, true, '<live-pusher muted>');
  await tap('.mute');
  assert.equal(comp.instance.data.muted, false);
  await tap('.hold');
  await tick();
  assert.equal(comp.instance.data.held, true);
  await tap('.hold');
  await tick();
  assert.equal(comp.instance.data.held, false);
  assert.deepEqual(call.requests, [['answer'], ['hold'], ['unhold']]);
  await tap('.speaker');
  assert.equal(comp.instance.data.speakerOn, false);
  assert.equal(log[log.length - 1], 'speakerOn=false');
  assert.deepEqual(events.filter(([n]) => n === 'mute' || n === 'speaker').map(([n, d]) => [n, d.muted !== undefined ? d.muted : d.speaker]),
    [['mute', true], ['mute', false], ['speaker', false]]);
  await tap('.hangup');
  await tick();
  assert.deepEqual(call.requests[call.requests.length - 1], ['hangup']);
});

test('the call timer runs from the answer; the quality badge follows the call', async () => {
  fakeWx();
  const { comp, client } = render();
  const call = client.incoming();
  await tick();
  call.answeredAt = Date.now() - 65000;
  call.set('active');
  await tick();
  assert.equal(comp.instance.data.elapsed, '1:05');
  await tick(1100);
  assert.equal(comp.instance.data.elapsed, '1:06');
  call.emit('quality', { level: 'poor', reasons: ['player network'] });
  await tick();
  assert.equal(comp.querySelector('.quality').dom.textContent, 'poor');
  call.end({ cause: 'NORMAL_CLEARING', by: 'remote' });
  const shown = comp.instance.data.elapsed;
  await tick(1100);
  assert.equal(comp.instance.data.elapsed, shown, 'stopped with the call');
});

test('the DTMF pad sends each digit', async () => {
  fakeWx();
  const { comp, client, events, tap } = render();
  const call = client.incoming();
  await tick();
  call.set('active');
  await tick();
  await tap('.keypad');
  const keys = comp.querySelectorAll('.key');
  assert.equal(keys.length, 12);
  keys[4].dispatchEvent('tap'); // 5
  await tick();
  keys[11].dispatchEvent('tap'); // #
  await tick(1);
  assert.deepEqual(call.requests.filter(([m]) => m === 'dtmf'), [['dtmf', '5'], ['dtmf', '#']]);
  assert.equal(comp.instance.data.dtmfSent, '5#');
  assert.deepEqual(events.filter(([n]) => n === 'dtmf').map(([, d]) => d.digits), ['5', '#']);
});

test('dial places a call, shows it with media at once; a second incoming call is refused busy', async () => {
  const { log, audios } = fakeWx();
  const { comp, client } = render();
  const call = await comp.instance.dial('1500');
  await tick(5);
  assert.deepEqual(client.placed, [['1500', undefined]]);
  assert.equal(comp.instance.data.view, 'outgoing');
  assert.equal(comp.instance.data.peer, '1500');
  assert.deepEqual(call.handles.map((h) => h.kind), ['pusher', 'player']);
  const other = client.incoming({ id: 'cIn2' });
  await tick();
  assert.deepEqual(other.requests, [['reject', 486]]);
  assert.equal(audios.length, 0, 'no ringtone for a refused call');
  assert.ok(!log.includes('vibrate'));
  call.set('ringing');
  await tick();
  assert.match(comp.dom.textContent, /Ringing/);
});

test('media tag events reach the call\'s handles', async () => {
  fakeWx();
  const { comp } = render();
  const call = await comp.instance.dial('1500');
  await tick(5);
  comp.instance.onPusherState({ detail: { code: 1002 } });
  comp.instance.onPlayerState({ detail: { code: 2004 } });
  comp.instance.onPlayerNet({ detail: { info: { netJitter: 10 } } });
  assert.deepEqual(call.handles.map((h) => h.states), [[1002], [2004]]);
  assert.equal(call.handles[1].nets.length, 1);
});

test('a failed hang-up keeps the call on screen and emits error', async () => {
  fakeWx();
  const { comp, client, events, tap } = render();
  const call = client.incoming();
  await tick();
  call.set('active');
  call.hangup = () => Promise.reject(Object.assign(new Error('x'), { reason: 'timeout' }));
  await tick();
  await tap('.hangup');
  await tick();
  assert.equal(comp.instance.data.view, 'call');
  assert.match(comp.instance.data.status, /still up/);
  assert.deepEqual(events.find(([n]) => n === 'error')[1], { action: 'hangup', reason: 'timeout', message: 'x' });
});
