// The demo page of `keepwatch dev`, as a newcomer uses it: pick a video, watch
// a few seconds, pause, and see it in the keep-watching row with its bar.
// Run by go test ./cmd/keepwatch -run TestDevDemoPageInChromium.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { need, round3, useBrowser, waitFor } from './browser.js';

const DEMO = need('KW_DEMO_URL');
const QUERY = need('KW_QUERY_URL');
const TOKEN = need('KW_TOKEN');
const SCREENSHOT = need('KW_SCREENSHOT');

const browser = useBrowser();

test('the demo page tracks the video and shows it in keep-watching', async () => {
  const page = await browser().newPage({ viewport: { width: 1200, height: 820 } });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(DEMO);
  await page.click('#catalog .card[data-video-id="demo-harbour"]'); // loads and plays it
  await page.waitForFunction(() => document.getElementById('video').currentTime > 3, null, { timeout: 60_000 });
  const at = round3(await page.evaluate(() => {
    const v = document.getElementById('video');
    v.pause();
    return v.currentTime;
  }));
  const width = await waitFor('the keep-watching card with its progress bar', () => page.evaluate(() => {
    const bar = document.querySelector('#keep-watching .card[data-video-id="demo-harbour"] .bar > div');
    return bar && parseFloat(bar.style.width) > 0 ? parseFloat(bar.style.width) : null;
  }));
  const res = await fetch(`${QUERY}/v1/progress/demo-harbour`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  const saved = await res.json();
  assert.equal(saved.position, at, 'the paused position is what the query API holds');
  assert.equal(width, saved.percent, 'the bar shows the saved percent');
  assert.ok((await page.textContent('#log')).includes('POST /v1/progress demo-harbour@'), 'the activity log shows the post');
  assert.deepEqual(pageErrors, []);
  await page.screenshot({ path: SCREENSHOT });
});
