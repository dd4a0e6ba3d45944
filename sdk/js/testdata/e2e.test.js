// Browser tests of the player SDK: a real video plays in Debian's chromium in
// a page that uses keepwatch.js, against a real keepwatch (a command API with
// its flusher, a second one with a tight rate limit, the query API) on a real
// Redis and a MongoDB-protocol server. Run by go test ./cmd/keepwatch -run
// TestPlayerSDKInChromium, which starts all of them and sets KW_*.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { exposeToken, mint, need, readProgress, recordRequests, round3, useBrowser, userNames, waitFor } from './browser.js';

const PAGES = need('KW_PAGES_URL');
const COMMAND = need('KW_COMMAND_URL');
const LIMITED = need('KW_LIMITED_COMMAND_URL');
const QUERY = need('KW_QUERY_URL');
const SECRET = need('KW_AUTH_SECRET');
const HOUR = 3600_000;

const browser = useBrowser();

const userFor = userNames('e2e');

/** progress is what the query API holds for user's video (null: none), read with a right clock. */
const progress = (user, videoId) => readProgress(QUERY, SECRET, user, videoId);

/** postAsAnotherDevice posts progress for user with no ts: a device whose clock is right, now. */
async function postAsAnotherDevice(user, event) {
  const res = await fetch(`${COMMAND}/v1/progress`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${mint(SECRET, user, 600)}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(event),
  });
  assert.equal(res.status, 202, await res.text());
}

async function metric(base, name) {
  // Summed over the metric's series: each carries the service's label.
  const text = await (await fetch(`${base}/metrics`)).text();
  let sum = 0;
  for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'gm'))) sum += Number(m[1]);
  return sum;
}

/**
 * openPlayer opens the test page in a fresh browser context (its own
 * storage) and starts tracking its video. The token callback is served by
 * this script: the first token lives tokenTTL seconds, refreshed ones
 * refreshTTL. Every request to the command API is recorded with its start
 * time and status.
 */
async function openPlayer({ user, videoId, interval, commandUrl = COMMAND, dateOffset = 0, tokenTTL = 600, refreshTTL = 600, options = {}, context }) {
  context ??= await browser().newContext();
  const page = await context.newPage();
  const requests = recordRequests(page, commandUrl);
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  const tokenCalls = await exposeToken(page, SECRET, user, { ttl: tokenTTL, refreshTTL });
  if (dateOffset) {
    // The device's wall clock is off by dateOffset ms: Date.now() and new Date().
    await page.addInitScript((offset) => {
      const RealDate = Date;
      globalThis.Date = class extends RealDate {
        constructor(...args) {
          super(...(args.length ? args : [RealDate.now() + offset]));
        }
        static now() {
          return RealDate.now() + offset;
        }
      };
    }, dateOffset);
  }
  await page.goto(`${PAGES}/player.html`);
  await page.waitForFunction(() => document.title === 'ready');
  if (dateOffset) assert.ok(Math.abs(await page.evaluate(() => Date.now()) - Date.now() - dateOffset) < 60_000, 'the page clock is skewed');
  await page.evaluate(({ commandUrl, videoId, interval, options }) => {
    window.tracker = window.keepwatch.trackProgress(document.getElementById('video'), {
      commandUrl,
      videoId,
      interval,
      ...options,
      token: ({ refresh }) => window.kwToken(refresh),
      onError: (e) => window.errors.push({ message: e.message, status: e.status, dropped: e.dropped }),
    });
  }, { commandUrl, videoId, interval, options });

  const video = {
    async playUntil(seconds) {
      await page.evaluate(() => document.getElementById('video').play());
      await page.waitForFunction((s) => document.getElementById('video').currentTime > s, seconds, { timeout: 60_000 });
    },
    /** pause pauses and returns the position the SDK observes, as sent. */
    async pause() {
      // The position as the pause event reads it, as the SDK does: read
      // right after pause() in the same task, Chromium can answer a
      // millisecond further on.
      return round3(await page.evaluate(() => new Promise((resolve) => {
        const v = document.getElementById('video');
        v.addEventListener('pause', () => resolve(v.currentTime), { once: true });
        v.pause();
      })));
    },
    currentTime: () => page.evaluate(() => document.getElementById('video').currentTime),
  };
  return {
    context,
    page,
    video,
    requests,
    tokenCalls,
    pageErrors,
    errors: () => page.evaluate(() => window.errors),
    queued: () => page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('keepwatch:v1:')).map((k) => JSON.parse(localStorage.getItem(k)))),
    inPage: (fn, arg) => page.evaluate(fn, arg),
  };
}

