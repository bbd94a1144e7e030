import { describe, expect, it } from 'vitest';
import { decideKey, isTextEntry, PushToTalk, type KeyLike } from '../src/ptt';
import type { TurnMethod } from '../src/protocol';

function setup(call?: (method: TurnMethod) => Promise<void>) {
  const calls: TurnMethod[] = [];
  const pressed: boolean[] = [];
  const errors: [string, TurnMethod][] = [];
  const ptt = new PushToTalk({
    call: call ?? (async (m) => void calls.push(m)),
    onPressedChange: (p) => pressed.push(p),
    onError: (e, m) => errors.push([e instanceof Error ? e.message : String(e), m]),
  });
  return { ptt, calls, pressed, errors };
}

describe('PushToTalk', () => {
  it('starts a turn on press and ends it on release', async () => {
    const { ptt, calls, pressed } = setup();
    ptt.setEnabled(true);
    expect(ptt.press()).toBe(true);
    expect(ptt.press()).toBe(false); // already held
    expect(ptt.release()).toBe(true);
    expect(ptt.release()).toBe(false);
    await ptt.settled();
    expect(calls).toEqual(['clara.start_turn', 'clara.end_turn']);
    expect(pressed).toEqual([true, false]);
  });

  it('cancels a held turn', async () => {
    const { ptt, calls } = setup();
    ptt.setEnabled(true);
    ptt.press();
    expect(ptt.cancel()).toBe(true);
    expect(ptt.cancel()).toBe(false);
    await ptt.settled();
    expect(calls).toEqual(['clara.start_turn', 'clara.cancel_turn']);
  });

  it('does nothing while disabled, and drops a hold when disabled', async () => {
    const { ptt, calls, pressed } = setup();
    expect(ptt.press()).toBe(false);
    ptt.setEnabled(true);
    ptt.press();
    ptt.setEnabled(false);
    expect(ptt.isPressed).toBe(false);
    expect(ptt.release()).toBe(false);
    await ptt.settled();
    expect(calls).toEqual(['clara.start_turn']);
    expect(pressed).toEqual([true, false]);
  });

  it('sends calls one after another even when they are slow, and goes on after an error', async () => {
    const log: string[] = [];
    let release: () => void = () => {};
    const gate = new Promise<void>((r) => (release = r));
    const { ptt, errors } = setup(async (method) => {
      log.push(`begin ${method}`);
      if (method === 'clara.start_turn') await gate;
      if (method === 'clara.end_turn') throw new Error('no push-to-talk session for this participant');
      log.push(`end ${method}`);
    });
    ptt.setEnabled(true);
    ptt.press();
    ptt.release();
    ptt.press();
    await Promise.resolve();
    expect(log).toEqual(['begin clara.start_turn']);
    release();
    await ptt.settled();
    expect(log).toEqual([
      'begin clara.start_turn',
      'end clara.start_turn',
      'begin clara.end_turn',
      'begin clara.start_turn',
      'end clara.start_turn',
    ]);
    expect(errors).toEqual([['no push-to-talk session for this participant', 'clara.end_turn']]);
  });
});

const body = { tagName: 'BODY' };
const key = (type: string, over: Partial<KeyLike> = {}): KeyLike => ({
  type,
  code: 'Space',
  key: ' ',
  repeat: false,
  target: body,
  ...over,
});

describe('decideKey', () => {
  const idle = { enabled: true, pressed: false };
  const held = { enabled: true, pressed: true };

  it('presses on Space down and releases on Space up', () => {
    expect(decideKey(key('keydown'), idle)).toEqual({ action: 'press', preventDefault: true });
    expect(decideKey(key('keyup'), held)).toEqual({ action: 'release', preventDefault: true });
  });

  it('ignores auto-repeat but keeps the page from scrolling', () => {
    expect(decideKey(key('keydown', { repeat: true }), held)).toEqual({ action: null, preventDefault: true });
  });

  it('leaves Space to text fields', () => {
    for (const target of [{ tagName: 'INPUT', type: 'text' }, { tagName: 'TEXTAREA' }, { tagName: 'DIV', isContentEditable: true }]) {
      expect(decideKey(key('keydown', { target }), idle)).toEqual({ action: null, preventDefault: false });
      expect(decideKey(key('keyup', { target }), idle)).toEqual({ action: null, preventDefault: false });
    }
  });

  it('still releases when the key comes up over a text field', () => {
    expect(decideKey(key('keyup', { target: { tagName: 'TEXTAREA' } }), held).action).toBe('release');
  });

  it('does nothing when push-to-talk is off', () => {
    expect(decideKey(key('keydown'), { enabled: false, pressed: false })).toEqual({ action: null, preventDefault: false });
    expect(decideKey(key('keyup'), { enabled: false, pressed: false })).toEqual({ action: null, preventDefault: false });
  });

  it('cancels on Escape while held only', () => {
    const esc = key('keydown', { code: 'Escape', key: 'Escape' });
    expect(decideKey(esc, held)).toEqual({ action: 'cancel', preventDefault: true });
    expect(decideKey(esc, idle)).toEqual({ action: null, preventDefault: false });
  });

  it('ignores other keys', () => {
    expect(decideKey(key('keydown', { code: 'KeyA', key: 'a' }), idle).action).toBeNull();
  });
});

describe('isTextEntry', () => {
  it('knows text fields from other controls', () => {
    expect(isTextEntry({ tagName: 'INPUT', type: 'text' })).toBe(true);
    expect(isTextEntry({ tagName: 'input' })).toBe(true);
    expect(isTextEntry({ tagName: 'INPUT', type: 'search' })).toBe(true);
    expect(isTextEntry({ tagName: 'SELECT' })).toBe(true);
    expect(isTextEntry({ tagName: 'INPUT', type: 'checkbox' })).toBe(false);
    expect(isTextEntry({ tagName: 'BUTTON' })).toBe(false);
    expect(isTextEntry(null)).toBe(false);
  });
});
