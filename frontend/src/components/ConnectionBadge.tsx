import type { ConnectionStatus } from '../realtime';

const LABELS: Record<ConnectionStatus, string> = {
  live: 'Live updates on',
  reconnecting: 'Reconnecting…',
  offline: 'Offline — updates paused',
};

export function ConnectionBadge({ status }: { status: ConnectionStatus }) {
  return (
    <span className={`conn conn--${status}`} title={LABELS[status]}>
      <span className="conn__dot" aria-hidden="true" />
      <span className="conn__status" data-testid="connection-status">
        {status}
      </span>
      <span className="conn__label">{LABELS[status]}</span>
    </span>
  );
}
