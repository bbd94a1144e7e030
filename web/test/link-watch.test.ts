import { describe, expect, it } from 'vitest';
import {
  ARM_POLLS,
  LinkWatch,
  type LinkWatchClock,
  type LinkWatchState,
  POLL_MS,
  receivedBytes,
  STALL_MS,
  transportBytes,
} from '../src/link-watch';

/** A manual clock: intervals fire only when the test advances time. */
class FakeClock implements LinkWatchClock {
  time = 0;
  private seq = 0;
  private intervals: { id: number; next: number; ms: number; fn: () => void }[] = [];

  now(): number {
    return this.time;
  }

  setInterval(fn: () => void, ms: number): unknown {
    const id = ++this.seq;
    this.intervals.push({ id, next: this.time + ms, ms, fn });
    return id;
  }

  clearInterval(handle: unknown): void {
    this.intervals = this.intervals.filter((i) => i.id !== handle);
  }

  get active(): number {
    return this.intervals.length;
  }

  async advance(ms: number): Promise<void> {
    const target = this.time + ms;
    for (;;) {
      const due = this.intervals.filter((i) => i.next <= target).sort((a, b) => a.next - b.next)[0];
      if (!due) break;
      this.time = due.next;
      due.next += due.ms;
      due.fn();
      await settle();
    }
    this.time = target;
  }
}

const settle = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

/** The watch on a fake clock, with the received bytes and the mic set by the test. */
function setup(options: { bytes?: number | null; mic?: boolean } = {}) {
  const clock = new FakeClock();
  const link = { bytes: options.bytes === undefined ? 1000 : options.bytes, mic: options.mic ?? true, reads: 0 };
  const changes: LinkWatchState[] = [];
  const watch = new LinkWatch({
    clock,
    readBytes: async () => {
      link.reads += 1;
      return link.bytes;
    },
    micActive: () => link.mic,
    onChange: (state) => changes.push(state),
  });
  /** Advance one poll, the bytes having grown by `grow` just before it. */
  const poll = async (grow: number) => {
    if (link.bytes !== null) link.bytes += grow;
    await clock.advance(POLL_MS);
  };
  /** Polls with steady growth until the watch is armed. */
  const arm = async () => {
    for (let i = 0; i <= ARM_POLLS; i += 1) await poll(120); // the first reading is the baseline
    expect(watch.state).toEqual({ armed: true, stalled: false });
  };
  return { clock, link, changes, watch, poll, arm };
}