test('play: heartbeats land, reach MongoDB, and show in keep-watching and the resume position', async () => {
  const user = userFor('play');
  const p = await openPlayer({ user, videoId: 'e2e-play', interval: 1000 });
  await p.video.playUntil(2.5);
  await waitFor('two heartbeats acknowledged', () => p.requests.filter((r) => r.path === '/v1/progress' && r.status === 202).length >= 2);
  const item = await waitFor('keep-watching, read by the SDK in the page, to show e2e-play', async () => {
    const items = await p.inPage((q) => window.keepwatch.fetchKeepWatching({ queryUrl: q, token: ({ refresh }) => window.kwToken(refresh) }), QUERY);
    return items.find((i) => i.video_id === 'e2e-play' && i.position >= 1);
  });
  assert.ok(item.duration > 39 && item.duration < 41, `duration ${item.duration}`);
  assert.equal(item.percent, round3((item.position / item.duration) * 100));
  await waitFor('the flusher to write progress to MongoDB', async () => (await metric(COMMAND, 'keepwatch_flush_written_total')) >= 1);
  const resume = await p.inPage((q) => window.keepwatch.resumePosition({ queryUrl: q, videoId: 'e2e-play', token: ({ refresh }) => window.kwToken(refresh) }), QUERY);
  assert.ok(resume >= 1, `resume position ${resume}`);
  assert.deepEqual(await p.errors(), []);
  assert.deepEqual(p.pageErrors, []);
  await p.context.close();
});

test('pause posts at once', async () => {
  const user = userFor('pause');
  const p = await openPlayer({ user, videoId: 'e2e-pause', interval: 600_000 }); // no heartbeat in this test
  await p.video.playUntil(1.5);
  const at = await p.video.pause();
  const got = await waitFor('the paused position on the server', async () => {
    const x = await progress(user, 'e2e-pause');
    return x?.position === at ? x : null;
  });
  assert.equal(got.percent, round3((at / got.duration) * 100));
  // The server can show the position before the browser's report of the
  // request and its answer reaches this script.
  await waitFor('the pause post and its answer, as the browser reports them', () => p.requests.length > 0 && p.requests.every((r) => r.status !== null));
  assert.deepEqual(p.requests.map((r) => [r.path, r.status]), [['/v1/progress', 202]], 'one post, the pause');
  assert.ok(p.requests[0].body.sent_at >= p.requests[0].body.ts);
  await p.context.close();
});

test('offline: progress waits in the queue, and back online it syncs and the newest position wins', async () => {
  const user = userFor('offline');
  const p = await openPlayer({ user, videoId: 'e2e-offline', interval: 1000 });
  await p.video.playUntil(1.5);
  await waitFor('a heartbeat on the server', () => progress(user, 'e2e-offline'));
  await p.context.setOffline(true);
  const offlineFrom = await p.video.currentTime();
  await p.video.playUntil(offlineFrom + 2.5); // heartbeats fail
  const at = await p.video.pause();
  const queued = await waitFor('the pause to be queued', async () => {
    const q = await p.queued();
    return q.length === 1 && q[0].e.position === at ? q : null;
  });
  assert.equal(queued[0].e.video_id, 'e2e-offline');
  assert.ok(p.requests.some((r) => r.status === 0), 'sends failed while offline');
  assert.ok((await progress(user, 'e2e-offline')).position < at, 'the server has the older position');
  assert.ok(!(await p.inPage(() => window.events)).some((e) => e.endsWith(' online')), 'Chromium stayed offline');

  await p.context.setOffline(false);
  await waitFor('the queued position on the server', async () => (await progress(user, 'e2e-offline'))?.position === at);
  const batch = p.requests.find((r) => r.path === '/v1/progress/batch' && r.status === 202);
  assert.ok(batch, `a batch was sent: ${JSON.stringify(p.requests.map((r) => [r.path, r.status]))}`);
  assert.deepEqual(batch.body.events.map((e) => e.position), [at], 'only the newest observation');
  await waitFor('the queue to empty', async () => (await p.queued()).length === 0);
  assert.deepEqual(await p.errors(), []);
  await p.context.close();
});

