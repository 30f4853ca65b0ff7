// The console's service worker: shows a Web Push as a system notification, drops a push whose
// notification id it already showed (delivery is at-least-once: docs/push.md), and opens or
// focuses the console when the notification is clicked. A classic script with no imports.
//
// The push's payload is the server's JSON {"id", "title", "content", "type", "action"}.

/**
 * The parts of the service worker global scope used here (the project type-checks against the
 * DOM library, which does not describe workers).
 * @typedef {{
 *   registration: {showNotification(title: string, options: object): Promise<void>, scope: string},
 *   clients: {
 *     matchAll(options: object): Promise<WindowClientLike[]>,
 *     openWindow(url: string): Promise<unknown>,
 *     claim(): Promise<void>,
 *   },
 *   skipWaiting(): Promise<void>,
 *   addEventListener(type: string, listener: (event: any) => void): void,
 * }} WorkerScope
 * @typedef {{url: string, focus(): Promise<unknown>, postMessage(message: unknown): void}} WindowClientLike
 * @typedef {{id: string, title: string, content?: string, type?: string, action?: unknown}} PushPayload
 */

const worker = /** @type {WorkerScope} */ (/** @type {unknown} */ (self));
const SEEN_CACHE = "console-push-seen-v1";
const SEEN_KEEP = 500; // ids remembered: far more than could arrive twice
const CONSOLE_PATH = "/console";

/** Pushes are handled one after the other, so a duplicate arriving at once is still seen. */
let queue = Promise.resolve();

/**
 * @param {{json(): unknown} | null} data
 * @returns {PushPayload | null}
 */
function parse(data) {
  try {
    const value = /** @type {Partial<PushPayload> | null} */ (data ? data.json() : null);
    if (value && typeof value.id === "string" && typeof value.title === "string") {
      return /** @type {PushPayload} */ (value);
    }
  } catch {
    // not JSON: nothing we can show
  }
  return null;
}

/**
 * True if `id` was shown before; remembers it otherwise (in Cache Storage, which outlives the
 * worker's restarts, unlike a variable).
 * @param {string} id
 */
async function seenBefore(id) {
  const cache = await caches.open(SEEN_CACHE);
  const key = new URL(`/push-seen/${encodeURIComponent(id)}`, worker.registration.scope).href;
  if (await cache.match(key)) return true;
  await cache.put(key, new Response(""));
  const keys = await cache.keys();
  for (const old of keys.slice(0, Math.max(0, keys.length - SEEN_KEEP))) await cache.delete(old);
  return false;
}

/** @param {PushPayload} payload */
async function show(payload) {
  if (await seenBefore(payload.id)) return;
  await worker.registration.showNotification(payload.title, {
    body: payload.content ?? "",
    tag: payload.id,
    data: { id: payload.id, type: payload.type ?? null, action: payload.action ?? null },
  });
}

/** @param {string} id */
async function openConsole(id) {
  const windows = await worker.clients.matchAll({ type: "window", includeUncontrolled: true });
  const open = windows.find((w) => new URL(w.url).pathname === CONSOLE_PATH);
  if (open) {
    open.postMessage({ type: "push-notification-clicked", id });
    try {
      await open.focus();
    } catch {
      // the browser may refuse focus without a user gesture; the message still arrived
    }
    return;
  }
  await worker.clients.openWindow(CONSOLE_PATH);
}

/**
 * Keep the worker alive until `work` settles. A synthetic (untrusted) event cannot extend the
 * worker's lifetime (`waitUntil` throws): the work runs all the same.
 * @param {{waitUntil(promise: Promise<unknown>): void}} event
 * @param {Promise<unknown>} work
 */
function extend(event, work) {
  try {
    event.waitUntil(work);
  } catch {
    // dispatched by a test or a debugger, not by the browser
  }
}

worker.addEventListener("install", (event) => extend(event, worker.skipWaiting()));
worker.addEventListener("activate", (event) => extend(event, worker.clients.claim()));

worker.addEventListener("push", (event) => {
  const payload = parse(event.data);
  if (payload === null) return;
  queue = queue.then(() => show(payload)).catch(() => undefined);
  extend(event, queue);
});

worker.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const id = event.notification.data?.id ?? event.notification.tag;
  extend(event, openConsole(String(id)));
});
