import { describe, expect, it } from 'vitest';
import type { SessionConfig } from '../src/protocol';
import { appendCapped, canChat, canPushToTalk, initialState, installDebugHook, Store, type AppState, type StateKey } from '../src/state';

describe('Store', () => {
  it('tells listeners which keys changed, and only when something did', () => {
    const store = new Store(initialState('clara-demo', 'Ada'));
    const seen: StateKey[][] = [];
    store.subscribe((_s, changed) => seen.push([...changed]));
    store.patch({ status: 'connecting', statusText: 'Connecting…', attempts: 0 });
    store.patch({ status: 'connecting' });
    expect(seen).toEqual([['status', 'statusText']]);
  });

  it('starts idle with the defaults', () => {
    expect(initialState('clara-demo', 'Ada')).toMatchObject({
      status: 'idle',
      statusText: 'Not connected',
      sessionType: 'voice-vad',
      room: 'clara-demo',
      identity: '', // the token endpoint gives it
      name: 'Ada',
      transcript: [],
      agentAudioLevelMax: 0,
    });
  });
});

describe('debug hook', () => {
  it('exposes a live, read-only snapshot', () => {
    const store = new Store(initialState('r', 'u'));
    const target: { claraDebug?: unknown } = {};
    installDebugHook(target, store);
    store.patch({ transcript: [{ speaker: 'clara', text: 'Hi', final: true, segmentId: 'A1' }] });
    const snap = target.claraDebug as ReturnType<Store['snapshot']>;
    expect(snap.transcript[0]?.text).toBe('Hi');
    expect(Object.isFrozen(snap)).toBe(true);
    (snap.transcript[0] as { text: string }).text = 'changed';
    expect(store.current.transcript[0]?.text).toBe('Hi');
    expect(() => {
      target.claraDebug = {};
    }).toThrow(TypeError);
    store.patch({ status: 'connected' });
    expect((target.claraDebug as { status: string }).status).toBe('connected');
  });
});

describe('appendCapped', () => {
  it('keeps the newest items', () => {
    expect(appendCapped([1, 2, 3], 4, 3)).toEqual([2, 3, 4]);
    expect(appendCapped([], 1, 3)).toEqual([1]);
  });
});

const pttConfig: SessionConfig = {
  type: 'voice-ptt',
  state: 'active',
  started_at: 1,
  voice_mode: 'push-to-talk',
  is_muted: false,
  turn_detection: 'client',
  room_id: 'r',
  last_sync_at: 1,
  sync_attempts: 0,
  inconsistency_detected: false,
  voice_activity_enabled: true,
};

describe('canPushToTalk', () => {
  const config = pttConfig;
  const ready: AppState = { ...initialState('r', 'u'), status: 'connected', sessionType: 'voice-ptt', config };

  it('needs a connected push-to-talk session whose pipeline is active', () => {
    expect(canPushToTalk(ready)).toBe(true);
    expect(canPushToTalk({ ...ready, config: null })).toBe(false);
    expect(canPushToTalk({ ...ready, config: { ...config, state: 'idle' } })).toBe(false);
    expect(canPushToTalk({ ...ready, status: 'reconnecting' })).toBe(false);
    expect(canPushToTalk({ ...ready, sessionType: 'voice-vad' })).toBe(false);
  });
});

describe('canChat', () => {
  const config: SessionConfig = {
    ...pttConfig,
    type: 'text',
    voice_mode: null,
    is_muted: null,
    turn_detection: 'none',
    voice_activity_enabled: false,
  };
  const ready: AppState = { ...initialState('r', 'u'), status: 'connected', sessionType: 'text', config };

  it('waits for an active session of a Clara who is here (a message sent before is dropped)', () => {
    expect(canChat(ready)).toBe(true);
    expect(canChat({ ...ready, config: null })).toBe(false); // a new Clara, starting
    expect(canChat({ ...ready, config: { ...config, state: 'idle' } })).toBe(false);
    expect(canChat({ ...ready, claraAway: true })).toBe(false); // "Clara is reconnecting…"
    expect(canChat({ ...ready, status: 'reconnecting' })).toBe(false);
    expect(canChat({ ...ready, sessionType: 'voice-vad' })).toBe(true); // chat in any session type
  });
});
