// A one-page softphone on top of the mpb2bua SDK: log in, dial; the call itself (incoming screen,
// ringtone, answer/decline, mute, hold, speaker, DTMF, timer, quality, live-pusher/live-player) is
// the drop-in <mpb2bua-call> component (components/mpb2bua-call, docs/miniprogram.md §7).

const DIAL_KEYS = ['1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '0', '#'];

Page({
  data: {
    keys: DIAL_KEYS,
    user: '',
    password: '',
    loggedIn: false,
    link: 'offline', // offline | online | reconnecting
    number: '',
    video: false,
    inCall: false,
    status: '',
  },

  onLoad() {
    this.client = getApp().getClient();
    const on = (name, fn) => this.client.on(name, fn.bind(this));
    this.unsubscribe = [
      on('registered', () => this.setData({ status: 'Registered' })),
      on('registration_failed', this.onRegistrationFailed),
      on('reconnecting', (e) => this.setData({ link: 'reconnecting', status: e.delay === null ? 'No network…' : `Network lost, retry ${e.attempt}…` })),
      on('resumed', () => this.setData({ link: 'online', status: 'Back online' })),
      on('disconnected', this.onDisconnected),
      on('mediaInterrupted', (e) => this.setData({ status: e.reason === 'audio_interruption' ? 'On hold: another call took the audio' : 'In the background' })),
      on('mediaResumed', () => this.setData({ status: 'Back in the call' })),
    ];
  },

  onReady() {
    // the component finds getApp().getClient() by itself; say it explicitly all the same
    this.callView = this.selectComponent('#call');
    if (this.callView) this.callView.setClient(this.client);
  },

  onUnload() {
    this.unsubscribe.forEach((off) => off());
  },

  // ---- login ---------------------------------------------------------------------------------
  onInput(e) {
    this.setData({ [e.currentTarget.dataset.field]: e.detail.value });
  },

  async login() {
    const { user, password } = this.data;
    if (!user || !password) return;
    try {
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
    for (const call of this.client.calls.values()) call.hangup().catch(() => {});
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
    // the session has ended on the gateway, and its calls with it (the component shows their end)
    this.setData({ loggedIn: false, status: `Registration lost (${e.reason}): log in again` });
  },

  onDisconnected(e) {
    this.setData({ link: 'offline', loggedIn: false, status: `Disconnected (${e.reason}): log in again` });
  },

  // ---- dial pad ------------------------------------------------------------------------------
  pressKey(e) {
    this.setData({ number: this.data.number + e.currentTarget.dataset.key });
  },

  backspace() {
    this.setData({ number: this.data.number.slice(0, -1) });
  },

  toggleVideo(e) {
    this.setData({ video: e.detail.value });
  },

  async call() {
    const { number, video } = this.data;
    if (!number || this.data.inCall) return;
    try {
      await this.callView.dial(number, { video });
    } catch (err) {
      this.setData({ status: `Call failed: ${err.reason || err.message}` });
    }
  },

  // ---- <mpb2bua-call> events -------------------------------------------------------------------
  onCallState(e) {
    this.setData({ inCall: true, status: `Call ${e.detail.state}` });
  },

  onCallEnded(e) {
    this.setData({ inCall: false, status: `Call ended (${e.detail.cause || 'hangup'}, ${e.detail.duration} s)` });
  },

  onCallError(e) {
    this.setData({ status: `${e.detail.action} failed: ${e.detail.reason}` });
  },
});
