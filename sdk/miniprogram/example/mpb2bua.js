/**
 * mpb2bua client SDK for WeChat mini-programs.
 *
 * One file, no dependencies, no build step: copy it into the mini-program and
 * `const { Mpb2buaClient } = require('./mpb2bua.js')`.
 *
 * It speaks the gateway's JSON-RPC 2.0 protocol (docs/protocol.md) over a
 * `wx.connectSocket` SocketTask: request ids, pending promises with timeouts,
 * typed errors, events, a keep-alive ping, and automatic reconnection with
 * `resume {session}` after a network drop (calls and registration survive the
 * drop on the gateway for its grace period, 30 s by default).
 *
 * Media does not go through this socket: `call`/`answer` results and the
 * `incoming` event carry RTMP `push_url`/`play_url` for <live-pusher>/<live-player>;
 * see attachPusher/attachPlayer and pusherState/playerState.
 *
 * @module mpb2bua
 */
'use strict';

/** Protocol events the gateway sends (a client must ignore events it does not know). */
const PROTOCOL_EVENTS = Object.freeze([
  'registered', 'registration_failed', 'unregistered',
  'incoming', 'ringing', 'early_media', 'answered', 'hangup', 'hold', 'dtmf', 'info',
  'message', 'transfer_progress', 'media',
]);

/** Events produced by the SDK itself. */
const SDK_EVENTS = Object.freeze(['connected', 'reconnecting', 'resumed', 'disconnected', 'error']);

/** WebSocket close codes the gateway uses (docs/protocol.md §5). */
const CLOSE_GOING_AWAY = 1001;
const CLOSE_REPLACED = 4001;

const DEFAULT_RECONNECT = Object.freeze({
  maxAttempts: 8,
  baseDelay: 500,
  maxDelay: 8000,
  jitter: 0.3,
  gracePeriod: 30000,
});

/**
 * An error answer from the gateway, or a failure of the SDK itself.
 *
 * Branch on `reason`, never on `message`. Gateway reasons are those of
 * docs/protocol.md §2 (`auth_failed`, `not_logged_in`, `call_not_found`, `bad_state` …);
 * errors raised by the SDK without a gateway answer have `code === null` and one of the
 * reasons `timeout` (no answer within requestTimeout), `disconnected` (the socket was lost
 * while the request was in flight: it is never re-sent), `not_connected` (no open socket),
 * `closed` (close() was called), `connect_failed`, `send_failed`, `bad_argument`.
 */
class Mpb2buaError extends Error {
  /**
   * @param {object} fields
   * @param {?number} [fields.code] JSON-RPC error code (null for SDK-side errors)
   * @param {string} fields.reason stable machine-readable reason
   * @param {?number} [fields.sipStatus] SIP final status behind the error, when there was one
   * @param {string} [fields.message] human-readable text (may change, do not branch on it)
   * @param {object} [fields.data] the whole `error.data` object of the answer
   */
  constructor({ code = null, reason, sipStatus = null, message, data = {} }) {
    super(message || reason);
    this.name = 'Mpb2buaError';
    this.code = code;
    this.reason = reason;
    this.sipStatus = sipStatus;
    this.data = data;
  }

  /**
   * Build an error from a JSON-RPC `error` member.
   * @param {{code:number, message:string, data?:object}} error
   * @returns {Mpb2buaError}
   */
  static fromRpc(error) {
    const data = (error && typeof error.data === 'object' && error.data) || {};
    return new Mpb2buaError({
      code: typeof error.code === 'number' ? error.code : null,
      reason: typeof data.reason === 'string' ? data.reason : 'unknown',
      sipStatus: typeof data.sip_status === 'number' ? data.sip_status : null,
      message: error.message,
      data,
    });
  }
}

/** A minimal event emitter (mini-programs have no `events` module). */
class Emitter {
  constructor() {
    this._listeners = Object.create(null);
  }

  /**
   * Call `fn` every time `event` is emitted. `'*'` receives every event as `(name, payload)`.
   * @param {string} event
   * @param {Function} fn
   * @returns {Function} a function that removes the listener
   */
  on(event, fn) {
    if (typeof fn !== 'function') throw new TypeError('listener must be a function');
    (this._listeners[event] || (this._listeners[event] = [])).push(fn);
    return () => this.off(event, fn);
  }

