// The live conversation, assembled from `lk.transcription` text streams.
// Agent segments are delta streams (chunks are appended); user segments arrive as
// full-text updates (each stream replaces the text). Pure: readers are structural.

import { ATTR_SEGMENT_ID, ATTR_TRANSCRIBED_TRACK_ID, ATTR_TRANSCRIPTION_FINAL } from './protocol';

export type Speaker = 'user' | 'clara';

export interface TranscriptEntry {
  speaker: Speaker;
  text: string;
  final: boolean;
  segmentId: string;
}

/** How a stream's text combines with what the segment already holds. */
export type StreamMode = 'append' | 'replace';

export interface StreamHandle {
  push(chunk: string): void;
  end(final: boolean): void;
}

export class Transcript {
  private entries: TranscriptEntry[] = [];
  private readonly bySegment = new Map<string, TranscriptEntry>();

  constructor(private readonly onChange: (entries: readonly TranscriptEntry[]) => void = () => {}) {}

  get list(): readonly TranscriptEntry[] {
    return this.entries;
  }

  clear(): void {
    this.entries = [];
    this.bySegment.clear();
    this.onChange(this.entries);
  }

  /** Add a complete entry at once (e.g. a chat message the user typed). */
  add(entry: TranscriptEntry): void {
    const handle = this.openStream(entry.segmentId, entry.speaker, 'replace');
    handle.push(entry.text);
    handle.end(entry.final);
  }

  /** Open one stream's update of a segment; the segment is created on first sight. */
  openStream(segmentId: string, speaker: Speaker, mode: StreamMode): StreamHandle {
    const existing = this.bySegment.get(segmentId);
    const base = mode === 'append' && existing ? existing.text : '';
    let received = '';
    let closed = false;
    const apply = (final: boolean): void => {
      const text = base + received;
      let current = this.bySegment.get(segmentId);
      if (!current) {
        if (!text) return; // nothing to show yet
        current = { speaker, text: '', final: false, segmentId };
        this.bySegment.set(segmentId, current);
        this.entries.push(current);
      }
      if (current.final && !final) return; // a stale update after the final one
      current.text = text;
      current.final = current.final || final;
      this.onChange(this.entries);
    };
    return {
      push: (chunk: string) => {
        if (closed || !chunk) return;
        received += chunk;
        apply(false);
      },
      end: (final: boolean) => {
        if (closed) return;
        closed = true;
        apply(final);
      },
    };
  }
}

/** Who a transcription stream is about, or null when it is neither the local user nor the agent. */
export function classifySpeaker(input: {
  senderIdentity: string;
  localIdentity: string;
  agentIdentity: string | null;
  transcribedTrackId?: string;
  localTrackIds?: readonly string[];
}): Speaker | null {
  if (input.senderIdentity === input.localIdentity) return 'user';
  if (input.transcribedTrackId && input.localTrackIds?.includes(input.transcribedTrackId)) return 'user';
  if (input.agentIdentity !== null && input.senderIdentity === input.agentIdentity) return 'clara';
  return null;
}

/** The parts of livekit-client's TextStreamReader this module uses. */
export interface TranscriptionReader extends AsyncIterable<string> {
  readonly info: { readonly id: string; readonly attributes?: Record<string, string> };
}

function streamMode(speaker: Speaker): StreamMode {
  return speaker === 'clara' ? 'append' : 'replace';
}

/**
 * Read one transcription stream into the transcript. `lk.transcription_final` is read at the
 * end: livekit-client merges the stream trailer's attributes into `info.attributes`.
 */
export async function consumeTranscription(
  transcript: Transcript,
  reader: TranscriptionReader,
  speaker: Speaker,
): Promise<void> {
  const segmentId = reader.info.attributes?.[ATTR_SEGMENT_ID] || reader.info.id;
  const handle = transcript.openStream(segmentId, speaker, streamMode(speaker));
  try {
    for await (const chunk of reader) handle.push(chunk);
  } finally {
    handle.end(reader.info.attributes?.[ATTR_TRANSCRIPTION_FINAL] === 'true');
  }
}

export function transcribedTrackId(reader: TranscriptionReader): string | undefined {
  return reader.info.attributes?.[ATTR_TRANSCRIBED_TRACK_ID];
}
