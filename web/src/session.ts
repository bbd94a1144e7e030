// One LiveKit room connection (a new one for every connect attempt), reduced to the events
// and calls the Clara page needs. Events of a disposed room are never forwarded.

import {
  DisconnectReason,
  Room,
  RoomEvent,
  Track,
  type RemoteParticipant,
  type RemoteTrack,
  type TextStreamReader,
} from 'livekit-client';
import { LinkWatch, transportBytes, type LinkWatchState } from './link-watch';
import { TOPIC_CHAT, TOPIC_NOTICE, TOPIC_SYNC, TOPIC_TRANSCRIPTION } from './protocol';
import { LINK_RECONNECT_POLICY } from './reconnect';

export interface RoomListener {
  /** Disconnected for any reason but our own (includes livekit-client's reconnect giving up). */
  unexpectedDisconnect(reason: DisconnectReason | undefined): void;
  /** The link went down: livekit-client is reconnecting, or the link-stall watch says stalled. */
  linkReconnecting(): void;
  /** The link is up again: livekit-client is not reconnecting and the watch sees bytes flow. */
  linkReconnected(): void;
  /** The link-stall watch's state changed (see link-watch.ts). */
  linkWatchChanged(state: LinkWatchState): void;
  agentChanged(agent: RemoteParticipant | null): void;
  agentAttributesChanged(agent: RemoteParticipant): void;
  syncData(payload: Uint8Array): void;
  noticeData(payload: Uint8Array): void;
  transcription(reader: TextStreamReader, senderIdentity: string): void;
  agentAudioSubscribed(track: RemoteTrack): void;
  agentAudioUnsubscribed(track: RemoteTrack): void;
  audioPlaybackChanged(canPlay: boolean): void;
}

export class ClaraRoom {
  readonly room = new Room({ reconnectPolicy: LINK_RECONNECT_POLICY });
  private active = true;
  private agentIdentity: string | null = null;
  /** livekit-client is reconnecting the room by itself. */
  private lkReconnecting = false;
  private linkDown = false;
  private readonly watch: LinkWatch;

  constructor(private readonly listener: RoomListener) {
    const room = this.room;
    const on = <A extends unknown[]>(handler: (...args: A) => void) => (...args: A) => {
      if (this.active) handler(...args);
    };
    this.watch = new LinkWatch({
      readBytes: () => {
        const pcs = room.engine?.pcManager;
        return transportBytes(pcs ? [pcs.publisher, pcs.subscriber] : []);
      },
      micActive: () => {
        const mic = room.localParticipant.getTrackPublication(Track.Source.Microphone);
        return mic?.track !== undefined && !mic.isMuted;
      },
      onChange: on((state: LinkWatchState) => {
        listener.linkWatchChanged(state);
        this.updateLink();
      }),
    });
    room
      .on(
        RoomEvent.Disconnected,
        on((reason?: DisconnectReason) => {
          this.watch.stop();
          if (reason !== DisconnectReason.CLIENT_INITIATED) listener.unexpectedDisconnect(reason);
        }),
      )
      .on(
        RoomEvent.Reconnecting,
        on(() => {
          this.lkReconnecting = true;
          this.updateLink();
        }),
      )
      .on(
        RoomEvent.Reconnected,
        on(() => {
          this.lkReconnecting = false;
          this.watch.reset(); // livekit-client has just proved the link: watch it afresh
          this.updateLink();
        }),
      )
      .on(RoomEvent.ParticipantConnected, on(() => this.refreshAgent()))
      .on(RoomEvent.ParticipantDisconnected, on(() => this.refreshAgent()))
      .on(
        RoomEvent.ParticipantAttributesChanged,
        on((_changed: Record<string, string>, participant: { identity: string }) => {
          const agent = this.agent;
          if (agent && participant.identity === agent.identity) listener.agentAttributesChanged(agent);
        }),
      )
      .on(
        RoomEvent.DataReceived,
        on((payload: Uint8Array, _participant?: RemoteParticipant, _kind?: unknown, topic?: string) => {
          if (topic === TOPIC_SYNC) listener.syncData(payload);
          else if (topic === TOPIC_NOTICE) listener.noticeData(payload);
        }),
      )
      .on(
        RoomEvent.TrackSubscribed,
        on((track: RemoteTrack, _pub: unknown, participant: RemoteParticipant) => {
          if (participant.isAgent && track.kind === Track.Kind.Audio) listener.agentAudioSubscribed(track);
        }),
      )
      .on(
        RoomEvent.TrackUnsubscribed,
        on((track: RemoteTrack, _pub: unknown, participant: RemoteParticipant) => {
          if (participant.isAgent && track.kind === Track.Kind.Audio) listener.agentAudioUnsubscribed(track);
        }),
      )
      .on(RoomEvent.AudioPlaybackStatusChanged, on(() => listener.audioPlaybackChanged(room.canPlaybackAudio)));
    room.registerTextStreamHandler(
      TOPIC_TRANSCRIPTION,
      on((reader: TextStreamReader, info: { identity: string }) => listener.transcription(reader, info.identity)),
    );
  }

  /** The Clara agent in the room (a participant of kind AGENT), if it has joined. */
  get agent(): RemoteParticipant | null {
    for (const participant of this.room.remoteParticipants.values()) {
      if (participant.isAgent) return participant;
    }
    return null;
  }

  get localIdentity(): string {
    return this.room.localParticipant.identity;
  }

  async connect(url: string, token: string): Promise<void> {
    await this.room.connect(url, token);
    this.refreshAgent();
    if (this.active) this.watch.start();
  }

  /** Call an RPC method on the agent; rejects with livekit-client's RpcError on a refusal. */
  async rpc(method: string, payload = ''): Promise<string> {
    const agent = this.agent;
    if (!agent) throw new Error('Clara has not joined the room yet');
    return this.room.localParticipant.performRpc({ destinationIdentity: agent.identity, method, payload });
  }

  async sendChat(text: string): Promise<void> {
    await this.room.localParticipant.sendText(text, { topic: TOPIC_CHAT });
  }

  async setMicrophone(enabled: boolean): Promise<void> {
    await this.room.localParticipant.setMicrophoneEnabled(enabled);
  }

  /** The published microphone's MediaStreamTrack, if any. */
  micTrack(): MediaStreamTrack | null {
    return this.room.localParticipant.getTrackPublication(Track.Source.Microphone)?.track?.mediaStreamTrack ?? null;
  }

  localTrackIds(): string[] {
    return [...this.room.localParticipant.trackPublications.keys()];
  }

  async startAudio(): Promise<void> {
    await this.room.startAudio();
    this.listener.audioPlaybackChanged(this.room.canPlaybackAudio);
  }

  /** Stop forwarding events and leave the room. */
  dispose(): void {
    this.active = false;
    this.watch.stop();
    this.room.unregisterTextStreamHandler(TOPIC_TRANSCRIPTION);
    void this.room.disconnect();
  }

  /** Tell the listener when the link goes down (either cause) and when both causes clear. */
  private updateLink(): void {
    const down = this.lkReconnecting || this.watch.state.stalled;
    if (down === this.linkDown) return;
    this.linkDown = down;
    if (down) this.listener.linkReconnecting();
    else this.listener.linkReconnected();
  }

  private refreshAgent(): void {
    const agent = this.agent;
    const identity = agent?.identity ?? null;
    if (identity === this.agentIdentity) return;
    this.agentIdentity = identity;
    this.listener.agentChanged(agent);
  }
}