describe('LinkWatch', () => {
  it('polls every 500 ms once started, and reads nothing before', async () => {
    const { clock, link, watch } = setup();
    await clock.advance(5000);
    expect(link.reads).toBe(0);
    watch.start();
    watch.start(); // a second start is a no-op
    expect(clock.active).toBe(1);
    await clock.advance(2000);
    expect(link.reads).toBe(4);
  });

  it('arms after growth at each of the last few polls, and not before', async () => {
    const { watch, poll, changes } = setup();
    watch.start();
    await poll(0); // baseline
    for (let i = 1; i < ARM_POLLS; i += 1) {
      await poll(80);
      expect(watch.state.armed).toBe(false);
    }
    await poll(80);
    expect(watch.state).toEqual({ armed: true, stalled: false });
    expect(changes).toEqual([{ armed: true, stalled: false }]);
  });

  it('never arms without a steady flow, so a quiet text session raises no alarm', async () => {
    const { watch, poll, changes } = setup();
    watch.start();
    // a data message now and then, growth at every other poll at most, then nothing at all
    for (let i = 0; i < 40; i += 1) await poll(i % 2 === 0 ? 300 : 0);
    for (let i = 0; i < 40; i += 1) await poll(i % 3 === 0 ? 300 : 0);
    for (let i = 0; i < 40; i += 1) await poll(0);
    expect(watch.state).toEqual({ armed: false, stalled: false });
    expect(changes).toEqual([]);
  });

  it('never arms while the microphone is muted or unpublished, however steady the flow', async () => {
    const { watch, poll, changes } = setup({ mic: false });
    watch.start();
    for (let i = 0; i < 20; i += 1) await poll(500);
    for (let i = 0; i < 20; i += 1) await poll(0);
    expect(changes).toEqual([]);
  });

  it('says stalled once nothing has been received for the threshold, not earlier', async () => {
    const { watch, poll, arm, changes } = setup();
    watch.start();
    await arm();
    const polls = STALL_MS / POLL_MS;
    for (let i = 1; i < polls; i += 1) {
      await poll(0);
      expect(watch.state.stalled).toBe(false);
    }
    await poll(0);
    expect(watch.state).toEqual({ armed: true, stalled: true });
    for (let i = 0; i < 10; i += 1) await poll(0); // said once
    expect(changes).toEqual([
      { armed: true, stalled: false },
      { armed: true, stalled: true },
    ]);
  });

  it('rides out lulls shorter than the threshold (DTX silence, a late poll)', async () => {
    const { watch, poll, arm, changes } = setup();
    watch.start();
    await arm();
    for (let round = 0; round < 20; round += 1) {
      for (let i = 1; i < STALL_MS / POLL_MS; i += 1) await poll(0);
      await poll(40);
    }
    expect(watch.state).toEqual({ armed: true, stalled: false });
    expect(changes).toHaveLength(1);
  });

  it('says resumed at the first bytes after a stall, and stays armed', async () => {
    const { watch, poll, arm, changes } = setup();
    watch.start();
    await arm();
    for (let i = 0; i < 10; i += 1) await poll(0); // a 5 s outage
    expect(watch.state.stalled).toBe(true);
    await poll(2000);
    expect(watch.state).toEqual({ armed: true, stalled: false });
    expect(changes.at(-1)).toEqual({ armed: true, stalled: false });
    // and a second outage is seen just the same
    for (let i = 0; i < STALL_MS / POLL_MS; i += 1) await poll(0);
    expect(watch.state.stalled).toBe(true);
  });

  it('disarms when the microphone is muted (clearing a stall), and re-arms after unmuting', async () => {
    const { watch, poll, arm, link, changes } = setup();
    watch.start();
    await arm();
    link.mic = false;
    await poll(100);
    expect(watch.state).toEqual({ armed: false, stalled: false });
    for (let i = 0; i < 20; i += 1) await poll(0); // muted: the flow stops, nothing is said
    expect(watch.state).toEqual({ armed: false, stalled: false });

    link.mic = true;
    await arm();
    for (let i = 0; i < STALL_MS / POLL_MS; i += 1) await poll(0);
    expect(watch.state.stalled).toBe(true);
    link.mic = false; // muting during a stall ends what the watch says about it
    await poll(0);
    expect(watch.state).toEqual({ armed: false, stalled: false });
    expect(changes.map((c) => `${c.armed}/${c.stalled}`)).toEqual([
      'true/false',
      'false/false',
      'true/false',
      'true/true',
      'false/false',
    ]);
  });

  it('disarms when the counters go down (new transports) or cannot be read', async () => {
    const { watch, poll, arm, link } = setup();
    watch.start();
    await arm();
    link.bytes = 10;
    await poll(0);
    expect(watch.state.armed).toBe(false);
    await arm();
    link.bytes = null;
    await poll(0);
    expect(watch.state.armed).toBe(false);
    for (let i = 0; i < 10; i += 1) await poll(0);
    expect(watch.state).toEqual({ armed: false, stalled: false });
  });

  it('disarms when reading the stats fails, without throwing', async () => {
    const clock = new FakeClock();
    let bytes = 0;
    let fail = false;
    const watch = new LinkWatch({
      clock,
      readBytes: async () => {
        if (fail) throw new Error('closed');
        return (bytes += 100);
      },
      micActive: () => true,
      onChange: () => undefined,
    });
    watch.start();
    await clock.advance(POLL_MS * (ARM_POLLS + 1));
    expect(watch.state.armed).toBe(true);
    fail = true;
    await clock.advance(POLL_MS);
    expect(watch.state).toEqual({ armed: false, stalled: false });
  });

  it('reset() forgets the flow: a stall ends and the watch waits for a steady flow again', async () => {
    const { watch, poll, arm, changes } = setup();
    watch.start();
    await arm();
    for (let i = 0; i < STALL_MS / POLL_MS; i += 1) await poll(0);
    expect(watch.state.stalled).toBe(true);
    watch.reset();
    expect(watch.state).toEqual({ armed: false, stalled: false });
    expect(changes.at(-1)).toEqual({ armed: false, stalled: false });
    await arm();
  });

  it('never reads twice at once when getStats() is slow', async () => {
    const clock = new FakeClock();
    const pending: ((bytes: number) => void)[] = [];
    const watch = new LinkWatch({
      clock,
      readBytes: () => new Promise<number>((resolve) => pending.push(resolve)),
      micActive: () => true,
      onChange: () => undefined,
    });
    watch.start();
    await clock.advance(POLL_MS * 5);
    expect(pending).toHaveLength(1);
    pending[0]?.(100);
    await settle();
    await clock.advance(POLL_MS);
    expect(pending).toHaveLength(2);
  });

  it('stop() ends the polling: no timer left, no read, no late change', async () => {
    const clock = new FakeClock();
    const pending: ((bytes: number) => void)[] = [];
    const changes: LinkWatchState[] = [];
    let bytes = 0;
    let reads = 0;
    const watch = new LinkWatch({
      clock,
      readBytes: () => {
        reads += 1;
        if (reads <= ARM_POLLS + 1) return Promise.resolve((bytes += 100));
        return new Promise<number>((resolve) => pending.push(resolve));
      },
      micActive: () => true,
      onChange: (state) => changes.push(state),
    });
    watch.start();
    await clock.advance(POLL_MS * (ARM_POLLS + 2)); // armed, then a read that hangs
    expect(watch.state.armed).toBe(true);
    expect(pending).toHaveLength(1);
    watch.stop();
    expect(clock.active).toBe(0);
    expect(watch.running).toBe(false);
    expect(watch.state).toEqual({ armed: false, stalled: false });
    pending[0]?.(bytes); // the hanging read ends after the stop: ignored
    await settle();
    await clock.advance(POLL_MS * 20);
    expect(reads).toBe(ARM_POLLS + 2);
    expect(changes).toEqual([{ armed: true, stalled: false }]);
  });

  it('starts afresh after a stop', async () => {
    const { watch, clock, arm } = setup();
    watch.start();
    await arm();
    watch.stop();
    watch.start();
    expect(clock.active).toBe(1);
    expect(watch.state.armed).toBe(false);
    await arm();
  });
});

