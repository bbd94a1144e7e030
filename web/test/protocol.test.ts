import { describe, expect, it } from 'vitest';
import {
  agentStateAttributeKey,
  chatMessage,
  isSessionType,
  newerConfig,
  parseRpcFailure,
  parseSessionConfig,
  parseNotice,
  parseSetTypeReply,
  parseSyncEvent,
  readAgentState,
  readSessionConfig,
  sessionAttributeKey,
  type SessionConfig,
} from '../src/protocol';

const wireConfig = {
  type: 'voice-ptt',
  state: 'active',
  started_at: 1718000000123,
  voice_mode: 'push-to-talk',
  is_muted: false,
  turn_detection: 'client',
  room_id: 'my-room',
  last_sync_at: 1718000004567,
  sync_attempts: 0,
  inconsistency_detected: false,
  voice_activity_enabled: true,
};

const encode = (value: unknown) => new TextEncoder().encode(typeof value === 'string' ? value : JSON.stringify(value));

const syncEvent = {
  v: 1,
  type: 'session_inconsistency',
  payload: {
    session_id: 'session_1718000000000_alice_4242.1',
    participant: 'alice',
    config: wireConfig,
    room_state: { room_id: 'my-room', connection: 'connected', participant_present: true, microphone: 'absent' },
    timestamp: 1718000004567,
    trigger: 'validation',
    issues: ['microphone_absent'],
  },
};

describe('parseSessionConfig', () => {
  it('reads the README example, from JSON text or an object', () => {
    expect(parseSessionConfig(JSON.stringify(wireConfig))).toEqual(wireConfig);
    expect(parseSessionConfig(wireConfig)).toEqual(wireConfig);
  });

  it('fills what a text session leaves null and ignores unknown keys', () => {
    const text = { type: 'text', state: 'idle', started_at: null, voice_mode: null, is_muted: null, extra: 1 };
    expect(parseSessionConfig(text)).toMatchObject({
      type: 'text',
      state: 'idle',
      started_at: null,
      voice_mode: null,
      is_muted: null,
      sync_attempts: 0,
      inconsistency_detected: false,
    });
  });

  it('gives null for malformed input, never throws', () => {
    for (const bad of ['{', '', 'null', '[]', '42', '"text"', { type: 'TEXT', state: 'active' }, { type: 'text' }, null, 7]) {
      expect(parseSessionConfig(bad)).toBeNull();
    }
    expect(parseSessionConfig({ ...wireConfig, state: 'sleeping' })).toBeNull();
  });

  it('drops fields of the wrong kind', () => {
    expect(parseSessionConfig({ ...wireConfig, started_at: 'soon', is_muted: 'no', turn_detection: 'auto' })).toMatchObject({
      started_at: null,
      is_muted: null,
      turn_detection: null,
    });
  });
});

describe('parseSyncEvent', () => {
  it('reads an event from its bytes', () => {
    expect(parseSyncEvent(encode(syncEvent))).toEqual({
      type: 'session_inconsistency',
      trigger: 'validation',
      timestamp: 1718000004567,
      sessionId: 'session_1718000000000_alice_4242.1',
      participant: 'alice',
      config: wireConfig,
      roomState: { room_id: 'my-room', connection: 'connected', participant_present: true, microphone: 'absent' },
      issues: ['microphone_absent'],
    });
  });

  it('accepts an event without room_state or issues, and a bad config as null', () => {
    const plain = { v: 1, type: 'session_state_sync', payload: { ...syncEvent.payload, room_state: undefined, issues: undefined, config: 'x' } };
    expect(parseSyncEvent(JSON.stringify(plain))).toMatchObject({ roomState: null, issues: [], config: null });
  });

  it('ignores malformed packets without throwing', () => {
    const bad: (string | Uint8Array)[] = [
      encode('not json'),
      encode('{"v":1'),
      encode([]),
      encode({ ...syncEvent, v: 2 }),
      encode({ ...syncEvent, v: '1' }),
      encode({ ...syncEvent, type: 5 }),
      encode({ ...syncEvent, payload: 'x' }),
      encode({ ...syncEvent, payload: { ...syncEvent.payload, trigger: undefined } }),
      encode({ ...syncEvent, payload: { ...syncEvent.payload, timestamp: 'now' } }),
      new Uint8Array([0xff, 0xfe, 0x7b]),
      '',
    ];
    for (const packet of bad) expect(parseSyncEvent(packet)).toBeNull();
  });

  it('keeps only string issues', () => {
    const mixed = { ...syncEvent, payload: { ...syncEvent.payload, issues: ['microphone_muted', 3, null] } };
    expect(parseSyncEvent(encode(mixed))?.issues).toEqual(['microphone_muted']);
  });
});

