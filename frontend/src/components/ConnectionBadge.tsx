import type { ConnectionView } from '../connectionView';

export function ConnectionBadge({ view }: { view: ConnectionView }) {
  return (
    <span className={`conn conn--${view.status}`} title={view.label} role="status">
      <span className="conn__dot" aria-hidden="true" />
      <span className="conn__status" data-testid="connection-status">
        {view.status}
      </span>
      <span className="conn__label" data-testid="connection-label">
        {view.label}
      </span>
    </span>
  );
}
