// The WebSocket (`/v1/ws`): connects, resumes from the seqs the app holds, reconnects with
// exponential back-off and full jitter, and notices a dead connection by its missing pongs.

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15_000;
const PING_EVERY_MS = 25_000;
const PONG_WITHIN_MS = 10_000;

export class Live {
  /**
   * @param {object} hooks
   * @param {() => Promise<string>} hooks.token   a fresh access token
   * @param {() => Promise<object>} hooks.prepare called before each connection; returns the
   *   `resume` map (room id → last seq held)
   * @param {(frame: object) => void} hooks.onFrame
   * @param {() => void} hooks.onOpen  after `resume` was sent
   * @param {(state: string, retryAt?: number) => void} hooks.onState
   *   `connecting`, `online` or `offline`
   * @param {() => void} hooks.onSessionEnded  the server closed with 4001: log in again
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.ws = null;
    this.attempt = 0;
    this.stopped = true;
    this.retryTimer = null;
    this.pingTimer = null;
    this.pongTimer = null;
    addEventListener('online', () => this.retryNow());
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.teardown();
  }

  get open() {
    return this.ws?.readyState === WebSocket.OPEN && this.resumed;
  }

  /** Sends a frame; false when not connected (the caller keeps it for later). */
  send(frame) {
    if (!this.open) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** Renews the connection's token in-band (the server closes it with 4002 otherwise). */
  reauth(token) {
    if (this.open) this.ws.send(JSON.stringify({ type: 'auth', access_token: token }));
  }

  retryNow() {
    if (this.stopped || this.ws) return;
    clearTimeout(this.retryTimer);
    this.connect();
  }

  async connect() {
    if (this.stopped) return;
    this.hooks.onState('connecting');
    let resume;
    let token;
    try {
      resume = await this.hooks.prepare();
      token = await this.hooks.token();
    } catch (e) {
      if (e.status === 401) return; // logged out; the app has stopped us
      this.scheduleRetry();
      return;
    }
    if (this.stopped) return;
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${proto}//${location.host}/v1/ws?access_token=${encodeURIComponent(token)}`);
    this.ws = ws;
    this.resumed = false;
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: 'resume', rooms: resume }));
      this.resumed = true;
      this.hooks.onState('online');
      this.heartbeat();
      this.hooks.onOpen();
    };
    ws.onmessage = (m) => {
      let frame;
      try {
        frame = JSON.parse(m.data);
      } catch {
        return;
      }
      if (frame.type === 'pong') {
        clearTimeout(this.pongTimer);
        // A connection that carried a round trip is healthy: back-off starts over.
        this.attempt = 0;
        return;
      }
      this.hooks.onFrame(frame);
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.teardown();
      // 4001: the session ended (no retry); 4002: the token expired (a retry gets a fresh one).
      if (e.code === 4001) this.hooks.onSessionEnded();
      else this.scheduleRetry();
    };
  }

  heartbeat() {
    clearInterval(this.pingTimer);
    const ping = () => {
      if (!this.send({ type: 'ping' })) return;
      clearTimeout(this.pongTimer);
      this.pongTimer = setTimeout(() => this.ws?.close(), PONG_WITHIN_MS);
    };
    ping();
    this.pingTimer = setInterval(ping, PING_EVERY_MS);
  }

  teardown() {
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
    const ws = this.ws;
    this.ws = null;
    this.resumed = false;
    if (ws) {
      ws.onclose = ws.onmessage = ws.onopen = null;
      ws.close();
    }
  }

  scheduleRetry() {
    if (this.stopped) return;
    const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    this.attempt += 1;
    // Full jitter: clients dropped together by a restart do not come back together.
    const wait = BACKOFF_MIN_MS / 2 + Math.random() * cap;
    this.hooks.onState('offline', Date.now() + wait);
    this.retryTimer = setTimeout(() => this.connect(), wait);
  }
}
