// The page's DOM: element lookup and rendering of the state. No behaviour lives here.

import { isSessionType, SESSION_TYPE_LABELS, type SessionConfig, type SessionType } from './protocol';
import { canChat, canPushToTalk, type AppState, type StateKey, type SyncLogEntry } from './state';
import { statusView } from './status';
import type { TranscriptEntry } from './transcript';

function byId<T extends HTMLElement>(id: string, type: new () => T): T {
  const el = document.getElementById(id);
  if (!(el instanceof type)) throw new Error(`#${id} is missing from index.html`);
  return el;
}

export function getElements() {
  return {
    status: byId('status', HTMLElement),
    statusText: byId('status-text', HTMLElement),
    statusDetail: byId('status-detail', HTMLElement),
    joinForm: byId('join-form', HTMLFormElement),
    room: byId('room', HTMLInputElement),
    name: byId('name', HTMLInputElement),
    sessionType: byId('session-type', HTMLSelectElement),
    switchType: byId('switch-type', HTMLButtonElement),
    start: byId('start-session', HTMLButtonElement),
    end: byId('end-session', HTMLButtonElement),
    error: byId('error', HTMLElement),
    notice: byId('notice', HTMLElement),
    agentState: byId('agent-state', HTMLElement),
    configType: byId('config-type', HTMLElement),
    configState: byId('config-state', HTMLElement),
    configTurn: byId('config-turn', HTMLElement),
    configVoice: byId('config-voice', HTMLElement),
    configMic: byId('config-mic', HTMLElement),
    configInconsistency: byId('config-inconsistency', HTMLElement),
    mute: byId('mute', HTMLButtonElement),
    micLevel: byId('mic-level', HTMLElement),
    micLevelBar: byId('mic-level-bar', HTMLElement),
    ptt: byId('ptt', HTMLButtonElement),
    agentAudioInfo: byId('agent-audio-info', HTMLElement),
    enableAudio: byId('enable-audio', HTMLButtonElement),
    agentAudio: byId('agent-audio', HTMLElement),
    transcript: byId('transcript', HTMLOListElement),
    chatForm: byId('chat-form', HTMLFormElement),
    chatInput: byId('chat-input', HTMLTextAreaElement),
    sendChat: byId('send-chat', HTMLButtonElement),
    syncCount: byId('sync-count', HTMLElement),
    syncList: byId('sync-list', HTMLOListElement),
  };
}

export type Elements = ReturnType<typeof getElements>;

/** The session type the select shows, when it is a valid one. */
export function selectedType(els: Elements): SessionType | null {
  const value = els.sessionType.value;
  return isSessionType(value) ? value : null;
}

function renderConfig(els: Elements, config: SessionConfig | null): void {
  const mic = config?.is_muted === null || !config ? '–' : config.is_muted ? 'muted or absent' : 'live';
  els.configType.textContent = config ? SESSION_TYPE_LABELS[config.type] + ` (${config.type})` : '–';
  els.configState.textContent = config?.state ?? '–';
  els.configTurn.textContent = config?.turn_detection ?? '–';
  els.configVoice.textContent = config?.voice_mode ?? '–';
  els.configMic.textContent = mic;
  els.configInconsistency.textContent = !config ? '–' : config.inconsistency_detected ? 'detected' : 'none';
}

function renderTranscript(els: Elements, entries: readonly TranscriptEntry[]): void {
  const existing = new Map<string, HTMLLIElement>();
  for (const li of els.transcript.querySelectorAll('li')) existing.set(li.dataset.segment ?? '', li);
  if (entries.length < existing.size) els.transcript.replaceChildren();
  for (const entry of entries) {
    let li = existing.get(entry.segmentId);
    if (!li || !li.isConnected) {
      li = document.createElement('li');
      li.dataset.segment = entry.segmentId;
      const who = document.createElement('span');
      who.className = 'speaker';
      who.textContent = entry.speaker === 'user' ? 'You' : 'Clara';
      li.append(who, document.createElement('span'));
      els.transcript.append(li);
      els.transcript.scrollTop = els.transcript.scrollHeight;
    }
    li.className = `${entry.speaker}${entry.final ? '' : ' interim'}`;
    const text = li.lastElementChild;
    if (text && text.textContent !== entry.text) text.textContent = entry.text;
  }
}

