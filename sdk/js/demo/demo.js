// The demo page of `keepwatch dev`: one <video> tracked by the player SDK,
// and the keep-watching row it feeds, read back from the query API.
import { fetchKeepWatching, resumePosition, trackProgress } from './keepwatch.js';

const $ = (id) => document.getElementById(id);
const videos = [
  { id: 'demo-sunrise', title: 'Sunrise', hue: 28 },
  { id: 'demo-harbour', title: 'Harbour', hue: 205 },
  { id: 'demo-forest', title: 'Forest', hue: 130 },
];
const byId = new Map(videos.map((v) => [v.id, v]));

// The development token comes from keepwatch dev (config.json); a refresh
// asks again.
let config = await loadConfig();
async function loadConfig() {
  const res = await fetch('./config.json', { cache: 'no-store' });
  if (!res.ok) throw new Error(`config.json: ${res.status}`);
  return res.json();
}
const token = async ({ refresh }) => {
  if (refresh) config = await loadConfig();
  return config.token;
};
$('user').textContent = config.user;
$('command-url').textContent = config.commandUrl;
$('query-url').textContent = config.queryUrl;

function log(text, cls) {
  const li = document.createElement('li');
  li.className = cls;
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $('log').prepend(li);
  while ($('log').children.length > 60) $('log').lastChild.remove();
}

// The SDK takes a fetch: this one writes what it sends into the log.
async function loggingFetch(url, init) {
  const path = new URL(url).pathname;
  const what = init.body ? summary(JSON.parse(init.body)) : '';
  try {
    const res = await fetch(url, init);
    log(`${init.method} ${path} ${what} → ${res.status}${init.keepalive ? ' (keepalive)' : ''}`, res.ok ? 'ok' : res.status === 429 || res.status >= 500 ? 'wait' : 'bad');
    if (res.ok) refreshSoon();
    return res;
  } catch (err) {
    log(`${init.method} ${path} ${what} → no answer (queued)`, 'wait');
    throw err;
  }
}

function summary(body) {
  const events = body.events ?? [body];
  return events.map((e) => `${e.video_id}@${e.position}s`).join(' ');
}

const video = $('video');
let tracker = null;
let current = null;

async function select(v, { play = true } = {}) {
  if (current === v.id) {
    if (play) video.play();
    return;
  }
  if (tracker) await tracker.stop();
  current = v.id;
  $('title').textContent = v.title;
  document.querySelectorAll('.card').forEach((c) => c.classList.toggle('playing', c.dataset.videoId === v.id));
  // A distinct URL per video, so the element loads each as a new source.
  video.src = `./clip.webm?video=${encodeURIComponent(v.id)}`;
  tracker = trackProgress(video, {
    commandUrl: config.commandUrl,
    videoId: v.id,
    token,
    fetch: loggingFetch,
    onError: (err) => log(err.message, 'bad'),
  });
  const at = await resumePosition({ queryUrl: config.queryUrl, videoId: v.id, token }).catch((err) => {
    log(err.message, 'bad');
    return null;
  });
  if (at !== null) {
    if (video.readyState < 1) await new Promise((r) => video.addEventListener('loadedmetadata', r, { once: true }));
    video.currentTime = at;
    log(`resumed ${v.id} at ${at}s`, 'ok');
  }
  if (play) await video.play().catch(() => {}); // autoplay may need a click on the video
}

function card(v, item) {
  const li = document.createElement('li');
  li.className = 'card';
  li.dataset.videoId = v.id;
  li.classList.toggle('playing', current === v.id);
  const thumb = document.createElement('div');
  thumb.className = 'thumb';
  thumb.style.background = `linear-gradient(135deg, hsl(${v.hue} 60% 42%), hsl(${(v.hue + 60) % 360} 55% 22%))`;
  thumb.textContent = v.title;
  li.append(thumb);
  if (item) {
    const bar = document.createElement('div');
    bar.className = 'bar';
    const fill = document.createElement('div');
    fill.style.width = `${item.percent}%`;
    bar.append(fill);
    const meta = document.createElement('div');
    meta.className = 'meta';
    meta.textContent = Number.isFinite(item.position) && Number.isFinite(item.duration)
      ? `${Math.round(item.position)} s of ${Math.round(item.duration)} s · ${item.percent}%`
      : `${item.percent}%`;
    li.append(bar, meta);
  }
  li.addEventListener('click', () => select(v));
  return li;
}

$('catalog').replaceChildren(...videos.map((v) => card(v)));

let refreshTimer = null;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, 300);
}

// The row is polled; unchanged answers are 304s without a body (ETag).
async function refresh() {
  clearTimeout(refreshTimer);
  try {
    const items = await fetchKeepWatching({ queryUrl: config.queryUrl, token, limit: 20 });
    const cards = items.map((it) => card(byId.get(it.video_id) ?? { id: it.video_id, title: it.video_id, hue: 270 }, it));
    $('keep-watching').replaceChildren(...cards);
    $('empty').hidden = cards.length > 0;
  } catch (err) {
    log(err.message, 'bad');
  }
  refreshTimer = setTimeout(refresh, 3000);
}

video.addEventListener('timeupdate', () => {
  $('status').textContent = Number.isFinite(video.duration) ? `${video.currentTime.toFixed(1)} s / ${video.duration.toFixed(1)} s` : '';
});

refresh();
select(videos[0], { play: false });
