// Wires the page: the reconnect controller, one ClaraRoom at a time, the state store and the DOM.

import { MediaPlayback } from './media';
import {
  chatMessage,
  DEFAULT_SESSION_TYPE,
  isVoiceType,
  parseRpcFailure,
  parseSetTypeReply,
  parseNotice,
  parseSyncEvent,
  readAgentState,
  readSessionConfig,
  RPC_SET_SESSION_TYPE,
  type SessionConfig,
} from './protocol';
import { ATTR_HEARTBEAT, ClaraPresence } from './presence';
import { PushToTalk, decideKey } from './ptt';
import { ReconnectController } from './reconnect';
import { ClaraRoom, type RoomListener } from './session';
import { ConfigTracker } from './session-config';
import { appendCapped, canChat, canPushToTalk, initialState, installDebugHook, Store, SYNC_LOG_LIMIT } from './state';
import { STATUS_TEXT, statusView } from './status';
import { DEFAULT_TOKEN_ENDPOINT, fetchToken } from './token';
import { classifySpeaker, consumeTranscription, Transcript, transcribedTrackId } from './transcript';
import { getElements, render, renderAll, selectedType } from './ui';

const METER_INTERVAL_MS = 50;

const els = getElements();
const tokenEndpoint =
  document.querySelector<HTMLMetaElement>('meta[name="clara-token-endpoint"]')?.content || DEFAULT_TOKEN_ENDPOINT;
const store = new Store(initialState('clara-demo'));
installDebugHook(window, store);
store.subscribe((state, changed) => render(els, state, changed));
renderAll(els, store.current);

const transcript = new Transcript((entries) => store.patch({ transcript: entries.map((e) => ({ ...e })) }));

const media = new MediaPlayback(els.agentAudio);
const configs = new ConfigTracker();
let current: ClaraRoom | null = null;
let chatCount = 0;
/** The ticket of the last token: a reconnection of this session keeps its identity. */
let resume: string | null = null;
const presence = new ClaraPresence();
/** The last Clara agent this session saw: another one is a new Clara, starting afresh. */
let lastAgent: string | null = null;

function checkPresence(): void {
  const away = store.current.status === 'connected' && presence.away(Date.now());
  if (away !== store.current.claraAway) store.patch({ claraAway: away });
}
setInterval(checkPresence, 500);

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function showError(error: unknown): void {
  store.patch({ lastError: errorText(error) });
}

// ---- connection ----

const controller = new ReconnectController({
  connect: connectOnce,
  onChange: ({ status, attempts }) => store.patch({ status, statusText: STATUS_TEXT[status], attempts }),
  onAttemptFailed: (error) => showError(error),
});

async function connectOnce(signal: AbortSignal): Promise<void> {
  const { room, name, sessionType } = store.current;
  const request = { room, session_type: sessionType, resume, ...(name ? { name } : {}) };
  const token = await fetchToken(request, { endpoint: tokenEndpoint, signal });
  signal.throwIfAborted();
  resume = token.resume;
  store.patch({ identity: token.identity, room: token.room });
  closeRoom();
  const session = new ClaraRoom(listener);
  current = session;
  try {
    await session.connect(token.url, token.token);
    signal.throwIfAborted();
  } catch (error) {
    if (current === session) closeRoom();
    throw error;
  }
  store.patch({ identity: session.localIdentity, lastError: null });
  session.startAudio().catch(() => store.patch({ audioBlocked: true }));
  await applyMicrophone(session);
  if (current !== session) throw new Error('disconnected while connecting');
}

/** Publish (or unmute) the microphone in a voice session; mute it in a text session. */
async function applyMicrophone(session: ClaraRoom): Promise<void> {
  const { sessionType, muted } = store.current;
  const wanted = isVoiceType(sessionType) && !muted;
  if (!wanted && !session.micTrack()) return;
  try {
    await session.setMicrophone(wanted);
  } catch (error) {
    showError(`Microphone: ${errorText(error)}`);
  }
}

