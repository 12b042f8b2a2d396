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
 * drop on the gateway for its grace period, 30 s by default). The resume result lists the
 * session's calls still up: calls missing from it ended while the socket was away.
 *
 * One session at a time: the session id is kept (in memory and in wx storage, with the time
 * the gateway was last heard), `resume` is always tried before a new `login`, and the client
 * does not give up before the gateway's grace period has passed. A lifecycle layer follows the
 * app (wx.onAppHide/onAppShow), the network (wx.onNetworkStatusChange) and audio interruptions
 * (wx.onAudioInterruptionBegin/End). Calls are `Call` objects that follow docs/protocol.md §7.2.
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
  'message', 'transfer_progress', 'media', 'pbx',
]);

/** Events produced by the SDK itself. */
const SDK_EVENTS = Object.freeze([
  'connected', 'reconnecting', 'resumed', 'disconnected', 'error',
  'call', 'callState', 'networkChanged', 'mediaInterrupted', 'mediaResumed', 'appHide', 'appShow',
]);

/** The `cause` of the `hangup` the SDK reports for calls the gateway ended without an event
 * (the session expired while the client was away: docs/protocol.md §3 `resume`). */
const CAUSE_SESSION_EXPIRED = 'SESSION_EXPIRED';
/** The same for a session that ended otherwise (node shutdown, registration given up, logout). */
const CAUSE_SESSION_ENDED = 'SESSION_ENDED';

const STORAGE_KEY = 'mpb2bua.session';

/** WebSocket close codes the gateway uses (docs/protocol.md §5). */
const CLOSE_GOING_AWAY = 1001;
const CLOSE_REPLACED = 4001;

