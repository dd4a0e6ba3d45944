// Unit tests of trackProgress: what is posted when, what waits, and how it
// is retried. Run: npm test in sdk/js (go test ./sdk/js runs them too).
import { mock, test } from 'node:test';
import assert from 'node:assert/strict';
import { trackProgress, KeepwatchError } from '../keepwatch.js';
import { FakeMedia, MapStorage, advance, clock, jwt, page, settle } from './helpers.js';

const URL_ = 'https://progress.example.com';

function track(p, media, extra = {}) {
  const errors = [];
  const tracker = trackProgress(media, {
    commandUrl: URL_,
    videoId: 'v-123',
    token: p.token,
    fetch: p.fetch,
    storage: extra.storage ?? new MapStorage(),
    onError: (e) => errors.push(e),
    ...extra,
  });
  return { tracker, errors };
}

test('a heartbeat every interval while playing, none while paused, seeking, stalled or ended', async (t) => {
  const p = page(t);
  const media = new FakeMedia();
  track(p, media);
  media.play();
  await advance(35_000);
  assert.deepEqual(p.posts().map((r) => r.body.position), [10, 20, 30]);
  assert.ok(p.posts().every((r) => r.path === '/v1/progress' && !r.keepalive));

  media.pause(); // posts 35 at once
  await advance(60_000);
  assert.deepEqual(p.posts().map((r) => r.body.position), [10, 20, 30, 35]);

  media.play();
  media.stall(); // starved of data: position frozen
  await advance(30_000);
  assert.equal(p.posts().length, 4, 'no heartbeat while stalled');

  media.readyState = 4;
  media.currentTime = 35;
  media.emit('playing');
  await advance(10_000);
  assert.equal(p.posts().at(-1).body.position, 45);
  media.end();
  await advance(60_000);
  const last = p.posts().at(-1).body;
  assert.equal(last.position, 600);
  assert.equal(last.percent, 100);
  assert.equal(p.posts().length, 6, 'ended posts once (pause and ended are one observation), then nothing');
});

test('a series\' episode carries series_id and episode, and the end says completed', async (t) => {
  const p = page(t);
  const media = new FakeMedia();
  track(p, media, { seriesId: 'tt0903747', episode: 102 });
  media.play();
  await advance(10_000);
  media.end();
  await advance(20_000);
  const posts = p.posts().map((r) => r.body);
  assert.equal(posts.length, 2);
  assert.deepEqual([posts[0].series_id, posts[0].episode, posts[0].completed], ['tt0903747', 102, undefined]);
  assert.deepEqual([posts[1].series_id, posts[1].percent, posts[1].completed], ['tt0903747', 100, true]);
  assert.throws(() => track(p, new FakeMedia(), { seriesId: 'a b' }), TypeError);
  assert.throws(() => track(p, new FakeMedia(), { episode: -1 }), RangeError);
});

test('percent is position/duration×100 clamped to 0–100 with 3 decimals; seconds with 3 decimals', async (t) => {
  const p = page(t);
  const media = new FakeMedia();
  media.duration = 2700.00049;
  track(p, media);
  media.currentTime = 1147.123456;
  media.play();
  media.pause();
  await settle();
  assert.deepEqual(
    (({ video_id, percent, position, duration }) => ({ video_id, percent, position, duration }))(p.posts()[0].body),
    { video_id: 'v-123', percent: 42.486, position: 1147.123, duration: 2700 },
  );
  media.currentTime = 2800; // past the end, as players report at times
  media.play();
  media.pause();
  await settle();
  assert.equal(p.posts()[1].body.percent, 100);
  assert.equal(p.posts()[1].body.position, 2700);
});

test('live streams and media without metadata are not tracked', async (t) => {
  for (const duration of [Infinity, NaN, 2 ** 32]) {
    await t.test(`duration ${duration}`, async (t) => {
      const p = page(t);
      const media = new FakeMedia();
      media.duration = duration;
      track(p, media);
      media.play();
      await advance(30_000);
      media.pause();
      p.hide();
      await settle();
      assert.equal(p.posts().length, 0);
    });
  }
});

