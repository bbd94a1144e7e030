// Is Clara still with us? The agent writes its heartbeat (`clara.heartbeat`, unix ms) every
// second; when it stops changing for STALE_MS, or the agent leaves the room while the page is
// connected, Clara is away (her worker crashed or restarts): the page says "Clara is
// reconnecting…" until a Clara agent is there again and beating (the fleet replaces her).

export const ATTR_HEARTBEAT = 'clara.heartbeat';
export const STALE_MS = 3500;

export class ClaraPresence {
  private agent: string | null = null;
  private beat: string | null = null;
  private beatAt = 0;
  private wasHere = false;
  private gone = false;

  /** Forget everything: a new session starts. */
  reset(): void {
    this.agent = null;
    this.beat = null;
    this.beatAt = 0;
    this.wasHere = false;
    this.gone = false;
  }

  /** The agent in the room now (null: none), with its heartbeat attribute. */
  update(agent: string | null, heartbeat: string | undefined, now: number): void {
    if (agent === null) {
      this.gone = this.wasHere;
      this.agent = null;
      return;
    }
    if (agent !== this.agent) {
      this.agent = agent;
      this.beat = null;
      this.beatAt = now;
    }
    if (heartbeat !== undefined && heartbeat !== this.beat) {
      this.beat = heartbeat;
      this.beatAt = now;
      this.wasHere = true;
      this.gone = false;
    }
  }

  /** Whether Clara is away as of `now`: gone (until a Clara beats again), or silent. */
  away(now: number): boolean {
    if (this.gone || this.agent === null) return this.gone;
    return this.wasHere && this.beat !== null && now - this.beatAt > STALE_MS;
  }
}
