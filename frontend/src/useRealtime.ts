import { useCallback, useEffect, useRef, useSyncExternalStore } from 'react';
import { connectionView, type ConnectionView } from './connectionView';
import type { AccessRevoked, ConnectionStatus, RealtimeClient, ReceiptHint, ResetInfo, StreamEventOf } from './realtime';

/** Current connection status of the client (re-renders on change). */
export function useConnectionStatus(client: RealtimeClient): ConnectionStatus {
  const subscribe = useCallback((cb: () => void) => client.onStatus(cb), [client]);
  return useSyncExternalStore(subscribe, () => client.status, () => client.status);
}

/** True while the stream has been down long enough that REST polling is on. */
export function useDegraded(client: RealtimeClient): boolean {
  const subscribe = useCallback((cb: () => void) => client.onDegraded(cb), [client]);
  return useSyncExternalStore(subscribe, () => client.degraded, () => client.degraded);
}

/** The page's one view of the connection (badge, header, sheet notice, freshness). */
export function useConnectionView(client: RealtimeClient): ConnectionView {
  const status = useConnectionStatus(client);
  const degraded = useDegraded(client);
  return connectionView(status, degraded);
}

/** Handlers of the connection's own events (the stream's events go to `useStreamEvent`). */
export interface RealtimeHandlers {
  onReset?: (info: ResetInfo) => void;
  onAuthExpired?: () => void;
  onAccessRevoked?: (info: AccessRevoked) => void;
  onClosed?: () => void;
  /** A `receipt` hint of the stream (delivery receipts); it never moves the stream position. */
  onReceipt?: (hint: ReceiptHint) => void;
}

/** Subscribe to client events; handlers may change between renders without resubscribing. */
export function useRealtimeEvents(client: RealtimeClient, handlers: RealtimeHandlers): void {
  const ref = useRef(handlers);
  ref.current = handlers;
  useEffect(() => {
    const offs = [
      client.onReset((info) => ref.current.onReset?.(info)),
      client.onAuthExpired(() => ref.current.onAuthExpired?.()),
      client.onAccessRevoked((info) => ref.current.onAccessRevoked?.(info)),
      client.onClosed(() => ref.current.onClosed?.()),
      client.onReceipt((hint) => ref.current.onReceipt?.(hint)),
    ];
    return () => offs.forEach((off) => off());
  }, [client]);
}

/** Subscribe to the stream's events of `eventType` (e.g. `RecommendationReady`); the handler may change
 * between renders without resubscribing. */
export function useStreamEvent<K extends string>(
  client: RealtimeClient,
  eventType: K,
  handler: (ev: StreamEventOf<K>) => void,
): void {
  const ref = useRef(handler);
  ref.current = handler;
  useEffect(() => client.on(eventType, (ev) => ref.current(ev)), [client, eventType]);
}

/** Run `poll` every `intervalMs` while the client is degraded (stream down > ~10 s). */
export function usePollWhileDegraded(
  client: RealtimeClient,
  poll: (() => void) | null,
  intervalMs = 5000,
): void {
  const ref = useRef(poll);
  ref.current = poll;
  const enabled = poll !== null;
  useEffect(() => {
    if (!enabled) return;
    return client.whileDegraded(() => ref.current?.(), intervalMs);
  }, [client, enabled, intervalMs]);
}
