// keepwatch player SDK: reports how far a viewer got in a video to keepwatch's
// command API, and reads it back from the query API. One file, no
// dependencies: import it from a <script type="module"> as it is, or from npm.
//
//   const tracker = trackProgress(video, { commandUrl, videoId, token });
//   const seconds = await resumePosition({ queryUrl, videoId, token });
//   const items = await fetchKeepWatching({ queryUrl, token, limit: 20 });
//
// The rules it follows, and why, are in README.md beside this file.

/** The server's rule for video ids. */
const VIDEO_ID = /^[A-Za-z0-9._:-]{1,128}$/;
/** The server's bound on a position or duration in seconds. */
const MAX_SECONDS = 99_999_999.999;
/** The server's default --batch-max-events. */
const BATCH_MAX_EVENTS = 100;
/**
 * Largest request body sent. Browsers let all keepalive requests of a page
 * in flight share 64 KiB, and the server's default --body-limit is 64 KiB.
 */
const REQUEST_BYTES = 60 * 1024;
/** Prefix of every storage key the SDK writes. */
const STORAGE_PREFIX = 'keepwatch:v1:';
/**
 * How long an observation being posted is left alone by other tabs' queue
 * sends (ms): long enough for a request, short enough that the progress of a
 * tab that died mid-request is sent soon by the next.
 */
const LEASE = 30_000;
/**
 * How soon a tab looks at the queue again when another tab held its lock
 * (ms): that tab's send may have missed what this tab just queued.
 */
const LOCK_BUSY_RETRY_MS = 1_000;

/** The defaults of trackProgress's options. */
export const defaults = Object.freeze({
  interval: 10_000,
  seekDebounce: 1_000,
  maxQueued: 500,
  maxQueuedBytes: 256 * 1024,
  retryBase: 1_000,
  retryMax: 300_000,
  finished: 95,
});

/**
 * This page's session: an entry written by this page carries it, so its age
 * can be measured on the monotonic clock instead of the wall clock, which
 * may be set while the entry waits.
 */
const SESSION = Math.random().toString(36).slice(2, 10) + Date.now().toString(36);
let observations = 0;

const monotonic = () => globalThis.performance?.now?.() ?? Date.now();
const round3 = (v) => Math.round(v * 1000) / 1000;

/**
 * An error the SDK reports to onError (trackProgress) or throws (the query
 * helpers). status is the HTTP status (0: none), problem the server's
 * problem+json body when there was one, videoIds the videos concerned, and
 * dropped tells whether progress was discarded (true) or still waits to be
 * sent (false).
 */
export class KeepwatchError extends Error {
  constructor(message, { status = 0, problem = null, videoIds = [], dropped = false, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'KeepwatchError';
    this.status = status;
    this.problem = problem;
    this.videoIds = videoIds;
    this.dropped = dropped;
  }
}

/** validVideoId reports whether id passes the server's rule: 1–128 characters of [A-Za-z0-9._:-]. */
export function validVideoId(id) {
  return typeof id === 'string' && VIDEO_ID.test(id);
}

/**
 * trackProgress reports the progress of media (any HTMLMediaElement, so
 * video.js, hls.js and Shaka players too) to keepwatch's command API until
 * stop(). See README.md for the options and what is posted when.
 */
export function trackProgress(media, options) {
  return new Tracker(media, options);
}

class Tracker {
  #media;
  #o;
  #fetch;
  #queue;
  #url;
  #user = null; // the token's subject: queued progress belongs to a user
  #token = null; // the last token, for sends that cannot wait (page close)
  #engaged = false; // playback started: nothing is posted before
  #last = null; // position of the last observation posted or queued
  #seen = null; // the last reading of the media with metadata (#read)
  #heartbeat = null;
  #seekTimer = null;
  #retryTimer = null;
  #attempt = 0; // consecutive failed sends
  #backoffUntil = 0; // monotonic ms: our own backoff (flush() may skip it)
  #notBefore = 0; // monotonic ms: the server's Retry-After
  #draining = null;
  #lastKeepalive = -Infinity; // monotonic ms of the last post made as the page went away
  #stopped = false;
  #detach = [];

