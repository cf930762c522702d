export * from './client';
export * from './order';
export * from './shared';
import type { RealtimeClient } from './client';
import { createSharedRealtimeClient } from './shared';

let instance: RealtimeClient | null = null;

/** The realtime client of this tab: one stream shared by all tabs of the browser profile
 * (a stream per tab where the browser cannot share). */
export function getRealtimeClient(): RealtimeClient {
  if (!instance) {
    instance = createSharedRealtimeClient();
    // A read-only handle for diagnostics and the end-to-end tests (role, status, position).
    if (typeof window !== 'undefined') {
      (window as unknown as { __smartschedulerRealtime?: RealtimeClient }).__smartschedulerRealtime = instance;
    }
  }
  return instance;
}
