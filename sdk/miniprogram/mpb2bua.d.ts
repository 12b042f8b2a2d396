// Type definitions for the mpb2bua mini-program SDK (mpb2bua.js). Checked with `npm run typecheck`
// (tsc --noEmit against miniprogram-api-typings). The protocol is docs/protocol.md.

/// <reference types="miniprogram-api-typings" />

export type Listener<T = any> = (payload: T) => void;

export declare class Emitter {
  on(event: string, fn: (...args: any[]) => void): () => void;
  once(event: string, fn: (...args: any[]) => void): () => void;
  off(event: string, fn?: (...args: any[]) => void): this;
  emit(event: string, payload?: unknown): boolean;
}

export type ErrorReason =
  | 'auth_failed' | 'not_logged_in' | 'call_not_found' | 'bad_state' | 'bad_request' | 'rate_limited'
  | 'session_not_found' | 'already_logged_in' | 'too_many_sessions' | 'token_invalid' | 'pbx_unreachable'
  | 'pbx_error' | 'timeout' | 'shutting_down' | 'method_not_allowed' | 'too_many_calls' | 'media_unavailable'
  | 'internal_error' | 'disconnected' | 'not_connected' | 'closed' | 'connect_failed' | 'send_failed'
  | 'bad_argument' | 'media_failed' | 'parse_error' | 'unknown' | (string & {});

export declare class Mpb2buaError extends Error {
  constructor(fields: { code?: number | null; reason: string; sipStatus?: number | null; message?: string; data?: object });
  readonly code: number | null;
  readonly reason: ErrorReason;
  readonly sipStatus: number | null;
  readonly data: Record<string, any>;
  /** Seconds to wait (`rate_limited`), or null. */
  readonly retryAfter: number | null;
  static fromRpc(error: { code: number; message: string; data?: object }): Mpb2buaError;
}

export type CallState = 'calling' | 'ringing' | 'early' | 'incoming' | 'answering' | 'active' | 'held' | 'ended';
export type Quality = 'unknown' | 'good' | 'fair' | 'poor' | 'lost';
export type MediaState =
  | 'idle' | 'connecting' | 'publishing' | 'playing' | 'buffering' | 'reconnecting' | 'degraded'
  | 'interrupted' | 'stopped' | 'ended' | 'failed' | 'info' | 'unknown';

export interface HangupEvent {
  call: string;
  cause: string;
  reason?: string;
  by: 'local' | 'remote';
  sip_status?: number;
  media?: Record<string, number | string>;
}

export interface IncomingEvent {
  call: string;
  from?: string;
  from_uri?: string;
  display?: string;
  to: string;
  video: boolean;
  headers?: Record<string, string>;
  push_url: string;
  play_url: string;
}

export interface MediaEvent {
  call: string;
  stream: 'publisher' | 'player';
  state: 'connected' | 'gone';
  reason?: string;
}

type StateChangeEvent = number | { detail: { code: number | string } };
type NetStatusEvent = { detail: { info: Record<string, number> } } | Record<string, number>;

export interface MediaContext {
  start?(options: { success?: (res: any) => void; fail?: (res: any) => void }): void;
  play?(options: { success?: (res: any) => void; fail?: (res: any) => void }): void;
  stop(options: { success?: (res: any) => void; fail?: (res: any) => void }): void;
}

export interface MediaOptions {
  setUrl?: (url: string) => Promise<void> | void;
  maxRestarts?: number;
}

export declare class MediaHandle extends Emitter {
  readonly kind: 'pusher' | 'player';
  readonly ctx: MediaContext;
  readonly url: string;
  state: MediaState;
  code: number | null;
  net: Record<string, number> | null;
  start(): Promise<void>;
  stop(): Promise<void>;
  restart(): Promise<void>;
  statechange(eventOrCode: StateChangeEvent): MediaState;
  netstatus(event: NetStatusEvent): 'good' | 'fair' | 'poor';
  netQuality(): 'good' | 'fair' | 'poor';
}