  /**
   * Remove a listener added with on() or once(); without `fn`, all listeners of `event`.
   * @param {string} event
   * @param {Function} [fn]
   * @returns {this}
   */
  off(event, fn) {
    const list = this._listeners[event];
    if (!list) return this;
    if (fn === undefined) {
      delete this._listeners[event];
      return this;
    }
    const i = list.findIndex((l) => l === fn || l._original === fn);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) delete this._listeners[event];
    return this;
  }

  /**
   * Call `fn` the next time `event` is emitted, once.
   * @param {string} event
   * @param {Function} fn
   * @returns {Function} a function that removes the listener
   */
  once(event, fn) {
    const wrapper = (...args) => {
      this.off(event, wrapper);
      return fn.apply(this, args);
    };
    wrapper._original = fn;
    return this.on(event, wrapper);
  }

  /**
   * Call the listeners of `event` with `payload`; a listener that throws does not stop the others.
   * @param {string} event
   * @param {*} payload
   * @returns {boolean} whether `event` had listeners
   */
  emit(event, payload) {
    const list = this._listeners[event];
    const all = event !== '*' ? this._listeners['*'] : undefined;
    for (const fn of list ? list.slice() : []) this._call(fn, event, [payload]);
    for (const fn of all ? all.slice() : []) this._call(fn, event, [event, payload]);
    return Boolean(list && list.length);
  }

  _call(fn, event, args) {
    try {
      fn.apply(this, args);
    } catch (err) {
      if (typeof console !== 'undefined') console.error(`mpb2bua: listener of "${event}" threw`, err);
    }
  }
}

/**
 * Delay before reconnection attempt `attempt` (1-based): exponential backoff
 * `baseDelay * 2^(attempt-1)` capped at `maxDelay`, minus up to `jitter` (a fraction) of it
 * at random, so that many phones dropped by the same network event do not come back at once.
 * @param {number} attempt
 * @param {{baseDelay:number, maxDelay:number, jitter?:number}} options
 * @param {() => number} [random] a source of numbers in [0, 1)
 * @returns {number} milliseconds
 */
function backoffDelay(attempt, options, random = Math.random) {
  const exp = Math.min(options.maxDelay, options.baseDelay * Math.pow(2, Math.max(0, attempt - 1)));
  const jitter = Math.min(1, Math.max(0, options.jitter || 0));
  return Math.round(exp * (1 - jitter * random()));
}

function callId(call) {
  if (typeof call === 'string') return call;
  if (call && typeof call.call === 'string') return call.call;
  throw new Mpb2buaError({ reason: 'bad_argument', message: 'call: a call id or an object with .call' });
}

function dropUndefined(obj) {
  const out = {};
  for (const key of Object.keys(obj)) if (obj[key] !== undefined) out[key] = obj[key];
  return out;
}

/**
 * The mpb2bua client: one WebSocket to the gateway, one logged-in SIP user.
 *
 * States (`client.state`): `idle` → `connecting` → `open` ⇄ `reconnecting`, and `closed`.
 *
 * Events (client.on(name, fn)): every protocol event with its `params` (`registered`,
 * `registration_failed`, `unregistered`, `incoming`, `ringing`, `early_media`, `answered`,
 * `hangup`, `hold`, `dtmf`, `info`, `message`, `transfer_progress`, and any newer one), and
 * the SDK's own: `connected` (connect() succeeded), `reconnecting {attempt, delay, reason}`,
 * `resumed {session, user, state}`, `disconnected {reason, error?}` (the connection is gone
 * for good: log in again), `'*'` (every event, as `(name, payload)`).
 *
 * @extends Emitter
 */
