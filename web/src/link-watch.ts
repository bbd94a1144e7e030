// A link-stall watch: notices within seconds that nothing arrives from the LiveKit server
// any more, long before livekit-client does. livekit-server pings the page every 5 s and
// gives up after 15 s, so livekit-client notices a silent outage (packets dropped, no
// close) only after ~15-18 s; a shorter one it never notices at all.
//
// While the microphone is published and unmuted the SFU sends RTCP feedback for it without
// a pause (for every few of the microphone's packets, in silence too: Opus DTX still sends
// one every 400 ms), so the bytes received on the room's WebRTC transports grow between
// any two polls 500 ms apart. The watch polls them; once they have grown at every one of
// the last few polls (a steady flow: "armed"), a stretch of `stallMs` with nothing
// received is a stall, and the first bytes after it end it. Without that steady flow (a
// text session, a muted or unpublished microphone) the watch is disarmed and says
// nothing: silence proves nothing there.
//
// Pure: the clock, the timer and the stats reading are injected.

export interface LinkWatchClock {
  now(): number;
  setInterval(fn: () => void, ms: number): unknown;
  clearInterval(handle: unknown): void;
}

/** What the watch says: `armed` while the flow is steady, `stalled` while it has stopped. */
export interface LinkWatchState {
  armed: boolean;
  stalled: boolean;
}

export interface LinkWatchOptions {
  /** The bytes received so far on the room's transports; null when there is none to read. */
  readBytes: () => Promise<number | null>;
  /** Whether the microphone is published and unmuted (the SFU's feedback flows only then). */
  micActive: () => boolean;
  /** Called when `armed` or `stalled` changes. */
  onChange: (state: LinkWatchState) => void;
  clock?: LinkWatchClock;
  pollMs?: number;
  stallMs?: number;
  armPolls?: number;
}

export const POLL_MS = 500;

/**
 * Nothing received for this long is a stall. In a healthy voice session the longest quiet
 * spell on the transports is under half a second: measured in Chromium against
 * livekit-server, 40 s each of a silent microphone (Opus DTX, ~350 bytes/s received),
 * speech and silence, and the fake device's beep, the bytes received never stood still for
 * more than 450 ms (the DTX packet interval, 400 ms, plus jitter). 2 s is over four times
 * that and four polls in a row without a byte, so a lull or a late poll is no alarm, and
 * "Reconnecting…" still shows about 2-2.5 s into an outage, well inside a 5 s one.
 */
export const STALL_MS = 2000;

/** Growth at this many polls in a row (1.5 s of steady flow) arms the watch. */
export const ARM_POLLS = 3;

const realClock: LinkWatchClock = {
  now: () => performance.now(),
  setInterval: (fn, ms) => globalThis.setInterval(fn, ms),
  clearInterval: (handle) => globalThis.clearInterval(handle as ReturnType<typeof globalThis.setInterval>),
};

export class LinkWatch {
  private readonly clock: LinkWatchClock;
  private readonly pollMs: number;
  private readonly stallMs: number;
  private readonly armPolls: number;
  private timer: { handle: unknown } | null = null;
  private polling = false;
  private previous: number | null = null;
  private streak = 0;
  private lastGrowthAt = 0;
  private armed = false;
  private stalled = false;

  constructor(private readonly options: LinkWatchOptions) {
    this.clock = options.clock ?? realClock;
    this.pollMs = options.pollMs ?? POLL_MS;
    this.stallMs = options.stallMs ?? STALL_MS;
    this.armPolls = options.armPolls ?? ARM_POLLS;
  }

  get state(): LinkWatchState {
    return { armed: this.armed, stalled: this.stalled };
  }

  /** Whether the watch is polling. */
  get running(): boolean {
    return this.timer !== null;
  }

  /** Begin polling (again); a no-op while running. */
  start(): void {
    if (this.timer) return;
    const entry: { handle: unknown } = { handle: null };
    entry.handle = this.clock.setInterval(() => {
      if (this.timer === entry) void this.poll();
    }, this.pollMs);
    this.timer = entry;
  }

  /** Stop polling and forget the flow (no change is reported after this). */
  stop(): void {
    if (this.timer) this.clock.clearInterval(this.timer.handle);
    this.timer = null;
    this.previous = null;
    this.streak = 0;
    this.armed = false;
    this.stalled = false;
  }

  /** Forget the flow (the link was just re-established): disarmed until it is steady again. */
  reset(): void {
    this.previous = null;
    this.disarm();
  }

  private async poll(): Promise<void> {
    if (this.polling) return; // a slow getStats(): never two readings at once
    this.polling = true;
    let bytes: number | null;
    try {
      bytes = await this.options.readBytes();
    } catch {
      bytes = null;
    } finally {
      this.polling = false;
    }
    if (!this.timer) return; // stopped meanwhile
    this.observe(bytes, this.options.micActive(), this.clock.now());
  }

  private observe(bytes: number | null, micActive: boolean, now: number): void {
    const previous = this.previous;
    this.previous = bytes;
    // No mic, nothing to read, or new transports (the count went down): start afresh.
    if (!micActive || bytes === null || previous === null || bytes < previous) {
      this.disarm();
      return;
    }
    if (bytes > previous) {
      this.lastGrowthAt = now;
      this.streak += 1;
      const armed = this.armed || this.streak >= this.armPolls;
      this.set(armed, false);
    } else {
      this.streak = 0;
      if (this.armed && now - this.lastGrowthAt >= this.stallMs) this.set(true, true);
    }
  }

  private disarm(): void {
    this.streak = 0;
    this.set(false, false);
  }

  private set(armed: boolean, stalled: boolean): void {
    if (armed === this.armed && stalled === this.stalled) return;
    this.armed = armed;
    this.stalled = stalled;
    this.options.onChange(this.state);
  }
}

/** The part of an RTCStatsReport this module reads (a Map of stats objects will do). */
export interface StatsLike {
  forEach(callback: (stats: unknown) => void): void;
}

/**
 * Bytes received according to one peer connection's stats: the sum of `bytesReceived`
 * over its `transport` stats (Chromium, Safari), or, where there are none (Firefox), over
 * its selected candidate pairs (else the nominated, succeeded ones). Null when neither.
 */
export function receivedBytes(report: StatsLike): number | null {
  let transports: number | null = null;
  let selected: number | null = null;
  let nominated: number | null = null;
  report.forEach((raw) => {
    const stats = raw as {
      type?: unknown;
      bytesReceived?: unknown;
      selected?: unknown;
      nominated?: unknown;
      state?: unknown;
    };
    if (typeof stats.bytesReceived !== 'number') return;
    const bytes = stats.bytesReceived;
    if (stats.type === 'transport') transports = (transports ?? 0) + bytes;
    else if (stats.type === 'candidate-pair') {
      if (stats.selected === true) selected = (selected ?? 0) + bytes;
      else if (stats.nominated === true && stats.state === 'succeeded') nominated = (nominated ?? 0) + bytes;
    }
  });
  return transports ?? selected ?? nominated;
}

/** A transport whose stats can be read (livekit-client's PCTransport). */
export interface StatsSource {
  getStats(): Promise<StatsLike> | undefined;
}

/** The bytes received on all of `transports` together; null when none can be read. */
export async function transportBytes(transports: readonly (StatsSource | null | undefined)[]): Promise<number | null> {
  const reports = await Promise.all(transports.map((transport) => transport?.getStats()));
  let total: number | null = null;
  for (const report of reports) {
    const bytes = report ? receivedBytes(report) : null;
    if (bytes !== null) total = (total ?? 0) + bytes;
  }
  return total;
}
