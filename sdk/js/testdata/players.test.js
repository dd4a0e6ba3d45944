// Browser tests of the player SDK with the player libraries it promises to
// work with: hls.js, video.js (VHS) and Shaka Player, as pinned in
// package-lock.json, each play the clip's HLS rendition (hls/) through Media
// Source Extensions in Debian's chromium, and the SDK tracks the <video> the
// library plays through, against a real keepwatch on a real Redis and a
// MongoDB-protocol server. Run by go test ./cmd/keepwatch -run
// TestPlayerSDKWithPlayerLibrariesInChromium, which starts them and sets KW_*.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { exposeToken, need, readProgress, recordRequests, round3, useBrowser, userNames, waitFor } from './browser.js';

const PAGES = need('KW_PAGES_URL');
const COMMAND = need('KW_COMMAND_URL');
const QUERY = need('KW_QUERY_URL');
const SECRET = need('KW_AUTH_SECRET');
const INTERVAL = 1000; // ms between heartbeats
const DURATION = 40; // s, the clip's

const browser = useBrowser();

const userFor = userNames('players');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const near = (a, b, tolerance) => Math.abs(a - b) <= tolerance;

for (const library of ['hls.js', 'video.js', 'shaka']) {
  test(`${library}: plays the HLS stream through MSE, and the SDK tracks play, pause, seek and stop`, async () => {
    const user = userFor(library);
    const videoId = `players-${library.replace(/[^A-Za-z0-9]/g, '')}`;
    const context = await browser().newContext();
    const page = await context.newPage();
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(e.message));
    const requests = recordRequests(page, COMMAND);
    await exposeToken(page, SECRET, user);
    const inPage = (fn, arg) => page.evaluate(fn, arg);
    const progress = () => readProgress(QUERY, SECRET, user, videoId);
    const posts = () => requests.filter((r) => r.path === '/v1/progress');
    // Everything a failure message needs to be read without a rerun.
    const story = async () => `requests: ${JSON.stringify(requests.map((r) => [r.status, r.body?.position, r.body?.duration]))}; ` +
      `events: ${JSON.stringify(await inPage(() => window.events))}; errors: ${JSON.stringify(await inPage(() => window.errors))}; page errors: ${JSON.stringify(pageErrors)}`;
    const expect = async (what, fn, timeout = 20_000) => waitFor(what, fn, timeout).catch(async (err) => assert.fail(`${err.message}; ${await story()}`));

    await page.goto(`${PAGES}/players.html?player=${library}`);
    await page.waitForFunction(() => document.title !== '');
    assert.equal(await page.title(), 'ready', await story());
    // Tracking starts before the library attaches to the element and loads
    // the stream: the tracker sees all it does to the element on the way.
    await inPage(({ commandUrl, videoId, interval }) => window.start({ commandUrl, videoId, interval }), { commandUrl: COMMAND, videoId, interval: INTERVAL });

    // The library, not the browser, plays the stream: the element's source
    // is a MediaSource, and the library reports the rendition it chose.
    let seen;
    const engine = await expect('the library to play the stream through MSE', async () => {
      seen = await inPage(() => ({ ...window.engine(), duration: window.video.duration, readyState: window.video.readyState }));
      return seen.mediaSource && seen.attached && seen.level === 180 && seen.readyState >= 1 ? seen : null;
    }).catch((err) => assert.fail(`${err.message}; the library reports ${JSON.stringify(seen)}`));
    assert.ok(near(engine.duration, DURATION, 0.5), `the library set the duration to ${engine.duration}`);

    // Playing: heartbeats.
    await inPage(() => window.video.play());
    await expect('two heartbeats acknowledged while playing', () => posts().filter((r) => r.status === 202).length >= 2);
    for (const r of posts()) {
      assert.equal(r.body.video_id, videoId);
      assert.ok(near(r.body.duration, DURATION, 0.5), `heartbeat duration ${r.body.duration}`);
      assert.ok(r.body.position > 0, `heartbeat position ${r.body.position}`);
    }

    // Pause: one post at once with the paused position, then silence.
    // Read in the pause event, as the SDK does (right after pause(),
    // Chromium can answer a millisecond further on).
    const paused = await inPage(() => new Promise((resolve) => {
      window.video.addEventListener('pause', () => resolve({ position: window.video.currentTime, duration: window.video.duration }), { once: true });
      window.video.pause();
    }));
    const pausePost = await expect('the pause to be posted', () => posts().find((r) => r.body.position === round3(paused.position) && r.status === 202));
    assert.equal(pausePost.body.duration, round3(paused.duration));
    const held = await expect('the query API to show the paused position', async () => {
      const p = await progress();
      return p && near(p.position, paused.position, 0.01) ? p : null;
    });
    assert.ok(near(held.duration, paused.duration, 0.01) && near(held.duration, DURATION, 0.5), `the query API holds duration ${held.duration}, the page ${paused.duration}`);
    // Absence can only be seen over a window: three heartbeat intervals.
    const beforeQuiet = requests.length;
    await sleep(3 * INTERVAL);
    assert.equal(requests.length, beforeQuiet, `posts while paused; ${await story()}`);

    // Seek (paused): the settled position is posted and lands.
    const seeked = await inPage(() => new Promise((resolve) => {
      window.video.addEventListener('seeked', () => resolve(window.video.currentTime), { once: true });
      window.video.currentTime = 30;
    }));
    assert.ok(near(seeked, 30, 0.5), `seeked to ${seeked}`);
    await expect('the seek to be posted', () => posts().some((r) => r.body.position === round3(seeked) && r.status === 202));
    await expect('the query API to show the seek', async () => near((await progress())?.position ?? -1, seeked, 0.01));

    // Playing again from there: heartbeats again, past the seek.
    const beforeReplay = posts().length;
    await inPage(() => window.video.play());
    await expect('a heartbeat after the seek', () => posts().slice(beforeReplay).some((r) => r.status === 202 && r.body.position > seeked));

    // stop(): its last post lands, and nothing follows while the library plays on.
    await inPage(() => window.tracker.stop());
    const stoppedAt = requests.length;
    const last = requests.at(-1);
    await expect('the query API to show the position at stop', async () => (await progress())?.position === last.body.position);
    await sleep(3 * INTERVAL);
    assert.ok(!(await inPage(() => window.video.paused)), 'the library still plays');
    assert.equal(requests.length, stoppedAt, `posts after stop(); ${await story()}`);

    // The library torn down before the tracker is stopped (hls.js destroy()
    // and video.js dispose() empty the element at once, before their
    // emptied event): stop() still posts where the viewer got to. A tracker
    // whose heartbeat never comes, so that post is the only one.
    await inPage(({ commandUrl, videoId }) => {
      window.tracker = window.keepwatch.trackProgress(window.video, { commandUrl, videoId, interval: 600_000, token: ({ refresh }) => window.kwToken(refresh) });
    }, { commandUrl: COMMAND, videoId });
    const from = await inPage(() => window.video.currentTime);
    await page.waitForFunction((t) => window.video.currentTime > t + 1, from);
    const torn = await inPage(async () => {
      const at = window.video.currentTime;
      const destroyed = window.destroy();
      await window.tracker.stop();
      await destroyed;
      return at;
    });
    // The position last seen: the element's timeupdate comes every 250 ms or so.
    const kept = await expect('the query API to show the position before the teardown', async () => {
      const p = await progress();
      return p && p.position > from ? p : null;
    });
    assert.ok(kept.position <= round3(torn) && kept.position > torn - 0.5, `the query API holds ${kept.position}, the library was torn down at ${torn}`);

    assert.deepEqual(await inPage(() => window.errors), []);
    assert.deepEqual(pageErrors, []);
    await context.close();
  });
}