function closeRoom(): void {
  media.release();
  store.patch({
    agentAudioTracks: 0,
    micLevel: 0,
    micPublished: false,
    agentIdentity: null,
    agentState: null,
    linkArmed: false,
    linkStalled: false,
  });
  current?.dispose();
  current = null;
}

// ---- agent state and config ----

function applyConfig(config: SessionConfig, sessionId: string | null = null): void {
  if (!configs.offer(config, sessionId) || !configs.current) return;
  const chosen = configs.current;
  // While the session is starting (`idle`) its type may still be the server's default:
  // the type we asked for is applied once it is active.
  const sessionType = chosen.state === 'idle' ? store.current.sessionType : chosen.type;
  const typeChanged = sessionType !== store.current.sessionType;
  store.patch({ config: chosen, sessionType });
  if (typeChanged && current) void applyMicrophone(current);
}

const listener: RoomListener = {
  unexpectedDisconnect: (reason) => {
    console.warn('clara: disconnected unexpectedly', reason);
    closeRoom();
    controller.connectionLost();
  },
  linkReconnecting: () => controller.linkReconnecting(),
  linkReconnected: () => controller.linkReconnected(),
  linkWatchChanged: ({ armed, stalled }) => store.patch({ linkArmed: armed, linkStalled: stalled }),
  agentChanged: (agent) => {
    if (agent && lastAgent !== null && agent.identity !== lastAgent) {
      // a new Clara (her worker crashed or restarted): the old one's session config says
      // nothing of the new one's, which is starting
      configs.reset();
      store.patch({ config: null });
    }
    if (agent) lastAgent = agent.identity;
    store.patch({ agentIdentity: agent?.identity ?? null, agentState: null });
    presence.update(agent?.identity ?? null, agent?.attributes[ATTR_HEARTBEAT], Date.now());
    checkPresence();
    if (agent) listener.agentAttributesChanged(agent);
  },
  agentAttributesChanged: (agent) => {
    presence.update(agent.identity, agent.attributes[ATTR_HEARTBEAT], Date.now());
    checkPresence();
    const identity = current?.localIdentity ?? store.current.identity;
    store.patch({ agentState: readAgentState(agent.attributes, identity) });
    const config = readSessionConfig(agent.attributes, identity);
    if (config) applyConfig(config);
    if (config && store.current.waiting) store.patch({ waiting: false, notice: null });
  },
  syncData: (payload) => {
    const event = parseSyncEvent(payload);
    if (!event) return;
    store.patch({ syncEvents: appendCapped(store.current.syncEvents, { ...event, receivedAt: Date.now() }, SYNC_LOG_LIMIT) });
    if (event.config) applyConfig(event.config, event.sessionId);
  },
  noticeData: (payload) => {
    const notice = parseNotice(payload);
    if (notice) store.patch({ notice: notice.message, waiting: notice.error === 'room_full' });
  },
  transcription: (reader, senderIdentity) => {
    const session = current;
    if (!session) return;
    const speaker = classifySpeaker({
      senderIdentity,
      localIdentity: session.localIdentity,
      agentIdentity: session.agent?.identity ?? null,
      transcribedTrackId: transcribedTrackId(reader),
      localTrackIds: session.localTrackIds(),
    });
    if (!speaker) return;
    consumeTranscription(transcript, reader, speaker).catch((error: unknown) =>
      console.warn('clara: transcription stream ended abnormally', error),
    );
  },
  agentAudioSubscribed: (track) => {
    media.addAgentTrack(track);
    store.patch({ agentAudioTracks: media.agentTrackCount });
  },
  agentAudioUnsubscribed: (track) => {
    media.removeAgentTrack(track);
    store.patch({ agentAudioTracks: media.agentTrackCount });
  },
  audioPlaybackChanged: (canPlay) => store.patch({ audioBlocked: !canPlay }),
};

// ---- levels ----

