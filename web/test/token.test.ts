import { describe, expect, it } from 'vitest';
import { fetchToken, TokenError, type FetchLike } from '../src/token';

const request = { room: 'clara-demo', name: 'Ada', session_type: 'voice-ptt' as const, resume: null };

function respond(status: number, body: unknown): { fetch: FetchLike; seen: { url: string; init: RequestInit }[] } {
  const seen: { url: string; init: RequestInit }[] = [];
  const fetch: FetchLike = async (url, init) => {
    seen.push({ url, init });
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    return new Response(text, { status, headers: { 'Content-Type': 'application/json' } });
  };
  return { fetch, seen };
}

describe('fetchToken', () => {
  it('posts the room, name and session type as JSON and takes the identity it is given', async () => {
    const ok = { url: 'ws://127.0.0.1:7880', token: 'jwt', room: 'clara-demo', identity: 'web-1f2e', resume: 'tkt' };
    const { fetch, seen } = respond(200, ok);
    await expect(fetchToken(request, { fetch })).resolves.toEqual(ok);
    expect(seen).toHaveLength(1);
    expect(seen[0]?.url).toBe('api/token');
    expect(seen[0]?.init.method).toBe('POST');
    expect(JSON.parse(String(seen[0]?.init.body))).toEqual(request);
  });

  it('uses another endpoint when told', async () => {
    const { fetch, seen } = respond(200, { url: 'ws://x', token: 't', identity: 'web-1f2e' });
    const token = await fetchToken(request, { fetch, endpoint: '/clara/api/token' });
    expect(seen[0]?.url).toBe('/clara/api/token');
    expect(token).toMatchObject({ room: 'clara-demo', identity: 'web-1f2e', resume: null });
  });

  it("shows the server's error message", async () => {
    const { fetch } = respond(400, { error: 'room name is too long' });
    const failure = fetchToken(request, { fetch });
    await expect(failure).rejects.toBeInstanceOf(TokenError);
    await expect(failure).rejects.toMatchObject({ message: 'room name is too long', status: 400 });
  });

  it('falls back to the HTTP status when the error body is not JSON', async () => {
    const { fetch } = respond(502, '<html>Bad gateway</html>');
    await expect(fetchToken(request, { fetch })).rejects.toThrow('token request failed (HTTP 502)');
  });

  it('refuses a reply without url, token or identity', async () => {
    const missing = 'missing url, token or identity';
    await expect(fetchToken(request, respond(200, { url: 'ws://x' }))).rejects.toThrow(missing);
    await expect(fetchToken(request, respond(200, { url: 'ws://x', token: 't' }))).rejects.toThrow(missing);
    await expect(fetchToken(request, respond(200, 'not json'))).rejects.toThrow(missing);
  });

  it('gives up on a request that gets no answer', async () => {
    let aborted = false;
    const fetch: FetchLike = (_url, init) =>
      new Promise((_resolve, reject) => {
        init.signal?.addEventListener('abort', () => {
          aborted = true;
          reject(new DOMException('The operation was aborted.', 'AbortError'));
        });
      });
    await expect(fetchToken(request, { fetch, timeoutMs: 20 })).rejects.toMatchObject({
      message: 'token request timed out after 0.02 s',
      status: null,
    });
    expect(aborted).toBe(true);
  });

  it('still stops when the caller aborts', async () => {
    const caller = new AbortController();
    const fetch: FetchLike = (_url, init) =>
      new Promise((_resolve, reject) => {
        init.signal?.addEventListener('abort', () => reject(new DOMException('stopped', 'AbortError')));
      });
    const failure = fetchToken(request, { fetch, signal: caller.signal });
    caller.abort();
    await expect(failure).rejects.toMatchObject({ message: 'token request failed: stopped' });
  });

  it('reports a network failure', async () => {
    const fetch: FetchLike = async () => {
      throw new TypeError('Failed to fetch');
    };
    await expect(fetchToken(request, { fetch })).rejects.toMatchObject({
      message: 'token request failed: Failed to fetch',
      status: null,
    });
  });
});
