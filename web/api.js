// The REST side: the session (tokens kept fresh, shared by the tabs of one browser) and
// `call`, which adds the bearer token, retries once after a refresh, and turns problem+json
// into an ApiError.

const KEY = 'chatd.session';
/** Refresh this long before the access token expires (at most a quarter of its lifetime). */
const EARLY_MS = 60_000;

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

async function request(method, path, { body, token } = {}) {
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 'network', 'The server cannot be reached.');
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) throw new ApiError(res.status, data?.code, data?.detail);
  return data;
}

/**
 * Login state: `{access_token, refresh_token, expires_at, user_id}` in localStorage so a
 * reload keeps you logged in. Refresh tokens are single use and reusing one revokes the whole
 * session, so tabs refresh one at a time (a Web Lock) and adopt each other's new tokens.
 */
export class Session {
  /**
   * @param {(data: object|null) => void} onChange  logged in or out
   * @param {(token: string) => void} onToken  a new access token (refreshed here or in another tab)
   */
  constructor(onChange, onToken = () => {}) {
    this.onChange = onChange;
    this.onToken = onToken;
    this.data = read();
    this.timer = null;
    addEventListener('storage', (e) => {
      if (e.key !== KEY) return;
      const before = this.data?.user_id;
      this.data = read();
      this.schedule();
      if (this.data?.user_id !== before) this.onChange(this.data);
      else if (this.data) this.onToken(this.data.access_token);
    });
    this.schedule();
  }

  get userId() {
    return this.data?.user_id ?? null;
  }

  async register(username, password, display_name) {
    await request('POST', '/v1/auth/register', {
      body: { username, password, ...(display_name ? { display_name } : {}) },
    });
    return this.login(username, password);
  }

  async login(username, password) {
    this.store(await request('POST', '/v1/auth/login', { body: { username, password } }));
    this.onChange(this.data);
  }

  async logout() {
    const refresh = this.data?.refresh_token;
    this.clear();
    if (refresh) {
      await request('POST', '/v1/auth/logout', { body: { refresh_token: refresh } }).catch(
        () => {},
      );
    }
  }

  clear() {
    this.data = null;
    localStorage.removeItem(KEY);
    clearTimeout(this.timer);
    this.onChange(null);
  }

  store(tokens) {
    this.data = {
      access_token: tokens.access_token,
      refresh_token: tokens.refresh_token,
      expires_at: Date.now() + tokens.expires_in * 1000,
      refresh_at: Date.now() + tokens.expires_in * 1000 - Math.min(EARLY_MS, tokens.expires_in * 250),
      user_id: tokens.user_id,
    };
    localStorage.setItem(KEY, JSON.stringify(this.data));
    this.schedule();
    this.onToken(this.data.access_token);
  }

  schedule() {
    clearTimeout(this.timer);
    if (!this.data) return;
    const wait = Math.max(1000, this.data.refresh_at - Date.now());
    this.timer = setTimeout(() => this.refresh().catch(() => {}), wait);
  }

  /** An access token valid for at least a while (refreshing first if needed). */
  async token() {
    if (!this.data) throw new ApiError(401, 'unauthorized', 'Not logged in.');
    if (Date.now() >= this.data.refresh_at) await this.refresh();
    return this.data.access_token;
  }

  async refresh() {
    const held = this.data?.refresh_token;
    if (!held) return;
    const run = async () => {
      const stored = read();
      // Another tab has refreshed already: use its tokens.
      if (stored && stored.refresh_token !== held && stored.user_id === this.data?.user_id) {
        this.data = stored;
        this.schedule();
        this.onToken(stored.access_token);
        return;
      }
      try {
        this.store(await request('POST', '/v1/auth/refresh', { body: { refresh_token: held } }));
      } catch (e) {
        if (e.status === 401) this.clear();
        throw e;
      }
    };
    if (navigator.locks) await navigator.locks.request(KEY, run);
    else await run();
  }

  /** A REST call as the logged-in user; one retry after refreshing on a 401. */
  async call(method, path, body) {
    try {
      return await request(method, path, { body, token: await this.token() });
    } catch (e) {
      if (e.status !== 401 || !this.data) throw e;
      await this.refresh();
      return request(method, path, { body, token: this.data.access_token });
    }
  }
}

function read() {
  try {
    const v = JSON.parse(localStorage.getItem(KEY));
    return v && v.access_token && v.refresh_token && v.refresh_at ? v : null;
  } catch {
    return null;
  }
}
