// <mpb2bua-call>: a drop-in call screen on top of the mpb2bua SDK (docs/miniprogram.md §2).
// Shows the client's current call: incoming screen (ringtone, vibration, answer/decline), then
// the call (mute, hold, speaker/earpiece, DTMF pad, timer, quality badge) with its <live-pusher>
// (mode RTC) and <live-player>. Self-contained: it needs only the Call objects of the SDK.
'use strict';

const KEYS = ['1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '0', '#'];
const VIBRATE_EVERY = 2000; // ms between wx.vibrateLong (400 ms each) while an incoming call rings
const IN_CALL = ['answering', 'active', 'held'];

function pad2(n) { return n < 10 ? `0${n}` : String(n); }

/** `m:ss`, or `h:mm:ss` from an hour. */
function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h}:${pad2(m)}:${pad2(s % 60)}` : `${m}:${pad2(s % 60)}`;
}

function reasonOf(err) { return (err && (err.reason || err.message)) || 'failed'; }

/** A human line for a `hangup` event. */
function endText(end) {
  if (!end) return 'Call ended';
  if (end.cause === 'SESSION_EXPIRED') return 'Call ended: the connection was away too long';
  if (end.cause === 'LOSE_RACE') return 'Answered on another device';
  if (end.reason === 'ended while disconnected') return 'Call ended while the connection was away';
  if (end.sip_status === 486 || end.cause === 'USER_BUSY') return 'Busy';
  if (end.sip_status === 404) return 'Number not found';
  if (end.cause === 'NO_ANSWER' || end.cause === 'NO_USER_RESPONSE') return 'No answer';
  return `Call ended${end.cause ? ` (${end.cause})` : ''}`;
}

Component({
  options: { styleIsolation: 'isolated' },

  properties: {
    /** Ringtone for incoming calls: a path in the mini-program (e.g. `/assets/ring.mp3`) or an https URL; '' for none. */
    ringtone: { type: String, value: '' },
    /** Vibrate (wx.vibrateLong, every 2 s) while an incoming call rings. */
    vibrate: { type: Boolean, value: true },
    /** Start calls on the loudspeaker (true) or the earpiece (false). */
    speaker: { type: Boolean, value: true },
    /** SIP status of the Decline button (603 declines everywhere, 486 is busy). */
    declineStatus: { type: Number, value: 603 },
    /** Refuse (486) an incoming call while another one is shown. */
    rejectWhenBusy: { type: Boolean, value: true },
    /** Ask for the microphone (and camera for video) with wx.authorize before answering/calling. */
    authorize: { type: Boolean, value: true },
  },

  data: {
    keys: KEYS,
    view: 'idle', // idle | incoming | outgoing | call
    state: '', // the Call's state (protocol.md 7.2)
    callId: '',
    peer: '', // display name or number of the far end
    video: false,
    pushUrl: '',
    playUrl: '',
    muted: false,
    held: false,
    remoteHeld: false,
    speakerOn: true,
    showPad: false,
    dtmfSent: '',
    elapsed: '0:00',
    quality: '', // good | fair | poor | lost (Call#quality)
    ending: false, // a hang-up waits for the connection
    status: '',
    needSetting: '', // a refused permission: the open-type="openSetting" button
  },

  lifetimes: {
    attached() {
      this.setData({ speakerOn: this.properties.speaker });
      if (this._client) return;
      const app = typeof getApp === 'function' ? getApp() : null;
      const client = app && (typeof app.getClient === 'function' ? app.getClient() : (app.globalData && app.globalData.mpb2buaClient));
      if (client) this.setClient(client);
    },
    detached() {
      this._unbindClient();
      this._release();
    },
  },

  methods: {
    // ---- public (this.selectComponent('#call').…) -------------------------------------------
    /** Use this Mpb2buaClient (otherwise getApp().getClient() or getApp().globalData.mpb2buaClient). */
    setClient(client) {
      this._unbindClient();
      this._client = client;
      this._offClient = client.on('call', (call) => this._onNewCall(call));
      if (!this._call) {
        for (const call of client.calls.values()) if (call.live) { this.show(call); break; }
      }
    },

    /** Place a call and show it. Resolves with the Call; rejects (and emits `error`) on failure. */
    async dial(to, options) {
      if (!this._client) throw new Error('mpb2bua-call: no client (setClient)');
      if (this._call) throw new Error('mpb2bua-call: a call is already shown');
      const video = Boolean(options && options.video);
      try {
        await this._authorize(video);
        this.setData({ view: 'outgoing', peer: to, video, status: `Calling ${to}…` });
        const call = await this._client.call(to, options);
        if (this._call !== call) this.show(call);
        return call;
      } catch (err) {
        if (!this._call) this.setData({ view: 'idle', status: `Call failed: ${reasonOf(err)}` });
        this._error('dial', err);
        throw err;
      }
    },

    /** Show this Call (done by itself for the client's new calls while none is shown). */
    show(call) {
      this._release();
      this._call = call;
      const offs = [
        call.on('state', (e) => this._onState(e.state)),
        call.on('hangup', (e) => this._onHangup(e)),
        call.on('quality', (q) => this.setData({ quality: q.level })),
        call.on('hold', (e) => this.setData({ remoteHeld: Boolean(e.held) })),
        call.on('ending', () => this.setData({ ending: true })),
      ];
      this._offCall = () => offs.forEach((off) => off());
      this.setData({
        callId: call.id, peer: call.display || (call.direction === 'inbound' ? call.from : call.to) || '',
        video: call.video, muted: false, held: call.state === 'held', remoteHeld: call.remoteHeld,
        speakerOn: this.properties.speaker, showPad: false, dtmfSent: '', elapsed: '0:00', quality: '',
        ending: Boolean(call.ending), status: '', needSetting: '',
      });
      this._applySpeaker();
      this._onState(call.state, true);
    },

    // ---- buttons ------------------------------------------------------------------------------
    async onAnswer() {
      const call = this._call;
      if (!call || call.state !== 'incoming') return;
      this._stopRinging();
      try {
        await this._authorize(call.video);
        await call.answer();
        this.setData({ status: 'Connecting…' });
        await this._startMedia(call);
      } catch (err) {
        this.setData({ status: `Answer failed: ${reasonOf(err)}` });
        this._error('answer', err);
      }
    },

    async onDecline() {
      const call = this._call;
      if (!call) return;
      this._stopRinging();
      try {
        await call.reject(this.properties.declineStatus);
      } catch (err) {
        this.setData({ status: `Decline failed (${reasonOf(err)})` });
        this._error('decline', err);
      }
    },

    async onHangup() {
      const call = this._call;
      if (!call) return;
      this._stopRinging();
      try {
        await call.hangup(); // the call leaves the screen on its `hangup` event, not before
      } catch (err) {
        this.setData({ status: `Hang-up failed (${reasonOf(err)}): the call is still up` });
        this._error('hangup', err);
      }
    },

    onMute() {
      const muted = !this.data.muted;
      this.setData({ muted }); // <live-pusher muted>: the far end hears silence
      this.triggerEvent('mute', { call: this.data.callId, muted });
    },

    async onHold() {
      const call = this._call;
      if (!call || (call.state !== 'active' && call.state !== 'held')) return;
      try {
        if (call.state === 'held') await call.unhold();
        else await call.hold();
      } catch (err) {
        this.setData({ status: `Hold failed: ${reasonOf(err)}` });
        this._error('hold', err);
      }
    },

    onSpeaker() {
      this.setData({ speakerOn: !this.data.speakerOn });
      this._applySpeaker();
      this.triggerEvent('speaker', { call: this.data.callId, speaker: this.data.speakerOn });
    },

    onPad() {
      this.setData({ showPad: !this.data.showPad });
    },

    async onKey(e) {
      const call = this._call;
      const key = e.currentTarget.dataset.key;
      if (!call || !key || call.state !== 'active') return;
      this.setData({ dtmfSent: this.data.dtmfSent + key });
      try {
        await call.dtmf(key);
        this.triggerEvent('dtmf', { call: call.id, digits: key });
      } catch (err) {
        this.setData({ status: `DTMF failed: ${reasonOf(err)}` });
        this._error('dtmf', err);
      }
    },

    onOpenSetting(e) {
      const auth = (e.detail && e.detail.authSetting) || {};
      if (auth['scope.record']) this.setData({ needSetting: '', status: 'Microphone allowed' });
    },

    // ---- media tags ---------------------------------------------------------------------------
    onPusherState(e) {
      if (this._pusher) this._pusher.statechange(e);
      const code = e.detail && e.detail.code;
      if (code === 10002 || code === -1302) this.setData({ status: 'No microphone: check the permission' });
    },
    onPlayerState(e) { if (this._player) this._player.statechange(e); },
    onPusherNet(e) { if (this._pusher) this._pusher.netstatus(e); },
    onPlayerNet(e) { if (this._player) this._player.netstatus(e); },
    onPusherError(e) {
      const d = e.detail || {};
      this.setData({ status: `Microphone/camera error ${d.errCode}` });
      this._error('media', { reason: 'media_failed', message: d.errMsg });
    },

    // ---- internals ----------------------------------------------------------------------------
    _onNewCall(call) {
      if (this._call && this._call.live) {
        if (call.direction === 'inbound' && this.properties.rejectWhenBusy) call.reject(486).catch(() => {});
        return;
      }
      this.show(call);
    },

    _onState(state, first) {
      const call = this._call;
      if (!call || state === 'ended') return;
      let view = 'outgoing';
      if (state === 'incoming') view = 'incoming';
      else if (IN_CALL.includes(state)) view = 'call';
      this.setData({ state, view, held: state === 'held' });
      if (state === 'incoming' && first) {
        this._startRinging();
        this.triggerEvent('incoming', { call: call.id, from: call.from, display: call.display, video: call.video });
      }
      if (state !== 'incoming') this._stopRinging();
      if (state === 'active' && !this._timer) {
        this._tick();
        this._timer = setInterval(() => this._tick(), 1000);
        this.triggerEvent('answered', { call: call.id });
      }
      // outbound: media from the start (early media); inbound: once answered (onAnswer), or at
      // once for a call shown already answered (a page opened mid-call, a cold restart)
      if (first && (call.direction === 'outbound' || IN_CALL.includes(state))) this._startMedia(call).catch((err) => this._error('media', err));
      this.triggerEvent('statechange', { call: call.id, state });
    },

    _onHangup(end) {
      const call = this._call;
      const duration = call ? call.duration : 0;
      this._release();
      this.setData({ view: 'idle', state: 'ended', callId: '', pushUrl: '', playUrl: '', quality: '', ending: false,
        showPad: false, muted: false, held: false, remoteHeld: false, status: endText(end) });
      this.triggerEvent('ended', Object.assign({ duration }, end));
    },

    _tick() {
      if (this._call) this.setData({ elapsed: clock(this._call.duration) });
    },

    /** Render the tags with the call's URLs (autopush/autoplay), then bind their contexts. */
    _startMedia(call) {
      if (this._pusher) return Promise.resolve();
      return new Promise((resolve) => this.setData({ pushUrl: call.pushUrl, playUrl: call.playUrl }, resolve)).then(() => {
        if (this._call !== call || !call.live) return;
        this._pusher = call.attachPusher(wx.createLivePusherContext());
        this._player = call.attachPlayer(wx.createLivePlayerContext('mpb2bua-far', this));
      });
    },

    _applySpeaker() {
      // <live-player sound-mode> follows data.speakerOn; the ringtone/inner audio too
      if (typeof wx.setInnerAudioOption === 'function') wx.setInnerAudioOption({ speakerOn: this.data.speakerOn, fail() {} });
    },

    _startRinging() {
      this._stopRinging();
      const src = this.properties.ringtone;
      if (src && typeof wx.createInnerAudioContext === 'function') {
        const ring = wx.createInnerAudioContext();
        ring.src = src;
        ring.loop = true;
        ring.play();
        this._ring = ring;
      }
      if (this.properties.vibrate && typeof wx.vibrateLong === 'function') {
        const buzz = () => wx.vibrateLong({ fail() {} });
        buzz();
        this._buzz = setInterval(buzz, VIBRATE_EVERY);
      }
    },

    _stopRinging() {
      if (this._ring) {
        this._ring.stop();
        if (typeof this._ring.destroy === 'function') this._ring.destroy();
        this._ring = null;
      }
      if (this._buzz) clearInterval(this._buzz);
      this._buzz = null;
    },

    _authorize(video) {
      if (!this.properties.authorize || typeof wx.authorize !== 'function') return Promise.resolve();
      const ask = (scope, label) => new Promise((resolve, reject) => wx.authorize({
        scope,
        success: resolve,
        fail: () => {
          this.setData({ needSetting: label, status: `Calls need the ${label.toLowerCase()}: allow it in the settings` });
          reject(Object.assign(new Error(`${scope} refused`), { reason: 'permission_denied' }));
        },
      }));
      return ask('scope.record', 'Microphone').then(() => (video ? ask('scope.camera', 'Camera') : undefined));
    },

    _error(action, err) {
      this.triggerEvent('error', { action, reason: reasonOf(err), message: (err && err.message) || '' });
    },

    _release() {
      this._stopRinging();
      if (this._timer) clearInterval(this._timer);
      this._timer = null;
      if (this._offCall) this._offCall();
      this._offCall = null;
      this._pusher = null; // the Call stops its handles when it ends
      this._player = null;
      this._call = null;
    },

    _unbindClient() {
      if (this._offClient) this._offClient();
      this._offClient = null;
      this._client = null;
    },
  },
});
