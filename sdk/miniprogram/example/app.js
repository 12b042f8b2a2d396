// mpb2bua sample app. example/mpb2bua.js and example/components/mpb2bua-call/ are copies of
// sdk/miniprogram/mpb2bua.js and sdk/miniprogram/components/mpb2bua-call/ (a mini-program cannot
// require files outside its own folder; a unit test checks the copies are current: after changing
// them, `cp mpb2bua.js example/ && cp -r components example/`). Edit GATEWAY_URL to your node's wss:// URL (its domain
// must be in the mini-program's "socket legal domains", see docs/miniprogram.md).
const { Mpb2buaClient } = require('./mpb2bua.js');

const GATEWAY_URL = 'wss://gw.example.com/ws';

App({
  globalData: {
    client: null,
  },

  /** One client for the whole app: it survives page changes and reconnects by itself. */
  getClient() {
    if (!this.globalData.client) {
      this.globalData.client = new Mpb2buaClient({
        url: GATEWAY_URL,
        requestTimeout: 15000,
        pingInterval: 20000,
        reconnect: { maxAttempts: 8, baseDelay: 500, maxDelay: 8000 },
      });
    }
    return this.globalData.client;
  },
});
