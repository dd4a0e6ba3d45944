// Test doubles for what keepwatch does not own in these unit tests: the media
// element, the page (window, document), the storage and the network with a
// scripted server. The real server is exercised by the browser tests
// (testdata/e2e.test.js, run by go test).
import { mock } from 'node:test';

export const START = Date.UTC(2024, 10, 22, 10, 0, 0); // the fake wall clock's start

/** FakeMedia is an HTMLMediaElement's observable surface; its position advances with the fake clock while it plays. */
export class FakeMedia extends EventTarget {
  duration = 600;
  paused = true;
  ended = false;
  seeking = false;
  readyState = 4;
  #base = 0;
  #since = 0;

  get currentTime() {
    if (this.paused || this.seeking || this.readyState < 3) return this.#base;
    return this.#base + (clock.mono - this.#since) / 1000;
  }

  set currentTime(t) {
    this.#base = t;
    this.#since = clock.mono;
  }

  play() {
    this.currentTime = this.currentTime;
    this.paused = false;
    this.ended = false;
    this.emit('play');
    this.emit('playing');
  }

  pause() {
    this.currentTime = this.currentTime;
    this.paused = true;
    this.emit('pause');
  }

  seek(t) {
    this.currentTime = this.currentTime;
    this.seeking = true;
    this.emit('seeking');
    this.currentTime = t;
    this.seeking = false;
    this.emit('seeked');
  }

  /** stall freezes the position as a starved player does. */
  stall() {
    this.currentTime = this.currentTime;
    this.readyState = 2;
    this.emit('waiting');
  }

  end() {
    this.currentTime = this.duration;
    this.paused = true;
    this.ended = true;
    this.emit('pause');
    this.emit('ended');
  }

  /**
   * empty does what the media element load algorithm does when a player
   * tears down or reloads its source (hls.js destroy() and
   * recoverMediaError(), video.js dispose(), Shaka unload()): at once the
   * element reads 0, no duration and nothing buffered; its emptied event
   * follows as a task of its own (emit('emptied')).
   */
  empty() {
    this.currentTime = 0;
    this.duration = NaN;
    this.readyState = 0;
    this.paused = true;
    this.seeking = false;
    this.ended = false;
  }

  emit(type) {
    this.dispatchEvent(new Event(type));
  }
}

/** clock holds the fake monotonic clock; the wall clock is node's mocked Date. */
export const clock = { mono: 0 };

/** MapStorage is a Web Storage (localStorage) in memory. */
export class MapStorage {
  m = new Map();
  get length() {
    return this.m.size;
  }
  key(i) {
    return [...this.m.keys()][i] ?? null;
  }
  getItem(k) {
    return this.m.has(k) ? this.m.get(k) : null;
  }
  setItem(k, v) {
    this.m.set(k, String(v));
  }
  removeItem(k) {
    this.m.delete(k);
  }
}

/** jwt returns an unsigned JWT-shaped token for sub (the SDK reads sub; the server verifies). */
export function jwt(sub, n = 0) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'HS256' })}.${b64({ sub, n })}.sig`;
}

/**
 * page installs a fake page (window, document, clocks) for one test and
 * returns controls; respond(req) scripts the server: a status, {status,
 * headers, body}, or an Error to throw as fetch does when offline.
 */
export function page(t, respond = () => 202) {
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: START });
  clock.mono = 0;
  mock.method(performance, 'now', () => clock.mono);
  const win = new EventTarget();
  const doc = new EventTarget();
  doc.visibilityState = 'visible';
  globalThis.window = win;
  globalThis.document = doc;
  t.after(() => {
    mock.timers.reset();
    mock.restoreAll();
    delete globalThis.window;
    delete globalThis.document;
  });

  const requests = [];
  const server = { respond };
  const fetch = async (url, init = {}) => {
    const req = {
      url,
      path: new URL(url).pathname + new URL(url).search,
      method: init.method ?? 'GET',
      headers: init.headers ?? {},
      body: init.body ? JSON.parse(init.body) : undefined,
      bytes: init.body ? Buffer.byteLength(init.body) : 0,
      keepalive: Boolean(init.keepalive),
      at: Date.now(),
    };
    requests.push(req);
    if (server.hold) await server.hold; // a request in flight until the test lets it answer
    const r = server.respond(req) ?? 202;
    if (r instanceof Error) throw r;
    const { status, headers = {}, body } = typeof r === 'number' ? { status: r } : r;
    let payload = body;
    if (payload === undefined && status === 202) {
      payload = req.path.endsWith('/batch') ? { accepted: req.body.events.length, rejected: [] } : { accepted: 1 };
    }
    if (payload === undefined && status >= 400) payload = { type: 'urn:keepwatch:problem:x', title: 'x', status, detail: `status ${status}` };
    const ct = status >= 400 ? 'application/problem+json' : 'application/json';
    return new Response(status === 304 || payload === undefined ? null : JSON.stringify(payload), { status, headers: { 'Content-Type': ct, ...headers } });
  };

  const tokenCalls = [];
  let tokenVersion = 0;
  const token = async ({ refresh }) => {
    tokenCalls.push(refresh);
    if (refresh) tokenVersion++;
    return jwt(server.user ?? 'alice', tokenVersion);
  };

  return {
    win,
    doc,
    server,
    requests,
    fetch,
    token,
    tokenCalls,
    /** posts returns the progress requests (not the GETs). */
    posts: () => requests.filter((r) => r.method === 'POST'),
    hide() {
      doc.visibilityState = 'hidden';
      doc.dispatchEvent(new Event('visibilitychange'));
    },
    pagehide() {
      win.dispatchEvent(new Event('pagehide'));
    },
    online() {
      win.dispatchEvent(new Event('online'));
    },
  };
}

/** settle lets pending promise chains (fetch, token) run. */
export async function settle() {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}

/** advance moves both clocks by ms, firing due timers, letting async work run between steps. */
export async function advance(ms, step = 100) {
  await settle();
  for (let done = 0; done < ms; ) {
    const d = Math.min(step, ms - done);
    clock.mono += d;
    mock.timers.tick(d);
    done += d;
    await settle();
  }
}
