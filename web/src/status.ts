// The connection status shown to the person, with its exact texts.

export type ConnectionStatus = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'failed';

export const STATUS_TEXT: Record<ConnectionStatus, string> = {
  idle: 'Not connected',
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
  failed: 'Failed',
};

export const FAILED_MESSAGE = 'Connection lost. Please check your internet and try starting a new session.';

export interface StatusView {
  text: string;
  detail: string;
  canStart: boolean;
  canEnd: boolean;
}

export function statusView(status: ConnectionStatus): StatusView {
  return {
    text: STATUS_TEXT[status],
    detail: status === 'failed' ? FAILED_MESSAGE : '',
    canStart: status === 'idle' || status === 'failed',
    canEnd: status === 'connecting' || status === 'connected' || status === 'reconnecting',
  };
}