class Mpb2buaClient extends Emitter {
  /**
   * @param {object} options
   * @param {string} options.url `wss://gateway.example.com/ws` (`ws://` only in tests/DevTools)
   * @param {object} [options.wx] the `wx` object (defaults to the global `wx`; tests inject a shim)
   * @param {number} [options.requestTimeout=15000] ms before a request rejects with reason `timeout`.
   *   `login` waits at least 45 s (the gateway's own login timeout is 40 s).
   * @param {number} [options.pingInterval=20000] ms between keep-alive `ping`s (0 disables them);
   *   an unanswered ping counts as a lost socket
   * @param {object} [options.reconnect] `{maxAttempts=8, baseDelay=500, maxDelay=8000,
   *   jitter=0.3, gracePeriod=30000}`, or `false` to never reconnect
   * @param {object} [options.socketOptions] extra members for wx.connectSocket (header, protocols …)
   */
  constructor(options) {
    super();
    const opts = options || {};
    if (typeof opts.url !== 'string' || !/^wss?:\/\//.test(opts.url)) {
      throw new Mpb2buaError({ reason: 'bad_argument', message: 'url: a ws:// or wss:// URL' });
    }
    this.url = opts.url;
    this.wx = opts.wx || (typeof wx !== 'undefined' ? wx : null); // eslint-disable-line no-undef
    if (!this.wx || typeof this.wx.connectSocket !== 'function') {
      throw new Mpb2buaError({ reason: 'bad_argument', message: 'no wx.connectSocket available' });
    }
    this.requestTimeout = opts.requestTimeout != null ? opts.requestTimeout : 15000;
    this.pingInterval = opts.pingInterval != null ? opts.pingInterval : 20000;
    this.reconnect = opts.reconnect === false
      ? Object.assign({}, DEFAULT_RECONNECT, { maxAttempts: 0 })
      : Object.assign({}, DEFAULT_RECONNECT, opts.reconnect || {});
    this.socketOptions = opts.socketOptions || {};
    this.random = opts.random || Math.random;

    /** @type {'idle'|'connecting'|'open'|'reconnecting'|'closed'} */
    this.state = 'idle';
    /** The session id from login (what resume needs); null when not logged in. */
    this.session = null;
    /** The logged-in SIP user, or null. */
    this.user = null;
    /** Round-trip time of the last ping, ms. */
    this.lastRtt = null;

    this._task = null;
    this._generation = 0;
    this._nextId = 1;
    this._pending = new Map();
    this._pingTimer = null;
    this._reconnectTimer = null;
    this._attempt = 0;
    this._lostAt = 0;
    this._resuming = false;
  }

  // ---- connection -------------------------------------------------------------------------

  /**
   * Open the WebSocket. Resolves once it is open; rejects with an Mpb2buaError
   * (`connect_failed`) when it cannot be opened. Emits `connected`.
   * @returns {Promise<void>}
   */
  connect() {
    if (this.state === 'open') return Promise.resolve();
    if (this.state === 'connecting' && this._connecting) return this._connecting;
    this._cancelReconnect();
    this.state = 'connecting';
    this._connecting = new Promise((resolve, reject) => {
      this._openSocket({
        onOpen: () => {
          this._connecting = null;
          this.state = 'open';
          this._startPing();
          this.emit('connected', { url: this.url });
          resolve();
        },
        onFail: (why) => {
          this._connecting = null;
          this.state = 'closed';
          reject(new Mpb2buaError({ reason: 'connect_failed', message: `cannot connect to ${this.url}: ${why}` }));
        },
      });
    });
    return this._connecting;
  }

  /**
   * Close the socket for good: stops keep-alive and reconnection; requests in flight reject with
   * reason `closed`. The gateway keeps a logged-in session for its grace period: call logout()
   * first to end it at once. Emits `disconnected {reason: 'closed'}` unless already closed.
   * @param {number} [code=1000]
   * @param {string} [reason]
   */
  close(code = 1000, reason = 'bye') {
    const wasClosed = this.state === 'closed' || this.state === 'idle';
    this._cancelReconnect();
    this._stopPing();
    this._rejectAll('closed', 'the client was closed');
    this._dropSocket(code, reason);
    this.state = 'closed';
    this.session = null;
    if (!wasClosed) this.emit('disconnected', { reason: 'closed' });
  }

  // ---- session ----------------------------------------------------------------------------

  /**
   * Log in as a SIP user: `{user, password}`, `{user, ha1}` or `{token}`. Resolves with
   * `{session, user, expires}` once the gateway's REGISTER succeeded (a `registered` event
   * follows). Rejects with reason `auth_failed` (sipStatus 401/403/407), `token_invalid`,
   * `timeout`, `pbx_unreachable`, `rate_limited` …
   * @param {{user?:string, password?:string, ha1?:string, token?:string}} credentials
   * @returns {Promise<{session:string, user:string, expires:number}>}
   */
  async login(credentials) {
    const c = credentials || {};
    const params = c.token !== undefined
      ? { token: c.token }
      : dropUndefined({ user: c.user, password: c.password, ha1: c.ha1 });
    const result = await this.request('login', params, { timeout: Math.max(this.requestTimeout, 45000) });
    this.session = result.session;
    this.user = result.user;
    return result;
  }