test('nothing is posted before playback starts, so opening a page never resets the position to 0', async (t) => {
  const p = page(t);
  const media = new FakeMedia();
  track(p, media);
  media.seek(120); // the app seeking to the resume point
  await advance(5_000);
  media.pause();
  p.hide();
  p.pagehide();
  await settle();
  assert.equal(p.posts().length, 0);
});

test('a finished video is not brought back by the player seeking to 0 after the end', async (t) => {
  const p = page(t);
  const media = new FakeMedia();
  track(p, media);
  media.currentTime = 590;
  media.play();
  await advance(10_000);
  media.end();
  await settle();
  media.seek(0);
  await advance(5_000);
  p.hide();
  await settle();
  assert.equal(p.posts().at(-1).body.percent, 100);
});

test('pause, ended and seeked (debounced) post at once', async (t) => {
  const p = page(t);
  const media = new FakeMedia();
  track(p, media, { seekDebounce: 1000 });
  media.play();
  await advance(2_000);
  media.pause();
  await settle();
  assert.equal(p.posts().length, 1, 'pause posts');
  assert.equal(p.posts()[0].body.position, 2);

  media.play();
  for (const t of [100, 200, 300, 400]) {
    media.seek(t); // scrubbing
    await advance(300);
  }
  assert.equal(p.posts().length, 1, 'no post while scrubbing');
  await advance(1_000);
  assert.equal(p.posts().length, 2, 'one post for the settled seek');
  assert.ok(Math.abs(p.posts()[1].body.position - 401) < 0.01, `position ${p.posts()[1].body.position}`);
  // The seek restarted the heartbeat's clock.
  await advance(10_000);
  assert.equal(p.posts().length, 3);
  assert.equal(p.posts()[2].body.position - p.posts()[1].body.position, 10);
});

test('hidden and pagehide post with keepalive, once, and a paused page posts nothing', async (t) => {
  const p = page(t);
  const media = new FakeMedia();
  track(p, media);
  media.play();
  await advance(4_000);
  p.hide();
  clock.mono += 5; // the media clock moves a little between the two events
  p.pagehide();
  await settle();
  assert.equal(p.posts().length, 1);
  assert.equal(p.posts()[0].keepalive, true);
  assert.equal(p.posts()[0].body.position, 4);

  media.pause(); // 4.005: the pause posts it
  await advance(60_000);
  assert.equal(p.posts().length, 2);
  p.doc.visibilityState = 'visible';
  p.hide(); // a paused device going to the background must not overwrite newer progress from another device
  p.pagehide();
  await settle();
  assert.equal(p.posts().length, 2);
});

test('ts is when the position was observed and sent_at when the request went out, on a device clock hours off', async (t) => {
  const p = page(t, () => new TypeError('Failed to fetch'));
  const media = new FakeMedia();
  const storage = new MapStorage();
  track(p, media, { storage });
  media.play();
  await advance(5_000);
  media.pause(); // observed at START+5s, sending fails
  await settle();
  const failed = p.posts()[0];
  assert.equal(failed.body.sent_at - failed.body.ts, 0);

  // The clock is set forward by 3 h while the event waits (NTP fixing it):
  // the age sent must still be the time that passed, 60 s.
  await advance(55_000);
  mock.timers.setTime(Date.now() + 3 * 3600_000);
  p.server.respond = () => 202;
  p.online();
  await settle();
  const batch = p.posts().at(-1);
  assert.equal(batch.path, '/v1/progress/batch');
  assert.equal(batch.body.sent_at, Date.now());
  assert.equal(batch.body.sent_at - batch.body.events[0].ts, 55_000, 'the age on the monotonic clock');
});

/** leftQueued plays v-123 to 7 s offline and closes the page: the observation waits in the returned storage. */
async function leftQueued(p) {
  const storage = new MapStorage();
  const media = new FakeMedia();
  const { tracker } = track(p, media, { storage });
  media.play();
  await advance(7_000);
  media.pause(); // fails: queued
  await settle();
  await tracker.stop();
  assert.ok(storage.length > 0, 'queued');
  return storage;
}

