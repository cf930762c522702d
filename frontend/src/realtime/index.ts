export * from './client';
import { createRealtimeClient, type RealtimeClient } from './client';

let instance: RealtimeClient | null = null;

/** The single realtime client of this tab (one SSE stream per tab). */
export function getRealtimeClient(): RealtimeClient {
  if (!instance) instance = createRealtimeClient();
  return instance;
}
