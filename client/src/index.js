// The gateway's client library: `RealtimeClient` (WebSocket with resume, chat, REST), and its
// parts for those who assemble their own. ES module, no runtime dependencies.

export { RealtimeClient } from "./realtime.js";
export { Subscription } from "./topics.js";
export { RestClient, ApiError } from "./rest.js";
export { ChatAnswer, askOverSse, resumeOverSse, sseEvents } from "./chat.js";
export { SseParser } from "./sse.js";
export { Backoff } from "./backoff.js";
export { closeDecision } from "./close-policy.js";
export { SeqTracker, webStorageSeqStore } from "./seq.js";
export { Emitter } from "./emitter.js";
export { jwtClaims, refreshTime } from "./jwt.js";
export { systemClock } from "./clock.js";
export { enablePush, disablePush, pushStatus, pushSupported, base64UrlToBytes, PushError } from "./push.js";