test('an observation left by an earlier page is aged on the wall clock', async (t) => {
  const p = page(t, () => new TypeError('offline'));
  const storage = await leftQueued(p);

  // A new page (the monotonic clock restarts), 2 minutes later.
  await advance(120_000);
  clock.mono = 0;
  await import('../keepwatch.js?page2').then(async (m) => {
    p.server.respond = () => 202;
    m.trackProgress(new FakeMedia(), { commandUrl: URL_, videoId: 'v-other', token: p.token, fetch: p.fetch, storage });
    await advance(10);
  });
  const batch = p.posts().at(-1);
  assert.equal(batch.path, '/v1/progress/batch', 'sent on start');
  assert.equal(batch.body.events.length, 1);
  assert.equal(batch.body.events[0].video_id, 'v-123');
  assert.equal(batch.body.events[0].position, 7);
  const age = batch.body.sent_at - batch.body.events[0].ts;
  assert.ok(age >= 120_000 && age <= 120_010, `age ${age}`);
  assert.equal(storage.length, 0, 'acknowledged: no longer queued');
});

test('a queue whose lock another tab holds is looked at again soon, not left until the next post', async (t) => {
  const p = page(t, () => new TypeError('offline'));
  const storage = await leftQueued(p);

  // A new page starts while another tab holds the queue's lock (that tab
  // listed the queue a moment before and is sending something else).
  let held = true;
  const asked = [];
  globalThis.navigator = { locks: { request: async (name, opts, fn) => { asked.push(held); return fn(held ? null : { name }); } } };
  t.after(() => delete globalThis.navigator);
  p.server.respond = () => 202;
  const before = p.posts().length;
  await import('../keepwatch.js?lockbusy').then((m) => {
    m.trackProgress(new FakeMedia(), { commandUrl: URL_, videoId: 'v-other', token: p.token, fetch: p.fetch, storage });
  });
  await advance(10, 1);
  assert.deepEqual(asked, [true], 'asked for the lock once, found it held');
  assert.equal(p.posts().length, before, 'nothing sent while the other tab holds the lock');
  held = false;
  await advance(2_000);
  const batch = p.posts().at(-1);
  assert.equal(p.posts().length, before + 1, 'sent once the lock was free');
  assert.equal(batch.path, '/v1/progress/batch');
  assert.equal(batch.body.events[0].position, 7);
  assert.equal(storage.length, 0, 'acknowledged: no longer queued');
});

test('offline: the newest observation per video waits and is sent through the batch endpoint on online', async (t) => {
  const p = page(t, () => new TypeError('Failed to fetch'));
  const storage = new MapStorage();
  const media = new FakeMedia();
  track(p, media, { storage, retryBase: 60_000, retryMax: 600_000 });
  media.play();
  await advance(31_000); // heartbeats at 10, 20, 30 fail
  media.pause(); // 31
  await settle();
  assert.equal(storage.length, 1, 'one entry per video');
  assert.equal(JSON.parse([...storage.m.values()][0]).e.position, 31);

  p.server.respond = () => 202;
  const before = p.posts().length;
  p.online();
  await settle();
  const sent = p.posts().slice(before);
  assert.equal(sent.length, 1);
  assert.equal(sent[0].path, '/v1/progress/batch');
  assert.deepEqual(sent[0].body.events.map((e) => e.position), [31]);
  assert.equal(storage.length, 0);
});

