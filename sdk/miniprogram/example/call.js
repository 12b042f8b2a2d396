// A one-page softphone on top of the mpb2bua SDK: log in, dial, answer, DTMF, hang up.
// Media: <live-pusher> publishes the microphone to the call's push_url, <live-player> plays the
// far end from its play_url; both in mode="RTC". See docs/miniprogram.md for the why of each attribute.
const { attachPusher, attachPlayer, pusherState, playerState } = require('./mpb2bua.js');

const DIAL_KEYS = ['1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '0', '#'];

/** wx.authorize as a promise; when the user refused before, offer the settings page. */
function authorize(scope, label) {
  return new Promise((resolve, reject) => {
    wx.authorize({
      scope,
      success: resolve,
      fail() {
        wx.showModal({
          title: `${label} permission`,
          content: `Calls need the ${label.toLowerCase()}. Allow it in the settings.`,
          confirmText: 'Settings',
          success(res) {
            if (!res.confirm) return reject(new Error(`${scope} refused`));
            wx.openSetting({
              success(s) {
                if (s.authSetting[scope]) resolve();
                else reject(new Error(`${scope} refused`));
              },
              fail: () => reject(new Error(`${scope} refused`)),
            });
          },
          fail: () => reject(new Error(`${scope} refused`)),
        });
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
    speaker: true,
    status: '',
    dtmfSent: '',
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
      on('reconnecting', (e) => this.setData({ link: 'reconnecting', status: `Network lost, retry ${e.attempt}…` })),
      on('resumed', () => this.setData({ link: 'online', status: 'Back online' })),
      on('disconnected', this.onDisconnected),
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
      await authorize('scope.record', 'Microphone');
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
    if (!e.retrying) this.setData({ loggedIn: false, status: `Registration lost (${e.reason})` });
  },

  onDisconnected(e) {
    this.stopMedia();
    this.setData({ link: 'offline', loggedIn: false, callState: 'idle', callId: '', incoming: null,
      status: `Disconnected (${e.reason}): log in again` });
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
      await authorize('scope.record', 'Microphone');
      if (video) await authorize('scope.camera', 'Camera');
      this.setData({ callState: 'calling', status: `Calling ${number}…`, dtmfSent: '' });
      const result = await this.client.call(number, { video });
      this.setData({ callId: result.call });
      await this.startMedia(result.push_url, result.play_url);
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
    this.incomingUrls = { push: e.push_url, play: e.play_url };
    this.setData({ callState: 'incoming', callId: e.call, video: Boolean(e.video),
      incoming: { call: e.call, from: e.from, display: e.display || e.from }, status: `Call from ${e.from}` });
    wx.vibrateLong();
  },

  async answer() {
    const { callId, video } = this.data;
    try {
      await authorize('scope.record', 'Microphone');
      if (video) await authorize('scope.camera', 'Camera');
      await this.client.answer(callId);
      this.setData({ incoming: null, callState: 'active', status: 'Connecting…', dtmfSent: '' });
      await this.startMedia(this.incomingUrls.push, this.incomingUrls.play);
    } catch (err) {
      this.setData({ status: `Answer failed: ${err.reason || err.message}` });
    }
  },

  async decline() {
    try {
      await this.client.reject(this.data.callId, 603);
    } catch (err) { /* already gone */ }
    this.setData({ incoming: null, callState: 'idle', callId: '' });
  },

  async hangup() {
    if (!this.data.callId) return;
    try {
      await this.client.hangup(this.data.callId);
    } catch (err) {
      this.onHangup({ call: this.data.callId, cause: err.reason });
    }
  },

  onHangup(e) {
    if (e.call !== this.data.callId) return;
    this.stopMedia();
    this.setData({ callState: 'idle', callId: '', incoming: null, status: `Call ended (${e.cause || 'hangup'})` });
  },

  // ---- media ---------------------------------------------------------------------------------
  /**
   * Render the tags with the call's URLs (autopush/autoplay start them as soon as the URL is set),
   * then bind their contexts so statechange can restart them after a network failure.
   */
  async startMedia(pushUrl, playUrl) {
    wx.setKeepScreenOn({ keepScreenOn: true });
    await this.setDataAsync({ pushUrl, playUrl });
    this.pusher = attachPusher(wx.createLivePusherContext(), pushUrl);
    this.player = attachPlayer(wx.createLivePlayerContext('far', this), playUrl);
  },

  stopMedia() {
    if (this.pusher) this.pusher.stop();
    if (this.player) this.player.stop();
    this.pusher = null;
    this.player = null;
    wx.setKeepScreenOn({ keepScreenOn: false });
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

  onMediaError(e) {
    this.setData({ status: `Media error ${e.detail.errCode}: ${e.detail.errMsg}` });
  },
});
