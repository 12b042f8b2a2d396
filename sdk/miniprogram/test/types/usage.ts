// Compiled with `tsc --noEmit` (npm run typecheck): the typings fit real mini-program code written
// against miniprogram-api-typings. Not run.
import { Mpb2buaClient, Mpb2buaError, Call, CAUSE_SESSION_EXPIRED, pusherState, CallComponentInstance, CallComponentEvents } from '../../mpb2bua';

async function softphone(): Promise<void> {
  const client = new Mpb2buaClient({ url: 'wss://gw.example.com/ws', wx, reconnect: { gracePeriod: 30000 } });
  client.on('call', (call: Call) => {
    call.on('state', (e) => console.log(e.state === 'active', e.previous));
    call.on('quality', (q) => console.log(q.level));
  });
  client.on('hangup', (e) => console.log(e.cause === CAUSE_SESSION_EXPIRED, e.by));
  client.on('resumed', (r) => console.log(r.grace_period, (r.calls || []).map((c) => c.state)));
  console.log(client.gracePeriod);
  client.on('networkChanged', (e) => console.log(e.isConnected, e.networkType));
  const connected = await client.connect();
  if (!connected.resumed) await client.login({ user: '1000', password: '1234' });
  const call = await client.call('9196', { video: false });
  const pusher = call.attachPusher(wx.createLivePusherContext());
  const player = call.attachPlayer(wx.createLivePlayerContext('far'));
  pusher.statechange({ detail: { code: 1002 } });
  console.log(pusherState(5001), player.netQuality(), call.push_url, call.id);
  try {
    await call.dtmf('1#');
    await call.hangup();
  } catch (err) {
    if (err instanceof Mpb2buaError && err.reason === 'rate_limited') console.log(err.retryAfter);
  }
}

async function withComponent(client: Mpb2buaClient, view: CallComponentInstance): Promise<void> {
  view.setClient(client);
  const call = await view.dial('1500', { video: false });
  const onEnded = (e: { detail: CallComponentEvents['ended'] }) => console.log(e.detail.duration, e.detail.cause);
  onEnded({ detail: { call: call.id, cause: 'NORMAL_CLEARING', by: 'remote', duration: 3 } });
}

void softphone;
void withComponent;