test('429 and 503 back off exponentially with jitter, honour Retry-After, and keep the last position', async (t) => {
  const p = page(t, () => ({ status: 503, headers: { 'Retry-After': '30' } }));
  t.mock.method(Math, 'random', () => 0.5);
  const storage = new MapStorage();
  const media = new FakeMedia();
  const { tracker, errors } = track(p, media, { storage, interval: 1_000, retryBase: 1_000, retryMax: 300_000 });
  media.play();
  await advance(1_000); // the first heartbeat: 503, Retry-After 30
  assert.equal(p.posts().length, 1);
  await advance(29_000);
  assert.equal(p.posts().length, 1, 'nothing before Retry-After, though heartbeats continue');
  media.pause(); // 30 s of play observed while blocked
  await advance(1_100);
  assert.equal(p.posts().length, 2, 'the retry at Retry-After');
  assert.equal(p.posts()[1].path, '/v1/progress/batch');
  assert.equal(p.posts()[1].body.events[0].position, 30, 'the newest position, observed while waiting');

  // flush() and online do not skip the server's Retry-After.
  await tracker.flush();
  p.online();
  await settle();
  assert.equal(p.posts().length, 2, 'flush and online wait for Retry-After too');

  // Without Retry-After the delay doubles: 1, 2, 4, 8 s (×0.75 with this jitter), from attempt 2 on.
  p.server.respond = () => 429;
  const times = [];
  const seen = p.posts().length;
  await advance(200_000, 50);
  for (const r of p.posts().slice(seen)) times.push(r.at);
  const gaps = times.slice(1).map((x, i) => x - times[i]);
  assert.ok(gaps.length >= 5, `retries: ${gaps}`);
  for (let i = 1; i < gaps.length; i++) assert.ok(gaps[i] > gaps[i - 1] || gaps[i] >= 150_000, `growing gaps: ${gaps}`);
  assert.ok(gaps.every((g) => g <= 300_000), `capped at retryMax: ${gaps}`);

  p.server.respond = () => 202;
  await advance(300_000, 1000);
  assert.equal(storage.length, 0, 'delivered in the end');
  assert.equal(p.posts().at(-1).body.events[0].position, 30);
  assert.equal(errors.length, 0, 'backing off is no error');
});

test('while sends fail, only the retry timer sends: one request at a time, whatever the heartbeats', async (t) => {
  const p = page(t, () => ({ status: 429, headers: { 'Retry-After': '1' } }));
  const media = new FakeMedia();
  track(p, media, { interval: 500, retryMax: 4_000 });
  media.play();
  await advance(30_000, 50);
  const sent = p.posts();
  assert.equal(sent[0].path, '/v1/progress');
  assert.ok(sent.slice(1).every((r) => r.path === '/v1/progress/batch'), 'after the first failure, only the queue is sent');
  for (let i = 1; i < sent.length; i++) assert.ok(sent[i].at - sent[i - 1].at >= 1000, `Retry-After honoured: ${sent.map((r) => r.at - sent[0].at)}`);
});

test('a retry timer that fires a moment before its deadline still sends the queue, a moment later', async (t) => {
  const p = page(t, () => ({ status: 429, headers: { 'Retry-After': '1' } }));
  t.mock.method(Math, 'random', () => 0);
  const media = new FakeMedia();
  track(p, media, { interval: 600_000, retryBase: 1_000, retryMax: 1_000 });
  media.play();
  await advance(2_000);
  media.pause(); // posted at once: 429, Retry-After 1 s
  await settle();
  assert.equal(p.posts().length, 1);
  p.server.respond = () => 202;
  // The retry timer fires while the page's clock still reads 1 ms short of
  // the deadline: timers and performance.now() are not one clock.
  clock.mono += 999;
  mock.timers.tick(1_000);
  await settle();
  await advance(100, 1);
  assert.equal(p.posts().length, 2, 'the paused position is sent once the wait is over, with nothing else to wake the queue');
  assert.equal(p.posts()[1].body.events[0].position, 2);
});

test('a 4xx other than 401 and 429 is dropped, reported, and never retried', async (t) => {
  const p = page(t, () => ({ status: 422, body: { type: 'urn:keepwatch:problem:invalid', title: 'Unprocessable Entity', status: 422, detail: 'the event has invalid fields', errors: [{ field: 'percent', detail: 'must be a number from 0 to 100' }] } }));
  const storage = new MapStorage();
  const media = new FakeMedia();
  const { errors } = track(p, media, { storage });
  media.play();
  await advance(1_000);
  media.pause();
  await advance(600_000, 1000);
  assert.equal(p.posts().length, 1);
  assert.equal(storage.length, 0);
  assert.equal(errors.length, 1);
  assert.ok(errors[0] instanceof KeepwatchError);
  assert.equal(errors[0].status, 422);
  assert.equal(errors[0].dropped, true);
  assert.equal(errors[0].problem.errors[0].field, 'percent');
});

