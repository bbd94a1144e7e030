// The page's own token endpoint: POST {room, name, session_type, resume} → {url, token, room,
// identity, resume}. The server picks the identity; `resume` (the ticket of the last answer)
// gives a reconnecting page its own identity back.

import type { SessionType } from './protocol';

export const DEFAULT_TOKEN_ENDPOINT = 'api/token';
/**
 * How long a token request may take. fetch() has no timeout of its own: when packets are
 * lost it waits for minutes, and a reconnection attempt must fail in bounded time for the
 * backoff to reach "Failed".
 */
export const TOKEN_TIMEOUT_MS = 10_000;

export interface TokenRequest {
  room: string;
  /** A display name; the identity is always the server's choice. */
  name?: string;
  session_type: SessionType;
  /** The ticket of the last answer: the same identity again (a reconnection). */
  resume?: string | null;
}

export interface TokenResponse {
  url: string;
  token: string;
  room: string;
  identity: string;
  resume: string | null;
}

export type FetchLike = (input: string, init: RequestInit) => Promise<Response>;

export class TokenError extends Error {
  constructor(
    message: string,
    readonly status: number | null,
  ) {
    super(message);
    this.name = 'TokenError';
  }
}

async function readJson(response: Response): Promise<Record<string, unknown> | null> {
  try {
    const body: unknown = await response.json();
    return typeof body === 'object' && body !== null ? (body as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/**
 * Ask the endpoint for a fresh token. Throws TokenError with the server's `error` message, or
 * once `timeoutMs` (default TOKEN_TIMEOUT_MS) has passed without a whole answer.
 */
export async function fetchToken(
  request: TokenRequest,
  options: { endpoint?: string; fetch?: FetchLike; signal?: AbortSignal; timeoutMs?: number } = {},
): Promise<TokenResponse> {
  const doFetch: FetchLike = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  const timeoutMs = options.timeoutMs ?? TOKEN_TIMEOUT_MS;
  const timeout = AbortSignal.timeout(timeoutMs);
  const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
  const timedOut = () => new TokenError(`token request timed out after ${timeoutMs / 1000} s`, null);
  let response: Response;
  try {
    response = await doFetch(options.endpoint ?? DEFAULT_TOKEN_ENDPOINT, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(request),
      signal,
    });
  } catch (err) {
    if (timeout.aborted) throw timedOut();
    throw new TokenError(`token request failed: ${err instanceof Error ? err.message : String(err)}`, null);
  }
  const body = await readJson(response);
  if (timeout.aborted) throw timedOut();
  if (!response.ok) {
    const message = typeof body?.error === 'string' && body.error ? body.error : `token request failed (HTTP ${response.status})`;
    throw new TokenError(message, response.status);
  }
  if (
    !body ||
    typeof body.url !== 'string' ||
    !body.url ||
    typeof body.token !== 'string' ||
    !body.token ||
    typeof body.identity !== 'string' ||
    !body.identity
  ) {
    throw new TokenError('token response is missing url, token or identity', response.status);
  }
  return {
    url: body.url,
    token: body.token,
    room: typeof body.room === 'string' ? body.room : request.room,
    identity: body.identity,
    resume: typeof body.resume === 'string' && body.resume ? body.resume : null,
  };
}