  /**
   * Log out: the gateway un-registers the user and ends the session (calls are hung up).
   * The socket stays open and may log in again.
   * @returns {Promise<{}>}
   */
  async logout() {
    try {
      return await this.request('logout', {});
    } finally {
      this.session = null;
      this.user = null;
    }
  }

  /**
   * Measure the round trip to the gateway; resolves with `{pong, rtt}` (`pong`: server clock, ms).
   * @returns {Promise<{pong:number, rtt:number}>}
   */
  async ping() {
    const started = Date.now();
    const result = await this.request('ping', {});
    this.lastRtt = Date.now() - started;
    return { pong: result.pong, rtt: this.lastRtt };
  }

  // ---- calls ------------------------------------------------------------------------------

  /**
   * Call a number, extension or `sip:` URI. Resolves with `{call, push_url, play_url}` at once
   * (the INVITE is on its way): start the pusher and the player with those URLs, then follow
   * the `ringing`, `early_media`, `answered` and `hangup` events of that `call`.
   * @param {string} to
   * @param {{video?:boolean, headers?:Object<string,string>}} [options] `headers`: up to 10 `X-` headers
   * @returns {Promise<{call:string, push_url:string, play_url:string}>}
   */
  call(to, options) {
    const o = options || {};
    return this.request('call', dropUndefined({ to, video: o.video, headers: o.headers }));
  }

  /**
   * Answer an `incoming` call (its push_url/play_url came with the event).
   * @param {string|{call:string}} call the call id or the `incoming` event
   * @returns {Promise<{call:string}>}
   */
  answer(call) {
    return this.request('answer', { call: callId(call) });
  }

  /**
   * Refuse an `incoming` call.
   * @param {string|{call:string}} call
   * @param {number} [status=486] SIP status 400–699 (486 busy, 603 decline …)
   * @returns {Promise<{}>}
   */
  reject(call, status) {
    return this.request('reject', dropUndefined({ call: callId(call), status }));
  }

  /**
   * Hang up (or cancel, while it rings) a call; a `hangup` event follows.
   * @param {string|{call:string}} call
   * @returns {Promise<{}>}
   */
  hangup(call) {
    return this.request('hangup', { call: callId(call) });
  }

  /**
   * Send DTMF digits (`0-9 * # A-D`, up to 32) on an answered call.
   * @param {string|{call:string}} call
   * @param {string} digits
   * @param {{mode?:'auto'|'rfc4733'|'info'}} [options] how to send them (gateways that support it:
   *   RFC 4733 telephone-events in the RTP stream, or SIP INFO; default: the gateway's `media.dtmf`)
   * @returns {Promise<{via?:string}>} resolves when the digits are sent (`via`: how, on newer gateways)
   */
  dtmf(call, digits, options) {
    const mode = options && options.mode;
    return this.request('dtmf', dropUndefined({ call: callId(call), digits: String(digits), mode }));
  }

  /**
   * Put an answered call on hold (re-INVITE sendonly).
   * @param {string|{call:string}} call
   * @returns {Promise<{call:string, held:boolean}>}
   */
  hold(call) {
    return this.request('hold', { call: callId(call) });
  }

  /**
   * Take a call off hold.
   * @param {string|{call:string}} call
   * @returns {Promise<{call:string, held:boolean}>}
   */
  unhold(call) {
    return this.request('unhold', { call: callId(call) });
  }

  /**
   * Blind transfer (SIP REFER) of an answered call; `transfer_progress` events follow.
   * @param {string|{call:string}} call
   * @param {string} to number, extension or sip: URI
   * @returns {Promise<{sip_status:number}>}
   */
  transfer(call, to) {
    return this.request('transfer', { call: callId(call), to });
  }

  /**
   * Send a SIP INFO inside a call.
   * @param {string|{call:string}} call
   * @param {string} contentType e.g. `application/json` (defaults to text/plain when empty)
   * @param {string|object} body a string, or an object sent as JSON
   * @returns {Promise<{sip_status:number}>}
   */
  sendInfo(call, contentType, body) {
    return this.request('send_info', dropUndefined({ call: callId(call), content_type: contentType || undefined, body }));
  }

  /**
   * Send a SIP MESSAGE outside any call.
   * @param {string} to number, extension or sip: URI
   * @param {string} contentType e.g. `text/plain`
   * @param {string|object} body
   * @returns {Promise<{sip_status:number}>}
   */
  message(to, contentType, body) {
    return this.request('message', dropUndefined({ to, content_type: contentType || undefined, body }));
  }

