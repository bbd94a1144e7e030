// Names, constants and parsers of the Clara client protocol (README "Client protocol").
// Pure: no DOM, no livekit-client. Parsers never throw; anything malformed gives null.

export const SESSION_TYPES = ['text', 'voice-ptt', 'voice-vad'] as const;
export type SessionType = (typeof SESSION_TYPES)[number];
export const DEFAULT_SESSION_TYPE: SessionType = 'voice-vad';

export const SESSION_STATES = ['idle', 'active', 'syncing', 'ending', 'error'] as const;
export type SessionState = (typeof SESSION_STATES)[number];

export const TOPIC_CHAT = 'lk.chat';
export const TOPIC_TRANSCRIPTION = 'lk.transcription';
export const TOPIC_SYNC = 'clara.sync';
export const TOPIC_NOTICE = 'clara.notice';

export const ATTR_SEGMENT_ID = 'lk.segment_id';
export const ATTR_TRANSCRIPTION_FINAL = 'lk.transcription_final';
export const ATTR_TRANSCRIBED_TRACK_ID = 'lk.transcribed_track_id';
export const ATTR_LK_AGENT_STATE = 'lk.agent.state';

export const RPC_SET_SESSION_TYPE = 'clara.set_session_type';
export const RPC_START_TURN = 'clara.start_turn';
export const RPC_END_TURN = 'clara.end_turn';
export const RPC_CANCEL_TURN = 'clara.cancel_turn';
export type TurnMethod = typeof RPC_START_TURN | typeof RPC_END_TURN | typeof RPC_CANCEL_TURN;

export const RPC_APPLICATION_ERROR = 1500;
export const MAX_CHAT_CHARS = 8000;
export const PROTOCOL_VERSION = 1;

export const SESSION_TYPE_LABELS: Record<SessionType, string> = {
  text: 'Text',
  'voice-ptt': 'Push-to-talk',
  'voice-vad': 'Voice',
};

export function isSessionType(value: unknown): value is SessionType {
  return typeof value === 'string' && (SESSION_TYPES as readonly string[]).includes(value);
}

export function isVoiceType(type: SessionType): boolean {
  return type !== 'text';
}

/** The agent's attribute holding this participant's SessionConfig. */
export function sessionAttributeKey(identity: string): string {
  return `clara.session.${identity}`;
}

/** The agent's attribute holding its state for this participant's session. */
export function agentStateAttributeKey(identity: string): string {
  return `clara.agent_state.${identity}`;
}

export interface SessionConfig {
  type: SessionType;
  state: SessionState;
  started_at: number | null;
  voice_mode: 'push-to-talk' | 'continuous' | null;
  is_muted: boolean | null;
  turn_detection: 'none' | 'client' | 'server' | null;
  room_id: string | null;
  last_sync_at: number | null;
  sync_attempts: number;
  inconsistency_detected: boolean;
  voice_activity_enabled: boolean | null;
}

export interface RoomState {
  room_id: string | null;
  connection: string | null;
  participant_present: boolean | null;
  microphone: string | null;
}

export interface SyncEvent {
  type: string;
  trigger: string;
  timestamp: number;
  sessionId: string | null;
  participant: string | null;
  config: SessionConfig | null;
  roomState: RoomState | null;
  issues: string[];
}

export interface RpcFailure {
  code: number | null;
  error: string | null;
  message: string;
}

type Json = Record<string, unknown>;

function asObject(value: unknown): Json | null {
  return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Json) : null;
}

/** JSON.parse that gives null instead of throwing. */
function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return null;
  }
}

function decode(payload: string | Uint8Array): string | null {
  if (typeof payload === 'string') return payload;
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(payload);
  } catch {
    return null;
  }
}

function str(value: unknown): string | null {
  return typeof value === 'string' ? value : null;
}

function num(value: unknown): number | null {
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
}

function bool(value: unknown): boolean | null {
  return typeof value === 'boolean' ? value : null;
}

function oneOf<T extends string>(value: unknown, allowed: readonly T[]): T | null {
  return typeof value === 'string' && (allowed as readonly string[]).includes(value) ? (value as T) : null;
}

/** A SessionConfig from its JSON text or an already parsed object; null if it isn't one. */
export function parseSessionConfig(value: unknown): SessionConfig | null {
  const obj = asObject(typeof value === 'string' ? parseJson(value) : value);
  if (!obj) return null;
  const type = isSessionType(obj.type) ? obj.type : null;
  const state = oneOf(obj.state, SESSION_STATES);
  if (!type || !state) return null;
  return {
    type,
    state,
    started_at: num(obj.started_at),
    voice_mode: oneOf(obj.voice_mode, ['push-to-talk', 'continuous'] as const),
    is_muted: bool(obj.is_muted),
    turn_detection: oneOf(obj.turn_detection, ['none', 'client', 'server'] as const),
    room_id: str(obj.room_id),
    last_sync_at: num(obj.last_sync_at),
    sync_attempts: num(obj.sync_attempts) ?? 0,
    inconsistency_detected: bool(obj.inconsistency_detected) ?? false,
    voice_activity_enabled: bool(obj.voice_activity_enabled),
  };
}

