import { describe, expect, it } from 'vitest';
import { rms } from '../src/audio-meter';

describe('rms', () => {
  it('is 0 for silence or no samples', () => {
    expect(rms(new Float32Array(128))).toBe(0);
    expect(rms([])).toBe(0);
  });

  it('is the amplitude of a square wave and about 0.707 of a sine', () => {
    expect(rms([0.5, -0.5, 0.5, -0.5])).toBeCloseTo(0.5);
    const sine = Float32Array.from({ length: 1000 }, (_, i) => Math.sin((2 * Math.PI * i) / 100));
    expect(rms(sine)).toBeCloseTo(Math.SQRT1_2, 3);
  });

  it('never exceeds 1', () => {
    expect(rms([3, -3])).toBe(1);
  });
});