test('a 401 asks token({refresh: true}) once and sends again; a second 401 gives up on that send', async (t) => {
  let valid = 1; // the token version the server accepts
  const p = page(t);
  p.server.respond = (req) => {
    const n = JSON.parse(Buffer.from(req.headers.Authorization.split('.')[1], 'base64url')).n;
    return n >= valid ? 202 : 401;
  };
  const media = new FakeMedia();
  const storage = new MapStorage();
  const { errors } = track(p, media, { storage, retryBase: 60_000 });
  media.play();
  await advance(10_000);
  assert.deepEqual(p.posts().map((r) => r.path), ['/v1/progress', '/v1/progress']);
  assert.deepEqual(p.tokenCalls, [false, false, true], 'on start, before the send, and the refresh');
  assert.equal(storage.length, 0);
  assert.equal(errors.length, 0);

  valid = 100; // no token will do
  await advance(10_000);
  assert.equal(p.posts().length, 4, 'one send and one after the refresh, no more');
  assert.equal(errors.length, 1);
  assert.equal(errors[0].status, 401);
  assert.equal(errors[0].dropped, false, 'the progress waits for a token that works');
  assert.equal(storage.length, 1);
});

test('the queue is bounded in entries and bytes, dropping the oldest and saying so', async (t) => {
  const p = page(t, () => new TypeError('offline'));
  const storage = new MapStorage();
  const errors = [];
  for (let i = 0; i < 5; i++) {
    const media = new FakeMedia();
    trackProgress(media, { commandUrl: URL_, videoId: `v${i}`, token: p.token, fetch: p.fetch, storage, maxQueued: 3, onError: (e) => errors.push(e), retryBase: 600_000 });
    media.play();
    await advance(1_000);
    media.pause();
    await settle();
  }
  const queued = [...storage.m.values()].map((v) => JSON.parse(v).e.video_id).sort();
  assert.deepEqual(queued, ['v2', 'v3', 'v4']);
  assert.deepEqual(errors.filter((e) => e.dropped).map((e) => e.videoIds[0]), ['v0', 'v1']);

  const small = new MapStorage();
  const media = new FakeMedia();
  const long = 'x'.repeat(128);
  const bytesErrors = [];
  trackProgress(media, { commandUrl: URL_, videoId: long, token: p.token, fetch: p.fetch, storage: small, maxQueuedBytes: 300, onError: (e) => bytesErrors.push(e) });
  media.play();
  await advance(1_000);
  media.pause();
  await settle();
  assert.equal(small.length, 0, 'an entry larger than the byte bound is not kept');
  assert.equal(bytesErrors[0].dropped, true);
});

test('requests stay under 64 KiB and 100 events: a large queue goes in several batches', async (t) => {
  const p = page(t, () => new TypeError('offline'));
  const storage = new MapStorage();
  for (let i = 0; i < 250; i++) {
    const media = new FakeMedia();
    const tr = trackProgress(media, { commandUrl: URL_, videoId: `${'v'.repeat(120)}${String(i).padStart(8, '0')}`, token: p.token, fetch: p.fetch, storage, retryBase: 600_000 });
    media.play();
    media.currentTime = 100;
    media.pause();
    await tr.stop();
  }
  assert.equal(storage.length, 250);
  p.server.respond = () => 202;
  const before = p.posts().length;
  const media = new FakeMedia();
  const tr = trackProgress(media, { commandUrl: URL_, videoId: 'last', token: p.token, fetch: p.fetch, storage });
  assert.equal(await tr.flush(), 0);
  const batches = p.posts().slice(before);
  assert.equal(batches.reduce((n, r) => n + r.body.events.length, 0), 250);
  for (const b of batches) {
    assert.ok(b.bytes < 64 * 1024, `${b.bytes} bytes`);
    assert.ok(b.body.events.length <= 100);
  }
});

