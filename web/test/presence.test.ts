import { describe, expect, it } from 'vitest';
import { ClaraPresence, STALE_MS } from '../src/presence';

describe('ClaraPresence', () => {
  it('is never away before Clara was here', () => {
    const presence = new ClaraPresence();
    expect(presence.away(0)).toBe(false);
    presence.update(null, undefined, 10);
    expect(presence.away(10_000)).toBe(false);
    presence.update('agent-A', undefined, 20); // joined, no heartbeat yet
    expect(presence.away(10_000)).toBe(false);
  });

  it('is away when the heartbeat stops, and back with a new agent that beats', () => {
    const presence = new ClaraPresence();
    presence.update('agent-A', '1', 0);
    presence.update('agent-A', '2', 1000);
    expect(presence.away(1000 + STALE_MS)).toBe(false);
    expect(presence.away(1001 + STALE_MS)).toBe(true); // the worker crashed
    presence.update(null, undefined, 9000); // removed from the room
    expect(presence.away(9000)).toBe(true);
    presence.update('agent-B', undefined, 9500); // its replacement joins
    expect(presence.away(9600)).toBe(true);
    presence.update('agent-B', '9700', 9700); // and beats
    expect(presence.away(9700)).toBe(false);
  });

  it('forgets it all for a new session', () => {
    const presence = new ClaraPresence();
    presence.update('agent-A', '1', 0);
    presence.update(null, undefined, 10);
    presence.reset();
    expect(presence.away(10)).toBe(false);
  });
});