function measureLevels(): void {
  const track = current?.micTrack() ?? null;
  const levels = media.measure(track);
  store.patch({
    micLevel: Math.round(levels.mic * 1000) / 1000,
    micPublished: track !== null,
    agentAudioLevelMax: Math.max(store.current.agentAudioLevelMax, levels.agent),
  });
}

setInterval(measureLevels, METER_INTERVAL_MS);

// ---- push-to-talk ----

const ptt = new PushToTalk({
  call: async (method) => {
    if (!current) throw new Error('not connected');
    await current.rpc(method);
  },
  onPressedChange: (pressed) => store.patch({ pttPressed: pressed }),
  onError: (error) => showError(parseRpcFailure(error).message),
});

store.subscribe((state) => ptt.setEnabled(canPushToTalk(state)));

els.ptt.addEventListener('pointerdown', (event) => {
  if (event.button !== 0) return;
  event.preventDefault();
  els.ptt.setPointerCapture(event.pointerId);
  ptt.press();
});
for (const type of ['pointerup', 'pointercancel', 'lostpointercapture'] as const) {
  els.ptt.addEventListener(type, () => ptt.release());
}
els.ptt.addEventListener('contextmenu', (event) => event.preventDefault());

function onKey(event: KeyboardEvent): void {
  const decision = decideKey(event, { enabled: ptt.isEnabled, pressed: ptt.isPressed });
  if (decision.preventDefault) event.preventDefault();
  if (decision.action) ptt[decision.action]();
}
document.addEventListener('keydown', onKey);
document.addEventListener('keyup', onKey);
window.addEventListener('blur', () => ptt.release());

// ---- controls ----

els.joinForm.addEventListener('submit', (event) => {
  event.preventDefault();
  if (!statusView(store.current.status).canStart) return;
  const room = els.room.value.trim();
  const name = els.name.value.trim();
  if (!room) {
    showError('Enter a room name.');
    return;
  }
  resume = null; // a new session: a new identity
  presence.reset();
  lastAgent = null;
  media.unlock(); // inside the click: the browser lets audio play from now on
  transcript.clear();
  configs.reset();
  store.patch({
    room,
    name,
    identity: '',
    claraAway: false,
    notice: null,
    waiting: false,
    sessionType: selectedType(els) ?? DEFAULT_SESSION_TYPE,
    config: null,
    syncEvents: [],
    agentAudioLevelMax: 0,
    lastError: null,
  });
  controller.start();
});

els.end.addEventListener('click', () => {
  controller.stop();
  closeRoom();
});

els.sessionType.addEventListener('change', () => {
  const type = selectedType(els);
  if (type && statusView(store.current.status).canStart) store.patch({ sessionType: type });
});

els.switchType.addEventListener('click', async () => {
  const type = selectedType(els);
  const session = current;
  if (!type || !session) return;
  try {
    const config = parseSetTypeReply(await session.rpc(RPC_SET_SESSION_TYPE, JSON.stringify({ type })));
    if (!config) throw new Error('Clara sent an unexpected reply');
    applyConfig(config);
    store.patch({ lastError: null });
  } catch (error) {
    showError(parseRpcFailure(error).message);
  }
  els.sessionType.value = store.current.sessionType;
});

els.mute.addEventListener('click', () => {
  store.patch({ muted: !store.current.muted });
  if (current) void applyMicrophone(current);
});

els.enableAudio.addEventListener('click', () => {
  media.unlock();
  current?.startAudio().catch(showError);
});

els.chatInput.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    els.chatForm.requestSubmit();
  }
});

els.chatForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  const text = chatMessage(els.chatInput.value);
  const session = current;
  if (!text || !session || !canChat(store.current)) return; // it waits in the box
  try {
    await session.sendChat(text);
    transcript.add({ speaker: 'user', text, final: true, segmentId: `chat-${++chatCount}` });
    els.chatInput.value = '';
  } catch (error) {
    showError(error);
  }
});
