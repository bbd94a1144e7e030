// Client-side reconnection (seed 001): after an unexpected disconnect, retry with
// exponential backoff (1, 2, 4, 8, 16 s), at most 5 attempts, never two connects at once.
// Pure: the clock and the connect function are injected.

import type { ConnectionStatus } from './status';

export interface Timer {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const MAX_ATTEMPTS = 5;
export const BASE_DELAY_MS = 1000;

/**
 * What livekit-client may do by itself when the link drops (its `reconnectPolicy`): one
 * immediate try to resume the same connection; when that fails the room disconnects and the
 * backoff below takes over with a fresh token. livekit-client's default policy retries ten
 * times, for minutes when packets are lost, and the page would show "Reconnecting…" all that
 * time without ever starting the seed's schedule or reaching "Failed".
 */
export const LINK_RECONNECT_POLICY = {
  nextRetryDelayInMs: ({ retryCount }: { retryCount: number }): number | null => (retryCount === 0 ? 0 : null),
};

/** Delay before retry `attempt` (1-based): 1 s, 2 s, 4 s, 8 s, 16 s. */
export function backoffDelay(attempt: number, baseMs: number = BASE_DELAY_MS): number {
  return baseMs * 2 ** (attempt - 1);
}

export interface ReconnectState {
  status: ConnectionStatus;
  /** Retries made in the current reconnection cycle (0 when none). */
  attempts: number;
}

export interface ReconnectOptions {
  /** One connection attempt: fresh token, new room. Rejects on failure; should give up when `signal` aborts. */
  connect: (signal: AbortSignal) => Promise<void>;
  onChange: (state: ReconnectState) => void;
  onAttemptFailed?: (error: unknown, attempt: number) => void;
  timer?: Timer;
  maxAttempts?: number;
  baseDelayMs?: number;
}

const realTimer: Timer = {
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof globalThis.setTimeout>),
};

/** `retrying` is our own backoff loop; `link-reconnecting` is livekit-client's internal one. */
type Phase = 'idle' | 'connecting' | 'connected' | 'link-reconnecting' | 'retrying' | 'failed';

const STATUS_OF: Record<Phase, ConnectionStatus> = {
  idle: 'idle',
  connecting: 'connecting',
  connected: 'connected',
  'link-reconnecting': 'reconnecting',
  retrying: 'reconnecting',
  failed: 'failed',
};

export class ReconnectController {
  private phase: Phase = 'idle';
  private attempts = 0;
  private inFlight: AbortController | null = null;
  private retryTimer: { handle: unknown } | null = null;
  private readonly timer: Timer;
  private readonly maxAttempts: number;
  private readonly baseDelayMs: number;

  constructor(private readonly options: ReconnectOptions) {
    this.timer = options.timer ?? realTimer;
    this.maxAttempts = options.maxAttempts ?? MAX_ATTEMPTS;
    this.baseDelayMs = options.baseDelayMs ?? BASE_DELAY_MS;
  }

  get state(): ReconnectState {
    return { status: STATUS_OF[this.phase], attempts: this.attempts };
  }

  /** Whether a connect is running right now. */
  get connecting(): boolean {
    return this.inFlight !== null;
  }

  /** Start Session: the first connect. Refused (false) unless idle or failed. A failure here is final. */
  start(): boolean {
    if (this.inFlight || (this.phase !== 'idle' && this.phase !== 'failed')) return false;
    this.attempts = 0;
    this.setPhase('connecting');
    void this.run();
    return true;
  }

  /** An unexpected disconnect (or livekit-client's own reconnect gave up): begin the backoff cycle. */
  connectionLost(): void {
    if (this.phase !== 'connected' && this.phase !== 'link-reconnecting') return;
    this.attempts = 0;
    this.setPhase('retrying');
    this.scheduleRetry();
  }

  /** livekit-client is reconnecting the same room by itself. */
  linkReconnecting(): void {
    if (this.phase === 'connected') this.setPhase('link-reconnecting');
  }

  /** livekit-client's own reconnect succeeded. */
  linkReconnected(): void {
    if (this.phase === 'link-reconnecting') this.setPhase('connected');
  }

  /** End Session: cancel any pending retry and abandon a running connect. */
  stop(): void {
    if (this.retryTimer) this.timer.clearTimeout(this.retryTimer.handle);
    this.retryTimer = null;
    this.inFlight?.abort();
    this.inFlight = null;
    this.attempts = 0;
    this.setPhase('idle');
  }

  private scheduleRetry(): void {
    const delay = backoffDelay(this.attempts + 1, this.baseDelayMs);
    const entry: { handle: unknown } = { handle: null };
    entry.handle = this.timer.setTimeout(() => {
      if (this.retryTimer !== entry) return;
      this.retryTimer = null;
      this.attempts += 1;
      this.emit();
      void this.run();
    }, delay);
    this.retryTimer = entry;
  }

  private async run(): Promise<void> {
    if (this.inFlight) return; // never two connects at once
    const abort = new AbortController();
    this.inFlight = abort;
    let failure: { error: unknown } | null = null;
    try {
      await this.options.connect(abort.signal);
    } catch (error) {
      failure = { error };
    }
    if (this.inFlight !== abort) return; // stopped meanwhile: the result no longer matters
    this.inFlight = null;
    if (!failure) {
      this.attempts = 0;
      this.setPhase('connected');
      return;
    }
    this.options.onAttemptFailed?.(failure.error, this.attempts);
    if (this.phase !== 'retrying' || this.attempts >= this.maxAttempts) {
      this.setPhase('failed');
      return;
    }
    this.scheduleRetry();
  }

  private setPhase(phase: Phase): void {
    this.phase = phase;
    this.emit();
  }

  private emit(): void {
    this.options.onChange(this.state);
  }
}
