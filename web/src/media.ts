// Clara's audio on the page: plays the agent's tracks and measures them and the microphone.

import type { RemoteTrack } from 'livekit-client';
import { LevelMeter } from './audio-meter';

export interface Levels {
  /** the microphone's RMS level now, 0..1 */
  mic: number;
  /** the loudest RMS level of the agent's tracks now, 0..1 */
  agent: number;
}

export class MediaPlayback {
  private context: AudioContext | null = null;
  private micMeter: LevelMeter | null = null;
  private readonly agentTracks = new Map<RemoteTrack, { element: HTMLMediaElement; meter: LevelMeter | null }>();

  /** `container` holds the (hidden) audio elements. */
  constructor(private readonly container: HTMLElement) {}

  get agentTrackCount(): number {
    return this.agentTracks.size;
  }

  /** Create or resume the AudioContext: call it from a click, where the browser allows audio. */
  unlock(): void {
    this.context ??= new AudioContext();
    void this.context.resume();
  }

  /** Play one of the agent's audio tracks and measure it. */
  addAgentTrack(track: RemoteTrack): void {
    if (this.agentTracks.has(track)) return;
    const element = track.attach();
    element.setAttribute('aria-hidden', 'true');
    this.container.append(element);
    const meter = this.context ? new LevelMeter(this.context, track.mediaStreamTrack) : null;
    this.agentTracks.set(track, { element, meter });
  }

  removeAgentTrack(track: RemoteTrack): void {
    const entry = this.agentTracks.get(track);
    if (!entry) return;
    track.detach(entry.element);
    entry.element.remove();
    entry.meter?.close();
    this.agentTracks.delete(track);
  }

  /** Measure now; `micTrack` is the published microphone (the meter follows a replaced track). */
  measure(micTrack: MediaStreamTrack | null): Levels {
    if (this.micMeter?.track !== micTrack) {
      this.micMeter?.close();
      this.micMeter = micTrack && this.context ? new LevelMeter(this.context, micTrack) : null;
    }
    let agent = 0;
    for (const { meter } of this.agentTracks.values()) if (meter) agent = Math.max(agent, meter.level());
    return { mic: this.micMeter?.level() ?? 0, agent };
  }

  /** Stop playing and measuring everything of the current room. */
  release(): void {
    for (const track of [...this.agentTracks.keys()]) this.removeAgentTrack(track);
    this.micMeter?.close();
    this.micMeter = null;
  }
}
