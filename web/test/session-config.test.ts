import { describe, expect, it } from 'vitest';
import type { SessionConfig } from '../src/protocol';
import { ConfigTracker } from '../src/session-config';

function config(over: Partial<SessionConfig>): SessionConfig {
  return {
    type: 'voice-vad',
    state: 'active',
    started_at: 1000,
    voice_mode: 'continuous',
    is_muted: false,
    turn_detection: 'server',
    room_id: 'clara-demo',
    last_sync_at: 1000,
    sync_attempts: 0,
    inconsistency_detected: false,
    voice_activity_enabled: true,
    ...over,
  };
}

describe('ConfigTracker', () => {
  it('keeps the newest config of one session', () => {
    const t = new ConfigTracker();
    expect(t.offer(config({ state: 'idle', started_at: null, last_sync_at: 10 }), 's1')).toBe(true);
    expect(t.offer(config({ last_sync_at: 20 }), 's1')).toBe(true);
    expect(t.offer(config({ state: 'syncing', last_sync_at: 15 }))).toBe(false); // an older attribute value
    expect(t.current?.state).toBe('active');
    expect(t.offer(config({ type: 'text', last_sync_at: 30 }))).toBe(true); // an RPC reply
    expect(t.current?.type).toBe('text');
  });

  it('ignores the previous session after a new start with the same identity', () => {
    const t = new ConfigTracker();
    t.offer(config({ started_at: 1000, last_sync_at: 1500 }), 'old');
    t.reset();
    expect(t.current).toBeNull();
    // the agent's attribute still holds the old session for a moment
    expect(t.offer(config({ started_at: 1000, last_sync_at: 1600 }))).toBe(false);
    expect(t.offer(config({ type: 'text', state: 'idle', started_at: null, last_sync_at: 1700 }), 'new')).toBe(true);
    expect(t.offer(config({ type: 'text', started_at: 1710, last_sync_at: 1710 }), 'new')).toBe(true);
    // the old session's `ending` arrives late, with a later time
    expect(t.offer(config({ state: 'ending', started_at: 1000, last_sync_at: 1800 }), 'old')).toBe(false);
    expect(t.current).toMatchObject({ type: 'text', state: 'active' });
  });

  it('ignores a late `ending` of a session it never saw once another is current', () => {
    const t = new ConfigTracker();
    t.offer(config({ type: 'text', started_at: 2000, last_sync_at: 2000 }), 'new');
    expect(t.offer(config({ state: 'ending', started_at: 900, last_sync_at: 2500 }), 'unknown')).toBe(false);
    expect(t.offer(config({ state: 'active', started_at: 900, last_sync_at: 2600 }), 'unknown')).toBe(false);
    expect(t.current?.type).toBe('text');
  });

  it('follows a new session that replaces the current one', () => {
    const t = new ConfigTracker();
    t.offer(config({ started_at: 1000, last_sync_at: 1000 }), 's1');
    // the grace period ran out while reconnecting: the agent starts a fresh session
    expect(t.offer(config({ state: 'idle', started_at: null, last_sync_at: 900 }), 's2')).toBe(true);
    expect(t.current?.state).toBe('idle');
    expect(t.offer(config({ state: 'ending', last_sync_at: 3000 }), 's1')).toBe(false);
    expect(t.offer(config({ started_at: 1000, last_sync_at: 3100 }))).toBe(false); // s1's last attribute value
  });

  it('shows the end of its own session', () => {
    const t = new ConfigTracker();
    t.offer(config({ last_sync_at: 1000 }), 's1');
    expect(t.offer(config({ state: 'ending', last_sync_at: 2000 }), 's1')).toBe(true);
    expect(t.current?.state).toBe('ending');
  });
});
