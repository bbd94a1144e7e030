import { describe, expect, it } from 'vitest';
import {
  classifySpeaker,
  consumeTranscription,
  Transcript,
  type TranscriptEntry,
  type TranscriptionReader,
} from '../src/transcript';

/** A fake TextStreamReader; `trailer` attributes are merged when the stream ends, as livekit-client does. */
function reader(
  id: string,
  chunks: string[],
  header: Record<string, string>,
  trailer: Record<string, string> = {},
  error?: Error,
): TranscriptionReader {
  const info = { id, attributes: { ...header } };
  return {
    info,
    async *[Symbol.asyncIterator]() {
      for (const chunk of chunks) yield chunk;
      if (error) throw error;
      info.attributes = { ...info.attributes, ...trailer };
    },
  };
}

const seg = (id: string, final = false) => ({ 'lk.segment_id': id, 'lk.transcription_final': String(final) });

describe('Transcript', () => {
  it('appends the chunks of an agent delta stream and marks it final from the trailer', async () => {
    const t = new Transcript();
    await consumeTranscription(t, reader('s1', ['Hello', ', I am', ' Clara.'], seg('A1'), seg('A1', true)), 'clara');
    expect(t.list).toEqual([{ speaker: 'clara', text: 'Hello, I am Clara.', final: true, segmentId: 'A1' }]);
  });

  it('replaces the text of a user segment with each full-text update', async () => {
    const t = new Transcript();
    await consumeTranscription(t, reader('s1', ['what'], seg('U1')), 'user');
    expect(t.list[0]).toMatchObject({ text: 'what', final: false });
    await consumeTranscription(t, reader('s2', ['what time'], seg('U1')), 'user');
    await consumeTranscription(t, reader('s3', ['What time is it?'], seg('U1', true)), 'user');
    expect(t.list).toEqual([{ speaker: 'user', text: 'What time is it?', final: true, segmentId: 'U1' }]);
  });

  it('keeps both speakers in order of first appearance and updates in place', async () => {
    const t = new Transcript();
    await consumeTranscription(t, reader('s1', ['Hi Clara'], seg('U1', true)), 'user');
    const agent = consumeTranscription(t, reader('s2', ['Hi', ' there'], seg('A1'), seg('A1', true)), 'clara');
    await consumeTranscription(t, reader('s3', ['and'], seg('U2')), 'user');
    await agent;
    expect(t.list.map((e: TranscriptEntry) => [e.speaker, e.segmentId, e.text, e.final])).toEqual([
      ['user', 'U1', 'Hi Clara', true],
      ['clara', 'A1', 'Hi there', true],
      ['user', 'U2', 'and', false],
    ]);
  });

  it('shows a delta segment while it streams', () => {
    const t = new Transcript();
    const h = t.openStream('A1', 'clara', 'append');
    h.push('One');
    expect(t.list[0]).toMatchObject({ text: 'One', final: false });
    h.push(' two');
    expect(t.list[0]).toMatchObject({ text: 'One two', final: false });
    h.end(true);
    h.push(' three'); // after end: ignored
    expect(t.list[0]).toMatchObject({ text: 'One two', final: true });
  });

  it('ignores a stale non-final update after the final one', () => {
    const t = new Transcript();
    const late = t.openStream('U1', 'user', 'replace');
    const final = t.openStream('U1', 'user', 'replace');
    final.push('done');
    final.end(true);
    late.push('do');
    late.end(false);
    expect(t.list).toEqual([{ speaker: 'user', text: 'done', final: true, segmentId: 'U1' }]);
  });

  it('uses the stream id when there is no segment id, and shows no empty entries', async () => {
    const t = new Transcript();
    await consumeTranscription(t, reader('stream-7', ['text reply'], {}), 'clara');
    await consumeTranscription(t, reader('stream-8', [], seg('U9', true)), 'user');
    expect(t.list).toEqual([{ speaker: 'clara', text: 'text reply', final: false, segmentId: 'stream-7' }]);
  });

  it('ends a broken stream without marking it final and reports the error', async () => {
    const t = new Transcript();
    const broken = reader('s1', ['Hel'], seg('A1'), seg('A1', true), new Error('closed abnormally'));
    await expect(consumeTranscription(t, broken, 'clara')).rejects.toThrow('closed abnormally');
    expect(t.list[0]).toMatchObject({ text: 'Hel', final: false });
  });

  it('notifies on every change and clears', () => {
    const seen: number[] = [];
    const t = new Transcript((entries) => seen.push(entries.length));
    t.add({ speaker: 'user', text: 'typed', final: true, segmentId: 'chat-1' });
    t.clear();
    expect(seen.at(-1)).toBe(0);
    expect(seen.length).toBeGreaterThanOrEqual(2);
    expect(t.list).toEqual([]);
  });
});

describe('classifySpeaker', () => {
  const base = { localIdentity: 'user-ab12', agentIdentity: 'agent-XYZ' };
  it('is the user when the local participant is the sender', () => {
    expect(classifySpeaker({ ...base, senderIdentity: 'user-ab12' })).toBe('user');
  });
  it('is Clara when the agent is the sender', () => {
    expect(classifySpeaker({ ...base, senderIdentity: 'agent-XYZ' })).toBe('clara');
  });
  it('is the user when the stream transcribes one of the local tracks', () => {
    expect(
      classifySpeaker({ ...base, senderIdentity: 'agent-XYZ', transcribedTrackId: 'TR_mic', localTrackIds: ['TR_mic'] }),
    ).toBe('user');
  });
  it('is nobody for another participant', () => {
    expect(classifySpeaker({ ...base, senderIdentity: 'someone-else' })).toBeNull();
    expect(classifySpeaker({ ...base, agentIdentity: null, senderIdentity: 'agent-XYZ' })).toBeNull();
  });
});
