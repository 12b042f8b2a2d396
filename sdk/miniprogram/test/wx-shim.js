'use strict';
/**
 * A `wx` stand-in for Node that behaves like WeChat where the SDK depends on it: wx.connectSocket
 * returning a SocketTask (onOpen/onMessage/onClose/onError/send/close, WeChat's callback shapes,
 * the `timeout` option), backed by the `ws` package; storage; app hide/show; network status;
 * audio interruptions; live-pusher/live-player contexts. `shim.sockets` lists every task;
 * `task.kill()` drops the TCP connection without a close handshake, as a phone losing its network
 * does; `task.blackhole()` makes it silently dead (nothing in or out, the server does not notice).
 *
 * The platform facts it follows (docs/miniprogram.md §8 has the sources):
 * - background(): onAppHide fires and live-pushers report 5000; after `suspendAfter` ms (about
 *   5 s on phones) JS is suspended: timers of `shim.timers` and socket callbacks are held, and
 *   the sockets are cut. show() delivers what was held, then fires onAppShow.
 * - switchNetwork(type): the old sockets go silently dead, then onNetworkStatusChange fires.
 * - offline()/online(type): no network (connectSocket fails at once), then a new one.
 * - interrupt()/endInterruption(): onAudioInterruptionBegin (pushers report 5001) / End.
 */
const WebSocket = require('ws');

class SocketTask {
  constructor(options, shim) {
    this.shim = shim;
    this.blackholed = false;
    this.url = options.url;
    this.handlers = { open: [], message: [], close: [], error: [] };
    this.readyState = 0;
    this.ws = new WebSocket(options.url, options.protocols || [], {
      headers: options.header || {},
      handshakeTimeout: options.timeout || 10000,
    });
    this.ws.on('open', () => {
      this.readyState = 1;
      if (options.success) options.success({ errMsg: 'connectSocket:ok' });
      this._fire('open', { header: {} });
    });
    this.ws.on('message', (data, isBinary) => {
      this._fire('message', { data: isBinary ? data : data.toString('utf8') });
    });
    this.ws.on('error', (err) => {
      this._fire('error', { errMsg: `socket error: ${err.message}` });
    });
    this.ws.on('close', (code, reason) => {
      this.readyState = 3;
      this._fire('close', { code, reason: reason ? reason.toString('utf8') : '' });
    });
  }

  _fire(name, res) {
    if (this.blackholed) return;
    const run = () => { for (const fn of this.handlers[name].slice()) fn(res); };
    if (this.shim && this.shim.suspended) this.shim.held.push(run);
    else run();
  }

  onOpen(fn) { this.handlers.open.push(fn); }
  onMessage(fn) { this.handlers.message.push(fn); }
  onClose(fn) { this.handlers.close.push(fn); }
  onError(fn) { this.handlers.error.push(fn); }

  send({ data, success, fail, complete }) {
    if (this.blackholed) { // a dead network: the write "succeeds" and goes nowhere
      if (success) success({ errMsg: 'sendSocketMessage:ok' });
      if (complete) complete({ errMsg: 'sendSocketMessage:ok' });
      return;
    }
    if (this.ws.readyState !== WebSocket.OPEN) {
      const res = { errMsg: 'sendSocketMessage:fail socket is not connected' };
      if (fail) fail(res);
      if (complete) complete(res);
      return;
    }
    this.ws.send(data, (err) => {
      const res = { errMsg: err ? `sendSocketMessage:fail ${err.message}` : 'sendSocketMessage:ok' };
      if (err && fail) fail(res);
      if (!err && success) success(res);
      if (complete) complete(res);
    });
  }

  close({ code = 1000, reason = '', success } = {}) {
    try {
      this.ws.close(code, reason);
    } catch (err) {
      this.ws.terminate();
    }
    if (success) success({ errMsg: 'closeSocket:ok' });
  }

  /** Vanish without a close handshake (the server sees the TCP connection drop). */
  kill() {
    this.ws.terminate();
  }

  /** Go silently dead: nothing reaches either side any more and neither is told. */
  blackhole() {
    this.blackholed = true;
    if (this.ws._socket) this.ws._socket.pause();
  }
}

/** A LivePusherContext / LivePlayerContext: records calls; `statechange(code)` plays the tag's event. */
class LiveContext {
  constructor(kind, id) {
    this.kind = kind;
    this.id = id;
    this.calls = [];
    this.onStateChange = null;
    for (const name of ['start', 'stop', 'play', 'pause', 'resume', 'mute']) {
      this[name] = (opts = {}) => {
        this.calls.push(name);
        if (opts.success) opts.success({ errMsg: `${name}:ok` });
        if (opts.complete) opts.complete({ errMsg: `${name}:ok` });
      };
    }
  }