export declare class Call extends Emitter {
  readonly client: Mpb2buaClient;
  readonly id: string;
  readonly direction: 'outbound' | 'inbound';
  state: CallState;
  to: string | null;
  from: string | null;
  display: string | null;
  video: boolean;
  pushUrl: string;
  playUrl: string;
  headers: Record<string, string> | null;
  codec: string | null;
  remoteHeld: boolean;
  createdAt: number;
  answeredAt: number | null;
  endedAt: number | null;
  end: HangupEvent | null;
  ending: { method: 'hangup' | 'reject' } | null;
  quality: Quality;
  media: { publisher: 'connected' | 'gone' | null; player: 'connected' | 'gone' | null };
  handles: MediaHandle[];
  readonly live: boolean;
  readonly duration: number;
  answer(): Promise<{ call: string }>;
  reject(status?: number): Promise<{}>;
  hangup(): Promise<{}>;
  hold(): Promise<{ call: string; held: boolean }>;
  unhold(): Promise<{ call: string; held: boolean }>;
  dtmf(digits: string | number, options?: { mode?: 'auto' | 'rfc4733' | 'info' }): Promise<{ via?: 'rfc4733' | 'info' }>;
  transfer(to: string): Promise<{ sip_status: number }>;
  sendInfo(contentType: string, body: string | object): Promise<{ sip_status: number }>;
  attachPusher(ctx: WechatMiniprogram.LivePusherContext | MediaContext, options?: MediaOptions): MediaHandle;
  attachPlayer(ctx: WechatMiniprogram.LivePlayerContext | MediaContext, options?: MediaOptions): MediaHandle;
  addMedia(handle: MediaHandle): MediaHandle;
  on(event: 'state', fn: Listener<{ state: CallState; previous: CallState }>): () => void;
  on(event: 'hangup', fn: Listener<HangupEvent>): () => void;
  on(event: 'quality', fn: Listener<{ level: Quality; reasons: string[] }>): () => void;
  on(event: 'ending', fn: Listener<{ method: 'hangup' | 'reject' }>): () => void;
  on(event: 'media', fn: Listener<MediaEvent>): () => void;
  on(event: string, fn: Listener): () => void;
}

export interface ReconnectOptions {
  maxAttempts?: number;
  baseDelay?: number;
  maxDelay?: number;
  jitter?: number;
  gracePeriod?: number;
  graceSlack?: number;
  probeTimeout?: number;
}

export interface Timers {
  setTimeout(fn: () => void, ms: number): any;
  clearTimeout(id: any): void;
  setInterval(fn: () => void, ms: number): any;
  clearInterval(id: any): void;
}

/** The parts of `wx` the SDK uses (the real `wx` fits). */
export interface WxLike {
  connectSocket(options: any): any;
  [name: string]: any;
}

export interface ClientOptions {
  url: string;
  wx?: WechatMiniprogram.Wx | WxLike;
  requestTimeout?: number;
  connectTimeout?: number;
  pingInterval?: number;
  reconnect?: ReconnectOptions | false;
  storage?: string | false;
  lifecycle?: boolean;
  holdOnInterruption?: boolean;
  keepScreenOn?: boolean;
  socketOptions?: Record<string, unknown>;
  timers?: Timers;
  random?: () => number;
}

export type Credentials = { user: string; password: string } | { user: string; ha1: string } | { token: string };

/** One call of the `calls` list of a `resume` result (docs/protocol.md §3). */
export interface ResumedCall {
  call: string;
  state: CallState;
  direction: 'outbound' | 'inbound';
}

/** The `resume` result (the `resumed` event's payload). */
export interface ResumeResult {
  session: string;
  user: string;
  state: string;
  /** The gateway's grace period, seconds. */
  grace_period?: number;
  /** The session's calls still up; a call missing from it has ended. */
  calls?: ResumedCall[];
}

export interface ConnectResult {
  resumed: boolean;
  session?: string;
  user?: string;
  state?: string;
  grace_period?: number;
  calls?: ResumedCall[];
}

export declare class Mpb2buaClient extends Emitter {
  constructor(options: ClientOptions);
  readonly url: string;
  state: 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';
  session: string | null;
  user: string | null;
  lastRtt: number | null;
  online: boolean;
  networkType: string | null;
  pbxReachable: boolean;
  readonly calls: Map<string, Call>;
  /** The grace period in force, ms: the gateway's (login/resume `grace_period`) or the option. */
  readonly gracePeriod: number;
  connect(): Promise<ConnectResult>;
  close(code?: number, reason?: string): void;
  login(credentials: Credentials): Promise<{ session: string; user: string; expires?: number; grace_period?: number; resumed?: boolean }>;
  logout(): Promise<{}>;
  ping(): Promise<{ pong: number; rtt: number }>;
  call(to: string, options?: { video?: boolean; headers?: Record<string, string> }):
    Promise<Call & { call: string; push_url: string; play_url: string }>;
  getCall(id: string): Call | undefined;
  answer(call: string | { call: string }): Promise<{ call: string }>;
  reject(call: string | { call: string }, status?: number): Promise<{}>;
  hangup(call: string | { call: string }): Promise<{}>;
  dtmf(call: string | { call: string }, digits: string | number, options?: { mode?: 'auto' | 'rfc4733' | 'info' }): Promise<{ via?: string }>;
  hold(call: string | { call: string }): Promise<{ call: string; held: boolean }>;
  unhold(call: string | { call: string }): Promise<{ call: string; held: boolean }>;
  transfer(call: string | { call: string }, to: string): Promise<{ sip_status: number }>;
  sendInfo(call: string | { call: string }, contentType: string, body: string | object): Promise<{ sip_status: number }>;
  message(to: string, contentType: string, body: string | object): Promise<{ sip_status: number }>;
  request<T = any>(method: string, params?: object, options?: { timeout?: number }): Promise<T>;