  // ---- JSON-RPC plumbing ------------------------------------------------------------------

  /**
   * Send any JSON-RPC request (for methods newer than this SDK). Resolves with `result`,
   * rejects with an Mpb2buaError. Nothing is ever re-sent after a reconnection.
   * @param {string} method
   * @param {object} [params]
   * @param {{timeout?:number}} [options]
   * @returns {Promise<*>}
   */
  request(method, params, options) {
    const timeout = (options && options.timeout) || this.requestTimeout;
    if (this.state !== 'open' || !this._task || (this._resuming && method !== 'resume')) {
      const reason = this.state === 'closed' ? 'closed' : 'not_connected';
      return Promise.reject(new Mpb2buaError({ reason, message: `cannot send ${method}: the socket is ${this.state}` }));
    }
    const id = this._nextId++;
    const frame = { jsonrpc: '2.0', id, method };
    if (params && Object.keys(params).length) frame.params = params;
    return new Promise((resolve, reject) => {
      const entry = { method, resolve, reject, timer: null };
      entry.timer = setTimeout(() => {
        if (this._pending.get(id) !== entry) return;
        this._pending.delete(id);
        reject(new Mpb2buaError({ reason: 'timeout', message: `no answer to ${method} within ${timeout} ms` }));
      }, timeout);
      this._pending.set(id, entry);
      this._send(frame, (why) => {
        if (this._pending.get(id) !== entry) return;
        this._pending.delete(id);
        clearTimeout(entry.timer);
        reject(new Mpb2buaError({ reason: 'send_failed', message: `cannot send ${method}: ${why}` }));
      });
    });
  }

  _send(frame, onFail) {
    const task = this._task;
    try {
      task.send({
        data: JSON.stringify(frame),
        fail: (res) => onFail((res && res.errMsg) || 'send failed'),
      });
    } catch (err) {
      onFail(err && err.message);
    }
  }

  _onFrame(data) {
    let msg;
    try {
      msg = JSON.parse(typeof data === 'string' ? data : String(data));
    } catch (err) {
      this.emit('error', new Mpb2buaError({ reason: 'parse_error', message: 'unparsable frame from the gateway' }));
      return;
    }
    if (!msg || typeof msg !== 'object') return;
    if (msg.id !== undefined && msg.id !== null && ('result' in msg || 'error' in msg)) {
      const entry = this._pending.get(msg.id);
      if (!entry) return; // timed out already, or from a previous socket
      this._pending.delete(msg.id);
      clearTimeout(entry.timer);
      if ('error' in msg) entry.reject(Mpb2buaError.fromRpc(msg.error || {}));
      else entry.resolve(msg.result);
      return;
    }
    if ('error' in msg) { // an error without a usable id (parse error …)
      this.emit('error', Mpb2buaError.fromRpc(msg.error || {}));
      return;
    }
    if (typeof msg.method === 'string' && msg.id === undefined) this._onEvent(msg.method, msg.params || {});
  }

  _onEvent(name, params) {
    if ((name === 'registration_failed' && params.retrying === false) || name === 'unregistered') {
      this.session = null; // the session has ended on the gateway: nothing left to resume
      this.user = null;
    }
    this.emit(name, params);
  }

  _rejectAll(reason, message) {
    const pending = Array.from(this._pending.values());
    this._pending.clear();
    for (const entry of pending) {
      clearTimeout(entry.timer);
      entry.reject(new Mpb2buaError({ reason, message: `${entry.method}: ${message}` }));
    }
  }

  // ---- socket -----------------------------------------------------------------------------

  /** Open a SocketTask; callbacks of an older socket are ignored (generation counter). */
  _openSocket({ onOpen, onFail }) {
    const generation = ++this._generation;
    const current = () => generation === this._generation;
    let opened = false;
    let failed = false;
    const fail = (why) => {
      if (failed || !current()) return;
      failed = true;
      this._task = null;
      onFail(why);
    };
    let task;
    try {
      task = this.wx.connectSocket(Object.assign({ tcpNoDelay: true }, this.socketOptions, {
        url: this.url,
        fail: (res) => { if (!opened) fail((res && res.errMsg) || 'connectSocket failed'); },
      }));
    } catch (err) {
      setTimeout(() => fail(err && err.message), 0);
      return;
    }
    if (!task) {
      setTimeout(() => fail('connectSocket returned no task'), 0);
      return;
    }
    this._task = task;
    task.onOpen(() => {
      if (!current() || failed) return;
      opened = true;
      onOpen();
    });
    task.onMessage((res) => {
      if (current()) this._onFrame(res && res.data);
    });
    task.onError((res) => {
      if (!current()) return;
      if (!opened) fail((res && res.errMsg) || 'socket error');
      // once open, an error is followed by onClose: handled there
    });
    task.onClose((res) => {
      if (!current()) return;
      if (!opened) {
        fail(`closed before open (${res && res.code})`);
        return;
      }
      this._task = null;
      this._socketLost((res && res.code) || 1006, (res && res.reason) || '');
    });
  }

