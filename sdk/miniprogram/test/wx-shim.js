'use strict';
/**
 * A `wx` object for Node with just what the SDK uses: wx.connectSocket returning a SocketTask
 * (onOpen/onMessage/onClose/onError/send/close, with WeChat's callback shapes), backed by the
 * `ws` package. `shim.sockets` lists every task; `task.kill()` drops the TCP connection without a
 * close handshake, as a phone losing its network does.
 */
const WebSocket = require('ws');

class SocketTask {
  constructor(options) {
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
    for (const fn of this.handlers[name].slice()) fn(res);
  }

  onOpen(fn) { this.handlers.open.push(fn); }
  onMessage(fn) { this.handlers.message.push(fn); }
  onClose(fn) { this.handlers.close.push(fn); }
  onError(fn) { this.handlers.error.push(fn); }

  send({ data, success, fail, complete }) {
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
}

function createWx() {
  const shim = {
    sockets: [],
    connectSocket(options) {
      const task = new SocketTask(options);
      shim.sockets.push(task);
      return task;
    },
    get lastSocket() {
      return shim.sockets[shim.sockets.length - 1];
    },
  };
  return shim;
}

module.exports = { createWx, SocketTask };
