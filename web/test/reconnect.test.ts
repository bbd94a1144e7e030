import { describe, expect, it } from 'vitest';
import {
  backoffDelay,
  LINK_RECONNECT_POLICY,
  ReconnectController,
  type ReconnectState,
  type Timer,
} from '../src/reconnect';

/** A manual clock: timers fire only when the test advances time. */
class FakeTimer implements Timer {
  now = 0;
  delays: number[] = [];
  private seq = 0;
  private pending: { id: number; at: number; fn: () => void }[] = [];

  setTimeout(fn: () => void, ms: number): unknown {
    const id = ++this.seq;
    this.delays.push(ms);
    this.pending.push({ id, at: this.now + ms, fn });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.pending = this.pending.filter((t) => t.id !== handle);
  }

  get pendingCount(): number {
    return this.pending.length;
  }

  async advance(ms: number): Promise<void> {
    const target = this.now + ms;
    for (;;) {
      const due = this.pending.filter((t) => t.at <= target).sort((a, b) => a.at - b.at)[0];
      if (!due) break;
      this.pending = this.pending.filter((t) => t !== due);
      this.now = due.at;
      due.fn();
      await settle();
    }
    this.now = target;
  }
}

const settle = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

/** connect() calls the test resolves or rejects by hand. */
class FakeConnect {
  calls: { signal: AbortSignal; resolve: () => void; reject: (e: Error) => void }[] = [];
  running = 0;
  maxRunning = 0;

  readonly connect = (signal: AbortSignal): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      this.running += 1;
      this.maxRunning = Math.max(this.maxRunning, this.running);
      const done = () => {
        this.running -= 1;
      };
      this.calls.push({
        signal,
        resolve: () => {
          done();
          resolve();
        },
        reject: (e) => {
          done();
          reject(e);
        },
      });
    });

  get last() {
    const call = this.calls[this.calls.length - 1];
    if (!call) throw new Error('connect was not called');
    return call;
  }

  async succeed(): Promise<void> {
    this.last.resolve();
    await settle();
  }

  async fail(): Promise<void> {
    this.last.reject(new Error('unreachable'));
    await settle();
  }
}

function setup() {
  const timer = new FakeTimer();
  const fake = new FakeConnect();
  const states: ReconnectState[] = [];
  const failures: number[] = [];
  const controller = new ReconnectController({
    connect: fake.connect,
    onChange: (s) => states.push(s),
    onAttemptFailed: (_e, attempt) => failures.push(attempt),
    timer,
  });
  return { timer, fake, states, failures, controller };
}

async function connected() {
  const t = setup();
  t.controller.start();
  await t.fake.succeed();
  expect(t.controller.state.status).toBe('connected');
  return t;
}

describe('backoffDelay', () => {
  it('doubles from one second', () => {
    expect([1, 2, 3, 4, 5].map((n) => backoffDelay(n))).toEqual([1000, 2000, 4000, 8000, 16000]);
  });
});

describe('LINK_RECONNECT_POLICY', () => {
  it("lets livekit-client try once, at once, to resume before the page's backoff takes over", () => {
    const next = (retryCount: number) => LINK_RECONNECT_POLICY.nextRetryDelayInMs({ retryCount });
    expect([0, 1, 2, 9].map(next)).toEqual([0, null, null, null]);
  });
});

