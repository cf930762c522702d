const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dateTimeFmt = new Intl.DateTimeFormat(undefined, {
  month: 'short',
  day: 'numeric',
  hour: '2-digit',
  minute: '2-digit',
});
const fullFmt = new Intl.DateTimeFormat(undefined, {
  month: 'short',
  day: 'numeric',
  hour: '2-digit',
  minute: '2-digit',
  second: '2-digit',
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
  return `${dateTimeFmt.format(s)} – ${sameDay ? timeFmt.format(e) : dateTimeFmt.format(e)}`;
}

export function formatDateTime(iso: string): string {
  const d = parse(iso);
  return d ? fullFmt.format(d) : iso;
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
