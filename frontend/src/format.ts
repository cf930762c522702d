// Every time shown names its time zone (the browser's): dispatchers and contractors may not
// share one, and the API speaks UTC.
const timeTzFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', timeZoneName: 'short' });
const dateTimeFmt = new Intl.DateTimeFormat(undefined, {
  month: 'short',
  day: 'numeric',
  hour: '2-digit',
  minute: '2-digit',
});
const dateTimeTzFmt = new Intl.DateTimeFormat(undefined, {
  month: 'short',
  day: 'numeric',
  hour: '2-digit',
  minute: '2-digit',
  timeZoneName: 'short',
});
const fullFmt = new Intl.DateTimeFormat(undefined, {
  month: 'short',
  day: 'numeric',
  hour: '2-digit',
  minute: '2-digit',
  second: '2-digit',
  timeZoneName: 'short',
});

const secondsTzFmt = new Intl.DateTimeFormat(undefined, {
  hour: '2-digit',
  minute: '2-digit',
  second: '2-digit',
  timeZoneName: 'short',
});

function parse(iso: string): Date | null {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? null : d;
}

export function formatWindow(start: string, end: string): string {
  const s = parse(start);
  const e = parse(end);
  if (!s || !e) return `${start} – ${end}`;
  const sameDay = s.toDateString() === e.toDateString();
  return `${dateTimeFmt.format(s)} – ${sameDay ? timeTzFmt.format(e) : dateTimeTzFmt.format(e)}`;
}

export function formatDateTime(iso: string): string {
  const d = parse(iso);
  return d ? fullFmt.format(d) : iso;
}

/** A moment to the second with its time zone: `09:41:07 CET` today, `Dec 1, 09:41:07 CET` another day. */
export function formatMoment(iso: string, nowMs: number = Date.now()): string {
  const d = parse(iso);
  if (!d) return iso;
  return d.toDateString() === new Date(nowMs).toDateString() ? secondsTzFmt.format(d) : fullFmt.format(d);
}

export function formatScore(score: number): string {
  return score.toFixed(2);
}

export function formatKm(km: number): string {
  return km.toFixed(1);
}

/** "just now" for the first 10 s, then "Ns ago" / "N min ago". */
export function formatAgo(thenMs: number, nowMs: number): string {
  const s = Math.max(0, Math.round((nowMs - thenMs) / 1000));
  if (s < 10) return 'just now';
  if (s < 60) return `${s}s ago`;
  return `${Math.floor(s / 60)} min ago`;
}

/** Jobs by time window: earliest start first, then earliest end, then title (stable for equal windows). */
export function byTimeWindow<T extends { windowStart: string; windowEnd: string; title: string }>(a: T, b: T): number {
  const t = (iso: string) => {
    const ms = Date.parse(iso);
    return Number.isNaN(ms) ? Number.POSITIVE_INFINITY : ms;
  };
  return t(a.windowStart) - t(b.windowStart) || t(a.windowEnd) - t(b.windowEnd) || a.title.localeCompare(b.title);
}

/** The scoring weights of the server's `weighted-v1` algorithm (src/recommendations/scoring.rs), for a set
 * that does not carry its own `scoreWeights`. */
export const SCORE_WEIGHTS = { proximity: 0.45, skills: 0.2, rating: 0.2, capacity: 0.15 } as const;

/** The parts of a score in display order; the sheet shows them under these names (the API's keys). */
export const SCORE_PART_KEYS = ['proximity', 'skills', 'rating', 'capacity'] as const;

type Parts = Record<(typeof SCORE_PART_KEYS)[number], number>;

/** "0.45 × 0.92 proximity + 0.20 × 1.00 skills + 0.20 × 0.80 rating + 0.15 × 0.50 capacity = 0.87". */
export function formatScoreFormula(score: number, parts: Parts, weights: Parts): string {
  const terms = SCORE_PART_KEYS.map((key) => `${weights[key].toFixed(2)} × ${formatScore(parts[key])} ${key}`);
  return `${terms.join(' + ')} = ${formatScore(score)}`;
}

/** What a score is made of when the set has no parts (stored before the server kept them): proximity
 * follows from the distance (`0.45 × 1 / (1 + km / 15)`); skill fit, rating and free capacity are only
 * known together. */
export function scoreParts(score: number, distanceKm: number): { proximity: number; others: number } {
  const proximity = SCORE_WEIGHTS.proximity / (1 + distanceKm / 15);
  return { proximity, others: Math.max(0, score - proximity) };
}
