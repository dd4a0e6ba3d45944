// Unit tests of the query helpers and removeProgress.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KeepwatchError, fetchKeepWatching, removeProgress, resumePosition, validVideoId } from '../keepwatch.js';
import { jwt } from './helpers.js';

/** server returns a fetch answering from routes (path → {status, body, headers}) and the requests it saw. */
function server(routes) {
  const requests = [];
  const fetch = async (url, init = {}) => {
    const u = new URL(url);
    const req = { path: u.pathname + u.search, method: init.method ?? 'GET', headers: init.headers ?? {} };
    requests.push(req);
    const r = routes(req);
    const { status, body, headers = {} } = typeof r === 'number' ? { status: r } : r;
    return new Response(body === undefined || status === 304 ? null : JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json', ...headers } });
  };
  return { fetch, requests };
}

const token = async () => jwt('alice');

test('resumePosition: the position, null when none or finished', async () => {
  const items = {
    'v-half': { video_id: 'v-half', percent: 42.5, position: 1147.5, duration: 2700, updated_at: '2024-11-22T01:46:40.000Z' },
    'v-done': { video_id: 'v-done', percent: 97, position: 2619, duration: 2700, updated_at: '2024-11-22T01:46:40.000Z' },
    'v-pct': { video_id: 'v-pct', percent: 50, duration: 100, updated_at: '2024-11-22T01:46:40.000Z' },
    'v-bare': { video_id: 'v-bare', percent: 50, updated_at: '2024-11-22T01:46:40.000Z' },
  };
  const s = server((req) => {
    const id = req.path.slice('/v1/progress/'.length);
    return items[id] ? { status: 200, body: items[id] } : { status: 404, body: { status: 404 } };
  });
  const q = { queryUrl: 'https://q.example.com/', token, fetch: s.fetch };
  assert.equal(await resumePosition({ ...q, videoId: 'v-half' }), 1147.5);
  assert.equal(await resumePosition({ ...q, videoId: 'v-done' }), null);
  assert.equal(await resumePosition({ ...q, videoId: 'v-done', finished: 99 }), 2619);
  assert.equal(await resumePosition({ ...q, videoId: 'v-pct' }), 50);
  assert.equal(await resumePosition({ ...q, videoId: 'v-bare' }), null);
  assert.equal(await resumePosition({ ...q, videoId: 'never' }), null);
  // The server's verdict wins over the percent: credits, the player's end.
  items['v-credits'] = { video_id: 'v-credits', percent: 92, position: 2484, duration: 2700, finished: true, updated_at: '2024-11-22T01:46:40.000Z' };
  items['v-high'] = { video_id: 'v-high', percent: 97, position: 2619, duration: 2700, finished: false, updated_at: '2024-11-22T01:46:40.000Z' };
  assert.equal(await resumePosition({ ...q, videoId: 'v-credits' }), null);
  assert.equal(await resumePosition({ ...q, videoId: 'v-high' }), 2619);
  assert.equal(s.requests[0].path, '/v1/progress/v-half');
  assert.equal(s.requests[0].headers.Authorization, `Bearer ${jwt('alice')}`);
  await assert.rejects(resumePosition({ ...q, videoId: 'bad id' }), TypeError);
});

test('fetchKeepWatching sends limit and Authorization, and revalidates with the ETag', async () => {
  const body = { items: [{ video_id: 'a', percent: 10, updated_at: '2024-11-22T01:46:40.000Z' }] };
  const s = server((req) => (req.headers['If-None-Match'] === '"abc"' ? { status: 304, headers: { ETag: '"abc"' } } : { status: 200, body, headers: { ETag: '"abc"' } }));
  const q = { queryUrl: 'https://kw.example.com', token, fetch: s.fetch, limit: 5 };
  assert.deepEqual(await fetchKeepWatching(q), body.items);
  assert.deepEqual(await fetchKeepWatching(q), body.items, 'a 304 answers from the cache');
  assert.equal(s.requests[0].path, '/v1/keep-watching?limit=5');
  assert.equal(s.requests[0].headers['If-None-Match'], undefined);
  assert.equal(s.requests[1].headers['If-None-Match'], '"abc"');
  await assert.rejects(fetchKeepWatching({ ...q, limit: 0 }), RangeError);
  await fetchKeepWatching({ ...q, group: 'none' });
  assert.equal(s.requests.at(-1).path, '/v1/keep-watching?limit=5&group=none');
  await assert.rejects(fetchKeepWatching({ ...q, group: 'season' }), RangeError);
});

test('the query helpers refresh the token once on 401, then throw', async () => {
  let refreshes = 0;
  const tok = async ({ refresh }) => {
    if (refresh) refreshes++;
    return jwt('alice', refreshes);
  };
  const s = server((req) => (req.headers.Authorization === `Bearer ${jwt('alice', 1)}` ? { status: 200, body: { items: [] } } : 401));
  assert.deepEqual(await fetchKeepWatching({ queryUrl: 'https://r.example.com', token: tok, fetch: s.fetch }), []);
  assert.equal(refreshes, 1);

  const never = server(() => ({ status: 401, body: { type: 'urn:keepwatch:problem:unauthorized', status: 401, detail: 'the token has expired' } }));
  const err = await fetchKeepWatching({ queryUrl: 'https://r.example.com', token: tok, fetch: never.fetch }).catch((e) => e);
  assert.ok(err instanceof KeepwatchError);
  assert.equal(err.status, 401);
  assert.equal(err.problem.detail, 'the token has expired');
  assert.equal(never.requests.length, 2);
});

test('removeProgress sends DELETE and throws on refusal', async () => {
  const s = server((req) => (req.path === '/v1/progress/v1' ? 202 : { status: 422, body: { detail: 'no' } }));
  await removeProgress({ commandUrl: 'https://c.example.com', videoId: 'v1', token, fetch: s.fetch });
  assert.deepEqual(s.requests.map((r) => [r.method, r.path]), [['DELETE', '/v1/progress/v1']]);
  await assert.rejects(removeProgress({ commandUrl: 'https://c.example.com', videoId: 'v2', token, fetch: s.fetch }), (e) => e.status === 422);
});

test('validVideoId follows the server: 1–128 of A-Z a-z 0-9 . _ : -', () => {
  for (const ok of ['a', 'v-123', 'show:s01.e02_x', 'x'.repeat(128)]) assert.equal(validVideoId(ok), true, ok);
  for (const bad of ['', 'x'.repeat(129), 'a b', 'a/b', 'é', 'a?b', 42, null]) assert.equal(validVideoId(bad), false, String(bad));
});