const DEFAULT_RECONNECT = Object.freeze({
  maxAttempts: 8, // 0 (or reconnect: false) disables reconnection; otherwise it no longer limits it
  baseDelay: 500,
  maxDelay: 8000,
  jitter: 0.3,
  gracePeriod: 30000,
  graceSlack: 5000, // the gateway starts its grace when it notices the loss, after our last frame
  probeTimeout: 3000, // ping timeout used after app show, a network change or a dead media stream
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
    /** Seconds to wait before retrying (`rate_limited`), or null. */
    this.retryAfter = typeof data.retry_after === 'number' ? data.retry_after : null;
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

// ---- calls ------------------------------------------------------------------------------------

/** Call states of docs/protocol.md §7.2. */
const CALL_STATES = Object.freeze(['calling', 'ringing', 'early', 'incoming', 'answering', 'active', 'held', 'ended']);
/** Outbound states before the answer, between which `ringing`/`early_media` move a call. */
const PRE_ANSWER = Object.freeze(['calling', 'ringing', 'early']);

/** The `cause` of the `hangup` the SDK reports for a call that a `resume` result no longer lists:
 * it ended while the socket was silently dead, and its `hangup` event was lost with the socket. */
const CAUSE_ENDED_WHILE_DISCONNECTED = 'NORMAL_UNSPECIFIED';
const REASON_ENDED_WHILE_DISCONNECTED = 'ended while disconnected';

/**
 * One call of the session, in either direction, following docs/protocol.md §7.2. Get them from
 * `client.call()` (resolves with the Call), the client's `call` event (every new Call, inbound
 * ones with the `incoming` params) or `client.calls`.
 *
 * Events (call.on): `state {state, previous}`, every protocol call event of this call
 * (`ringing`, `early_media`, `answered`, `hangup`, `hold`, `dtmf`, `info`, `transfer_progress`,
 * `media`), `quality {level, reasons}`, `ending {method}` (a hangup/reject is waiting for the
 * connection to come back), `media {…}`.
 *
 * `hangup()` and `reject()` issued while the client is reconnecting are held and sent once the
 * session is resumed: the call is never shown as ended before the gateway says so (the `hangup`
 * event), since the SIP call is still up until then.
 * @extends Emitter
 */
class Call extends Emitter {
  constructor(client, fields) {
    super();
    this.client = client;
    /** The gateway's call id. */
    this.id = fields.id;
    /** `outbound` or `inbound`. */
    this.direction = fields.direction;
    /** @type {'calling'|'ringing'|'early'|'incoming'|'answering'|'active'|'held'|'ended'} */
    this.state = fields.state;
    this.to = fields.to || null;
    this.from = fields.from || null;
    this.display = fields.display || null;
    this.video = Boolean(fields.video);
    this.pushUrl = fields.pushUrl;
    this.playUrl = fields.playUrl;
    this.headers = fields.headers || null;
    this.codec = fields.codec || null;
    /** The far end put us on hold (`hold` event). */
    this.remoteHeld = Boolean(fields.remoteHeld);
    this.createdAt = fields.createdAt || Date.now();
    this.answeredAt = fields.answeredAt || null;
    this.endedAt = null;
    /** The `hangup` event's params once ended. */
    this.end = null;
    /** A hangup/reject waiting for the connection: `{method, status?}` or null. */
    this.ending = null;
    /** `unknown`, `good`, `fair`, `poor` or `lost` (see quality()). */
    this.quality = 'unknown';
    this.media = { publisher: null, player: null }; // the gateway's view: connected | gone
    this.handles = [];
    this._pendingEnd = null;
    this._heldByInterruption = false;
  }

  /** Whether the call is still up or being set up. */
  get live() { return this.state !== 'ended'; }

  /** Seconds since the answer (0 before). */
  get duration() {
    if (!this.answeredAt) return 0;
    return Math.max(0, Math.round(((this.endedAt || Date.now()) - this.answeredAt) / 1000));
  }

  _setState(state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    if (state === 'active' && !this.answeredAt) this.answeredAt = Date.now();
    this.emit('state', { state, previous });
    this.client._callChanged(this, previous);
  }

  /** A protocol event for this call (routed by the client). */
  _event(name, params) {
    if (this.state === 'ended') return;
    // events only move a call forward (protocol.md 7.2): those queued while the socket was away
    // arrive after the resume result, whose `calls` may already have put the call further on
    switch (name) {
      case 'ringing': if (this.direction === 'outbound' && PRE_ANSWER.includes(this.state)) this._setState('ringing'); break;
      case 'early_media':
        if (params.codec) this.codec = params.codec;
        if (this.direction === 'outbound' && PRE_ANSWER.includes(this.state)) this._setState('early');
        break;
      case 'answered':
        if (params.codec) this.codec = params.codec;
        if (params.video !== undefined) this.video = Boolean(params.video);
        if (this.state !== 'held') this._setState('active');
        break;
      case 'hold': this.remoteHeld = Boolean(params.held); break;
      case 'media':
        if (params.stream === 'publisher' || params.stream === 'player') this.media[params.stream] = params.state;
        this._updateQuality();
        break;
      case 'hangup': this._ended(params); return;
      default: break;
    }
    this.emit(name, params);
  }

  _ended(params) {
    this.end = params;
    this.endedAt = Date.now();
    for (const handle of this.handles.splice(0)) handle.stop();
    const pending = this._pendingEnd;
    this._pendingEnd = null;
    this.ending = null;
    this._setState('ended');
    this.emit('hangup', params);
    if (pending) pending.resolve({});
  }

  _request(method, params, options) {
    return this.client.request(method, Object.assign({ call: this.id }, params || {}), options);
  }

  /**
   * Answer an incoming call. Resolves `{call}`; the state becomes `answering`, then `active`
   * on `answered`.
   * @returns {Promise<{call:string}>}
   */
  async answer() {
    const result = await this._request('answer');
    if (this.state === 'incoming') this._setState('answering');
    return result;
  }

  /**
   * Refuse an incoming call (486 by default, 603 to decline everywhere). While the client is
   * reconnecting it is held and sent after the resume.
   * @param {number} [status]
   * @returns {Promise<{}>} resolves once the gateway has it or the call has ended anyway
   */
  reject(status) {
    return this._endCall('reject', status !== undefined ? { status } : {});
  }

  /**
   * Hang up (CANCEL, 486 or BYE by state). While the client is reconnecting it is held and sent
   * after the resume; the call stays in its state until the gateway's `hangup` event.
   * @returns {Promise<{}>} resolves once the gateway has it or the call has ended anyway
   */
  hangup() {
    return this._endCall('hangup', {});
  }

  _endCall(method, params) {
    if (this.state === 'ended') return Promise.resolve({});
    if (this._pendingEnd) return this._pendingEnd.promise;
    if (this.client._canSend()) {
      return this._request(method, params).catch((err) => {
        if (err.reason === 'call_not_found' || this.state === 'ended') return {}; // it ended meanwhile
        if (err.reason === 'disconnected' || err.reason === 'not_connected') return this._queueEnd(method, params);
        throw err;
      });
    }
    if (!this.client.session) {
      return Promise.reject(new Mpb2buaError({ reason: 'not_connected', message: `${method}: no session` }));
    }
    return this._queueEnd(method, params);
  }

  _queueEnd(method, params) {
    if (this.state === 'ended') return Promise.resolve({});
    if (this._pendingEnd) return this._pendingEnd.promise;
    const pending = { method, params };
    pending.promise = new Promise((resolve, reject) => { pending.resolve = resolve; pending.reject = reject; });
    this._pendingEnd = pending;
    this.ending = { method };
    this.emit('ending', { method });
    this.client._callChanged(this, this.state);
    return pending.promise;
  }

  /** Send the held hangup/reject (after a resume). */
  _flushEnd() {
    const pending = this._pendingEnd;
    if (!pending || this.state === 'ended') return;
    this._request(pending.method, pending.params).then(() => {
      if (this._pendingEnd === pending) {
        this._pendingEnd = null;
        this.ending = null;
        pending.resolve({});
      }
    }, (err) => {
      if (this._pendingEnd !== pending) return;
      if (err.reason === 'disconnected' || err.reason === 'not_connected') return; // next resume
      this._pendingEnd = null;
      this.ending = null;
      if (err.reason === 'call_not_found') pending.resolve({});
      else pending.reject(err);
    });
  }

  /**
   * Take the gateway's state from a `resume` result (`calls[].state`): results and events written
   * to a socket that died silently are lost, so the gateway's view wins.
   * @param {string} state
   */
  _sync(state) {
    if (this.state === 'ended' || state === this.state || !CALL_STATES.includes(state) || state === 'ended') return;
    if (state === 'held' && this.state !== 'active') this._setState('active'); // answeredAt, and the usual path
    this._setState(state);
  }

  /** The call is gone from the gateway (missing from a `resume` result): end it locally. */
  _lost() {
    if (this.state === 'ended') return;
    const by = this._pendingEnd ? 'local' : 'remote';
    const params = { call: this.id, cause: CAUSE_ENDED_WHILE_DISCONNECTED, reason: REASON_ENDED_WHILE_DISCONNECTED, by };
    this._ended(params);
    this.client.emit('hangup', params);
  }

  /**
   * Hold (`held` state) / unhold (`active`).
   * @returns {Promise<{call:string, held:boolean}>}
   */
  async hold() {
    const result = await this._request('hold');
    if (this.state === 'active') this._setState('held');
    return result;
  }

  /** @returns {Promise<{call:string, held:boolean}>} */
  async unhold() {
    const result = await this._request('unhold');
    if (this.state === 'held') this._setState('active');
    return result;
  }

  /**
   * @param {string} digits
   * @param {{mode?:'auto'|'rfc4733'|'info'}} [options]
   * @returns {Promise<{via?:string}>}
   */
  dtmf(digits, options) {
    return this._request('dtmf', dropUndefined({ digits: String(digits), mode: options && options.mode }));
  }

  /** @param {string} to @returns {Promise<{sip_status:number}>} */
  transfer(to) { return this._request('transfer', { to }); }

  /** @param {string} contentType @param {string|object} body @returns {Promise<{sip_status:number}>} */
  sendInfo(contentType, body) {
    return this._request('send_info', dropUndefined({ content_type: contentType || undefined, body }));
  }

  /**
   * Bind a LivePusherContext to this call's push_url (see attachPusher). The handle is stopped
   * when the call ends and restarted by the client after the app comes back or an interruption.
   * @param {object} ctx @param {object} [options] @returns {MediaHandle}
   */
  attachPusher(ctx, options) { return this.addMedia(attachPusher(ctx, this.pushUrl, options)); }

  /** Bind a LivePlayerContext to this call's play_url (see attachPlayer). @returns {MediaHandle} */
  attachPlayer(ctx, options) { return this.addMedia(attachPlayer(ctx, this.playUrl, options)); }

  /**
   * Track a media handle with this call: its states and net status feed the quality level, a
   * dead stream (3004) makes the client check the connection at once.
   * @param {MediaHandle} handle @returns {MediaHandle}
   */
  addMedia(handle) {
    this.handles.push(handle);
    handle.on('state', (e) => {
      if (e.code === 5000 || e.code === 5001) this.client._mediaNeedsRestart = true;
      if (handle.state === 'ended') {
        // 3004: the gateway closed the stream, i.e. the key is dead. Its `hangup` event comes on a
        // live socket; on a silently dead one the ping fails and the resume's `calls` tell
        this.client._probe('media stream closed by the gateway');
      }
      this._updateQuality();
    });
    handle.on('netstatus', () => this._updateQuality());
    return handle;
  }

  _updateQuality() {
    if (this.state !== 'active' && this.state !== 'held') return;
    const reasons = [];
    let level = 'good';
    const worse = (l, why) => {
      const order = ['good', 'fair', 'poor', 'lost'];
      if (order.indexOf(l) > order.indexOf(level)) level = l;
      reasons.push(why);
    };
    for (const stream of ['publisher', 'player']) if (this.media[stream] === 'gone') worse('lost', `${stream} gone`);
    for (const h of this.handles) {
      if (['reconnecting', 'failed', 'stopped', 'interrupted', 'ended'].includes(h.state)) worse('lost', `${h.kind} ${h.state}`);
      else if (h.state === 'degraded' || h.state === 'buffering') worse('poor', `${h.kind} ${h.state}`);
      const q = h.netQuality();
      if (q !== 'good') worse(q, `${h.kind} network`);
    }
    if (level !== this.quality) {
      this.quality = level;
      this.emit('quality', { level, reasons });
    }
  }

  /** What is kept in storage for a cold restart. */
  _snapshot() {
    return {
      id: this.id, direction: this.direction, state: this.state, to: this.to, from: this.from,
      display: this.display, video: this.video, pushUrl: this.pushUrl, playUrl: this.playUrl,
      codec: this.codec, createdAt: this.createdAt, answeredAt: this.answeredAt,
    };
  }
}

/**
 * The mpb2bua client: one WebSocket to the gateway, one logged-in SIP user, one session at a time.
 *
 * States (`client.state`): `idle` → `connecting` → `open` ⇄ `reconnecting`, and `closed`.
 *
 * Events (client.on(name, fn)): every protocol event with its `params` (`registered`,
 * `registration_failed`, `unregistered`, `pbx`, `incoming`, `ringing`, `early_media`,
 * `answered`, `hangup`, `hold`, `dtmf`, `info`, `message`, `transfer_progress`, `media`, and any
 * newer one), and the SDK's own: `connected`, `reconnecting {attempt, delay, reason}`,
 * `resumed {session, user, state}`, `disconnected {reason, error?}` (the session is gone: log in
 * again), `call` (a new Call), `callState {call, state, previous}`, `networkChanged
 * {isConnected, networkType}`, `mediaInterrupted {reason, calls}`, `mediaResumed {reason, calls}`,
 * `appHide`, `appShow`, `'*'` (every event, as `(name, payload)`).
 *
 * @extends Emitter
 */
class Mpb2buaClient extends Emitter {
  /**
   * @param {object} options
   * @param {string} options.url `wss://gateway.example.com/ws` (`ws://` only in tests/DevTools)
   * @param {object} [options.wx] the `wx` object (defaults to the global `wx`; tests inject a stand-in)
   * @param {number} [options.requestTimeout=15000] ms before a request rejects with reason `timeout`.
   *   `login` waits at least 45 s (the gateway's own login timeout is 40 s).
   * @param {number} [options.connectTimeout=10000] ms to open a socket (wx.connectSocket's own
   *   default is 60 s, longer than the gateway's grace period)
   * @param {number} [options.pingInterval=20000] ms between keep-alive `ping`s (0 disables them)
   * @param {object|false} [options.reconnect] `{baseDelay=500, maxDelay=8000, jitter=0.3,
   *   gracePeriod=30000, graceSlack=5000, probeTimeout=3000}`, or `false` to never reconnect.
   *   `gracePeriod` is a fallback: the gateway's own (`grace_period` of the login and resume
   *   results) is used once known.
   * @param {string|false} [options.storage='mpb2bua.session'] wx storage key of the session
   *   (id, user, last contact, calls) for a resume after a cold restart; `false`: memory only
   * @param {boolean} [options.lifecycle=true] follow app hide/show, network and audio interruptions
   * @param {boolean} [options.holdOnInterruption=true] hold active calls during an audio
   *   interruption (phone/WeChat call) and take them off hold after
   * @param {boolean} [options.keepScreenOn=true] wx.setKeepScreenOn while a call is up
   * @param {object} [options.socketOptions] extra members for wx.connectSocket (header, protocols …)
   * @param {object} [options.timers] `{setTimeout, clearTimeout, setInterval, clearInterval}` (tests)
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
    this.connectTimeout = opts.connectTimeout != null ? opts.connectTimeout : 10000;
    this.pingInterval = opts.pingInterval != null ? opts.pingInterval : 20000;
    this.reconnect = opts.reconnect === false
      ? Object.assign({}, DEFAULT_RECONNECT, { maxAttempts: 0 })
      : Object.assign({}, DEFAULT_RECONNECT, opts.reconnect || {});
    this.socketOptions = opts.socketOptions || {};
    this.random = opts.random || Math.random;
    this.storageKey = opts.storage === false ? null : (opts.storage || STORAGE_KEY);
    this.lifecycle = opts.lifecycle !== false;
    this.holdOnInterruption = opts.holdOnInterruption !== false;
    this.keepScreenOn = opts.keepScreenOn !== false;
    const t = opts.timers || {};
    this._timers = {
      setTimeout: t.setTimeout || ((fn, ms) => setTimeout(fn, ms)),
      clearTimeout: t.clearTimeout || ((id) => clearTimeout(id)),
      setInterval: t.setInterval || ((fn, ms) => setInterval(fn, ms)),
      clearInterval: t.clearInterval || ((id) => clearInterval(id)),
    };

    /** @type {'idle'|'connecting'|'open'|'reconnecting'|'closed'} */
    this.state = 'idle';
    /** The session id (what resume needs); null when there is none to resume. */
    this.session = null;
    /** The logged-in SIP user, or null. */
    this.user = null;
    /** Round-trip time of the last ping, ms. */
    this.lastRtt = null;
    /** Whether the phone has a network (from wx.onNetworkStatusChange). */
    this.online = true;
    /** The last network type seen (`wifi`, `4g` …), or null. */
    this.networkType = null;
    /** Whether the gateway can reach the PBX (`pbx` event). */
    this.pbxReachable = true;
    /** Live calls by id. @type {Map<string, Call>} */
    this.calls = new Map();
    /** @type {Set<string>} calls announced from a resume result (their queued incoming is skipped) */
    this._recovered = new Set();

    this._task = null;
    this._generation = 0;
    this._nextId = 1;
    this._pending = new Map();
    this._pingTimer = null;
    this._reconnectTimer = null;
    this._attempt = 0;
    this._attempting = false;
    this._lastSeen = 0;
    this._resuming = false;
    this._settleWaiters = [];
    this._lifecycleOff = null;
    this._mediaNeedsRestart = false;
    this._interrupted = false;
    this._hidden = false;
    /** The gateway's grace period (ms) from the last login/resume result, or null. */
    this._serverGrace = null;
    this._restore();
  }

  // ---- connection -------------------------------------------------------------------------

  /**
   * Open the WebSocket. With a session to resume (from this client or from storage, still within
   * the grace period) it resumes it first and resolves `{resumed: true, session, user, state}`;
   * if the gateway no longer has it, the session's calls end (`hangup` cause `SESSION_EXPIRED`) and
   * it resolves `{resumed: false}` with the socket open for a login. During a reconnection it
   * joins it (tries at once) and settles with its outcome. Rejects `connect_failed`.
   * @returns {Promise<{resumed:boolean, session?:string, user?:string, state?:string}>}
   */
  connect() {
    this._bindLifecycle();
    if (this.state === 'open' && !this._resuming) return Promise.resolve({ resumed: false });
    if (this.state === 'connecting' && this._connecting) return this._connecting;
    if (this.state === 'reconnecting' || this._resuming) {
      const settled = this._whenSettled();
      this._reconnectNow('connect()');
      return settled;
    }
    if (this.session && this.reconnect.maxAttempts > 0) {
      // a session from before (a cold restart, or close() without logout): resume it
      this.state = 'reconnecting';
      this._attempt = 0;
      const settled = this._whenSettled();
      this._reconnectNow('resume stored session');
      // the session could not be resumed and is forgotten (grace over): a plain connect for a login
      return settled.catch((err) => {
        if (err.reason === 'closed') throw err;
        return this.connect();
      });
    }
    this._cancelReconnect();
    this.state = 'connecting';
    this._connecting = new Promise((resolve, reject) => {
      this._openSocket({
        onOpen: () => {
          this._connecting = null;
          this.state = 'open';
          this._startPing();
          this.emit('connected', { url: this.url });
          resolve({ resumed: false });
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
   * Close the socket: stops keep-alive, reconnection and the lifecycle layer; requests in flight
   * reject with reason `closed`. The gateway keeps the session for its grace period and so does
   * the client (a later connect() resumes it): call logout() first to end it at once. Emits
   * `disconnected {reason: 'closed'}` unless already closed.
   * @param {number} [code=1000]
   * @param {string} [reason]
   */
  close(code = 1000, reason = 'bye') {
    const wasClosed = this.state === 'closed' || this.state === 'idle';
    this._cancelReconnect();
    this._stopPing();
    this._rejectAll('closed', 'the client was closed');
    if (this._task) this._lastSeen = Date.now();
    this._dropSocket(code, reason);
    this._unbindLifecycle();
    this.state = 'closed';
    this._resuming = false;
    this._attempting = false;
    this._save();
    this._settle(new Mpb2buaError({ reason: 'closed', message: 'the client was closed' }));
    if (!wasClosed) this.emit('disconnected', { reason: 'closed' });
  }

  // ---- session ----------------------------------------------------------------------------

  /**
   * Log in as a SIP user: `{user, password}`, `{user, ha1}` or `{token}`. Resolves with
   * `{session, user, expires}` once the gateway's REGISTER succeeded (a `registered` event
   * follows). When this client already holds a live session of the same user (resumed by
   * connect(), or being resumed), that session is kept: resolves `{session, user, resumed: true}`
   * without a second login. Rejects with reason `auth_failed` (sipStatus 401/403/407),
   * `token_invalid`, `timeout`, `pbx_unreachable`, `rate_limited` …
   * @param {{user?:string, password?:string, ha1?:string, token?:string}} credentials
   * @returns {Promise<{session:string, user:string, expires?:number, resumed?:boolean}>}
   */
  async login(credentials) {
    const c = credentials || {};
    if (this.state === 'idle' || this.state === 'closed' || this.state === 'reconnecting' || this._resuming) {
      try {
        await this.connect();
      } catch (err) {
        if (err.reason === 'connect_failed' || err.reason === 'closed' || this.state !== 'closed' || this.session) throw err;
        await this.connect(); // the old session was lost for good: a fresh socket for this login
      }
    }
    if (this.session && this.state === 'open' && !this._resuming && (c.user === undefined || c.user === this.user)) {
      return { session: this.session, user: this.user, resumed: true };
    }
    const params = c.token !== undefined
      ? { token: c.token }
      : dropUndefined({ user: c.user, password: c.password, ha1: c.ha1 });
    const result = await this.request('login', params, { timeout: Math.max(this.requestTimeout, 45000) });
    this.session = result.session;
    this.user = result.user;
    this._lastSeen = Date.now();
    this._takeGrace(result);
    this._save();
    return result;
  }

  /**
   * Log out: the gateway ends the session (calls are hung up without events) and the stored
   * session is forgotten. The socket stays open and may log in again.
   * @returns {Promise<{}>}
   */
  async logout() {
    try {
      return await this.request('logout', {});
    } finally {
      this._forgetSession();
      for (const call of Array.from(this.calls.values())) call._ended({ call: call.id, cause: 'NORMAL_CLEARING', reason: 'logout', by: 'local' });
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
   * Call a number, extension or `sip:` URI. Resolves with a Call (which also has the protocol's
   * `call`, `push_url`, `play_url` members) at once, the INVITE being on its way.
   * @param {string} to
   * @param {{video?:boolean, headers?:Object<string,string>}} [options] `headers`: up to 10 `X-` headers
   * @returns {Promise<Call & {call:string, push_url:string, play_url:string}>}
   */
  async call(to, options) {
    const o = options || {};
    const result = await this.request('call', dropUndefined({ to, video: o.video, headers: o.headers }));
    let call = this.calls.get(result.call);
    if (!call) {
      call = new Call(this, { id: result.call, direction: 'outbound', state: 'calling', to, video: o.video,
        pushUrl: result.push_url, playUrl: result.play_url, headers: o.headers });
      this._addCall(call);
    }
    // the protocol's result members, for code written against the plain result
    return Object.assign(call, { call: result.call, push_url: result.push_url, play_url: result.play_url });
  }

  /** The Call with this id, or undefined. @param {string} id @returns {Call|undefined} */
  getCall(id) { return this.calls.get(id); }

  /**
   * Answer an `incoming` call (its push_url/play_url came with the event).
   * @param {string|{call:string}} call the call id or the `incoming` event
   * @returns {Promise<{call:string}>}
   */
  answer(call) {
    const known = this.calls.get(callId(call));
    return known ? known.answer() : this.request('answer', { call: callId(call) });
  }

  /**
   * Refuse an `incoming` call; held while reconnecting (see Call#reject).
   * @param {string|{call:string}} call
   * @param {number} [status=486] SIP status 400–699 (486 busy, 603 decline …)
   * @returns {Promise<{}>}
   */
  reject(call, status) {
    const known = this.calls.get(callId(call));
    return known ? known.reject(status) : this.request('reject', dropUndefined({ call: callId(call), status }));
  }

  /**
   * Hang up (or cancel, while it rings) a call; held while reconnecting (see Call#hangup).
   * @param {string|{call:string}} call
   * @returns {Promise<{}>}
   */
  hangup(call) {
    const known = this.calls.get(callId(call));
    return known ? known.hangup() : this.request('hangup', { call: callId(call) });
  }

  /**
   * Send DTMF digits (`0-9 * # A-D`, up to 32) on an answered call.
   * @param {string|{call:string}} call
   * @param {string} digits
   * @param {{mode?:'auto'|'rfc4733'|'info'}} [options]
   * @returns {Promise<{via?:string}>}
   */
  dtmf(call, digits, options) {
    const mode = options && options.mode;
    return this.request('dtmf', dropUndefined({ call: callId(call), digits: String(digits), mode }));
  }

  /** Put an answered call on hold. @param {string|{call:string}} call @returns {Promise<{call:string, held:boolean}>} */
  hold(call) {
    const known = this.calls.get(callId(call));
    return known ? known.hold() : this.request('hold', { call: callId(call) });
  }

  /** Take a call off hold. @param {string|{call:string}} call @returns {Promise<{call:string, held:boolean}>} */
  unhold(call) {
    const known = this.calls.get(callId(call));
    return known ? known.unhold() : this.request('unhold', { call: callId(call) });
  }

  /**
   * Blind transfer (SIP REFER) of an answered call; `transfer_progress` events follow.
   * @param {string|{call:string}} call @param {string} to @returns {Promise<{sip_status:number}>}
   */
  transfer(call, to) {
    return this.request('transfer', { call: callId(call), to });
  }

  /**
   * Send a SIP INFO inside a call.
   * @param {string|{call:string}} call @param {string} contentType @param {string|object} body
   * @returns {Promise<{sip_status:number}>}
   */
  sendInfo(call, contentType, body) {
    return this.request('send_info', dropUndefined({ call: callId(call), content_type: contentType || undefined, body }));
  }

  /**
   * Send a SIP MESSAGE outside any call.
   * @param {string} to @param {string} contentType @param {string|object} body
   * @returns {Promise<{sip_status:number}>}
   */
  message(to, contentType, body) {
    return this.request('message', dropUndefined({ to, content_type: contentType || undefined, body }));
  }

  _addCall(call) {
    this.calls.set(call.id, call);
    this._save();
    this.emit('call', call);
    this._applyKeepScreenOn();
  }

  _callChanged(call, previous) {
    if (call.state === 'ended') this.calls.delete(call.id);
    if (previous !== call.state) this.emit('callState', { call, state: call.state, previous });
    this._save();
    this._applyKeepScreenOn();
  }

  /** The gateway ended the session's calls without events (docs/protocol.md §3): say so. */
  _endAllCalls(reason) {
    const expired = reason === 'session_not_found' || reason === 'grace_expired';
    for (const call of Array.from(this.calls.values())) {
      const params = { call: call.id, cause: expired ? CAUSE_SESSION_EXPIRED : CAUSE_SESSION_ENDED, reason, by: 'local' };
      call._ended(params);
      this.emit('hangup', params);
    }
  }

  _applyKeepScreenOn() {
    if (!this.keepScreenOn || typeof this.wx.setKeepScreenOn !== 'function') return;
    const on = Array.from(this.calls.values()).some((c) => c.live);
    if (on === this._screenOn) return;
    this._screenOn = on;
    try { this.wx.setKeepScreenOn({ keepScreenOn: on, fail() {} }); } catch (err) { /* not in this host */ }
  }

  // ---- JSON-RPC plumbing ------------------------------------------------------------------

  /**
   * Send any JSON-RPC request (for methods newer than this SDK). Resolves with `result`,
   * rejects with an Mpb2buaError. Nothing is ever re-sent after a reconnection (only a Call's
   * hangup/reject are held until the resume).
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
      entry.timer = this._timers.setTimeout(() => {
        if (this._pending.get(id) !== entry) return;
        this._pending.delete(id);
        reject(new Mpb2buaError({ reason: 'timeout', message: `no answer to ${method} within ${timeout} ms` }));
      }, timeout);
      this._pending.set(id, entry);
      this._send(frame, (why) => {
        if (this._pending.get(id) !== entry) return;
        this._pending.delete(id);
        this._timers.clearTimeout(entry.timer);
        reject(new Mpb2buaError({ reason: 'send_failed', message: `cannot send ${method}: ${why}` }));
      });
    });
  }

  _canSend() {
    return this.state === 'open' && Boolean(this._task) && !this._resuming;
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
    this._lastSeen = Date.now();
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
      this._timers.clearTimeout(entry.timer);
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
      this._forgetSession(); // the session has ended on the gateway: nothing left to resume
      this._endAllCalls(name);
    }
    if (name === 'pbx') this.pbxReachable = params.reachable !== false;
    if (name === 'incoming' && this._recovered.delete(params.call)) return; // announced from the resume already
    if (name === 'incoming' && typeof params.call === 'string' && !this.calls.has(params.call)) {
      this._addCall(new Call(this, { id: params.call, direction: 'inbound', state: 'incoming', from: params.from,
        to: params.to, display: params.display, video: params.video, headers: params.headers,
        pushUrl: params.push_url, playUrl: params.play_url }));
    }
    const call = typeof params.call === 'string' ? this.calls.get(params.call) : undefined;
    if (call) call._event(name, params);
    this.emit(name, params);
  }

  _rejectAll(reason, message) {
    const pending = Array.from(this._pending.values());
    this._pending.clear();
    for (const entry of pending) {
      this._timers.clearTimeout(entry.timer);
      entry.reject(new Mpb2buaError({ reason, message: `${entry.method}: ${message}` }));
    }
  }

  // ---- storage ----------------------------------------------------------------------------

  _graceLeft(now = Date.now()) {
    return this._lastSeen + this.gracePeriod + this.reconnect.graceSlack - now;
  }

  _restore() {
    if (!this.storageKey || typeof this.wx.getStorageSync !== 'function') return;
    let saved;
    try { saved = this.wx.getStorageSync(this.storageKey); } catch (err) { return; }
    if (!saved || typeof saved !== 'object' || saved.url !== this.url || typeof saved.session !== 'string') return;
    this._lastSeen = Number(saved.seenAt) || 0;
    if (typeof saved.serverGrace === 'number' && saved.serverGrace > 0) this._serverGrace = saved.serverGrace;
    if (this._graceLeft() <= 0) {
      this._removeStored();
      return;
    }
    this.session = saved.session;
    this.user = saved.user || null;
    for (const snap of Array.isArray(saved.calls) ? saved.calls : []) {
      if (snap && typeof snap.id === 'string' && snap.state !== 'ended') this.calls.set(snap.id, new Call(this, snap));
    }
  }

  _save() {
    if (!this.storageKey || typeof this.wx.setStorageSync !== 'function') return;
    if (!this.session) return this._removeStored();
    const value = {
      url: this.url, session: this.session, user: this.user, seenAt: this._lastSeen,
      serverGrace: this._serverGrace, calls: Array.from(this.calls.values()).map((c) => c._snapshot()),
    };
    try { this.wx.setStorageSync(this.storageKey, value); } catch (err) { /* storage full: memory only */ }
    return undefined;
  }

  _removeStored() {
    if (!this.storageKey || typeof this.wx.removeStorageSync !== 'function') return;
    try { this.wx.removeStorageSync(this.storageKey); } catch (err) { /* nothing stored */ }
  }

  _forgetSession() {
    this.session = null;
    this.user = null;
    this._serverGrace = null;
    this._removeStored();
  }

  // ---- socket -----------------------------------------------------------------------------

  /** Open a SocketTask; callbacks of an older socket are ignored (generation counter). */
  _openSocket({ onOpen, onFail }) {
    const generation = ++this._generation;
    const current = () => generation === this._generation;
    let opened = false;
    let failed = false;
    let guard = null;
    const fail = (why) => {
      if (failed || opened || !current()) return;
      failed = true;
      if (guard) this._timers.clearTimeout(guard);
      const task = this._task;
      this._task = null;
      this._generation++;
      if (task) {
        try { task.close({ code: 1000, reason: 'connect failed', fail() {} }); } catch (err) { /* not open */ }
      }
      onFail(why);
    };
    let task;
    try {
      task = this.wx.connectSocket(Object.assign({ tcpNoDelay: true, timeout: this.connectTimeout }, this.socketOptions, {
        url: this.url,
        fail: (res) => fail((res && res.errMsg) || 'connectSocket failed'),
      }));
    } catch (err) {
      this._timers.setTimeout(() => fail(err && err.message), 0);
      return;
    }
    if (!task) {
      this._timers.setTimeout(() => fail('connectSocket returned no task'), 0);
      return;
    }
    this._task = task;
    // wx honours `timeout` only from base library 2.x on some platforms: keep our own bound too
    guard = this._timers.setTimeout(() => fail(`no connection within ${this.connectTimeout} ms`), this.connectTimeout + 500);
    this._connectGuard = guard;
    task.onOpen(() => {
      if (!current() || failed) return;
      opened = true;
      this._timers.clearTimeout(guard);
      this._lastSeen = Date.now();
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
    if (this._connectGuard) this._timers.clearTimeout(this._connectGuard);
    this._connectGuard = null;
    const task = this._task;
    this._task = null;
    this._generation++;
    if (task) {
      try {
        task.close({ code, reason, fail() {} });
      } catch (err) { /* already closed */ }
    }
  }

  _socketLost(code, reason, immediate = false) {
    this._stopPing();
    this._attempting = false;
    this._rejectAll('disconnected', `the socket closed (${code}${reason ? ' ' + reason : ''}) before the answer`);
    if (code === CLOSE_REPLACED) return this._disconnected('replaced');
    if (code === CLOSE_GOING_AWAY) return this._disconnected('shutdown');
    if (!this.session || this.reconnect.maxAttempts <= 0) return this._disconnected('socket_closed');
    if (!this._resuming) this._attempt = 0; // a socket lost while resuming continues the same reconnection
    this._resuming = false;
    this.state = 'reconnecting';
    this._save();
    if (immediate) this._reconnectNow(`socket closed (${code} ${reason})`);
    else this._scheduleReconnect(`socket closed (${code})`);
    return undefined;
  }

  _disconnected(reason, error) {
    this._resuming = false;
    this._attempting = false;
    this._cancelReconnect();
    this._stopPing();
    this._dropSocket();
    this.state = 'closed';
    if (reason !== 'replaced') {
      this._forgetSession();
      this._endAllCalls(reason);
    }
    const payload = error ? { reason, error } : { reason };
    this._settle(new Mpb2buaError({ reason, message: `disconnected: ${reason}`, data: error ? error.data : {} }));
    this.emit('disconnected', payload);
  }

  _scheduleReconnect(why, minDelay = 0) {
    this._cancelReconnect();
    if (this._attempt > 0 && this._graceLeft() <= 0 && this.online) {
      // the gateway has certainly forgotten the session (and we could not reach it to hear so)
      return this._disconnected('grace_expired');
    }
    if (!this.online) {
      // no network: waiting costs no attempt; onNetworkStatusChange brings us back at once
      this.emit('reconnecting', { attempt: this._attempt + 1, delay: null, reason: `${why}; offline` });
      return undefined;
    }
    this._attempt += 1;
    const delay = Math.max(minDelay, backoffDelay(this._attempt, this.reconnect, this.random));
    this.emit('reconnecting', { attempt: this._attempt, delay, reason: why });
    this._reconnectTimer = this._timers.setTimeout(() => {
      this._reconnectTimer = null;
      this._tryResume();
    }, delay);
    return undefined;
  }

  _cancelReconnect() {
    if (this._reconnectTimer) this._timers.clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
  }

  /** Try now (app shown, network back, connect() called), unless a try is under way. */
  _reconnectNow(why) {
    if (this.state !== 'reconnecting' || this._attempting || this._resuming) return;
    this._cancelReconnect();
    this._attempt += 1;
    this.emit('reconnecting', { attempt: this._attempt, delay: 0, reason: why });
    this._tryResume();
  }

  _tryResume() {
    if (this.state !== 'reconnecting' || this._attempting) return;
    this._attempting = true;
    this._openSocket({
      onOpen: () => {
        this._attempting = false;
        // the socket is usable for resume only; other requests wait for 'resumed'
        this.state = 'open';
        this._resuming = true;
        const session = this.session;
        this.request('resume', { session }).then((result) => {
          this._resuming = false;
          this._attempt = 0;
          this.session = result.session || session;
          this.user = result.user || this.user;
          this._lastSeen = Date.now();
          this._takeGrace(result);
          const gone = this._syncCalls(result.calls);
          const strangers = this._strangerCalls(result.calls);
          this._save();
          this._startPing();
          this.emit('resumed', result);
          this._settle(null, Object.assign({ resumed: true }, result));
          for (const call of Array.from(this.calls.values())) if (!gone.includes(call)) call._flushEnd();
          if (gone.length) this._endLostCalls(gone);
          this._adoptStrangers(strangers);
        }, (err) => {
          if (err.reason === 'disconnected') return; // the new socket died too: already rescheduled
          this._resuming = false;
          if (err.reason === 'session_not_found') {
            this._stopPing();
            this._forgetSession();
            this._endAllCalls('session_not_found');
            this._startPing();
            this._settle(null, { resumed: false });
            this.emit('disconnected', { reason: 'session_not_found', error: err });
            return;
          }
          this._dropSocket();
          this.state = 'reconnecting';
          this._scheduleReconnect(`resume failed: ${err.reason}`, err.retryAfter ? err.retryAfter * 1000 : 0);
        });
      },
      onFail: (why) => {
        this._attempting = false;
        if (this.state !== 'reconnecting') return;
        this._scheduleReconnect(why);
      },
    });
  }

  /**
   * Apply a `resume` result's `calls` (the session's calls still up on the gateway): a call whose
   * state differs takes the gateway's; those missing ended while the socket was silently dead
   * (their `hangup` event was lost with it) and are returned, to be ended by _endLostCalls.
   * Without `calls` (a gateway older than this SDK) nothing is known: nothing changes.
   * @param {Array<{call:string, state:string}>|undefined} listed
   * @returns {Call[]}
   */
  _syncCalls(listed) {
    if (!Array.isArray(listed)) return [];
    const states = new Map();
    for (const c of listed) if (c && typeof c.call === 'string') states.set(c.call, c.state);
    const gone = [];
    for (const call of Array.from(this.calls.values())) {
      if (states.has(call.id)) call._sync(states.get(call.id));
      else gone.push(call);
    }
    return gone;
  }

  /** Calls a resume lists that this client never saw (their `incoming` event or `call` result
   * went down with a dead socket). @returns {object[]} */
  _strangerCalls(listed) {
    if (!Array.isArray(listed)) return [];
    return listed.filter((c) => c && typeof c.call === 'string' && !this.calls.has(c.call));
  }

  /**
   * A call ringing in whose `incoming` event was lost is announced now, from the resume's
   * members (a queued `incoming` that follows is not announced twice); an outbound call whose
   * `call` result was lost has no owner on this side: it is hung up rather than left talking.
   */
  _adoptStrangers(strangers) {
    for (const entry of strangers) {
      if (entry.direction === 'inbound' && entry.state === 'incoming' && entry.push_url) {
        this._onEvent('incoming', entry);
        this._recovered.add(entry.call);
      } else if (entry.direction === 'outbound') {
        this.request('hangup', { call: entry.call }).catch(() => {});
      }
    }
  }

  /**
   * End calls a resume found gone, once the events queued while the session was detached have
   * arrived (one of them may be the call's own `hangup`, with the real cause): the gateway writes
   * them right after the result, so the answer to a ping sent now comes after all of them.
   * @param {Call[]} calls
   */
  _endLostCalls(calls) {
    const end = () => { for (const call of calls) call._lost(); };
    this.request('ping', {}, { timeout: this.reconnect.probeTimeout }).then(end, end);
  }

  /** Take `grace_period` (seconds) from a login or resume result: the gateway's own value. */
  _takeGrace(result) {
    const seconds = result && result.grace_period;
    if (typeof seconds === 'number' && seconds > 0) this._serverGrace = seconds * 1000;
  }

  /** The grace period in force, ms: the gateway's (login/resume result) or the `reconnect.gracePeriod` option. */
  get gracePeriod() {
    return this._serverGrace || this.reconnect.gracePeriod;
  }

  _whenSettled() {
    return new Promise((resolve, reject) => this._settleWaiters.push({ resolve, reject }));
  }

  _settle(error, result) {
    for (const w of this._settleWaiters.splice(0)) {
      if (error) w.reject(error);
      else w.resolve(result);
    }
  }

  // ---- keep-alive -------------------------------------------------------------------------

  _startPing() {
    this._stopPing();
    if (!this.pingInterval) return;
    const generation = this._generation;
    this._pingTimer = this._timers.setInterval(() => {
      if (this.state !== 'open' || generation !== this._generation) return;
      this._checkAlive(Math.min(this.requestTimeout, this.pingInterval));
    }, this.pingInterval);
  }

  _stopPing() {
    if (this._pingTimer) this._timers.clearInterval(this._pingTimer);
    this._pingTimer = null;
  }

  /** Ping; a socket that cannot answer within `timeout` is dead even if the OS has not noticed. */
  _checkAlive(timeout) {
    const generation = this._generation;
    const started = Date.now();
    this.request('ping', {}, { timeout }).then(() => {
      this.lastRtt = Date.now() - started;
    }, (err) => {
      if (err.reason === 'timeout' && generation === this._generation && this.state === 'open') {
        this._dropSocket(4000, 'ping timeout');
        this._socketLost(1006, 'ping timeout');
      }
    });
  }

  /** Something suggests the link may be dead: check it now rather than at the next ping. */
  _probe(why) {
    if (this.state === 'reconnecting') this._reconnectNow(why);
    else if (this._canSend() && this.session) this._checkAlive(this.reconnect.probeTimeout);
  }

  // ---- lifecycle --------------------------------------------------------------------------

  _bindLifecycle() {
    if (!this.lifecycle || this._lifecycleOff) return;
    const w = this.wx;
    const offs = [];
    const bind = (on, off, fn) => {
      if (typeof w[on] !== 'function') return;
      w[on](fn);
      offs.push(() => { if (typeof w[off] === 'function') w[off](fn); });
    };
    bind('onAppHide', 'offAppHide', () => this._onAppHide());
    bind('onAppShow', 'offAppShow', () => this._onAppShow());
    bind('onNetworkStatusChange', 'offNetworkStatusChange', (res) => this._onNetwork(res || {}));
    bind('onAudioInterruptionBegin', 'offAudioInterruptionBegin', () => this._onInterruption(true));
    bind('onAudioInterruptionEnd', 'offAudioInterruptionEnd', () => this._onInterruption(false));
    this._lifecycleOff = () => offs.forEach((off) => off());
  }

  _unbindLifecycle() {
    if (this._lifecycleOff) this._lifecycleOff();
    this._lifecycleOff = null;
  }

  _liveCallIds() {
    return Array.from(this.calls.values()).filter((c) => c.state === 'active' || c.state === 'held').map((c) => c.id);
  }

  _onAppHide() {
    this._hidden = true;
    this._save(); // a cold restart from the background resumes from here
    this.emit('appHide', {});
    const calls = this._liveCallIds();
    if (calls.length) this.emit('mediaInterrupted', { reason: 'background', calls });
  }

  _onAppShow() {
    const wasHidden = this._hidden;
    this._hidden = false;
    this.emit('appShow', {});
    this._probe('app shown');
    if (wasHidden) this._restartMedia('foreground');
  }

  _onNetwork(res) {
    const isConnected = res.isConnected !== false;
    const type = res.networkType || null;
    const previous = { online: this.online, type: this.networkType };
    this.online = isConnected;
    this.networkType = type;
    this.emit('networkChanged', { isConnected, networkType: type });
    if (!isConnected) {
      if (this.state === 'reconnecting') this._cancelReconnect(); // pause: attempts would fail anyway
      else if (this._canSend() && this.session) {
        // the socket dies with the network, often without telling: requests wait for the resume
        this._dropSocket(4000, 'network lost');
        this._socketLost(1006, 'network lost');
      }
      return;
    }
    if (this.state === 'reconnecting') {
      this._attempt = 0;
      this._reconnectNow('network back');
    } else if (this._canSend() && this.session) {
      if (!previous.online || (previous.type && previous.type !== type)) {
        // a new network: the old TCP connection is bound to an address that is gone
        this._dropSocket(4000, 'network changed');
        this._socketLost(1006, 'network changed', true);
      } else {
        this._probe('network status changed');
      }
    }
  }

  _onInterruption(begin) {
    const calls = this._liveCallIds();
    if (begin) {
      this._interrupted = true;
      this._mediaNeedsRestart = true;
      this.emit('mediaInterrupted', { reason: 'audio_interruption', calls });
      if (!this.holdOnInterruption) return;
      for (const id of calls) {
        const call = this.calls.get(id);
        if (call.state !== 'active' || !this._canSend()) continue;
        call._heldByInterruption = true;
        call.hold().catch((err) => { call._heldByInterruption = false; this.emit('error', err); });
      }
      return;
    }
    this._interrupted = false;
    for (const call of this.calls.values()) {
      if (!call._heldByInterruption) continue;
      call._heldByInterruption = false;
      if (call.state === 'held' && this._canSend()) call.unhold().catch((err) => this.emit('error', err));
    }
    this._restartMedia('audio_interruption');
  }

  /** After 5000/5001 (background, interruption): restart pusher and player, keep the screen on. */
  _restartMedia(reason) {
    const calls = this._liveCallIds();
    if (!calls.length) return;
    if (this._mediaNeedsRestart || reason === 'foreground') {
      this._mediaNeedsRestart = false;
      for (const id of calls) for (const h of this.calls.get(id).handles) h.restart().catch((err) => this.emit('error', err));
    }
    this._screenOn = undefined; // the system may have reset it in the background
    this._applyKeepScreenOn();
    this.emit('mediaResumed', { reason, calls });
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
  3001: 'reconnecting', 3002: 'reconnecting', 3003: 'reconnecting', 3005: 'reconnecting',
  3004: 'ended', // the RTMP server closed the stream: from this gateway, the key is dead (the call ended)
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
  3004: 'ended', // the RTMP server closed the stream: the key is dead (the call ended)
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
 * (poor uplink), `interrupted` (5001: phone call), `stopped` (5000: the app left the
 * foreground), `ended` (3004: the server closed the stream, i.e. the key is dead),
 * `failed` (gave up or no device: -1307 after three reconnection tries, -1301/-1302
 * camera/microphone, 10001/10002 refused), `info` (a notice that changes nothing) or `unknown`.
 * @param {number|{detail:{code:number}}} code
 * @returns {string}
 */
function pusherState(code) {
  return PUSHER_STATES[codeOf(code)] || 'unknown';
}

/**
 * Map a <live-player> `bindstatechange` code (or the event itself) to a readable state:
 * `connecting`, `playing`, `buffering`, `reconnecting`, `degraded`, `stopped`, `ended`
 * (3004: the server closed the stream), `failed` (-2301: reconnection gave up), `info` or `unknown`.
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
    /** The last `bindnetstatus` info object, or null. */
    this.net = null;
  }

  /**
   * Stop and start the context again (after 5000/5001 or a network give-up). Does nothing once
   * the stream ended (3004) or stop() was called.
   * @returns {Promise<void>}
   */
  async restart() {
    if (this._stopped || this.state === 'ended') return;
    const kick = this.kind === 'pusher' ? 'start' : 'play';
    await ctxCall(this.ctx, 'stop').catch(() => {});
    this.state = 'connecting';
    await ctxCall(this.ctx, kick);
  }

  /**
   * Feed the tag's `bindnetstatus` event in (`e.detail.info`: netSpeed, netJitter,
   * audioBitrate, videoBitrate …). Emits `netstatus {info, quality}`.
   * @param {{detail:{info:object}}|object} event
   * @returns {string} netQuality()
   */
  netstatus(event) {
    const detail = (event && event.detail) || event || {};
    this.net = detail.info || detail;
    const quality = this.netQuality();
    this.emit('netstatus', { info: this.net, quality });
    return quality;
  }

  /**
   * `good`, `fair` or `poor` from the last net status: jitter (ms) above 50 is fair, above 150
   * poor; an audio bitrate of 0 while the stream should flow is poor.
   * @returns {'good'|'fair'|'poor'}
   */
  netQuality() {
    const n = this.net;
    if (!n) return 'good';
    const jitter = Number(n.netJitter) || 0;
    const flowing = this.state === 'publishing' || this.state === 'playing';
    if (jitter > 150 || (flowing && n.audioBitrate !== undefined && Number(n.audioBitrate) === 0)) return 'poor';
    if (jitter > 50) return 'fair';
    return 'good';
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
   * since the tag gives up after its own three tries while the call may still be up. 3004 (the
   * gateway closed the stream: the key died with the call) is final: `ended`, never restarted.
   * 5000/5001 are left to the client's lifecycle layer (restart on app show / interruption end).
   * @param {number|{detail:{code:number}}} eventOrCode
   * @returns {string} the new state
   */
  statechange(eventOrCode) {
    const code = codeOf(eventOrCode);
    const state = this._map(code);
    this.code = code;
    if (this.state === 'ended') return 'ended'; // a dead key stays dead
    if (state !== 'info' && state !== 'unknown') this.state = state;
    if (state === 'ended') this._stopped = true;
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
  if (typeof pushUrl !== 'string' || !/^rtmp:\/\//.test(pushUrl)) { // the tags document rtmp only
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
  if (typeof playUrl !== 'string' || !/^rtmp:\/\//.test(playUrl)) {
    throw new Mpb2buaError({ reason: 'bad_argument', message: 'playUrl: an rtmp:// URL' });
  }
  return new MediaHandle('player', ctx, playUrl, options || {});
}

module.exports = {
  Mpb2buaClient,
  Call,
  CALL_STATES,
  CAUSE_SESSION_EXPIRED,
  CAUSE_SESSION_ENDED,
  CAUSE_ENDED_WHILE_DISCONNECTED,
  REASON_ENDED_WHILE_DISCONNECTED,
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
