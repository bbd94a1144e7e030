// Push-to-talk: hold to talk (pointer or Space), release to end the turn, Escape to cancel.
// Turn RPCs are sent one after another, in the order of the gestures. Pure: no DOM access.

import { RPC_CANCEL_TURN, RPC_END_TURN, RPC_START_TURN, type TurnMethod } from './protocol';

export interface PushToTalkOptions {
  call: (method: TurnMethod) => Promise<void>;
  onPressedChange: (pressed: boolean) => void;
  onError: (error: unknown, method: TurnMethod) => void;
}

export class PushToTalk {
  private pressed = false;
  private enabled = false;
  private queue: Promise<void> = Promise.resolve();

  constructor(private readonly options: PushToTalkOptions) {}

  get isPressed(): boolean {
    return this.pressed;
  }

  get isEnabled(): boolean {
    return this.enabled;
  }

  /** Disabling while held drops the hold without a call (the session changed or went away). */
  setEnabled(enabled: boolean): void {
    this.enabled = enabled;
    if (!enabled && this.pressed) this.setPressed(false);
  }

  press(): boolean {
    if (!this.enabled || this.pressed) return false;
    this.setPressed(true);
    this.send(RPC_START_TURN);
    return true;
  }

  release(): boolean {
    if (!this.pressed) return false;
    this.setPressed(false);
    this.send(RPC_END_TURN);
    return true;
  }

  cancel(): boolean {
    if (!this.pressed) return false;
    this.setPressed(false);
    this.send(RPC_CANCEL_TURN);
    return true;
  }

  /** Resolves once every call sent so far has finished. */
  settled(): Promise<void> {
    return this.queue;
  }

  private setPressed(pressed: boolean): void {
    this.pressed = pressed;
    this.options.onPressedChange(pressed);
  }

  private send(method: TurnMethod): void {
    this.queue = this.queue
      .then(() => this.options.call(method))
      .catch((error: unknown) => this.options.onError(error, method));
  }
}

/** The parts of a DOM element that tell whether it takes typed text. */
export interface TargetLike {
  tagName?: string;
  type?: string;
  isContentEditable?: boolean;
}

const NON_TEXT_INPUTS = new Set(['button', 'checkbox', 'radio', 'range', 'submit', 'reset', 'color', 'file', 'image']);

/** Whether Space belongs to the focused element (a text field, text area, select or editable). */
export function isTextEntry(target: unknown): boolean {
  if (typeof target !== 'object' || target === null) return false;
  const el = target as TargetLike;
  if (el.isContentEditable) return true;
  const tag = (el.tagName ?? '').toUpperCase();
  if (tag === 'TEXTAREA' || tag === 'SELECT') return true;
  return tag === 'INPUT' && !NON_TEXT_INPUTS.has((el.type ?? 'text').toLowerCase());
}

export interface KeyLike {
  type: string;
  code: string;
  key: string;
  repeat: boolean;
  target: unknown;
}

export interface KeyDecision {
  action: 'press' | 'release' | 'cancel' | null;
  preventDefault: boolean;
}

const NONE: KeyDecision = { action: null, preventDefault: false };

/** What a key event means for push-to-talk: Space holds, Escape cancels a hold. */
export function decideKey(event: KeyLike, state: { enabled: boolean; pressed: boolean }): KeyDecision {
  const isSpace = event.code === 'Space' || event.key === ' ';
  if (event.type === 'keydown' && event.key === 'Escape' && state.pressed) {
    return { action: 'cancel', preventDefault: true };
  }
  if (!isSpace) return NONE;
  if (event.type === 'keyup') {
    if (state.pressed) return { action: 'release', preventDefault: true };
    return state.enabled && !isTextEntry(event.target) ? { action: null, preventDefault: true } : NONE;
  }
  if (event.type !== 'keydown' || !state.enabled || isTextEntry(event.target)) return NONE;
  if (event.repeat || state.pressed) return { action: null, preventDefault: true };
  return { action: 'press', preventDefault: true };
}