describe('ReconnectController', () => {
  it('connects on start', async () => {
    const { controller, fake, states } = setup();
    expect(controller.start()).toBe(true);
    expect(controller.state.status).toBe('connecting');
    await fake.succeed();
    expect(states.map((s) => s.status)).toEqual(['connecting', 'connected']);
  });

  it('fails at once when the first connect fails, and can start again', async () => {
    const { controller, fake, timer } = setup();
    controller.start();
    await fake.fail();
    expect(controller.state.status).toBe('failed');
    expect(timer.pendingCount).toBe(0);
    expect(controller.start()).toBe(true);
    await fake.succeed();
    expect(controller.state.status).toBe('connected');
  });

  it('retries after 1, 2, 4, 8, 16 s and fails after the 5th attempt', async () => {
    const { controller, fake, timer, failures } = await connected();
    controller.connectionLost();
    expect(controller.state).toEqual({ status: 'reconnecting', attempts: 0 });
    for (let attempt = 1; attempt <= 5; attempt++) {
      const delay = backoffDelay(attempt);
      await timer.advance(delay - 1);
      expect(fake.calls).toHaveLength(attempt); // not yet
      await timer.advance(1);
      expect(fake.calls).toHaveLength(attempt + 1);
      expect(controller.state).toEqual({ status: 'reconnecting', attempts: attempt });
      await fake.fail();
    }
    expect(timer.delays).toEqual([1000, 2000, 4000, 8000, 16000]);
    expect(controller.state).toEqual({ status: 'failed', attempts: 5 });
    expect(failures).toEqual([1, 2, 3, 4, 5]);
    await timer.advance(60_000);
    expect(fake.calls).toHaveLength(6); // 1 start + 5 retries, no more
  });

  it('returns to connected when a retry succeeds, and starts a later cycle from 1 s', async () => {
    const { controller, fake, timer } = await connected();
    controller.connectionLost();
    await timer.advance(1000);
    await fake.fail();
    await timer.advance(2000);
    await fake.succeed();
    expect(controller.state).toEqual({ status: 'connected', attempts: 0 });
    controller.connectionLost();
    await timer.advance(1000);
    expect(timer.delays).toEqual([1000, 2000, 1000]);
    expect(fake.calls).toHaveLength(4);
  });

  it('never runs two connects at once', async () => {
    const { controller, fake, timer } = setup();
    controller.start();
    expect(controller.start()).toBe(false);
    controller.connectionLost(); // a disconnect during the first connect is not a lost connection
    await timer.advance(60_000);
    expect(fake.calls).toHaveLength(1);
    await fake.succeed();

    controller.connectionLost();
    controller.connectionLost(); // a second report while reconnecting schedules nothing more
    expect(timer.pendingCount).toBe(1);
    await timer.advance(1000);
    expect(controller.connecting).toBe(true);
    expect(controller.start()).toBe(false);
    controller.connectionLost();
    await timer.advance(60_000);
    expect(fake.calls).toHaveLength(2);
    expect(fake.maxRunning).toBe(1);
  });

  it('cancels a pending retry on stop (End Session)', async () => {
    const { controller, fake, timer } = await connected();
    controller.connectionLost();
    controller.stop();
    expect(controller.state).toEqual({ status: 'idle', attempts: 0 });
    expect(timer.pendingCount).toBe(0);
    await timer.advance(60_000);
    expect(fake.calls).toHaveLength(1);
  });

  it('abandons a running connect on stop and ignores its result', async () => {
    const { controller, fake, timer } = await connected();
    controller.connectionLost();
    await timer.advance(1000);
    const attempt = fake.last;
    controller.stop();
    expect(attempt.signal.aborted).toBe(true);
    attempt.resolve();
    await settle();
    expect(controller.state.status).toBe('idle');
    await timer.advance(60_000);
    expect(fake.calls).toHaveLength(2);
  });

  it('follows livekit-client reconnecting by itself', async () => {
    const { controller, fake, timer } = await connected();
    controller.linkReconnecting();
    expect(controller.state.status).toBe('reconnecting');
    controller.linkReconnected();
    expect(controller.state.status).toBe('connected');
    controller.linkReconnected(); // harmless when not reconnecting
    expect(controller.state.status).toBe('connected');

    controller.linkReconnecting();
    controller.connectionLost(); // livekit-client gave up: our own backoff takes over
    expect(timer.delays).toEqual([1000]);
    controller.linkReconnected(); // a late event of the old room changes nothing
    expect(controller.state.status).toBe('reconnecting');
    await timer.advance(1000);
    await fake.succeed();
    expect(controller.state.status).toBe('connected');
  });

  it('ignores link events and losses when idle or failed', () => {
    const { controller, fake, timer } = setup();
    controller.linkReconnecting();
    controller.connectionLost();
    expect(controller.state.status).toBe('idle');
    expect(timer.pendingCount).toBe(0);
    expect(fake.calls).toHaveLength(0);
  });
});