  /** Forget the current socket (its late callbacks are ignored) and close it. */
  _dropSocket(code = 1000, reason = '') {
    const task = this._task;
    this._task = null;
    this._generation++;
    if (task) {
      try {
        task.close({ code, reason, fail() {} });
      } catch (err) { /* already closed */ }
    }
  }

  _socketLost(code, reason) {
    this._stopPing();
    this._rejectAll('disconnected', `the socket closed (${code}${reason ? ' ' + reason : ''}) before the answer`);
    if (code === CLOSE_REPLACED) return this._disconnected('replaced');
    if (code === CLOSE_GOING_AWAY) return this._disconnected('shutdown');
    if (!this.session || this.reconnect.maxAttempts <= 0) return this._disconnected('socket_closed');
    if (!this._resuming) { // a socket lost while resuming continues the same reconnection
      this._lostAt = Date.now();
      this._attempt = 0;
    }
    this._resuming = false;
    this.state = 'reconnecting';
    this._scheduleReconnect(`socket closed (${code})`);
    return undefined;
  }

  _disconnected(reason, error) {
    this._resuming = false;
    this._cancelReconnect();
    this._stopPing();
    this._dropSocket();
    this.state = 'closed';
    if (reason !== 'replaced') this.session = null;
    this.emit('disconnected', error ? { reason, error } : { reason });
  }

  _scheduleReconnect(why, minDelay = 0) {
    this._attempt += 1;
    if (this._attempt > this.reconnect.maxAttempts) return this._disconnected('reconnect_failed');
    const delay = Math.max(minDelay, backoffDelay(this._attempt, this.reconnect, this.random));
    if (Date.now() + delay - this._lostAt > this.reconnect.gracePeriod) {
      return this._disconnected('grace_expired');
    }
    this.emit('reconnecting', { attempt: this._attempt, delay, reason: why });
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      this._tryResume();
    }, delay);
    return undefined;
  }

  _cancelReconnect() {
    if (this._reconnectTimer) clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
  }

  _tryResume() {
    if (this.state !== 'reconnecting') return;
    this._openSocket({
      onOpen: () => {
        // the socket is usable for resume only; other requests wait for 'resumed'
        this.state = 'open';
        this._resuming = true;
        const session = this.session;
        this.request('resume', { session }).then((result) => {
          this._resuming = false;
          this._attempt = 0;
          this._startPing();
          this.emit('resumed', result);
        }, (err) => {
          if (err.reason === 'disconnected') return; // the new socket died too: already rescheduled
          this._resuming = false;
          if (err.reason === 'session_not_found') {
            this.session = null;
            this._disconnected('session_not_found', err);
          } else {
            this._dropSocket();
            this.state = 'reconnecting';
            const retryAfter = (err.data && err.data.retry_after) ? err.data.retry_after * 1000 : 0;
            this._scheduleReconnect(`resume failed: ${err.reason}`, retryAfter);
          }
        });
      },
      onFail: (why) => {
        if (this.state !== 'reconnecting') return;
        this._scheduleReconnect(why);
      },
    });
  }

  // ---- keep-alive -------------------------------------------------------------------------

  _startPing() {
    this._stopPing();
    if (!this.pingInterval) return;
    const generation = this._generation;
    this._pingTimer = setInterval(() => {
      if (this.state !== 'open' || generation !== this._generation) return;
      const started = Date.now();
      this.request('ping', {}, { timeout: Math.min(this.requestTimeout, this.pingInterval) }).then(() => {
        this.lastRtt = Date.now() - started;
      }, (err) => {
        if (err.reason === 'timeout' && generation === this._generation && this.state === 'open') {
          // a socket that cannot answer a ping is dead even if the OS has not noticed yet
          this._dropSocket(4000, 'ping timeout');
          this._socketLost(1006, 'ping timeout');
        }
      });
    }, this.pingInterval);
  }

  _stopPing() {
    if (this._pingTimer) clearInterval(this._pingTimer);
    this._pingTimer = null;
  }
}