function parseRoomState(value: unknown): RoomState | null {
  const obj = asObject(value);
  if (!obj) return null;
  return {
    room_id: str(obj.room_id),
    connection: str(obj.connection),
    participant_present: bool(obj.participant_present),
    microphone: str(obj.microphone),
  };
}

/** A clara.sync data packet; null if malformed or of another protocol version. */
export function parseSyncEvent(payload: string | Uint8Array): SyncEvent | null {
  const text = decode(payload);
  const obj = text === null ? null : asObject(parseJson(text));
  if (!obj || obj.v !== PROTOCOL_VERSION || typeof obj.type !== 'string') return null;
  const body = asObject(obj.payload);
  if (!body) return null;
  const trigger = str(body.trigger);
  const timestamp = num(body.timestamp);
  if (trigger === null || timestamp === null) return null;
  const issues = Array.isArray(body.issues) ? body.issues.filter((i): i is string => typeof i === 'string') : [];
  return {
    type: obj.type,
    trigger,
    timestamp,
    sessionId: str(body.session_id),
    participant: str(body.participant),
    config: parseSessionConfig(body.config),
    roomState: parseRoomState(body.room_state),
    issues,
  };
}

/** A `clara.notice` the agent sent this participant about its own input. */
export interface Notice {
  input: string;
  error: string;
  message: string;
}

/** A `clara.notice` packet (`{"v": 1, "type": "refused", "input", "error", "message"}`); null when it is not one. */
export function parseNotice(payload: string | Uint8Array): Notice | null {
  const text = decode(payload);
  const obj = text === null ? null : asObject(parseJson(text));
  if (!obj || obj.v !== PROTOCOL_VERSION || obj.type !== 'refused') return null;
  const input = str(obj.input);
  const error = str(obj.error);
  const message = str(obj.message);
  if (input === null || error === null || !message) return null;
  return { input, error, message };
}

/** The `config` of a successful clara.set_session_type reply; null otherwise. */
export function parseSetTypeReply(payload: string): SessionConfig | null {
  const obj = asObject(parseJson(payload));
  if (!obj || obj.ok !== true) return null;
  return parseSessionConfig(obj.config);
}

/**
 * What to show for a failed RPC. An application error (1500) carries JSON data
 * `{"v":1,"error":"<code>","message":"…"}`; anything else falls back to the error's message.
 */
export function parseRpcFailure(err: unknown): RpcFailure {
  const obj = asObject(err);
  const code = obj ? num(obj.code) : null;
  const fallback = (obj && str(obj.message)) || (err instanceof Error ? err.message : String(err));
  const data = code === RPC_APPLICATION_ERROR && typeof obj?.data === 'string' ? asObject(parseJson(obj.data)) : null;
  const error = data ? str(data.error) : null;
  const message = (data && str(data.message)) || fallback || 'request failed';
  return { code, error, message };
}

/**
 * Clara's state in this participant's own conversation: its `clara.agent_state.<identity>`
 * attribute only. livekit's `lk.agent.state` is the busiest of the room's conversations (maybe
 * another person's), so it is never shown as this page's own.
 */
export function readAgentState(attributes: Readonly<Record<string, string>>, identity: string): string | null {
  return attributes[agentStateAttributeKey(identity)] || null;
}

/** The SessionConfig the agent publishes for this participant, if any. */
export function readSessionConfig(attributes: Readonly<Record<string, string>>, identity: string): SessionConfig | null {
  const raw = attributes[sessionAttributeKey(identity)];
  return raw ? parseSessionConfig(raw) : null;
}

/** Keep the more recent of two configs (by last_sync_at; a tie or a missing time goes to the newcomer). */
export function newerConfig(current: SessionConfig | null, incoming: SessionConfig): SessionConfig {
  if (!current || current.last_sync_at === null || incoming.last_sync_at === null) return incoming;
  return incoming.last_sync_at >= current.last_sync_at ? incoming : current;
}

/** A chat message to send, or null when it is blank or too long (the agent would ignore it). */
export function chatMessage(text: string): string | null {
  const trimmed = text.trim();
  // counted in code points, as the agent counts them
  if (!trimmed || [...trimmed].length > MAX_CHAT_CHARS) return null;
  return trimmed;
}
