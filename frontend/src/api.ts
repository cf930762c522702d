/** Typed REST client for the SmartScheduler API (same origin, cookie auth). */

export interface Me {
  dispatcherId: string;
  name: string;
  groups: string[];
}

export interface Job {
  id: string;
  title: string;
  region: string;
  requiredSkills: string[];
  location: { lat: number; lon: number };
  windowStart: string;
  windowEnd: string;
  createdAt: string;
}

/** The four parts of a score, each 0 to 1 (src/recommendations/scoring.rs; `ScoreParts` in openapi.json). */
export interface ScoreParts {
  /** `1 / (1 + km / 15)`. */
  proximity: number;
  /** Skill fit: the share of the contractor's skills the job uses. */
  skills: number;
  /** Customer rating / 5. */
  rating: number;
  /** Free capacity that day: `1 - bookings / max_daily_jobs`. */
  capacity: number;
}

/** The weight of each part: `score = Σ weight × part`. They sum to 1. */
export type ScoreWeights = ScoreParts;

export interface Recommendation {
  rank: number;
  contractorId: string;
  name: string;
  score: number;
  distanceKm: number;
  etaMinutes: number;
  matchedSkills: string[];
  /** What the score is made of; null for a set stored before the server kept parts (optional: a server
   * older than the console omits it). */
  scoreParts?: ScoreParts | null;
}

export interface RecommendationSet {
  recommendationSetId: string;
  jobId: string;
  generatedAt: string;
  /** The scoring algorithm that ranked the set, e.g. `weighted-v1`. */
  algorithm?: string;
  /** The weights of `algorithm`; null when the server does not know it. */
  scoreWeights?: ScoreWeights | null;
  recommendations: Recommendation[];
}

/** One member of a job's region group and whether a console of theirs has applied the set. */
export interface ReceiptDispatcher {
  dispatcherId: string;
  name: string;
  /** RFC 3339: when a console of this dispatcher first reported a position >= the set's; null: not yet. */
  seenAt: string | null;
}

/** `GET /api/jobs/{id}/receipts`: who of the job's group has seen its latest recommendation set. */
export interface JobReceipts {
  jobId: string;
  recommendationSetId: string | null;
  /** `<epoch>-<seq>` of that set's RecommendationReady event; null when there is none yet. */
  position: string | null;
  /** The group whose members count, e.g. `region:north`. */
  group: string;
  /** Current, enabled members of the group, by name. */
  dispatchers: ReceiptDispatcher[];
  seenCount: number;
  total: number;
}

/** An error answered by the API (`{"error": {"code", "message"}}`) or a network failure. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

async function request<T>(method: string, path: string, body?: unknown, opts: { keepalive?: boolean } = {}): Promise<T> {
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      credentials: 'same-origin',
      ...(opts.keepalive ? { keepalive: true } : {}),
      headers: body === undefined ? { Accept: 'application/json' } : { Accept: 'application/json', 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, 'network_error', `Cannot reach the server (${(err as Error).message})`);
  }
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  let json: unknown = undefined;
  if (text) {
    try {
      json = JSON.parse(text);
    } catch {
      /* not JSON */
    }
  }
  if (!res.ok) {
    const e = (json as { error?: { code?: string; message?: string } } | undefined)?.error;
    throw new ApiError(
      res.status,
      e?.code ?? `http_${res.status}`,
      e?.message ?? `Request failed: ${res.status} ${res.statusText}`,
    );
  }
  return json as T;
}

/**
 * Why the event stream is refused, which an EventSource cannot tell (it only sees an error): asks once
 * with fetch and reads the answer's error, or `null` when the stream opens (the probe then hangs up at
 * once) or the server cannot be reached. Called only after the browser gave up on a stream.
 */
async function streamRefusal(): Promise<ApiError | null> {
  const abort = new AbortController();
  try {
    const res = await fetch('/api/events', {
      credentials: 'same-origin',
      headers: { Accept: 'text/event-stream' },
      signal: abort.signal,
    });
    if (res.ok) return null;
    const body = (await res.json().catch(() => undefined)) as { error?: { code?: string; message?: string } } | undefined;
    return new ApiError(res.status, body?.error?.code ?? `http_${res.status}`, body?.error?.message ?? res.statusText);
  } catch {
    return null;
  } finally {
    abort.abort();
  }
}

export const api = {
  me: () => request<Me>('GET', '/api/me'),
  devDispatchers: () => request<Me[]>('GET', '/api/dev/dispatchers'),
  devSignIn: (dispatcherId: string) => request<Me>('POST', '/api/dev/session', { dispatcherId }),
  signIn: (token: string) => request<Me>('POST', '/api/session', { token }),
  signOut: () => request<void>('DELETE', '/api/session'),
  jobs: (region?: string) =>
    request<Job[]>('GET', region ? `/api/jobs?region=${encodeURIComponent(region)}` : '/api/jobs'),
  recommendations: (jobId: string) =>
    request<RecommendationSet>('GET', `/api/jobs/${encodeURIComponent(jobId)}/recommendations`),
  generate: (jobId: string) =>
    request<RecommendationSet>('POST', `/api/jobs/${encodeURIComponent(jobId)}/recommendations`),
  /** The signed-in dispatcher's starred jobs (regions they hold now). */
  watches: () => request<{ jobIds: string[] }>('GET', '/api/watches'),
  watch: (jobId: string) => request<void>('PUT', `/api/jobs/${encodeURIComponent(jobId)}/watch`),
  unwatch: (jobId: string) => request<void>('DELETE', `/api/jobs/${encodeURIComponent(jobId)}/watch`),
  /** Who of the job's group has seen its latest set (delivery receipts). */
  receipts: (jobId: string) => request<JobReceipts>('GET', `/api/jobs/${encodeURIComponent(jobId)}/receipts`),
  /** This console has applied every event of its groups through `position` (204). `keepalive` lets the
   * request outlive the page. */
  reportReceipt: (position: string, opts: { keepalive?: boolean } = {}) =>
    request<void>('POST', '/api/receipts', { position }, opts),
  streamRefusal,
};

export type Api = typeof api;