// ---- media helpers --------------------------------------------------------------------------

const PUSHER_STATES = Object.freeze({
  1001: 'connecting', // connected to the RTMP server, handshaking
  1002: 'publishing', // handshake done, pushing
  1003: 'info', // camera opened
  1004: 'info', 1005: 'info', 1006: 'info', 1007: 'info', 1008: 'info',
  1101: 'degraded', // uplink too slow
  1102: 'reconnecting', // network lost, reconnecting by itself (at most three tries)
  1103: 'info', 1104: 'info',
  3001: 'reconnecting', 3002: 'reconnecting', 3003: 'reconnecting', 3004: 'reconnecting', 3005: 'reconnecting',
  4998: 'info', 4999: 'info',
  5000: 'stopped', // the mini-program left the foreground: the pusher stops
  5001: 'interrupted', // a phone call / WeChat call took the microphone
  [-1301]: 'failed', [-1302]: 'failed', [-1303]: 'failed', [-1304]: 'failed', [-1305]: 'failed',
  [-1306]: 'failed', [-1307]: 'failed', [-1308]: 'failed', [-1309]: 'failed', [-1310]: 'failed',
  [-1311]: 'failed', [-1312]: 'failed',
  10001: 'failed', // camera refused by the user
  10002: 'failed', // microphone refused by the user
});

const PLAYER_STATES = Object.freeze({
  2001: 'connecting', // connected to the server
  2002: 'playing', // RTMP play started (audio-only streams may report nothing later)
  2003: 'playing', 2004: 'playing',
  2005: 'info',
  2006: 'stopped',
  2007: 'buffering',
  2008: 'info', 2009: 'info',
  2101: 'info', 2102: 'info',
  2103: 'reconnecting', // network lost, reconnecting by itself
  2104: 'degraded', 2105: 'degraded',
  2106: 'info', 2107: 'info', 2108: 'info',
  3001: 'reconnecting', 3002: 'reconnecting', 3003: 'reconnecting', 3005: 'reconnecting',
  [-2301]: 'failed', // lost, reconnection gave up
  [-2302]: 'failed',
});

function codeOf(codeOrEvent) {
  if (codeOrEvent && typeof codeOrEvent === 'object') {
    const detail = codeOrEvent.detail || codeOrEvent;
    return Number(detail.code !== undefined ? detail.code : detail.errCode);
  }
  return Number(codeOrEvent);
}

/**
 * Map a <live-pusher> `bindstatechange` code (or the event itself) to a readable state:
 * `connecting`, `publishing`, `reconnecting` (the pusher retries by itself), `degraded`
 * (poor uplink), `interrupted` (phone call), `stopped`, `failed` (gave up or no device:
 * -1307 after three reconnection tries, -1301/-1302 camera/microphone, 10001/10002 refused),
 * `info` (a notice that changes nothing) or `unknown`.
 * @param {number|{detail:{code:number}}} code
 * @returns {string}
 */
function pusherState(code) {
  return PUSHER_STATES[codeOf(code)] || 'unknown';
}

/**
 * Map a <live-player> `bindstatechange` code (or the event itself) to a readable state:
 * `connecting`, `playing`, `buffering`, `reconnecting`, `degraded`, `stopped`, `failed`
 * (-2301: reconnection gave up), `info` or `unknown`.
 * @param {number|{detail:{code:number}}} code
 * @returns {string}
 */
function playerState(code) {
  return PLAYER_STATES[codeOf(code)] || 'unknown';
}

function ctxCall(ctx, name) {
  return new Promise((resolve, reject) => {
    if (!ctx || typeof ctx[name] !== 'function') {
      reject(new Mpb2buaError({ reason: 'bad_argument', message: `context has no ${name}()` }));
      return;
    }
    ctx[name]({ success: resolve, fail: (res) => reject(new Mpb2buaError({ reason: 'media_failed', message: (res && res.errMsg) || `${name} failed` })) });
  });
}

/**
 * A handle on one live-pusher or live-player bound to one call's URL.
 * @extends Emitter
 */
