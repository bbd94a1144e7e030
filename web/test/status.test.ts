import { describe, expect, it } from 'vitest';
import { FAILED_MESSAGE, STATUS_TEXT, statusView } from '../src/status';

describe('status texts', () => {
  it('are exactly the ones the person sees', () => {
    expect(STATUS_TEXT).toEqual({
      idle: 'Not connected',
      connecting: 'Connecting…',
      connected: 'Connected',
      reconnecting: 'Reconnecting…',
      failed: 'Failed',
    });
    expect(FAILED_MESSAGE).toBe('Connection lost. Please check your internet and try starting a new session.');
  });

  it('shows the failure message only when failed, with Start enabled again', () => {
    expect(statusView('failed')).toEqual({ text: 'Failed', detail: FAILED_MESSAGE, canStart: true, canEnd: false });
    expect(statusView('reconnecting')).toEqual({ text: 'Reconnecting…', detail: '', canStart: false, canEnd: true });
    expect(statusView('connecting').canStart).toBe(false);
    expect(statusView('connected')).toMatchObject({ canStart: false, canEnd: true });
    expect(statusView('idle')).toMatchObject({ canStart: true, canEnd: false, detail: '' });
  });
});
