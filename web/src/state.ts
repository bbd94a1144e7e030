// The page's state in one place, and its read-only snapshot on `window.claraDebug`.

import { DEFAULT_SESSION_TYPE, type SessionConfig, type SessionType, type SyncEvent } from './protocol';
import { STATUS_TEXT, type ConnectionStatus } from './status';
import type { TranscriptEntry } from './transcript';

export const SYNC_LOG_LIMIT = 200;

export interface SyncLogEntry extends SyncEvent {
  /** ms since the epoch when the page received it */
  receivedAt: number;
}

export interface AppState {
  status: ConnectionStatus;
  statusText: string;
  attempts: number;
  sessionType: SessionType;
  /** The identity the token endpoint gave this page ("" before the first token). */
  identity: string;
  /** The display name the person typed (may be ""). */
  name: string;
  room: string;
  agentIdentity: string | null;
  agentState: string | null;
  config: SessionConfig | null;
  transcript: TranscriptEntry[];
  syncEvents: SyncLogEntry[];
  agentAudioLevelMax: number;
  agentAudioTracks: number;
  micLevel: number;
  micPublished: boolean;
  /** The link-stall watch sees the steady flow of a voice session (see link-watch.ts). */
  linkArmed: boolean;
  /** The link-stall watch sees that flow stopped: the page shows "Reconnecting…". */
  linkStalled: boolean;
  muted: boolean;
  pttPressed: boolean;
  audioBlocked: boolean;
  lastError: string | null;
  /** The last `clara.notice` the agent sent about this participant's input. */
  notice: string | null;
  /** The room was full: no session yet, one comes when a place frees up. */
  waiting: boolean;
  /** Clara was here and is gone or silent (her worker crashed): a new one is on its way. */
  claraAway: boolean;
}

export function initialState(room: string, name = ''): AppState {
  return {
    status: 'idle',
    statusText: STATUS_TEXT.idle,
    attempts: 0,
    sessionType: DEFAULT_SESSION_TYPE,
    identity: '',
    name,
    room,
    agentIdentity: null,
    agentState: null,
    config: null,
    transcript: [],
    syncEvents: [],
    agentAudioLevelMax: 0,
    agentAudioTracks: 0,
    micLevel: 0,
    micPublished: false,
    linkArmed: false,
    linkStalled: false,
    muted: false,
    pttPressed: false,
    audioBlocked: false,
    lastError: null,
    notice: null,
    waiting: false,
    claraAway: false,
  };
}

/**
 * Push-to-talk works once the agent's pipeline for our session runs (`active`): before
 * that, the agent has not registered the turn methods yet.
 */
export function canPushToTalk(state: Readonly<AppState>): boolean {
  return state.status === 'connected' && state.sessionType === 'voice-ptt' && state.config?.state === 'active';
}

/**
 * Whether a chat message can go to Clara now: her session for this page is active and she
 * is here. Sent while she starts (a first join, or a new Clara after a crash), it would
 * reach an agent with no chat handler yet and be dropped; the message waits in the box.
 */
export function canChat(state: Readonly<AppState>): boolean {
  return state.status === 'connected' && !state.claraAway && state.config?.state === 'active';
}

export type StateKey = keyof AppState;
export type Listener = (state: Readonly<AppState>, changed: ReadonlySet<StateKey>) => void;

export class Store {
  private state: AppState;
  private readonly listeners = new Set<Listener>();

  constructor(initial: AppState) {
    this.state = initial;
  }

  get current(): Readonly<AppState> {
    return this.state;
  }

  /** Apply a change; listeners hear only about keys whose value changed. */
  patch(change: Partial<AppState>): void {
    const changed = new Set<StateKey>();
    for (const key of Object.keys(change) as StateKey[]) {
      if (!Object.is(this.state[key], change[key])) changed.add(key);
    }
    if (changed.size === 0) return;
    this.state = { ...this.state, ...change };
    for (const listener of this.listeners) listener(this.state, changed);
  }

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** A deep, frozen copy: what tests read. */
  snapshot(): Readonly<AppState> {
    return Object.freeze(structuredClone(this.state));
  }
}

export function appendCapped<T>(list: readonly T[], item: T, limit: number): T[] {
  const next = [...list, item];
  return next.length > limit ? next.slice(next.length - limit) : next;
}

/** Define `target.claraDebug` as a getter of the live snapshot; it can't be assigned. */
export function installDebugHook(target: object, store: Store, name = 'claraDebug'): void {
  Object.defineProperty(target, name, {
    get: () => store.snapshot(),
    enumerable: false,
    configurable: false,
  });
}