class MediaHandle extends Emitter {
  constructor(kind, ctx, url, options) {
    super();
    this.kind = kind;
    this.ctx = ctx;
    this.url = url;
    this.state = 'idle';
    this.code = null;
    this._setUrl = options.setUrl;
    this._maxRestarts = options.maxRestarts != null ? options.maxRestarts : 2;
    this._restarts = 0;
    this._stopped = false;
    this._map = kind === 'pusher' ? pusherState : playerState;
  }

  /**
   * Set the URL on the tag (through `setUrl`, e.g. a page.setData) and start the context
   * (`ctx.start()` for a pusher, `ctx.play()` for a player).
   * @returns {Promise<void>}
   */
  async start() {
    this._stopped = false;
    if (this._setUrl) await this._setUrl(this.url);
    this.state = 'connecting';
    await ctxCall(this.ctx, this.kind === 'pusher' ? 'start' : 'play');
  }

  /**
   * Stop the context; later state changes no longer restart it.
   * @returns {Promise<void>}
   */
  async stop() {
    this._stopped = true;
    this.state = 'stopped';
    try {
      await ctxCall(this.ctx, 'stop');
    } catch (err) { /* already stopped */ }
  }

  /**
   * Feed the tag's `bindstatechange` event (or code) in. Emits `state {state, code}`; on
   * `failed` from the network (-1307 / -2301) restarts the context up to `maxRestarts` times,
   * since the tag gives up after its own three tries while the call may still be up.
   * @param {number|{detail:{code:number}}} eventOrCode
   * @returns {string} the new state
   */
  statechange(eventOrCode) {
    const code = codeOf(eventOrCode);
    const state = this._map(code);
    this.code = code;
    if (state !== 'info' && state !== 'unknown') this.state = state;
    if (state === 'publishing' || state === 'playing') this._restarts = 0;
    this.emit('state', { state, code });
    const networkGaveUp = code === -1307 || code === -2301;
    if (networkGaveUp && !this._stopped && this._restarts < this._maxRestarts) {
      this._restarts += 1;
      this.emit('restart', { attempt: this._restarts, code });
      const kick = this.kind === 'pusher' ? 'start' : 'play';
      ctxCall(this.ctx, 'stop').catch(() => {}).then(() => ctxCall(this.ctx, kick)).catch((err) => this.emit('error', err));
    }
    return state;
  }
}

/**
 * Bind a LivePusherContext (`wx.createLivePusherContext()`) to a call's `push_url`.
 * The tag's `url` attribute is what the pusher publishes to: pass `setUrl` (e.g.
 * `url => new Promise(r => page.setData({pushUrl: url}, r))`) and call `handle.start()`, or
 * bind the URL yourself and use `autopush`. Feed `bindstatechange` into `handle.statechange(e)`.
 * @param {object} ctx a LivePusherContext
 * @param {string} pushUrl the call's push_url (rtmp://…)
 * @param {{setUrl?:(url:string)=>(Promise|void), maxRestarts?:number}} [options]
 * @returns {MediaHandle}
 */
function attachPusher(ctx, pushUrl, options) {
  if (typeof pushUrl !== 'string' || !/^rtmps?:\/\//.test(pushUrl)) {
    throw new Mpb2buaError({ reason: 'bad_argument', message: 'pushUrl: an rtmp:// URL' });
  }
  return new MediaHandle('pusher', ctx, pushUrl, options || {});
}

/**
 * Bind a LivePlayerContext (`wx.createLivePlayerContext(id, this)`) to a call's `play_url`.
 * Same contract as attachPusher (`setUrl` sets the tag's `src`; `start()` calls `ctx.play()`).
 * @param {object} ctx a LivePlayerContext
 * @param {string} playUrl the call's play_url (rtmp://…)
 * @param {{setUrl?:(url:string)=>(Promise|void), maxRestarts?:number}} [options]
 * @returns {MediaHandle}
 */
function attachPlayer(ctx, playUrl, options) {
  if (typeof playUrl !== 'string' || !/^rtmps?:\/\//.test(playUrl)) {
    throw new Mpb2buaError({ reason: 'bad_argument', message: 'playUrl: an rtmp:// URL' });
  }
  return new MediaHandle('player', ctx, playUrl, options || {});
}

module.exports = {
  Mpb2buaClient,
  Mpb2buaError,
  Emitter,
  MediaHandle,
  attachPusher,
  attachPlayer,
  pusherState,
  playerState,
  backoffDelay,
  PROTOCOL_EVENTS,
  SDK_EVENTS,
  CLOSE_REPLACED,
  CLOSE_GOING_AWAY,
};
