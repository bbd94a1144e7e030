// Audio levels with a WebAudio AnalyserNode on a MediaStreamTrack.

/** Root mean square of samples in -1..1, clamped to 0..1. */
export function rms(samples: ArrayLike<number>): number {
  if (samples.length === 0) return 0;
  let sum = 0;
  for (let i = 0; i < samples.length; i++) {
    const s = samples[i] ?? 0;
    sum += s * s;
  }
  return Math.min(1, Math.sqrt(sum / samples.length));
}

export class LevelMeter {
  private readonly source: MediaStreamAudioSourceNode;
  private readonly analyser: AnalyserNode;
  private readonly samples: Float32Array<ArrayBuffer>;

  constructor(
    context: AudioContext,
    readonly track: MediaStreamTrack,
  ) {
    this.source = context.createMediaStreamSource(new MediaStream([track]));
    this.analyser = context.createAnalyser();
    this.analyser.fftSize = 1024;
    this.samples = new Float32Array(this.analyser.fftSize);
    this.source.connect(this.analyser);
  }

  /** The current RMS level, 0..1. */
  level(): number {
    this.analyser.getFloatTimeDomainData(this.samples);
    return rms(this.samples);
  }

  close(): void {
    this.source.disconnect();
  }
}
