// A one-page softphone on top of the mpb2bua SDK: log in, dial, answer, DTMF, hang up.
// Media: <live-pusher> publishes the microphone to the call's push_url, <live-player> plays the
// far end from its play_url; both in mode="RTC". See docs/miniprogram.md for the why of each attribute.
const { pusherState, playerState } = require('./mpb2bua.js');

const DIAL_KEYS = ['1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '0', '#'];

/**
 * wx.authorize as a promise. When the user refused before, wx.authorize fails at once and only
 * the settings page can grant it again; since base library 2.3.0 wx.openSetting works only from a
 * tap, so the page shows a <button open-type="openSetting"> (data.needSetting) instead.
 */
function authorize(page, scope, label) {
  return new Promise((resolve, reject) => {
    wx.authorize({
      scope,
      success: resolve,
      fail() {
        page.setData({ needSetting: label, status: `Calls need the ${label.toLowerCase()}: allow it in the settings` });
        reject(new Error(`${scope} refused`));
      },
    });
  });
}

Page({
  data: {
    keys: DIAL_KEYS,
    user: '',
    password: '',
    loggedIn: false,
    link: 'offline', // offline | online | reconnecting
    number: '',
    video: false,
    // idle | calling | ringing | early | active | incoming
    callState: 'idle',
    callId: '',
    incoming: null, // {call, from, display}
    pushUrl: '',
    playUrl: '',
    pusherState: '',
    playerState: '',
    quality: '', // good | fair | poor | lost (Call#quality)
    ending: false, // a hang-up waits for the connection to come back
    speaker: true,
    status: '',
    dtmfSent: '',
    needSetting: '', // a refused permission: show the open-type="openSetting" button
  },

  onLoad() {
    this.client = getApp().getClient();
    const on = (name, fn) => this.client.on(name, fn.bind(this));
    this.unsubscribe = [
      on('registered', () => this.setData({ status: 'Registered' })),
      on('registration_failed', this.onRegistrationFailed),
      on('incoming', this.onIncoming),
      on('ringing', (e) => this.forCall(e, () => this.setData({ callState: 'ringing', status: 'Ringing…' }))),
      on('early_media', (e) => this.forCall(e, () => this.setData({ callState: 'early', status: 'Ringing (early media)' }))),
      on('answered', (e) => this.forCall(e, () => this.setData({ callState: 'active', status: `In call (${e.codec})` }))),
      on('hangup', this.onHangup),
      on('dtmf', (e) => this.forCall(e, () => this.setData({ status: `Far end sent ${e.digits}` }))),
      on('reconnecting', (e) => this.setData({ link: 'reconnecting', status: e.delay === null ? 'No network…' : `Network lost, retry ${e.attempt}…` })),
      on('resumed', () => this.setData({ link: 'online', status: 'Back online' })),
      on('disconnected', this.onDisconnected),
      on('mediaInterrupted', (e) => this.setData({ status: e.reason === 'audio_interruption' ? 'On hold: another call took the audio' : 'In the background' })),
      on('mediaResumed', () => this.setData({ status: 'Back in the call' })),
      on('callState', (e) => this.forCall({ call: e.call.id }, () => this.setData({ ending: Boolean(e.call.ending) }))),
    ];
  },

  onUnload() {
    this.unsubscribe.forEach((off) => off());
    this.stopMedia();
  },

  forCall(event, fn) {
    if (event.call === this.data.callId) fn();
  },

  setDataAsync(data) {
    return new Promise((resolve) => this.setData(data, resolve));
  },

  // ---- login ---------------------------------------------------------------------------------
  onInput(e) {
    this.setData({ [e.currentTarget.dataset.field]: e.detail.value });
  },

  async login() {
    const { user, password } = this.data;
    if (!user || !password) return;
    try {
      await authorize(this, 'scope.record', 'Microphone');
      if (this.client.state !== 'open') await this.client.connect();
      this.setData({ link: 'online', status: 'Logging in…' });
      await this.client.login({ user, password });
      this.setData({ loggedIn: true, status: `Logged in as ${user}` });
    } catch (err) {
      const text = err.reason === 'auth_failed' ? 'Wrong user or password' : (err.reason || err.message);
      this.setData({ status: `Login failed: ${text}` });
    }
  },

  async logout() {
    await this.hangup();
    try {
      await this.client.logout();
    } catch (err) { /* the session is gone anyway */ }
    this.setData({ loggedIn: false, status: 'Logged out' });
  },

  onRegistrationFailed(e) {
    if (e.retrying) {
      this.setData({ status: `Registration failed (${e.reason}), retrying…` });
      return;
    }
    // the session has ended on the gateway, and its calls with it
    this.stopMedia();
    this.setData({ loggedIn: false, callState: 'idle', callId: '', incoming: null, ending: false,
      status: `Registration lost (${e.reason}): log in again` });
  },

  onDisconnected(e) {
    this.stopMedia();
    this.setData({ link: 'offline', loggedIn: false, callState: 'idle', callId: '', incoming: null,
      status: `Disconnected (${e.reason}): log in again` });
  },

  onOpenSetting(e) {
    const auth = (e.detail && e.detail.authSetting) || {};
    if (auth['scope.record']) this.setData({ needSetting: '', status: 'Microphone allowed' });
  },

  // ---- dial pad ------------------------------------------------------------------------------
  async pressKey(e) {
    const key = e.currentTarget.dataset.key;
    if (this.data.callState === 'active') {
      // during a call the pad sends DTMF
      this.setData({ dtmfSent: this.data.dtmfSent + key });
      try {
        await this.client.dtmf(this.data.callId, key);
      } catch (err) {
        this.setData({ status: `DTMF failed: ${err.reason}` });
      }
      return;
    }
    this.setData({ number: this.data.number + key });
  },

  backspace() {
    this.setData({ number: this.data.number.slice(0, -1) });
  },

  toggleVideo(e) {
    this.setData({ video: e.detail.value });
  },

  toggleSpeaker() {
    this.setData({ speaker: !this.data.speaker });
  },

  // ---- calls ---------------------------------------------------------------------------------
  async call() {
    const { number, video } = this.data;
    if (!number || this.data.callState !== 'idle') return;
    try {
      await authorize(this, 'scope.record', 'Microphone');
      if (video) await authorize(this, 'scope.camera', 'Camera');
      this.setData({ callState: 'calling', status: `Calling ${number}…`, dtmfSent: '' });
      const call = await this.client.call(number, { video });
      this.setData({ callId: call.id });
      await this.startMedia(call);
    } catch (err) {
      this.stopMedia();
      this.setData({ callState: 'idle', callId: '', status: `Call failed: ${err.reason || err.message}` });
    }
  },

  onIncoming(e) {
    if (this.data.callState !== 'idle') {
      this.client.reject(e.call, 486).catch(() => {}); // busy: one call at a time in this sample
      return;
    }
    this.setData({ callState: 'incoming', callId: e.call, video: Boolean(e.video),
      incoming: { call: e.call, from: e.from, display: e.display || e.from }, status: `Call from ${e.from}` });
    wx.vibrateLong();
  },

  async answer() {
    const { callId, video } = this.data;
    try {
      await authorize(this, 'scope.record', 'Microphone');
      if (video) await authorize(this, 'scope.camera', 'Camera');
      const call = this.client.getCall(callId);
      await call.answer();
      this.setData({ incoming: null, callState: 'active', status: 'Connecting…', dtmfSent: '' });
      await this.startMedia(call);
    } catch (err) {
      this.setData({ status: `Answer failed: ${err.reason || err.message}` });
    }
  },

  // Decline and hang-up never end the call on screen by themselves: the `hangup` event does
  // (onHangup). While reconnecting the SDK holds them and sends them after the resume.
  async decline() {
    const call = this.client.getCall(this.data.callId);
    if (!call) return;
    try {
      await call.reject(603);
    } catch (err) {
      this.setData({ status: `Decline failed (${err.reason}): the phone still rings` });
    }
  },

  async hangup() {
    const call = this.client.getCall(this.data.callId);
    if (!call) return;
    if (call.ending) this.setData({ status: 'Hanging up once the network is back…' });
    try {
      await call.hangup();
    } catch (err) {
      this.setData({ status: `Hang-up failed (${err.reason}): the call is still up` });
    }
  },

  onHangup(e) {
    if (e.call !== this.data.callId) return;
    this.stopMedia();
    const why = e.cause === 'SESSION_EXPIRED' ? 'the connection was away too long'
      : (e.cause === 'LOSE_RACE' ? 'answered on another device' : (e.cause || 'hangup'));
    this.setData({ callState: 'idle', callId: '', incoming: null, ending: false, quality: '', status: `Call ended (${why})` });
  },

  // ---- media ---------------------------------------------------------------------------------
  /**
   * Render the tags with the call's URLs (autopush/autoplay start them as soon as the URL is set),
   * then bind their contexts so statechange can restart them after a network failure.
   */
  async startMedia(call) {
    // keep-screen-on, restarts after 5000/5001 and 3004 handling come from the SDK's lifecycle layer
    await this.setDataAsync({ pushUrl: call.pushUrl, playUrl: call.playUrl });
    this.pusher = call.attachPusher(wx.createLivePusherContext());
    this.player = call.attachPlayer(wx.createLivePlayerContext('far', this));
    call.on('quality', (q) => this.setData({ quality: q.level }));
  },

  stopMedia() {
    if (this.pusher) this.pusher.stop();
    if (this.player) this.player.stop();
    this.pusher = null;
    this.player = null;
    this.setData({ pushUrl: '', playUrl: '', pusherState: '', playerState: '' });
  },

  onPusherState(e) {
    const state = this.pusher ? this.pusher.statechange(e) : pusherState(e);
    if (state !== 'info') this.setData({ pusherState: `${state} (${e.detail.code})` });
    if (e.detail.code === 10002 || e.detail.code === -1302) {
      this.setData({ status: 'No microphone: check the permission' });
    }
  },

  onPlayerState(e) {
    const state = this.player ? this.player.statechange(e) : playerState(e);
    if (state !== 'info') this.setData({ playerState: `${state} (${e.detail.code})` });
  },

  onPusherNet(e) { if (this.pusher) this.pusher.netstatus(e); },
  onPlayerNet(e) { if (this.player) this.player.netstatus(e); },

  onPusherError(e) {
    // live-pusher's binderror: 10001 camera / 10002 microphone refused
    this.setData({ status: `Microphone/camera error ${e.detail.errCode}: ${e.detail.errMsg}` });
  },
});