describe('receivedBytes', () => {
  const report = (...stats: object[]) => new Map(stats.map((s, i) => [`s${i}`, s]));

  it('sums bytesReceived of the transport stats', () => {
    expect(
      receivedBytes(
        report(
          { type: 'transport', bytesReceived: 1200 },
          { type: 'transport', bytesReceived: 34 },
          { type: 'inbound-rtp', bytesReceived: 999 },
          { type: 'candidate-pair', selected: true, bytesReceived: 777 },
        ),
      ),
    ).toBe(1234);
  });

  it('falls back to the selected candidate pairs, then the nominated succeeded ones', () => {
    expect(
      receivedBytes(
        report(
          { type: 'candidate-pair', selected: true, nominated: true, state: 'succeeded', bytesReceived: 50 },
          { type: 'candidate-pair', selected: false, nominated: true, state: 'succeeded', bytesReceived: 60 },
        ),
      ),
    ).toBe(50);
    expect(
      receivedBytes(
        report(
          { type: 'candidate-pair', nominated: true, state: 'succeeded', bytesReceived: 60 },
          { type: 'candidate-pair', nominated: true, state: 'failed', bytesReceived: 7 },
          { type: 'candidate-pair', state: 'succeeded', bytesReceived: 8 },
        ),
      ),
    ).toBe(60);
  });

  it('is null when nothing says what was received', () => {
    expect(receivedBytes(report())).toBeNull();
    expect(receivedBytes(report({ type: 'transport' }, { type: 'inbound-rtp', bytesReceived: 5 }))).toBeNull();
  });
});

describe('transportBytes', () => {
  const transport = (bytes: number) => ({
    getStats: async () => new Map([['t', { type: 'transport', bytesReceived: bytes }]]),
  });

  it('adds up the publisher and the subscriber', async () => {
    expect(await transportBytes([transport(100), transport(23)])).toBe(123);
  });

  it('skips missing or closed transports, and is null with none', async () => {
    const closed = { getStats: () => undefined };
    expect(await transportBytes([transport(100), undefined, closed])).toBe(100);
    expect(await transportBytes([])).toBeNull();
    expect(await transportBytes([undefined, closed])).toBeNull();
  });
});
