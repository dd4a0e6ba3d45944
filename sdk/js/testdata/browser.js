// What the browser tests share: Debian's chromium driven by playwright-core,
// tokens minted as keepwatch verifies them, and polling with a deadline.
import crypto from 'node:crypto';
import { after, before } from 'node:test';
import { chromium } from 'playwright-core';

/** need returns an environment variable the Go test sets, or explains how to run the tests. */
export function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: these tests are run by go test (see sdk/js/README.md, "Tests")`);
  return v;
}

/**
 * launch starts headless chromium with the flags this machine's closed
 * network needs (without the background-networking ones Chromium's own
 * connections are refused). playwright-core gives every launch a fresh
 * --user-data-dir of its own.
 */
export function launch() {
  return chromium.launch({
    executablePath: process.env.KW_CHROMIUM || '/usr/bin/chromium',
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
}

/**
 * useBrowser launches chromium before the calling file's tests and closes
 * it after them; the function it returns gives that browser.
 */
export function useBrowser() {
  let browser;
  before(async () => {
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
  });
  return () => browser;
}

/** userNames returns userFor(name): a user id of its own per call, so no test sees another's progress. */
export function userNames(prefix) {
  let users = 0;
  return (name) => `${prefix}-${name}-${process.pid}-${++users}`;
}

/** mint returns an HS256 JWT for sub, valid ttl seconds, as keepwatch token does. */
export function mint(secret, sub, ttl) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const input = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, iat: now, exp: now + ttl })}`;
  return `${input}.${crypto.createHmac('sha256', secret).update(input).digest('base64url')}`;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** waitFor polls fn until it returns something truthy, failing after timeout ms with what it waited for. */
export async function waitFor(what, fn, timeout = 60_000) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`gave up after ${timeout} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
    await sleep(100);
  }
}

export const round3 = (v) => Math.round(v * 1000) / 1000;

/** readProgress returns what the query API at queryUrl holds for user's videoId (null: none), read with a right clock. */
export async function readProgress(queryUrl, secret, user, videoId) {
  const res = await fetch(`${queryUrl}/v1/progress/${videoId}`, { headers: { Authorization: `Bearer ${mint(secret, user, 600)}` } });
  if (res.status === 404) return null;
  if (!res.ok) throw new Error(`GET progress: ${res.status} ${await res.text()}`);
  return res.json();
}

/**
 * recordRequests returns the list, growing, of every request page sends to
 * base but preflights: {method, path, body, at (ms), status}, status null
 * until answered and 0 when the request failed.
 */
export function recordRequests(page, base) {
  const requests = [];
  const byRequest = new Map();
  page.on('request', (req) => {
    if (!req.url().startsWith(base) || req.method() === 'OPTIONS') return;
    const r = { method: req.method(), path: new URL(req.url()).pathname, body: JSON.parse(req.postData() ?? 'null'), at: Date.now(), status: null };
    byRequest.set(req, r);
    requests.push(r);
  });
  page.on('response', (res) => {
    const r = byRequest.get(res.request());
    if (r) {
      r.status = res.status();
      r.answeredAt = Date.now();
    }
  });
  page.on('requestfailed', (req) => {
    const r = byRequest.get(req);
    if (r) r.status = 0;
  });
  return requests;
}

/**
 * exposeToken gives page window.kwToken(refresh), the SDK's token callback,
 * served by this script: user's first token lives ttl seconds, refreshed
 * ones refreshTTL. It returns the list, growing, of the refresh flags asked.
 */
export async function exposeToken(page, secret, user, { ttl = 600, refreshTTL = 600 } = {}) {
  const calls = [];
  let token = null;
  await page.exposeFunction('kwToken', (refresh) => {
    calls.push(refresh);
    if (token === null || refresh) token = mint(secret, user, token === null ? ttl : refreshTTL);
    return token;
  });
  return calls;
}
