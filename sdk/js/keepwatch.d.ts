// Type declarations of keepwatch.js, the keepwatch player SDK.

/** What token() is asked for: refresh is true once after the server refused the last token (401). */
export interface TokenRequest {
  refresh: boolean;
}

/** Returns the bearer token (a JWT whose sub is the user) for the keepwatch APIs. */
export type TokenSource = (request: TokenRequest) => string | Promise<string>;

/** A Web Storage: window.localStorage, or anything with its methods. */
export interface StorageLike {
  readonly length: number;
  key(index: number): string | null;
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface TrackOptions {
  /** The command API's base URL, e.g. https://progress.example.com. */
  commandUrl: string;
  /** The video's id: 1–128 characters of A-Z a-z 0-9 . _ : - */
  videoId: string;
  /** The series the video is an episode of (the rules of videoId): keep-watching shows a series once, at its most recently watched unfinished episode. */
  seriesId?: string;
  /** The episode's ordering number in its series, 0–99 999 999.999 (e.g. 102 for season 1 episode 2). */
  episode?: number;
  /** Called before sends; refresh: true once after a 401. */
  token: TokenSource;
  /** Milliseconds between heartbeats while the media plays; default 10 000. */
  interval?: number;
  /** Where unsent progress waits; default localStorage; null: memory only (lost with the page). */
  storage?: StorageLike | null;
  /** Dropped progress (a 4xx, a full queue) and give-ups (token refused, token() failing); never thrown. */
  onError?: (error: KeepwatchError) => void;
  /** Milliseconds of quiet after a seek before its position is posted; default 1 000. */
  seekDebounce?: number;
  /** Most observations waiting (one per video and user); default 500. */
  maxQueued?: number;
  /** Most bytes of storage the waiting observations take; default 262 144. */
  maxQueuedBytes?: number;
  /** First retry delay in ms, doubled per failure, with jitter; default 1 000. */
  retryBase?: number;
  /** Longest retry delay in ms, and the longest Retry-After honoured; default 300 000. */
  retryMax?: number;
  /** The fetch to send with; default the global fetch. */
  fetch?: typeof fetch;
}

export interface Tracker {
  /** Posts the current position if it changed and sends what waits now; resolves to how many observations still wait. */
  flush(): Promise<number>;
  /** Posts the current position if it changed, then detaches from the media. */
  stop(): Promise<void>;
}

/** Reports media's progress to the command API until stop(). Throws TypeError/RangeError on bad options. */
export function trackProgress(media: HTMLMediaElement, options: TrackOptions): Tracker;

export interface QueryOptions {
  /** The query API's base URL. */
  queryUrl: string;
  token: TokenSource;
  fetch?: typeof fetch;
}

/**
 * The position in seconds to resume at; null when none, or finished by the server's verdict.
 * `finished` (percent, default 95) only serves servers too old to send their verdict.
 */
export function resumePosition(options: QueryOptions & { videoId: string; /** @deprecated the server decides */ finished?: number }): Promise<number | null>;

/** One item of keep-watching: a video, or a series at its most recently watched unfinished episode. */
export interface KeepWatchingItem {
  video_id: string;
  /** The series the video is an episode of, when the player sent one. */
  series_id?: string;
  /** The episode's ordering number, when the player sent one. */
  episode?: number;
  percent: number;
  position?: number;
  duration?: number;
  /** The server's verdict by its rules: always false in keep-watching, whose videos are unfinished. */
  finished: boolean;
  /** When the progress happened, RFC 3339 in UTC. */
  updated_at: string;
}

/**
 * The user's keep-watching row, newest first; limit 1–100, default 20.
 * group 'series' (the default): one item per series; 'none': one per video.
 */
export function fetchKeepWatching(options: QueryOptions & { limit?: number; group?: 'series' | 'none' }): Promise<KeepWatchingItem[]>;

/** Takes a video out of keep-watching (DELETE /v1/progress/{video_id}). */
export function removeProgress(options: { commandUrl: string; videoId: string; token: TokenSource; fetch?: typeof fetch }): Promise<void>;

/** Whether id passes the server's video id rule. */
export function validVideoId(id: unknown): boolean;

/** trackProgress's defaults. */
export const defaults: Readonly<{
  interval: number;
  seekDebounce: number;
  maxQueued: number;
  maxQueuedBytes: number;
  retryBase: number;
  retryMax: number;
  finished: number;
}>;

/** What onError receives and the query helpers throw. */
export class KeepwatchError extends Error {
  /** The HTTP status; 0 when there was no answer. */
  readonly status: number;
  /** The server's problem+json body, when it sent one. */
  readonly problem: unknown;
  /** The videos concerned. */
  readonly videoIds: string[];
  /** true: the progress was discarded; false: it still waits to be sent. */
  readonly dropped: boolean;
}