test('two tabs share the queue: both videos sync through the batch endpoint', async () => {
  const user = userFor('tabs');
  const a = await openPlayer({ user, videoId: 'e2e-tab-a', interval: 1000 });
  const b = await openPlayer({ user, videoId: 'e2e-tab-b', interval: 1000, context: a.context }); // same storage
  await Promise.all([a.video.playUntil(1.2), b.video.playUntil(1.2)]);
  await waitFor('a heartbeat of each tab on the server', async () => (await progress(user, 'e2e-tab-a')) && (await progress(user, 'e2e-tab-b')));
  await a.context.setOffline(true);
  const atA = await a.video.pause();
  const atB = await b.video.pause();
  await waitFor('both pauses queued in the shared storage', async () => (await a.queued()).length === 2);
  await a.context.setOffline(false);
  await waitFor('both positions on the server', async () => (await progress(user, 'e2e-tab-a'))?.position === atA && (await progress(user, 'e2e-tab-b'))?.position === atB);
  await waitFor('the queue to empty', async () => (await a.queued()).length === 0);
  // Which tab sends which queued observation depends on timers and on an
  // observation still in flight (leased) when the other tab syncs: the
  // property is that the queue drains through the batch endpoint, with
  // only these videos in it, and both positions land (checked above).
  const batches = [...a.requests, ...b.requests].filter((r) => r.path === '/v1/progress/batch' && r.status !== 0);
  assert.ok(batches.length >= 1, `no batch was sent: ${JSON.stringify([...a.requests, ...b.requests])}`);
  for (const batch of batches) {
    for (const e of batch.body.events) assert.ok(['e2e-tab-a', 'e2e-tab-b'].includes(e.video_id), `batch ${JSON.stringify(batch)}`);
  }
  await a.context.close();
});

test('closing the page mid-play keeps the last position (keepalive with a preflighted Authorization header)', async () => {
  const user = userFor('close');
  const p = await openPlayer({ user, videoId: 'e2e-close', interval: 600_000 }); // only the close can post
  await p.video.playUntil(2);
  const seen = await p.video.currentTime();
  const accepted = await metric(COMMAND, 'keepwatch_events_accepted_total'); // this test alone posts now
  await p.page.close(); // fires visibilitychange and pagehide, then the page is gone
  const got = await waitFor('the position at close on the server', async () => {
    const x = await progress(user, 'e2e-close');
    return x && x.position >= round3(seen) ? x : null;
  });
  assert.ok(got.position < seen + 5, `position ${got.position}, seen ${seen}`);
  assert.equal(await metric(COMMAND, 'keepwatch_events_accepted_total') - accepted, 1, 'one post for visibilitychange and pagehide');
  await p.context.close();
});

test('a device clock three hours slow still wins with newer progress', async () => {
  const user = userFor('slow-clock');
  await postAsAnotherDevice(user, { video_id: 'e2e-slow', percent: 75, position: 30, duration: 40 });
  const p = await openPlayer({ user, videoId: 'e2e-slow', interval: 600_000, dateOffset: -3 * HOUR });
  await p.video.playUntil(1);
  const at = await p.video.pause();
  await waitFor('the skewed device\'s newer pause to win', async () => (await progress(user, 'e2e-slow'))?.position === at);
  await p.context.close();
});

