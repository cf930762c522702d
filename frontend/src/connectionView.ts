import type { ConnectionStatus } from './realtime';

/** How often the open sheet is refreshed over REST while live updates are interrupted. */
export const POLL_MS = 5000;

/** How fresh what the page shows can be assumed to be. */
export type Freshness = 'live' | 'stale' | 'paused';

/** Everything the page says about the connection, derived from the one status of the realtime
 * client, so that the badge, the header, the sheet and the "Updated" cue never disagree. */
export interface ConnectionView {
  status: ConnectionStatus;
  /** The badge text next to the status word. */
  label: string;
  /** A sentence for the sheet, or null when there is nothing to say. */
  notice: string | null;
  freshness: Freshness;
  /** The sheet is being refreshed over REST every POLL_MS. */
  polling: boolean;
}

export function connectionView(status: ConnectionStatus, degraded: boolean): ConnectionView {
  const every = `${POLL_MS / 1000} s`;
  switch (status) {
    case 'live':
      return { status, label: 'Live updates on', notice: null, freshness: 'live', polling: false };
    case 'reconnecting':
      return degraded
        ? {
            status,
            label: `Reconnecting… — refreshing every ${every}`,
            notice: `Live updates are interrupted; this sheet is refreshed every ${every} until they are back.`,
            freshness: 'stale',
            polling: true,
          }
        : { status, label: 'Reconnecting…', notice: null, freshness: 'stale', polling: false };
    case 'offline':
      return {
        status,
        label: 'Offline — updates paused',
        notice: 'Offline: updates are paused until the connection is back.',
        freshness: 'paused',
        polling: false,
      };
  }
}
