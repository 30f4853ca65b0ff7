// What the client does after the server (or the network) closed its WebSocket, per close code,
// as docs/protocol.md defines them. Pure: the connection applies the decision.

/**
 * @typedef {"backoff" | "prompt" | "new-token" | "stop"} CloseAction
 * - `backoff`: reconnect after a backoff delay, with `last_seq`;
 * - `prompt`: reconnect soon (jittered), with `last_seq` — the instance is restarting;
 * - `new-token`: the credentials were refused; ask the token provider once for a new one;
 * - `stop`: do not reconnect; the request itself is wrong.
 */

/**
 * @typedef {object} CloseDecision
 * @property {CloseAction} action
 * @property {boolean} auth  the close is about the credentials (surface it as an auth error)
 */

/** 1008 reasons about the token: a new token may help. */
const TOKEN_REASON = /^token\b|\btoken (missing|malformed|expired|invalid)/i;

/**
 * @param {number} code  the WebSocket close code (1006 when the connection dropped without one)
 * @param {string} reason  the close reason the server gave
 * @returns {CloseDecision}
 */
export function closeDecision(code, reason) {
  switch (code) {
    case 1008:
      // Policy violation: no retry with the same credentials. A token problem may be fixed by a
      // new token; anything else (foreign session, origin, bad last_seq, rate limit) may not.
      return TOKEN_REASON.test(reason)
        ? { action: "new-token", auth: true }
        : { action: "stop", auth: false };
    case 1012:
      return { action: "prompt", auth: false };
    case 1002: // protocol error: the client spoke wrongly; a retry would repeat it
    case 1003: // unsupported data
      return { action: "stop", auth: false };
    default:
      // 1000 (idle timeout), 1001, 1006 (network), 1009, 1011, 1013 and anything unknown: back
      // off with jitter, never a tight loop.
      return { action: "backoff", auth: false };
  }
}