test('a device clock three hours fast cannot make its old offline progress win over a newer post', async () => {
  const user = userFor('fast-clock');
  const p = await openPlayer({ user, videoId: 'e2e-fast', interval: 1000, dateOffset: 3 * HOUR });
  await p.video.playUntil(1.2);
  // Offline only once a request went through: set offline before any
  // request, this Chromium at times reports 'online' again by itself
  // within milliseconds (seen in 6 of 24 runs, with or without the skew).
  await waitFor('a heartbeat on the server', () => progress(user, 'e2e-fast'));
  await p.context.setOffline(true);
  const at = await p.video.pause(); // observed now, queued
  await waitFor('the pause to be queued after its post failed', () => p.requests.some((r) => r.status === 0 && r.body?.position === at));
  assert.ok((await p.queued()).some((x) => x.e.position === at));
  await postAsAnotherDevice(user, { video_id: 'e2e-fast', percent: 62.5, position: 25, duration: 40 }); // later, elsewhere
  await p.context.setOffline(false);
  await waitFor('the queued batch to be acknowledged', () => p.requests.some((r) => r.path === '/v1/progress/batch' && r.status === 202))
    .catch(async (err) => assert.fail(`${err.message}; requests: ${JSON.stringify(p.requests)}; queued: ${JSON.stringify(await p.queued())}; errors: ${JSON.stringify(await p.errors())}; events: ${JSON.stringify(await p.inPage(() => window.events))}`));
  assert.equal((await progress(user, 'e2e-fast')).position, 25, 'the other device\'s later post still wins');
  await p.context.close();
});

test('a tight rate limit gives 429s: the SDK waits at least Retry-After, and the last position lands', async () => {
  const user = userFor('429');
  const p = await openPlayer({ user, videoId: 'e2e-429', commandUrl: LIMITED, interval: 500, options: { retryMax: 10_000 } });
  await p.video.playUntil(6);
  const at = await p.video.pause();
  await waitFor('the last position despite 429s', async () => (await progress(user, 'e2e-429'))?.position === at, 90_000)
    .catch(async (err) => assert.fail(`${err.message}; paused at ${at}; server holds ${JSON.stringify(await progress(user, 'e2e-429'))}; ` +
      `requests: ${JSON.stringify(p.requests.map((r) => [r.path, r.status, r.at - p.requests[0].at, r.body?.position ?? r.body?.events?.map((e) => e.position)]))}; ` +
      `queued: ${JSON.stringify(await p.queued())}; errors: ${JSON.stringify(await p.errors())}`));
  const sent = p.requests.filter((r) => r.status !== null);
  assert.ok(sent.some((r) => r.status === 429), `429s: ${JSON.stringify(sent.map((r) => r.status))}`);
  for (const [i, r] of sent.entries()) {
    if (r.status !== 429) continue;
    // The first request begun after the 429 arrived (one begun before it,
    // a heartbeat beside a queue send, is not a retry). Retry-After is 1 s;
    // 100 ms for this script's own event delivery.
    const next = sent.slice(i + 1).find((q) => q.at >= r.answeredAt);
    if (!next) continue;
    assert.ok(next.at - r.answeredAt >= 900, `a request ${next.at - r.answeredAt} ms after a 429 arrived: ` +
      JSON.stringify(sent.map((x) => [x.status, x.at - sent[0].at, x.answeredAt - sent[0].at])));
  }
  assert.deepEqual(await p.errors(), [], 'backing off is no error');
  await p.context.close();
});

test('a token that expires mid-play is refreshed, and progress goes on', async () => {
  const user = userFor('token');
  const p = await openPlayer({ user, videoId: 'e2e-token', interval: 1000, tokenTTL: 3, refreshTTL: 600 });
  await p.video.playUntil(6);
  const at = await p.video.pause();
  await waitFor('the last position on the server', async () => (await progress(user, 'e2e-token'))?.position === at);
  const firstRefused = p.requests.findIndex((r) => r.status === 401);
  assert.ok(firstRefused >= 0, `a 401: ${JSON.stringify(p.requests.map((r) => r.status))}`);
  assert.ok(p.tokenCalls.includes(true), 'token({refresh: true}) was asked');
  assert.ok(p.requests.slice(firstRefused).some((r) => r.status === 202), 'accepted after the refresh');
  assert.deepEqual(await p.errors(), []);
  await p.context.close();
});
