'use strict';
/**
 * A scripted `wx` for unit tests: no network. Each connectSocket() returns a FakeTask the test
 * drives: open(), receive(obj), serverClose(code), error(); `sent` holds the parsed frames.
 */
class FakeTask {
  constructor(options) {
    this.options = options;
    this.handlers = { open: [], message: [], close: [], error: [] };
    this.sent = [];
    this.closed = null;
    this.waiters = [];
  }

  onOpen(fn) { this.handlers.open.push(fn); }
  onMessage(fn) { this.handlers.message.push(fn); }
  onClose(fn) { this.handlers.close.push(fn); }
  onError(fn) { this.handlers.error.push(fn); }

  send({ data, fail }) {
    if (this.failSends) {
      fail({ errMsg: 'sendSocketMessage:fail' });
      return;
    }
    const frame = JSON.parse(data);
    this.sent.push(frame);
    for (const w of this.waiters.splice(0)) w(frame);
  }

  close({ code = 1000, reason = '' } = {}) {
    this.closed = { code, reason };
  }

  _fire(name, res) {
    for (const fn of this.handlers[name].slice()) fn(res);
  }

  open() { this._fire('open', {}); }
  receive(obj) { this._fire('message', { data: typeof obj === 'string' ? obj : JSON.stringify(obj) }); }
  serverClose(code = 1006, reason = '') { this._fire('close', { code, reason }); }
  error(msg = 'boom') { this._fire('error', { errMsg: msg }); }

  /** The next frame the client sends (already sent frames count, in order). */
  nextFrame() {
    if (this._read === undefined) this._read = 0;
    if (this._read < this.sent.length) return Promise.resolve(this.sent[this._read++]);
    return new Promise((resolve) => this.waiters.push((f) => { this._read++; resolve(f); }));
  }

  /** Answer a request frame with a result. */
  answer(frame, result) { this.receive({ jsonrpc: '2.0', id: frame.id, result }); }
  /** Answer a request frame with an error. */
  fail(frame, code, reason, extra = {}) {
    this.receive({ jsonrpc: '2.0', id: frame.id, error: { code, message: reason, data: Object.assign({ reason }, extra) } });
  }
}

/** The lifecycle APIs the SDK binds: `wx.fire(name, res)` calls the listeners of `onName`. */
const LIFECYCLE = ['AppHide', 'AppShow', 'NetworkStatusChange', 'AudioInterruptionBegin', 'AudioInterruptionEnd'];

function createFakeWx(storage = new Map()) {
  const listeners = {};
  const wx = {
    tasks: [],
    storage,
    screenOn: [],
    getStorageSync(key) { return storage.has(key) ? JSON.parse(storage.get(key)) : ''; },
    setStorageSync(key, value) { storage.set(key, JSON.stringify(value)); },
    removeStorageSync(key) { storage.delete(key); },
    setKeepScreenOn({ keepScreenOn }) { wx.screenOn.push(keepScreenOn); },
    fire(name, res = {}) { for (const fn of (listeners[name] || []).slice()) fn(res); },
    listenerCount(name) { return (listeners[name] || []).length; },
    connectSocket(options) {
      const task = new FakeTask(options);
      wx.tasks.push(task);
      if (wx.onConnect) wx.onConnect(task);
      return task;
    },
    get last() { return wx.tasks[wx.tasks.length - 1]; },
  };
  for (const name of LIFECYCLE) {
    wx[`on${name}`] = (fn) => (listeners[name] || (listeners[name] = [])).push(fn);
    wx[`off${name}`] = (fn) => { listeners[name] = (listeners[name] || []).filter((f) => f !== fn); };
  }
  return wx;
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

module.exports = { createFakeWx, FakeTask, tick };