test('two tabs sharing the storage keep each other\'s videos; an ack never removes a newer observation', async (t) => {
  const p = page(t, () => new TypeError('offline'));
  const storage = new MapStorage();
  const a = new FakeMedia();
  const b = new FakeMedia();
  trackProgress(a, { commandUrl: URL_, videoId: 'tab-a', token: p.token, fetch: p.fetch, storage, retryBase: 600_000 });
  const tabB = trackProgress(b, { commandUrl: URL_, videoId: 'tab-b', token: p.token, fetch: p.fetch, storage, retryBase: 600_000 });
  a.play();
  b.play();
  await advance(10_000);
  a.pause();
  b.pause();
  await settle();
  assert.deepEqual([...storage.m.values()].map((v) => JSON.parse(v).e.video_id).sort(), ['tab-a', 'tab-b']);

  // Tab B sends; while its batch is in flight tab A observes again (same
  // video in both tabs): the ack must not remove A's newer observation.
  const c = new FakeMedia();
  trackProgress(c, { commandUrl: URL_, videoId: 'tab-a', token: p.token, fetch: p.fetch, storage, retryBase: 600_000 });
  let first = true;
  p.server.respond = (req) => {
    if (!req.path.endsWith('/batch')) return new TypeError('offline');
    if (first) {
      first = false;
      c.currentTime = 50;
      c.play();
      c.pause(); // 50, observed while the batch is in flight; its own post fails
    }
    return 202;
  };
  await tabB.flush();
  const batches = p.posts().filter((r) => r.path.endsWith('/batch'));
  assert.deepEqual(batches.at(-2).body.events.map((e) => [e.video_id, e.position]).sort(), [['tab-a', 10], ['tab-b', 10]]);
  assert.deepEqual(batches.at(-1).body.events.map((e) => [e.video_id, e.position]), [['tab-a', 50]], 'the newer observation was kept and sent');
  assert.equal(storage.length, 0);
});

test('an observation one tab is posting is not sent again by another tab\'s queue', async (t) => {
  const p = page(t);
  const storage = new MapStorage();
  const a = new FakeMedia();
  trackProgress(a, { commandUrl: URL_, videoId: 'tab-a', token: p.token, fetch: p.fetch, storage });
  const b = trackProgress(new FakeMedia(), { commandUrl: URL_, videoId: 'tab-b', token: p.token, fetch: p.fetch, storage });
  await advance(10);
  let answer;
  p.server.hold = new Promise((r) => {
    answer = r;
  });
  a.play();
  a.pause(); // tab A's post is in flight
  await settle();
  assert.equal(await b.flush(), 1, 'waiting, in flight in tab A');
  assert.deepEqual(p.posts().map((r) => r.path), ['/v1/progress'], 'tab B sent nothing');
  answer();
  await settle();
  assert.equal(storage.length, 0);

  // A failed post ends its lease at once: the queue sends it.
  p.server.hold = null;
  p.server.respond = () => new TypeError('offline');
  a.play();
  await advance(2_000);
  a.pause();
  await settle();
  p.server.respond = () => 202;
  assert.equal(await b.flush(), 0);
  assert.deepEqual(p.posts().at(-1).body.events.map((e) => e.video_id), ['tab-a']);
});

test('an observation made before the token said whose it is never replaces a newer one of that user', async (t) => {
  const p = page(t, () => new TypeError('offline'));
  const storage = new MapStorage();
  const waiting = [];
  const slowToken = () => new Promise((resolve) => waiting.push(resolve));
  const release = () => waiting.forEach((resolve) => resolve(jwt('alice')));
  const slow = new FakeMedia();
  trackProgress(slow, { commandUrl: URL_, videoId: 'v', token: slowToken, fetch: p.fetch, storage, retryBase: 600_000 });
  slow.currentTime = 5;
  slow.play();
  slow.pause(); // 5, queued for nobody yet: its token is pending
  await advance(1_000);

  const other = new FakeMedia(); // another tab, same video, a token at once
  trackProgress(other, { commandUrl: URL_, videoId: 'v', token: p.token, fetch: p.fetch, storage, retryBase: 600_000 });
  await advance(10);
  other.currentTime = 8;
  other.play();
  other.pause(); // 8, queued for alice
  await settle();
  release();
  await settle();
  assert.ok(p.posts().some((r) => r.body.position === 5), 'the early observation was sent');
  const left = [...storage.m.values()].map((v) => JSON.parse(v));
  assert.deepEqual(left.map((x) => [x.u, x.e.position]), [['alice', 8]]);
});

