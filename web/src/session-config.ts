// Which SessionConfig is ours now. The agent reports configs from three places (its
// attribute, clara.sync events, RPC replies), and right after a new start with the same
// identity some of them still describe the previous session: its last attribute value,
// or its final `ending` event arriving after the new session's first events.

import { newerConfig, type SessionConfig } from './protocol';

export class ConfigTracker {
  private config: SessionConfig | null = null;
  private sessionId: string | null = null;
  private readonly staleIds = new Set<string>();
  private readonly staleStarts = new Set<number>();

  get current(): SessionConfig | null {
    return this.config;
  }

  /** A new session begins (Start Session): everything seen so far belongs to older ones. */
  reset(): void {
    this.retire();
    this.config = null;
    this.sessionId = null;
  }

  /**
   * Offer a config; `sessionId` comes with clara.sync events (the attribute and RPC replies
   * have none). Returns whether it became the current config.
   */
  offer(config: SessionConfig, sessionId: string | null = null): boolean {
    if (sessionId !== null && this.staleIds.has(sessionId)) return false;
    if (config.started_at !== null && this.staleStarts.has(config.started_at)) return false;
    if (sessionId !== null && sessionId !== this.sessionId) {
      if (config.state === 'ending' && this.sessionId !== null) {
        this.staleIds.add(sessionId); // an older session's last word
        return false;
      }
      this.retire();
      this.sessionId = sessionId;
      this.config = config; // a new session: its first config wins whatever the times say
      return true;
    }
    const next = newerConfig(this.config, config);
    if (next === this.config) return false;
    this.config = next;
    return true;
  }

  private retire(): void {
    if (this.sessionId !== null) this.staleIds.add(this.sessionId);
    if (this.config?.started_at != null) this.staleStarts.add(this.config.started_at);
  }
}
