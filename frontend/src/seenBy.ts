/**
 * Delivery receipts, the showing side: who of a job's region group has seen its latest recommendation set.
 *
 * The sheet fetches `GET /api/jobs/{id}/receipts` (when the job is opened, when its stream (re)opens, when a
 * new set of the job is applied, on a `stale` hint) and keeps it current with the stream's `receipt` hints
 * in between, without polling: a hint says that a dispatcher's consoles have applied everything through a
 * position, so it marks them seen when that position is at or after the set's (same epoch). Seen never
 * becomes unseen for one set, so a fetch answered late cannot undo a hint that came meanwhile.
 */
import type { JobReceipts, ReceiptDispatcher } from './api';
import { parsePosition } from './realtime/order';

/** A `receipt` hint about one dispatcher (the stream's `{dispatcherId, position, seenAt}`). */
export interface SeenHint {
  dispatcherId: string;
  position: string;
  seenAt: string;
}

/** Whether a console that applied everything through `reached` has applied the event at `target`. */
export function covers(reached: string, target: string | null): boolean {
  const r = parsePosition(reached);
  const t = parsePosition(target);
  return r !== null && t !== null && r.epoch === t.epoch && r.seq >= t.seq;
}

function withCounts(receipts: JobReceipts, dispatchers: ReceiptDispatcher[]): JobReceipts {
  return {
    ...receipts,
    dispatchers,
    seenCount: dispatchers.filter((d) => d.seenAt !== null).length,
    total: dispatchers.length,
  };
}

/** `receipts` with the hint applied: its dispatcher seen at `hint.seenAt` if the hint covers the set and they
 * were not seen yet. The same object when nothing changes (a React state update is then skipped). */
export function applyHint(receipts: JobReceipts, hint: SeenHint): JobReceipts {
  if (!covers(hint.position, receipts.position)) return receipts;
  const i = receipts.dispatchers.findIndex((d) => d.dispatcherId === hint.dispatcherId);
  if (i < 0 || receipts.dispatchers[i].seenAt !== null) return receipts;
  const dispatchers = receipts.dispatchers.slice();
  dispatchers[i] = { ...dispatchers[i], seenAt: hint.seenAt };
  return withCounts(receipts, dispatchers);
}

/**
 * What to show after a fetch answered `fetched`: the server's list (members come and go), with whoever
 * `previous` already had seen for the same set still seen (a hint may have come after the server answered),
 * then the hints buffered since (they may have come before the receipts did).
 */
export function mergeReceipts(
  previous: JobReceipts | null,
  fetched: JobReceipts,
  hints: Iterable<SeenHint> = [],
): JobReceipts {
  let merged = fetched;
  if (
    previous &&
    previous.jobId === fetched.jobId &&
    previous.position !== null &&
    previous.position === fetched.position
  ) {
    const before = new Map(previous.dispatchers.map((d) => [d.dispatcherId, d.seenAt]));
    merged = withCounts(
      fetched,
      fetched.dispatchers.map((d) => (d.seenAt === null && before.get(d.dispatcherId) ? { ...d, seenAt: before.get(d.dispatcherId)! } : d)),
    );
  } else {
    merged = withCounts(fetched, fetched.dispatchers);
  }
  for (const hint of hints) merged = applyHint(merged, hint);
  return merged;
}

/** The latest hint of each dispatcher, kept so that the receipts fetched after it can still take it in. */
export class HintBuffer {
  private readonly byDispatcher = new Map<string, SeenHint>();

  add(hint: SeenHint): void {
    const p = parsePosition(hint.position);
    if (!p) return;
    const old = this.byDispatcher.get(hint.dispatcherId);
    const o = old ? parsePosition(old.position) : null;
    if (o && o.epoch === p.epoch && o.seq >= p.seq) return;
    this.byDispatcher.set(hint.dispatcherId, hint);
  }

  values(): SeenHint[] {
    return [...this.byDispatcher.values()];
  }

  clear(): void {
    this.byDispatcher.clear();
  }
}

/** `region:north` → `north`; any other group as it is. */
export function groupLabel(group: string): string {
  return group.startsWith('region:') ? group.slice('region:'.length) : group;
}

/** `A`, `A and B`, `A, B and C`; past `max` names, `A, B, C and 2 others`. */
export function listNames(names: string[], max = 3): string {
  if (names.length <= max) {
    if (names.length <= 1) return names.join('');
    return `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]}`;
  }
  const rest = names.length - max;
  return `${names.slice(0, max).join(', ')} and ${rest} other${rest === 1 ? '' : 's'}`;
}

/** "Seen by 3 of 4 north dispatchers · Bob not yet", "Seen by all 4 north dispatchers". */
export function seenBySummary(receipts: JobReceipts): string {
  const label = groupLabel(receipts.group);
  const total = receipts.dispatchers.length;
  const seen = receipts.dispatchers.filter((d) => d.seenAt !== null);
  const notYet = receipts.dispatchers.filter((d) => d.seenAt === null).map((d) => d.name);
  if (total === 0) return `No ${label} dispatcher to see it`;
  if (total === 1) return seen.length === 1 ? `Seen by ${seen[0].name}, the only ${label} dispatcher` : `Not seen yet by ${notYet[0]}, the only ${label} dispatcher`;
  if (notYet.length === 0) return `Seen by all ${total} ${label} dispatchers`;
  return `Seen by ${seen.length} of ${total} ${label} dispatchers · ${listNames(notYet)} not yet`;
}