test('progress queued for one user is never sent with another user\'s token', async (t) => {
  const p = page(t, () => new TypeError('offline'));
  const storage = new MapStorage();
  p.server.user = 'alice';
  const m1 = new FakeMedia();
  const t1 = trackProgress(m1, { commandUrl: URL_, videoId: 'alices-video', token: p.token, fetch: p.fetch, storage, retryBase: 600_000 });
  await advance(10);
  m1.play();
  await advance(3_000);
  m1.pause();
  await t1.stop();

  p.server.user = 'bob';
  p.server.respond = () => 202;
  const t2 = trackProgress(new FakeMedia(), { commandUrl: URL_, videoId: 'bobs-video', token: p.token, fetch: p.fetch, storage });
  await t2.flush();
  assert.ok(!p.posts().some((r) => r.path.endsWith('/batch')), 'nothing of alice sent as bob');
  assert.equal(storage.length, 1);

  p.server.user = 'alice';
  const t3 = trackProgress(new FakeMedia(), { commandUrl: URL_, videoId: 'x', token: p.token, fetch: p.fetch, storage });
  assert.equal(await t3.flush(), 0);
  assert.equal(p.posts().at(-1).body.events[0].video_id, 'alices-video');
  assert.equal(p.posts().at(-1).headers.Authorization, `Bearer ${jwt('alice', 0)}`);
});

test('stop posts the current position once and detaches', async (t) => {
  const p = page(t);
  const media = new FakeMedia();
  const { tracker } = track(p, media);
  media.play();
  await advance(3_000);
  await tracker.stop();
  assert.equal(p.posts().length, 1);
  assert.equal(p.posts()[0].body.position, 3);
  media.pause();
  p.hide();
  await advance(60_000);
  assert.equal(p.posts().length, 1);
});

test('a player torn down before stop() (hls.js destroy(), video.js dispose() empty the element at once): stop still posts the position last seen', async (t) => {
  const p = page(t);
  const media = new FakeMedia();
  const { tracker } = track(p, media);
  media.play();
  await advance(14_000); // a heartbeat at 10
  media.emit('timeupdate'); // browsers fire it about every 250 ms of playback
  media.empty();
  await tracker.stop();
  assert.deepEqual(p.posts().map((r) => [r.body.position, r.body.duration]), [[10, 600], [14, 600]]);
  media.emit('emptied');
  await advance(60_000);
  assert.equal(p.posts().length, 2, 'nothing after stop');
});

test('a player emptying the element mid-play (a reload, a detach) gets the position reached posted, never the 0 the element reads', async (t) => {
  const p = page(t);
  const media = new FakeMedia();
  track(p, media);
  media.play();
  await advance(14_000); // a heartbeat at 10
  media.emit('timeupdate');
  await advance(200);
  media.empty();
  media.emit('timeupdate'); // the load algorithm's, at 0 with no duration
  media.emit('emptied');
  await settle();
  assert.deepEqual(p.posts().map((r) => r.body.position), [10, 14]);

  // hls.js recoverMediaError(): the new source gets its metadata, reads 0,
  // and the player seeks back to where it was before playing on.
  media.duration = 600;
  media.readyState = 4;
  media.emit('timeupdate');
  media.seek(14.2);
  media.play();
  await advance(11_000);
  assert.deepEqual(p.posts().map((r) => r.body.position), [10, 14, 15.2, 25.2], 'never 0: the settled seek back, then heartbeats from there');
});

test('bad options throw at once: video id rule, URL, token', () => {
  const media = new FakeMedia();
  const ok = { commandUrl: URL_, videoId: 'v', token: () => 't', storage: null };
  assert.throws(() => trackProgress(media, { ...ok, videoId: 'has space' }), TypeError);
  assert.throws(() => trackProgress(media, { ...ok, videoId: 'x'.repeat(129) }), TypeError);
  assert.throws(() => trackProgress(media, { ...ok, videoId: '' }), TypeError);
  assert.throws(() => trackProgress(media, { ...ok, commandUrl: 'progress.example.com' }), TypeError);
  assert.throws(() => trackProgress(media, { ...ok, token: 'abc' }), TypeError);
  assert.throws(() => trackProgress(media, { ...ok, interval: 0 }), RangeError);
  assert.throws(() => trackProgress({}, ok), TypeError);
});

test('onError throwing does not stop tracking', async (t) => {
  const p = page(t, () => 400);
  const media = new FakeMedia();
  track(p, media, { onError: () => { throw new Error('app bug'); } });
  media.play();
  await advance(20_000);
  assert.equal(p.posts().length, 2);
});
