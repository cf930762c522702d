import type { EventSourceLike } from '../src/realtime';

type Listener = (ev: Event) => void;

/** A scripted stand-in for the browser's EventSource. */
export class FakeEventSource implements EventSourceLike {
  static instances: FakeEventSource[] = [];
  static reset(): void {
    FakeEventSource.instances = [];
  }
  static get last(): FakeEventSource {
    const es = FakeEventSource.instances.at(-1);
    if (!es) throw new Error('no EventSource was created');
    return es;
  }

  readyState = 0;
  closed = false;
  private readonly listeners = new Map<string, Set<Listener>>();

  constructor(
    readonly url: string,
    readonly init?: { withCredentials?: boolean },
  ) {
    FakeEventSource.instances.push(this);
  }

  addEventListener(type: string, listener: Listener): void {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type)!.add(listener);
  }

  close(): void {
    this.readyState = 2;
    this.closed = true;
  }

  private dispatch(type: string, ev: Event): void {
    for (const l of this.listeners.get(type) ?? []) l(ev);
  }

  /** The connection is established (200 text/event-stream). */
  open(): void {
    this.readyState = 1;
    this.dispatch('open', new Event('open'));
  }

  /** A named SSE message; `id` defaults to data.position. */
  emit(type: string, data: unknown, id?: string): void {
    const lastEventId =
      id ?? (data && typeof data === 'object' && 'position' in data ? String((data as { position: unknown }).position) : '');
    this.dispatch(type, new MessageEvent(type, { data: typeof data === 'string' ? data : JSON.stringify(data), lastEventId }));
  }

  /** Network drop: the browser will retry by itself (readyState CONNECTING). */
  dropAndRetry(): void {
    this.readyState = 0;
    this.dispatch('error', new Event('error'));
  }

  /** Closed for good (e.g. non-200 response): readyState CLOSED, no browser retry. */
  failForGood(): void {
    this.readyState = 2;
    this.dispatch('error', new Event('error'));
  }

  get searchParams(): URLSearchParams {
    return new URL(this.url, 'http://localhost').searchParams;
  }
}

let counter = 0;
/** A valid RecommendationReady event body. */
export function recEvent(
  position: string,
  over: Partial<{ eventId: string; jobId: string; recommendationSetId: string; count: number }> = {},
) {
  counter += 1;
  const hex = counter.toString(16).padStart(12, '0');
  return {
    eventId: over.eventId ?? `00000000-0000-4000-8000-${hex}`,
    type: 'RecommendationReady' as const,
    position,
    groups: ['region:north'],
    occurredAt: '2026-01-01T10:00:00Z',
    replayOf: null,
    jobId: over.jobId ?? '11111111-1111-4111-8111-111111111111',
    summary: {
      recommendationSetId: over.recommendationSetId ?? `22222222-2222-4222-8222-${hex}`,
      count: over.count ?? 1,
      top: [
        {
          contractorId: '33333333-3333-4333-8333-333333333333',
          name: 'Ada',
          score: 0.91,
          etaMinutes: 23,
        },
      ],
    },
  };
}
