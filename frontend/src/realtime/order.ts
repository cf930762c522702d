/**
 * Order and de-duplication of stream events, shared by the connection client (one EventSource)
 * and the tab-sharing layer (events relayed between tabs): a tab applies an event at most once,
 * whichever way it arrived.
 */

const POSITION_RE = /^([0-9a-f]{8})-([0-9]+)$/;

/** A parsed stream position `<epoch>-<seq>`. */
export interface Position {
  epoch: string;
  seq: bigint;
}

/** Parse `<epoch>-<seq>`; null if malformed. */
export function parsePosition(pos: unknown): Position | null {
  if (typeof pos !== 'string') return null;
  const m = POSITION_RE.exec(pos);
  if (!m) return null;
  return { epoch: m[1], seq: BigInt(m[2]) };
}

/** `new` to apply, `new-epoch` to apply after a reload (the log was recreated), `duplicate` or
 * `invalid` to drop. */
export type Verdict = 'new' | 'new-epoch' | 'duplicate' | 'invalid';

/** The last applied position plus a bounded set of recent eventIds. */
export class EventOrder {
  private last: Position | null;
  private lastStr: string | null;
  private readonly recent = new Set<string>();

  constructor(
    initial: string | null = null,
    private readonly window = 1000,
  ) {
    this.last = parsePosition(initial);
    this.lastStr = this.last ? initial : null;
  }

  /** The position this tab has applied everything of its groups up to (null: unknown). */
  get position(): string | null {
    return this.lastStr;
  }

  /** Decide about an event at `position` with `eventId`, and record it when it is to be applied. */
  accept(position: unknown, eventId: string | null): Verdict {
    const pos = parsePosition(position);
    if (!pos) return 'invalid'; // cannot order it: ignore rather than risk a duplicate
    let verdict: Verdict = 'new';
    if (this.last) {
      if (pos.epoch !== this.last.epoch) verdict = 'new-epoch';
      else if (pos.seq <= this.last.seq) return 'duplicate';
    }
    if (verdict === 'new' && eventId !== null && this.recent.has(eventId)) return 'duplicate';
    if (verdict === 'new-epoch') this.recent.clear();
    if (eventId !== null) this.remember(eventId);
    this.last = pos;
    this.lastStr = position as string;
    return verdict;
  }

  /** Move forward to a position the tab has everything up to (a heartbeat's). Only forward, only
   * within the same epoch (or from an unknown position). Returns whether it moved. */
  advanceTo(position: unknown): boolean {
    const pos = parsePosition(position);
    if (!pos) return false;
    if (this.last && (pos.epoch !== this.last.epoch || pos.seq <= this.last.seq)) return false;
    this.last = pos;
    this.lastStr = position as string;
    return true;
  }

  /** Continue from `position` whatever it is (after a `reset`: the state was reloaded over REST). */
  resetTo(position: unknown): void {
    const pos = parsePosition(position);
    if (!pos) return;
    if (this.last && pos.epoch !== this.last.epoch) this.recent.clear();
    this.last = pos;
    this.lastStr = position as string;
  }

  private remember(id: string): void {
    this.recent.add(id);
    if (this.recent.size > this.window) {
      const oldest = this.recent.values().next().value;
      if (oldest !== undefined) this.recent.delete(oldest);
    }
  }
}

/** Compare two positions of the same epoch: negative, 0, positive. Different epochs or a
 * malformed position compare as null. */
export function comparePositions(a: string | null, b: string | null): number | null {
  const pa = parsePosition(a);
  const pb = parsePosition(b);
  if (!pa || !pb || pa.epoch !== pb.epoch) return null;
  return pa.seq < pb.seq ? -1 : pa.seq > pb.seq ? 1 : 0;
}
