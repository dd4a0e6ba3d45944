// What the browser tests share: Debian's chromium driven by playwright-core,
// tokens minted as keepwatch verifies them, and polling with a deadline.
import crypto from 'node:crypto';
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