  constructor(media, options) {
    if (!media || typeof media.addEventListener !== 'function' || !('currentTime' in media)) {
      throw new TypeError('keepwatch: trackProgress needs an HTMLMediaElement');
    }
    const o = { ...defaults, ...options };
    if (typeof o.commandUrl !== 'string' || !/^https?:\/\//.test(o.commandUrl)) {
      throw new TypeError('keepwatch: commandUrl must be the command API\'s http(s) base URL');
    }
    if (!validVideoId(o.videoId)) {
      throw new TypeError(`keepwatch: videoId ${JSON.stringify(o.videoId)} is not 1–128 characters of A-Z a-z 0-9 . _ : -`);
    }
    if (typeof o.token !== 'function') {
      throw new TypeError('keepwatch: token must be a function returning the bearer token (or a promise of it)');
    }
    if (o.seriesId !== undefined && !validVideoId(o.seriesId)) {
      throw new TypeError(`keepwatch: seriesId ${JSON.stringify(o.seriesId)} is not 1–128 characters of A-Z a-z 0-9 . _ : -`);
    }
    if (o.episode !== undefined && !(Number.isFinite(o.episode) && o.episode >= 0 && o.episode <= MAX_SECONDS)) {
      throw new RangeError(`keepwatch: episode must be a number from 0 to ${MAX_SECONDS}`);
    }
    for (const name of ['interval', 'seekDebounce', 'maxQueued', 'maxQueuedBytes', 'retryBase', 'retryMax']) {
      if (!(Number.isFinite(o[name]) && o[name] > 0)) throw new RangeError(`keepwatch: ${name} must be a positive number`);
    }
    this.#media = media;
    this.#o = o;
    this.#fetch = o.fetch ?? globalThis.fetch.bind(globalThis);
    this.#url = o.commandUrl.replace(/\/+$/, '');
    this.#queue = new Queue(pickStorage(o.storage), this.#url, o.maxQueued, o.maxQueuedBytes, (err) => this.#report(err));

    const on = (target, type, fn) => {
      if (!target?.addEventListener) return;
      target.addEventListener(type, fn);
      this.#detach.push(() => target.removeEventListener(type, fn));
    };
    on(media, 'playing', () => {
      this.#engaged = true;
      if (this.#heartbeat === null) this.#scheduleHeartbeat();
    });
    on(media, 'pause', () => {
      this.#stopHeartbeat();
      this.#cancelSeek();
      this.#post();
    });
    on(media, 'ended', () => {
      this.#stopHeartbeat();
      this.#post();
      // Players seek back to 0 after the end to offer a replay: that must
      // not bring a finished video back to keep-watching at 0%.
      this.#engaged = false;
    });
    on(media, 'seeking', () => this.#cancelSeek());
    on(media, 'seeked', () => {
      this.#cancelSeek();
      this.#seekTimer = setTimeout(() => {
        this.#seekTimer = null;
        this.#post();
      }, o.seekDebounce);
    });
    on(media, 'timeupdate', () => {
      this.#seen = this.#read() ?? this.#seen;
    });
    on(media, 'emptied', () => {
      // The player destroyed or detached itself, or reloads the source
      // (hls.js recoverMediaError, video.js reloadSourceOnError): the
      // element reads 0 and no duration now, so post where the viewer got
      // to as last seen. Then forget it: nothing of the old source may be
      // posted as the new one's.
      this.#post();
      this.#stopHeartbeat();
      this.#cancelSeek();
      this.#engaged = false;
      this.#last = null;
      this.#seen = null;
    });
    on(globalThis.document, 'visibilitychange', () => {
      if (globalThis.document.visibilityState === 'hidden') this.#post(true);
    });
    on(globalThis.window, 'pagehide', () => this.#post(true));
    on(globalThis.window, 'online', () => {
      this.#attempt = 0;
      this.#backoffUntil = 0;
      this.#drain();
    });
    if (!media.paused && !media.ended && media.readyState >= 3) {
      this.#engaged = true;
      this.#scheduleHeartbeat();
    }
    // Learn whose progress this is before the first observation (the queue
    // is per user), then send whatever an earlier page could not.
    setTimeout(async () => {
      if (this.#stopped) return;
      await this.#getToken(false).catch(() => {}); // a failing token() is reported when a send needs it
      if (!this.#stopped) this.#drain();
    }, 0);
  }

  /**
   * flush posts the current position if it changed and sends every queued
   * observation now, without waiting for the retry timer (a Retry-After from
   * the server is still honoured). It resolves to the number of observations
   * of this user still waiting.
   */
  async flush() {
    if (!this.#stopped) await this.#post();
    this.#backoffUntil = 0;
    await this.#drain();
    return this.#queue.list(this.#user, true).length;
  }

  /** stop posts the current position if it changed, then detaches from the media. */
  async stop() {
    if (this.#stopped) return;
    const last = this.#post();
    this.#stopped = true;
    this.#stopHeartbeat();
    this.#cancelSeek();
    clearTimeout(this.#retryTimer);
    for (const off of this.#detach) off();
    await last;
  }

  #scheduleHeartbeat() {
    clearTimeout(this.#heartbeat);
    this.#heartbeat = setTimeout(() => {
      this.#heartbeat = null;
      const m = this.#media;
      if (this.#stopped || m.paused || m.ended) return; // 'playing' starts it again
      // Seeking or starved of data (stalled): nothing new to say this time.
      if (!m.seeking && m.readyState >= 3) this.#post();
      if (this.#heartbeat === null) this.#scheduleHeartbeat();
    }, this.#o.interval);
  }

  #stopHeartbeat() {
    clearTimeout(this.#heartbeat);
    this.#heartbeat = null;
  }

  #cancelSeek() {
    clearTimeout(this.#seekTimer);
    this.#seekTimer = null;
  }

  /** read reads the media's position now; null when it cannot be tracked. */
  #read() {
    const d = this.#media.duration;
    const p = this.#media.currentTime;
    // NaN: no metadata yet, or the element was emptied. Infinity (or
    // Shaka's huge number): a live stream, which has no position to resume.
    if (!(d > 0 && d <= MAX_SECONDS) || !Number.isFinite(p)) return null;
    const duration = round3(d);
    if (duration <= 0) return null;
    const position = round3(Math.min(Math.max(p, 0), duration));
    return { position, duration, ended: this.#media.ended, ts: Date.now(), m: monotonic() };
  }

  /**
   * observe makes the observation to post: the media's position now or,
   * when the element has lost its source (a player's destroy() empties it at
   * once, before its emptied event), the last one seen; null when there is
   * none.
   */
  #observe() {
    const r = this.#read() ?? this.#seen;
    if (!r) return null;
    const percent = round3(Math.min(100, Math.max(0, (r.position / r.duration) * 100)));
    const e = { video_id: this.#o.videoId, percent, position: r.position, duration: r.duration };
    if (this.#o.seriesId !== undefined) e.series_id = this.#o.seriesId;
    if (this.#o.episode !== undefined) e.episode = round3(this.#o.episode);
    // Played to its end: the server counts it finished whatever its rule
    // for the credits says.
    if (r.ended) e.completed = true;
    return {
      id: `${SESSION}.${++observations}`,
      u: this.#user,
      e,
      ts: r.ts,
      s: SESSION,
      m: r.m,
    };
  }

  /**
   * post records the current position and sends it at once. Nothing is
   * posted before playback starts (a page opening reports 0 before the player
   * seeks to the resume point), nor when the position has not moved since
   * the last post (a paused device must not overwrite what another device
   * advanced since). keepalive sends survive the page closing.
   */
  #post(keepalive = false) {
    if (!this.#engaged || this.#stopped) return Promise.resolve();
    // A closing tab fires visibilitychange and then pagehide, milliseconds
    // of playback apart: one post says it.
    if (keepalive && monotonic() - this.#lastKeepalive < 1000) return Promise.resolve();
    const entry = this.#observe();
    if (!entry || (this.#last !== null && Math.abs(entry.e.position - this.#last) < 0.001)) return Promise.resolve();
    this.#last = entry.e.position;
    if (keepalive) this.#lastKeepalive = monotonic();
    if (this.#heartbeat !== null) this.#scheduleHeartbeat();
    // Sends are failing: the retry timer sends the queue, this entry with it,
    // one request at a time. A closing page with nowhere to keep it tries
    // anyway.
    const now = !(this.#attempt > 0 || this.#blocked()) || (keepalive && this.#queue.volatile);
    // Written before it is sent, so a tab that dies mid-request keeps it;
    // leased while in flight, so other tabs do not send it too.
    if (now) entry.f = Date.now() + LEASE;
    this.#queue.put(entry);
    if (!now) return Promise.resolve();
    return this.#send([entry], { keepalive, single: true }).then((ok) => {
      if (ok && this.#queue.list(this.#user).length > 0) this.#drain();
    });
  }

  #blocked() {
    const now = monotonic();
    return now < this.#notBefore || now < this.#backoffUntil;
  }

  /**
   * drain sends the queued observations of this user through the batch
   * endpoint, one tab at a time where the browser has Web Locks.
   */
  #drain() {
    if (this.#draining) return this.#draining;
    if (this.#queue.list(undefined).length === 0) return Promise.resolve();
    // Another tab holding the lock may have listed the queue just before
    // this tab added to it: look again soon rather than leave the
    // observation until the next post.
    this.#draining = withLock(`keepwatch-queue ${this.#url}`, () => this.#drainLocked(), () => this.#wakeIn(LOCK_BUSY_RETRY_MS))
      .catch((err) => this.#report(new KeepwatchError('keepwatch: sending queued progress', { cause: err })))
      .finally(() => {
        this.#draining = null;
      });
    return this.#draining;
  }

  async #drainLocked() {
    if (this.#user === null) {
      // The queue is per user: learn who this is.
      try {
        await this.#getToken(false);
      } catch (err) {
        this.#report(new KeepwatchError('keepwatch: token() failed; queued progress waits', { cause: err }));
        this.#retry(0);
        return;
      }
    }
    for (;;) {
      if (this.#blocked()) {
        // A timer may fire a moment before the deadline it was set for
        // (timers and performance.now() are not one clock): come back when
        // the wait is over, or nothing would send the queue until the next
        // post.
        this.#wakeIn(Math.max(1, Math.ceil(Math.max(this.#notBefore, this.#backoffUntil) - monotonic())));
        return;
      }
      const entries = this.#queue.list(this.#user);
      if (entries.length === 0) return;
      if (!(await this.#send(chunk(entries), { keepalive: false, single: false }))) return;
    }
  }

  async #getToken(refresh) {
    const t = await this.#o.token({ refresh });
    if (typeof t !== 'string' || t === '') throw new TypeError('token() returned no token');
    if (t !== this.#token) {
      this.#token = t;
      this.#user = subject(t);
    }
    return t;
  }

  /**
   * send posts entries (one through POST /v1/progress when single, else a
   * batch) and settles them: acknowledged ones leave the queue, refused ones
   * are dropped and reported, and anything else waits for a retry. It
   * resolves true when the entries are settled, false when they wait.
   */
  async #send(entries, { keepalive, single }) {
    const ids = entries.map((x) => x.e.video_id);
    // A failed send gives its entries back to the queue's sends.
    const wait = (retryAfterMs, fromServer) => {
      for (const x of entries) this.#queue.release(x);
      this.#retry(retryAfterMs, fromServer);
      return false;
    };
    let refreshed = false;
    for (;;) {
      let token;
      try {
        // A closing page cannot wait for token(): its fetch must start now.
        token = keepalive && this.#token && !refreshed ? this.#token : await this.#getToken(refreshed);
      } catch (err) {
        this.#report(new KeepwatchError('keepwatch: token() failed; the progress waits', { videoIds: ids, cause: err }));
        return wait(0);
      }
      // Observed before the first token told whose they are: they are this user's.
      entries = entries.map((x) => (x.u === null ? this.#queue.adopt(x, this.#user) : x));
      // sent_at is read now, and each ts is moved so that sent_at − ts is the
      // observation's age: the server then places the event in its own clock,
      // whatever this device's clock says.
      const sentAt = Date.now();
      const now = monotonic();
      const events = entries.map((x) => {
        const age = x.s === SESSION ? now - x.m : sentAt - x.ts;
        return { ...x.e, ts: Math.max(1, Math.round(sentAt - Math.max(0, age))) };
      });
      const body = single ? JSON.stringify({ ...events[0], sent_at: sentAt }) : JSON.stringify({ sent_at: sentAt, events });
      let res;
      try {
        res = await this.#fetch(this.#url + (single ? '/v1/progress' : '/v1/progress/batch'), {
          method: 'POST',
          headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
          body,
          keepalive,
          credentials: 'omit',
        });
      } catch {
        // Offline, refused, CORS, aborted: fetch tells them apart to nobody.
        return wait(0);
      }
      if (res.status === 202) {
        this.#attempt = 0;
        let rejected = [];
        if (!single) rejected = (await res.json().catch(() => null))?.rejected ?? [];
        for (const x of entries) this.#queue.remove(x);
        for (const r of rejected) {
          const x = entries[r.index];
          if (!x) continue;
          this.#report(new KeepwatchError(`keepwatch: the server refused progress of ${x.e.video_id}: ${describe(r.errors)}`,
            { status: 422, problem: r, videoIds: [x.e.video_id], dropped: true }));
        }
        return true;
      }
      if (res.status === 401 && !refreshed) {
        refreshed = true;
        continue;
      }
      const problem = await readProblem(res);
      if (res.status === 401) {
        this.#report(new KeepwatchError('keepwatch: the token was refused after a refresh; the progress waits', { status: 401, problem, videoIds: ids }));
        return wait(0);
      }
      if (res.status === 408 || res.status === 429 || res.status >= 500) {
        return wait(retryAfter(res.headers.get('Retry-After')), res.status === 429 || res.status === 503);
      }
      // Any other 4xx: the server would refuse these events every time.
      for (const x of entries) this.#queue.remove(x);
      this.#report(new KeepwatchError(`keepwatch: the server refused progress (${res.status}): ${problem?.detail ?? res.statusText}`,
        { status: res.status, problem, videoIds: ids, dropped: true }));
      return true;
    }
  }

  /**
   * retry schedules the next drain: exponential backoff with jitter, and no
   * sooner than the server's Retry-After (ms) when it gave one.
   */
  #retry(retryAfterMs, fromServer = false) {
    this.#attempt++;
    const cap = Math.min(this.#o.retryMax, this.#o.retryBase * 2 ** Math.min(this.#attempt - 1, 30));
    // Half fixed, half random: players that failed together spread out, and
    // none retries at once.
    let delay = cap / 2 + (Math.random() * cap) / 2;
    const now = monotonic();
    if (retryAfterMs > 0) {
      const wait = Math.min(retryAfterMs, this.#o.retryMax);
      if (fromServer) this.#notBefore = Math.max(this.#notBefore, now + wait);
      delay = Math.max(delay, wait);
    }
    this.#backoffUntil = now + delay;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#wakeIn(delay);
  }

  /** wakeIn sends the queue in ms, unless a timer already will. */
  #wakeIn(ms) {
    if (this.#retryTimer !== null || this.#stopped) return;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      this.#drain();
    }, ms);
  }

  #report(err) {
    try {
      this.#o.onError?.(err);
    } catch {
      // onError's own failure must not stop tracking.
    }
  }
}

/** chunk takes the first entries that fit in one batch request. */
function chunk(entries) {
  const out = [];
  let bytes = 64; // the envelope: {"sent_at":…,"events":[]}
  for (const x of entries) {
    const size = JSON.stringify(x.e).length + 24; // + ,"ts":… and a comma
    if (out.length > 0 && (out.length === BATCH_MAX_EVENTS || bytes + size > REQUEST_BYTES)) break;
    out.push(x);
    bytes += size;
  }
  return out;
}

/**
 * Queue is where observations wait until the server acknowledges them: the
 * newest per (user, video), one storage key each, so tabs sharing the
 * storage never overwrite each other's videos.
 */
class Queue {
  #s;
  #prefix;
  #max;
  #maxBytes;
  #report;

  constructor(storage, ns, max, maxBytes, report) {
    this.#s = storage;
    this.volatile = storage instanceof MemoryStorage;
    this.#prefix = `${STORAGE_PREFIX}${ns}\n`;
    this.#max = max;
    this.#maxBytes = maxBytes;
    this.#report = report;
  }

  #key(x) {
    return `${this.#prefix}${x.u ?? ''}\n${x.e.video_id}`;
  }

  put(x) {
    const key = this.#key(x);
    const old = this.#read(key);
    if (old && old.ts > x.ts) return; // another tab observed this video later
    try {
      this.#s.setItem(key, JSON.stringify(x));
    } catch (err) {
      this.#report(new KeepwatchError('keepwatch: storage refused the progress; it is sent but not kept', { videoIds: [x.e.video_id], cause: err }));
      return;
    }
    this.#bound();
  }

  /** adopt moves x, observed before its user was known, under user; it returns the moved entry. */
  adopt(x, user) {
    const y = { ...x, u: user };
    this.put(y);
    this.remove(x);
    return y;
  }

  /** release ends x's lease, so the queue's sends take it, unless a newer observation replaced it. */
  release(x) {
    if (!x.f) return;
    const key = this.#key(x);
    const cur = this.#read(key);
    if (cur?.id === x.id && cur.f) {
      delete cur.f;
      this.#s.setItem(key, JSON.stringify(cur));
    }
  }

  /** remove deletes x's key unless it holds a newer observation by now. */
  remove(x) {
    const key = this.#key(x);
    if (this.#read(key)?.id === x.id) this.#s.removeItem(key);
  }

  /**
   * list returns the waiting observations, oldest first: all of them when
   * user is undefined, else those of user and those of nobody yet; those
   * being posted (leased) only when leased is true.
   */
  list(user, leased = false) {
    const out = [];
    const now = Date.now();
    for (const key of this.#keys()) {
      const x = this.#read(key);
      if (!x || (!leased && x.f > now)) continue;
      if (user === undefined || x.u === null || x.u === user) out.push(x);
    }
    return out.sort((a, b) => a.ts - b.ts);
  }

  #keys() {
    const keys = [];
    for (let i = 0; i < this.#s.length; i++) {
      const k = this.#s.key(i);
      if (k !== null && k.startsWith(this.#prefix)) keys.push(k);
    }
    return keys;
  }

  #read(key) {
    const raw = this.#s.getItem(key);
    if (raw === null) return null;
    try {
      const x = JSON.parse(raw);
      if (x && typeof x.id === 'string' && x.e && validVideoId(x.e.video_id) && Number.isFinite(x.ts)) return x;
    } catch {
      // Corrupt: removed below.
    }
    this.#s.removeItem(key);
    return null;
  }

  /** bound drops the oldest observations while the queue is over a bound. */
  #bound() {
    const sized = this.#keys().map((k) => ({ k, size: k.length + (this.#s.getItem(k)?.length ?? 0) }));
    let bytes = sized.reduce((n, x) => n + x.size, 0);
    if (sized.length <= this.#max && bytes <= this.#maxBytes) return;
    const byAge = sized.map((x) => ({ ...x, entry: this.#read(x.k) })).filter((x) => x.entry).sort((a, b) => a.entry.ts - b.entry.ts);
    let n = byAge.length;
    for (const x of byAge) {
      if (n <= this.#max && bytes <= this.#maxBytes) break;
      this.#s.removeItem(x.k);
      n--;
      bytes -= x.size;
      this.#report(new KeepwatchError(`keepwatch: the queue is full; the oldest unsent progress (${x.entry.e.video_id}) was dropped`,
        { videoIds: [x.entry.e.video_id], dropped: true }));
    }
  }
}

/** MemoryStorage is the Storage the queue uses with storage: null. */
class MemoryStorage {
  #m = new Map();
  get length() {
    return this.#m.size;
  }
  key(i) {
    return [...this.#m.keys()][i] ?? null;
  }
  getItem(k) {
    return this.#m.has(k) ? this.#m.get(k) : null;
  }
  setItem(k, v) {
    this.#m.set(k, String(v));
  }
  removeItem(k) {
    this.#m.delete(k);
  }
}

/** pickStorage returns storage, or localStorage when undefined, or memory when null or unusable. */
function pickStorage(storage) {
  if (storage === undefined) {
    try {
      storage = globalThis.localStorage; // throws where storage is blocked
    } catch {
      storage = null;
    }
  }
  return storage ?? new MemoryStorage();
}

/** withLock runs fn holding a Web Lock when the browser has them, or busy when another tab holds it (that tab is sending). */
function withLock(name, fn, busy) {
  const locks = globalThis.navigator?.locks;
  if (!locks?.request) return Promise.resolve().then(fn);
  return locks.request(name, { ifAvailable: true }, (lock) => (lock ? fn() : busy()));
}

/** subject returns a JWT's sub claim, read without verifying (the server verifies), or '' when there is none. */
function subject(token) {
  const payload = token.split('.')[1];
  if (!payload) return '';
  try {
    const sub = JSON.parse(atob(payload.replace(/-/g, '+').replace(/_/g, '/'))).sub;
    return typeof sub === 'string' ? sub : '';
  } catch {
    return '';
  }
}

/** retryAfter parses a Retry-After header (seconds or an HTTP date) into ms; 0 when absent. */
function retryAfter(v) {
  if (!v) return 0;
  if (/^\d+$/.test(v.trim())) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? 0 : Math.max(0, at - Date.now());
}

async function readProblem(res) {
  try {
    const ct = res.headers.get('Content-Type') ?? '';
    if (ct.includes('json')) return await res.json();
  } catch {
    // A body that is not JSON says nothing more than the status.
  }
  return null;
}

function describe(errors) {
  if (!Array.isArray(errors) || errors.length === 0) return 'invalid';
  return errors.map((e) => `${e.field ? e.field + ' ' : ''}${e.detail}`).join('; ');
}

/** ETags of the query API's answers, per URL and user: a poll of unchanged progress is a 304 with no body. */
const etags = new Map();
const ETAG_ENTRIES = 64;

/** get sends an authenticated GET and returns {status, body}; 404 has no body. */
async function get(url, { token, fetch = globalThis.fetch.bind(globalThis) }, what) {
  if (typeof token !== 'function') throw new TypeError('keepwatch: token must be a function returning the bearer token');
  let refreshed = false;
  for (;;) {
    const t = await token({ refresh: refreshed });
    if (typeof t !== 'string' || t === '') throw new TypeError('keepwatch: token() returned no token');
    const key = `${url}\n${subject(t) || t}`;
    const cached = etags.get(key);
    const headers = { Authorization: `Bearer ${t}` };
    if (cached) headers['If-None-Match'] = cached.etag;
    let res;
    try {
      res = await fetch(url, { headers, credentials: 'omit' });
    } catch (err) {
      throw new KeepwatchError(`keepwatch: ${what}: the query API is unreachable`, { cause: err });
    }
    if (res.status === 304 && cached) return { status: 200, body: cached.body };
    if (res.status === 401 && !refreshed) {
      refreshed = true;
      continue;
    }
    if (res.status === 404) return { status: 404, body: null };
    if (res.status !== 200) {
      const problem = await readProblem(res);
      throw new KeepwatchError(`keepwatch: ${what} (${res.status}): ${problem?.detail ?? res.statusText}`, { status: res.status, problem });
    }
    const body = await res.json();
    const etag = res.headers.get('ETag');
    etags.delete(key);
    if (etag) {
      etags.set(key, { etag, body });
      if (etags.size > ETAG_ENTRIES) etags.delete(etags.keys().next().value);
    }
    return { status: 200, body };
  }
}

function queryBase(queryUrl) {
  if (typeof queryUrl !== 'string' || !/^https?:\/\//.test(queryUrl)) {
    throw new TypeError('keepwatch: queryUrl must be the query API\'s http(s) base URL');
  }
  return queryUrl.replace(/\/+$/, '');
}

/**
 * resumePosition returns the position in seconds to resume videoId at, or
 * null when there is none or the video is finished. Finished is the
 * server's verdict (its `finished` field, by its rules for percent, credits
 * and the player's end); `finished` here only serves servers too old to send
 * one (percent at or above it, 95 by default).
 */
export async function resumePosition({ queryUrl, videoId, token, finished = defaults.finished, fetch }) {
  if (!validVideoId(videoId)) throw new TypeError(`keepwatch: videoId ${JSON.stringify(videoId)} is not 1–128 characters of A-Z a-z 0-9 . _ : -`);
  const { status, body } = await get(`${queryBase(queryUrl)}/v1/progress/${videoId}`, { token, fetch }, 'resume position');
  if (status === 404 || !body) return null;
  if (typeof body.finished === 'boolean' ? body.finished : body.percent >= finished) return null;
  if (Number.isFinite(body.position)) return body.position;
  if (Number.isFinite(body.duration)) return round3((body.percent / 100) * body.duration);
  return null;
}

/**
 * fetchKeepWatching returns the user's keep-watching row, newest first:
 * [{video_id, series_id?, episode?, percent, position?, duration?, finished,
 * updated_at}], one item per series unless group is 'none'.
 */
export async function fetchKeepWatching({ queryUrl, token, limit = 20, group = 'series', fetch }) {
  if (!(Number.isInteger(limit) && limit >= 1 && limit <= 100)) throw new RangeError('keepwatch: limit must be an integer from 1 to 100');
  if (group !== 'series' && group !== 'none') throw new RangeError("keepwatch: group must be 'series' or 'none'");
  const q = group === 'series' ? `limit=${limit}` : `limit=${limit}&group=${group}`;
  const { body } = await get(`${queryBase(queryUrl)}/v1/keep-watching?${q}`, { token, fetch }, 'keep-watching');
  return body?.items ?? [];
}

/**
 * removeProgress takes videoId out of the user's keep-watching (DELETE
 * /v1/progress/{video_id}). Progress observed after it still counts. It
 * throws a KeepwatchError when the server refuses or cannot be reached.
 */
export async function removeProgress({ commandUrl, videoId, token, fetch = globalThis.fetch.bind(globalThis) }) {
  if (typeof commandUrl !== 'string' || !/^https?:\/\//.test(commandUrl)) throw new TypeError('keepwatch: commandUrl must be the command API\'s http(s) base URL');
  if (!validVideoId(videoId)) throw new TypeError(`keepwatch: videoId ${JSON.stringify(videoId)} is not 1–128 characters of A-Z a-z 0-9 . _ : -`);
  if (typeof token !== 'function') throw new TypeError('keepwatch: token must be a function returning the bearer token');
  const url = `${commandUrl.replace(/\/+$/, '')}/v1/progress/${videoId}`;
  for (let refreshed = false; ; refreshed = true) {
    const t = await token({ refresh: refreshed });
    let res;
    try {
      res = await fetch(url, { method: 'DELETE', headers: { Authorization: `Bearer ${t}` }, credentials: 'omit' });
    } catch (err) {
      throw new KeepwatchError('keepwatch: remove progress: the command API is unreachable', { videoIds: [videoId], cause: err });
    }
    if (res.status === 202) return;
    if (res.status === 401 && !refreshed) continue;
    const problem = await readProblem(res);
    throw new KeepwatchError(`keepwatch: remove progress (${res.status}): ${problem?.detail ?? res.statusText}`, { status: res.status, problem, videoIds: [videoId] });
  }
}