function formatTime(ms: number): string {
  return new Date(ms).toLocaleTimeString(undefined, { hour12: false });
}

function renderSyncLog(els: Elements, events: readonly SyncLogEntry[]): void {
  els.syncCount.textContent = String(events.length);
  const items = events.map((event) => {
    const li = document.createElement('li');
    const state = event.config ? ` → ${event.config.state}` : '';
    const issues = event.issues.length ? ` [${event.issues.join(', ')}]` : '';
    li.textContent = `${formatTime(event.timestamp)} ${event.type}: ${event.trigger}${state}${issues}`;
    return li;
  });
  els.syncList.replaceChildren(...items.reverse());
}

/** Update the parts of the page whose state changed. */
export function render(els: Elements, state: Readonly<AppState>, changed: ReadonlySet<StateKey>): void {
  const has = (...keys: StateKey[]) => keys.some((k) => changed.has(k));
  const view = statusView(state.status);
  const connected = state.status === 'connected';
  const voice = state.sessionType !== 'text';

  if (has('status', 'statusText')) {
    els.status.className = `status status--${state.status}`;
    els.statusText.textContent = state.statusText;
    els.statusDetail.textContent = view.detail;
    els.start.disabled = !view.canStart;
    els.end.disabled = !view.canEnd;
    els.room.disabled = !view.canStart;
    els.name.disabled = !view.canStart;
    els.sessionType.disabled = !(view.canStart || connected);
    els.chatInput.disabled = !connected;
    els.switchType.disabled = !connected;
  }
  if (has('status', 'claraAway', 'config')) els.sendChat.disabled = !canChat(state);
  if (has('status', 'sessionType')) els.mute.disabled = !(connected && voice);
  if (has('status', 'sessionType', 'config')) els.ptt.disabled = !canPushToTalk(state);
  if (has('sessionType') && els.sessionType.value !== state.sessionType) {
    els.sessionType.value = state.sessionType;
  }
  if (has('room') && els.room.value !== state.room) els.room.value = state.room;
  if (has('name') && els.name.value !== state.name) els.name.value = state.name;
  if (has('lastError')) els.error.textContent = state.lastError ?? '';
  if (has('notice')) els.notice.textContent = state.notice ?? '';
  if (has('agentIdentity', 'agentState', 'waiting', 'claraAway')) {
    els.agentState.textContent = state.claraAway
      ? 'Clara is reconnecting…'
      : !state.agentIdentity
        ? 'Not in the room'
        : state.waiting
          ? 'Clara is busy: waiting for a place'
          : `Clara is ${state.agentState ?? 'here'}`;
  }
  if (has('config')) renderConfig(els, state.config);
  if (has('muted')) els.mute.setAttribute('aria-pressed', String(state.muted));
  if (has('micLevel')) {
    const percent = Math.round(Math.min(1, state.micLevel * 4) * 100);
    els.micLevelBar.style.width = `${percent}%`;
    els.micLevel.setAttribute('aria-valuenow', String(percent));
  }
  if (has('pttPressed')) els.ptt.setAttribute('aria-pressed', String(state.pttPressed));
  if (has('agentAudioTracks')) {
    els.agentAudioInfo.textContent = `Clara's audio: ${state.agentAudioTracks ? 'playing' : 'none'}`;
  }
  if (has('audioBlocked')) els.enableAudio.hidden = !state.audioBlocked;
  if (has('transcript')) renderTranscript(els, state.transcript);
  if (has('syncEvents')) renderSyncLog(els, state.syncEvents);
}

/** Show every part of the state once (at start-up). */
export function renderAll(els: Elements, state: Readonly<AppState>): void {
  render(els, state, new Set(Object.keys(state) as StateKey[]));
}