  statechange(code) {
    if (this.onStateChange) this.onStateChange({ detail: { code } });
  }
}

const EVENTS = ['AppHide', 'AppShow', 'NetworkStatusChange', 'AudioInterruptionBegin', 'AudioInterruptionEnd'];

/**
 * @param {{storage?: Map}} [options] `storage`: share it between two shims for a cold restart
 */
function createWx(options = {}) {
  const storage = options.storage || new Map();
  const listeners = {};
  const fire = (name, res = {}) => { for (const fn of (listeners[name] || []).slice()) fn(res); };
  const shim = {
    sockets: [],
    pushers: [],
    players: [],
    screenOn: [],
    suspended: false,
    dead: false,
    isConnected: true,
    networkType: 'wifi',
    held: [],
    storage,
    connectSocket(options) {
      if (!shim.isConnected) { // no network: WeChat fails the call at once
        const noop = () => {};
        const task = { onOpen: noop, onMessage: noop, onClose: noop, onError: noop, send: noop, close: noop };
        setTimeout(() => options.fail && options.fail({ errMsg: 'connectSocket:fail network is down' }), 0);
        return task;
      }
      const task = new SocketTask(options, shim);
      shim.sockets.push(task);
      return task;
    },
    get lastSocket() {
      return shim.sockets[shim.sockets.length - 1];
    },
    getStorageSync(key) { return storage.has(key) ? JSON.parse(storage.get(key)) : ''; },
    setStorageSync(key, value) { storage.set(key, JSON.stringify(value)); },
    removeStorageSync(key) { storage.delete(key); },
    setKeepScreenOn({ keepScreenOn, success }) { shim.screenOn.push(keepScreenOn); if (success) success({}); },
    createLivePusherContext() { const c = new LiveContext('pusher'); shim.pushers.push(c); return c; },
    createLivePlayerContext(id) { const c = new LiveContext('player', id); shim.players.push(c); return c; },

    /** Timers that stop while JS is suspended (what fires meanwhile runs on show()). */
    timers: {
      setTimeout(fn, ms) {
        return setTimeout(() => (shim.suspended ? shim.held.push(fn) : fn()), ms);
      },
      clearTimeout(id) { clearTimeout(id); },
      setInterval(fn, ms) {
        let queued = false;
        return setInterval(() => {
          if (!shim.suspended) return fn();
          if (!queued) { queued = true; shim.held.push(() => { queued = false; fn(); }); }
          return undefined;
        }, ms);
      },
      clearInterval(id) { clearInterval(id); },
    },

    background({ suspendAfter = 5000 } = {}) {
      fire('AppHide');
      for (const p of shim.pushers) p.statechange(5000);
      shim._suspendTimer = setTimeout(() => {
        shim.suspended = true;
        for (const task of shim.sockets) if (task.readyState !== 3) task.kill(); // cut soon after
      }, suspendAfter);
    },
    show() {
      clearTimeout(shim._suspendTimer);
      shim.suspended = false;
      for (const run of shim.held.splice(0)) run();
      fire('AppShow', { scene: 1001 });
    },
    /** The mini-program is destroyed: nothing of it ever runs again. */
    destroy() {
      shim.dead = true;
      shim.suspended = true;
      for (const task of shim.sockets) if (task.readyState !== 3) task.kill();
    },
    switchNetwork(networkType) {
      for (const task of shim.sockets) task.blackhole();
      shim.networkType = networkType;
      fire('NetworkStatusChange', { isConnected: true, networkType });
    },
    offline() {
      for (const task of shim.sockets) task.blackhole();
      shim.isConnected = false;
      fire('NetworkStatusChange', { isConnected: false, networkType: 'none' });
    },
    online(networkType = 'wifi') {
      shim.isConnected = true;
      shim.networkType = networkType;
      fire('NetworkStatusChange', { isConnected: true, networkType });
    },
    interrupt() {
      fire('AudioInterruptionBegin');
      for (const p of shim.pushers) p.statechange(5001);
    },
    endInterruption() { fire('AudioInterruptionEnd'); },
  };
  for (const name of EVENTS) {
    shim[`on${name}`] = (fn) => (listeners[name] || (listeners[name] = [])).push(fn);
    shim[`off${name}`] = (fn) => { listeners[name] = (listeners[name] || []).filter((f) => f !== fn); };
  }
  return shim;
}

module.exports = { createWx, SocketTask, LiveContext };