  on(event: 'call', fn: Listener<Call>): () => void;
  on(event: 'callState', fn: Listener<{ call: Call; state: CallState; previous: CallState }>): () => void;
  on(event: 'incoming', fn: Listener<IncomingEvent>): () => void;
  on(event: 'hangup', fn: Listener<HangupEvent>): () => void;
  on(event: 'media', fn: Listener<MediaEvent>): () => void;
  on(event: 'pbx', fn: Listener<{ reachable: boolean }>): () => void;
  on(event: 'registered', fn: Listener<{ user: string; expires: number }>): () => void;
  on(event: 'registration_failed', fn: Listener<{ user: string; reason: string; sip_status?: number; retrying: boolean }>): () => void;
  on(event: 'reconnecting', fn: Listener<{ attempt: number; delay: number | null; reason: string }>): () => void;
  on(event: 'resumed', fn: Listener<ResumeResult>): () => void;
  on(event: 'disconnected', fn: Listener<{ reason: string; error?: Mpb2buaError }>): () => void;
  on(event: 'networkChanged', fn: Listener<{ isConnected: boolean; networkType: string | null }>): () => void;
  on(event: 'mediaInterrupted' | 'mediaResumed', fn: Listener<{ reason: 'audio_interruption' | 'background' | 'foreground'; calls: string[] }>): () => void;
  on(event: '*', fn: (name: string, payload: any) => void): () => void;
  on(event: string, fn: Listener): () => void;
}

export declare function attachPusher(ctx: WechatMiniprogram.LivePusherContext | MediaContext, pushUrl: string, options?: MediaOptions): MediaHandle;
export declare function attachPlayer(ctx: WechatMiniprogram.LivePlayerContext | MediaContext, playUrl: string, options?: MediaOptions): MediaHandle;
export declare function pusherState(code: StateChangeEvent): MediaState;
export declare function playerState(code: StateChangeEvent): MediaState;
export declare function backoffDelay(attempt: number, options: { baseDelay: number; maxDelay: number; jitter?: number }, random?: () => number): number;
export declare const PROTOCOL_EVENTS: readonly string[];
export declare const SDK_EVENTS: readonly string[];
export declare const CALL_STATES: readonly CallState[];
export declare const CAUSE_SESSION_EXPIRED: 'SESSION_EXPIRED';
export declare const CAUSE_SESSION_ENDED: 'SESSION_ENDED';
/** `hangup` cause of a call a `resume` result no longer lists (reason REASON_ENDED_WHILE_DISCONNECTED). */
export declare const CAUSE_ENDED_WHILE_DISCONNECTED: 'NORMAL_UNSPECIFIED';
export declare const REASON_ENDED_WHILE_DISCONNECTED: 'ended while disconnected';
export declare const CLOSE_REPLACED: 4001;
export declare const CLOSE_GOING_AWAY: 1001;

// ---- <mpb2bua-call> (components/mpb2bua-call) ---------------------------------------------------

/** The component's properties (WXML attributes: `ringtone`, `vibrate`, `speaker`, `decline-status`, `reject-when-busy`, `authorize`). */
export interface CallComponentProperties {
  ringtone?: string;
  vibrate?: boolean;
  speaker?: boolean;
  declineStatus?: number;
  rejectWhenBusy?: boolean;
  authorize?: boolean;
}

/** `e.detail` of each event the component triggers (`bind<name>` in WXML). */
export interface CallComponentEvents {
  incoming: { call: string; from: string | null; display: string | null; video: boolean };
  statechange: { call: string; state: CallState };
  answered: { call: string };
  ended: HangupEvent & { duration: number };
  dtmf: { call: string; digits: string };
  mute: { call: string; muted: boolean };
  speaker: { call: string; speaker: boolean };
  error: { action: 'dial' | 'answer' | 'decline' | 'hangup' | 'hold' | 'dtmf' | 'media'; reason: string; message: string };
}

/** What `page.selectComponent('#call')` returns for an <mpb2bua-call>. */
export interface CallComponentInstance {
  setClient(client: Mpb2buaClient): void;
  dial(to: string, options?: { video?: boolean; headers?: Record<string, string> }): Promise<Call>;
  show(call: Call): void;
}
