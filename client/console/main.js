// The console's entry point: sign-in (a token from the URL fragment, or typed in), then the
// inbox, the chat and the connection panel, all on one RealtimeClient.

import { RealtimeClient, jwtClaims, webStorageSeqStore } from "../src/index.js";
import { ChatPanel } from "./chat.js";
import { Inbox } from "./inbox.js";
import { TopicPanel } from "./topics.js";
import { PushSwitch } from "./push.js";
import { byId } from "./dom.js";

const TOKEN_KEY = "console.token";
const alertBox = byId("alert", HTMLParagraphElement);

/** @param {string} message */
function report(message) {
  alertBox.textContent = message;
  alertBox.hidden = false;
}

/**
 * The token: from `#token=...` (kept for this tab, then removed from the address bar so it is
 * not bookmarked or shared), else from this tab's storage.
 */
function takeToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const fromUrl = fragment.get("token");
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function showSignIn() {
  byId("sign-in", HTMLElement).hidden = false;
  byId("sign-in-form", HTMLFormElement).addEventListener("submit", (event) => {
    event.preventDefault();
    const token = byId("token-input", HTMLTextAreaElement).value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    location.reload();
  });
}

/** @param {RealtimeClient} client */
function connectionPanel(client) {
  const state = byId("state", HTMLSpanElement);
  const detail = byId("state-detail", HTMLSpanElement);
  const lastSeq = byId("last-seq", HTMLElement);
  const reconnects = byId("reconnects", HTMLElement);
  const lastClose = byId("last-close", HTMLElement);
  byId("ws-session", HTMLElement).textContent = client.sessionId;
  const refresh = () => {
    const s = client.state;
    state.textContent = s.status;
    state.dataset.status = s.status;
    detail.textContent =
      s.status === "reconnecting" ? `(attempt ${s.attempt}, next in ${(s.retryInMs / 1000).toFixed(1)} s)`
      : s.status === "closed" ? `(${s.why})`
      : "";
    lastSeq.textContent = client.lastSeq === null ? "–" : String(client.lastSeq);
    reconnects.textContent = String(client.stats.reconnects);
    const close = client.stats.lastClose;
    lastClose.textContent = close ? `${close.code} ${close.reason || "(no reason)"} at ${new Date(close.at).toLocaleTimeString()}` : "–";
  };
  client.on("state", refresh);
  client.on("notification", refresh);
  refresh();
}

function main() {
  const token = takeToken();
  if (!token) {
    showSignIn();
    return;
  }
  const userId = jwtClaims(token)?.sub;
  if (!userId) {
    sessionStorage.removeItem(TOKEN_KEY);
    report("That token is not a JWT. Sign in with another one.");
    showSignIn();
    return;
  }
  byId("who", HTMLParagraphElement).textContent = `signed in as ${userId}`;
  const signOut = byId("sign-out", HTMLButtonElement);
  signOut.hidden = false;
  signOut.addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  byId("app", HTMLElement).hidden = false;

  // One WebSocket session per user and browser; lastSeq per user, so a reload resumes exactly.
  const sessionKey = `console.ws-session:${userId}`;
  const sessionId = localStorage.getItem(sessionKey) ?? crypto.randomUUID();
  localStorage.setItem(sessionKey, sessionId);
  const client = new RealtimeClient({
    getToken: () => token,
    sessionId,
    seqStore: webStorageSeqStore(`console.last-seq:${userId}`),
  });
  client.on("error", (error) => {
    if (error.kind === "auth") report(`Authentication failed: ${error.message}. Sign in again with a new token.`);
    else if (error.kind !== "server") report(error.message);
  });
  client.on("state", (state) => {
    if (state.status === "open") alertBox.hidden = true;
    if (state.status === "closed" && state.auth) {
      report(`Your token was refused (${state.reason}); the console stopped reconnecting. Sign in with a new token.`);
      showSignIn();
    }
  });
  connectionPanel(client);
  const inbox = new Inbox(client, report);
  const chat = new ChatPanel(client, report);
  new TopicPanel(client, report);
  // The inbox's newest seq becomes the resume point before the socket opens.
  void inbox.reload({ resumePoint: true }).then(() => client.connect());
  void chat.start();
  void new PushSwitch(client.rest, report).start();
  Object.assign(globalThis, { consoleClient: client });
}

main();