describe('RPC replies and errors', () => {
  it('reads the config of a set_session_type reply', () => {
    const reply = JSON.stringify({ v: 1, ok: true, session_id: 's', config: wireConfig });
    expect(parseSetTypeReply(reply)).toEqual(wireConfig);
    expect(parseSetTypeReply('{"ok":false}')).toBeNull();
    expect(parseSetTypeReply('garbage')).toBeNull();
  });

  it('shows the message of an application error from its JSON data', () => {
    const err = Object.assign(new Error('Application error in method handler'), {
      code: 1500,
      data: JSON.stringify({ v: 1, error: 'rate_limited', message: 'too many session type changes; try again shortly' }),
    });
    expect(parseRpcFailure(err)).toEqual({
      code: 1500,
      error: 'rate_limited',
      message: 'too many session type changes; try again shortly',
    });
  });

  it('falls back to the error message when data is missing or malformed', () => {
    expect(parseRpcFailure(Object.assign(new Error('no push-to-talk session for this participant'), { code: 1500 }))).toEqual({
      code: 1500,
      error: null,
      message: 'no push-to-talk session for this participant',
    });
    expect(parseRpcFailure(Object.assign(new Error('boom'), { code: 1500, data: '{not json' }))).toMatchObject({
      error: null,
      message: 'boom',
    });
    expect(parseRpcFailure(Object.assign(new Error('Response timeout'), { code: 1502 }))).toMatchObject({
      code: 1502,
      message: 'Response timeout',
    });
    const timeout = Object.assign(new Error('Connection timeout'), { code: 1501, data: '{"message":"not ours"}' });
    expect(parseRpcFailure(timeout).message).toBe('Connection timeout'); // data is only read for 1500
    expect(parseRpcFailure('plain string')).toEqual({ code: null, error: null, message: 'plain string' });
    expect(parseRpcFailure(new Error('Clara has not joined the room yet')).message).toBe('Clara has not joined the room yet');
  });
});

describe('agent attributes', () => {
  const attrs = {
    [sessionAttributeKey('alice')]: JSON.stringify(wireConfig),
    [agentStateAttributeKey('alice')]: 'thinking',
    'lk.agent.state': 'listening',
  };

  it('names the per-session attributes', () => {
    expect(sessionAttributeKey('alice')).toBe('clara.session.alice');
    expect(agentStateAttributeKey('alice')).toBe('clara.agent_state.alice');
  });

  it('reads this participant’s own state only, never the room’s lk.agent.state', () => {
    // regression (issue 16, item 8): bob's page showed the room's busiest state as his own
    expect(readAgentState(attrs, 'alice')).toBe('thinking');
    expect(readAgentState(attrs, 'bob')).toBeNull();
    expect(readAgentState({ 'lk.agent.state': 'speaking' }, 'bob')).toBeNull();
    expect(readAgentState({}, 'bob')).toBeNull();
  });

  it('reads this participant’s SessionConfig only', () => {
    expect(readSessionConfig(attrs, 'alice')).toEqual(wireConfig);
    expect(readSessionConfig(attrs, 'bob')).toBeNull();
    expect(readSessionConfig({ [sessionAttributeKey('bob')]: '{broken' }, 'bob')).toBeNull();
  });
});

describe('helpers', () => {
  const at = (last_sync_at: number | null): SessionConfig => ({ ...(wireConfig as SessionConfig), last_sync_at });

  it('keeps the newer config', () => {
    expect(newerConfig(null, at(5)).last_sync_at).toBe(5);
    expect(newerConfig(at(10), at(5)).last_sync_at).toBe(10);
    const [older, tie] = [at(10), at(10)];
    expect(newerConfig(older, tie)).toBe(tie);
    expect(newerConfig(at(5), at(10)).last_sync_at).toBe(10);
    expect(newerConfig(at(10), at(null)).last_sync_at).toBeNull();
  });

  it('checks session types', () => {
    expect(['text', 'voice-ptt', 'voice-vad'].every(isSessionType)).toBe(true);
    expect(isSessionType('Voice-VAD')).toBe(false);
  });

  it('refuses blank and over-long chat messages', () => {
    expect(chatMessage('  hello  ')).toBe('hello');
    expect(chatMessage('   ')).toBeNull();
    expect(chatMessage('x'.repeat(8000))).toHaveLength(8000);
    expect(chatMessage('x'.repeat(8001))).toBeNull();
    expect(chatMessage('😀'.repeat(8000))).not.toBeNull(); // 8000 code points, 16000 UTF-16 units
  });
});

describe('notices', () => {
  it('reads a refusal the agent sent about this participant’s input', () => {
    const room = { v: 1, type: 'refused', input: 'session', error: 'room_full', message: 'Clara is busy.' };
    expect(parseNotice(JSON.stringify(room))).toEqual({ input: 'session', error: 'room_full', message: 'Clara is busy.' });
    expect(parseNotice(new TextEncoder().encode(JSON.stringify(room)))?.error).toBe('room_full');
  });

  it('ignores what is not a notice', () => {
    expect(parseNotice('not json')).toBeNull();
    expect(parseNotice(JSON.stringify({ v: 2, type: 'refused', input: 'x', error: 'y', message: 'z' }))).toBeNull();
    expect(parseNotice(JSON.stringify({ v: 1, type: 'refused', input: 'x', error: 'y', message: '' }))).toBeNull();
  });
});
