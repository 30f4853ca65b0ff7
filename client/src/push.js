// Web Push for the page: `enablePush()` registers the service worker, subscribes the browser
// with the gateway's VAPID key and registers the subscription with the API; `disablePush()`
// undoes it; `pushStatus()` says where things stand. docs/push.md has the server side.

/** @typedef {import("./rest.js").RestClient} RestClient */
/** @typedef {import("./wire.js").PushSubscriptionItem} PushSubscriptionItem */
/** @typedef {import("./wire.js").SubscriptionBody} SubscriptionBody */

/** Why push cannot be enabled: `unsupported`, `denied` (the user refused), or the API's code. */
export class PushError extends Error {
  /** @param {string} code @param {string} message */
  constructor(code, message) {
    super(message);
    this.name = "PushError";
    this.code = code;
  }
}

/**
 * @typedef {object} PushOptions
 * @property {RestClient} rest  the API client (its token identifies the user)
 * @property {string} serviceWorkerUrl  the worker script, e.g. "/console/app/sw.js"
 * @property {string} [scope]  the pages the worker controls, e.g. "/console"
 */

/** Whether this browser can do Web Push at all (service workers, PushManager, notifications). */
export function pushSupported() {
  return (
    typeof navigator !== "undefined" &&
    "serviceWorker" in navigator &&
    typeof PushManager !== "undefined" &&
    typeof Notification !== "undefined"
  );
}

/**
 * Base64url (the server's key format) to bytes, as `applicationServerKey` takes it.
 * @param {string} text
 * @returns {Uint8Array<ArrayBuffer>}
 */
export function base64UrlToBytes(text) {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4);
  const raw = atob(base64);
  const bytes = new Uint8Array(new ArrayBuffer(raw.length));
  for (let i = 0; i < raw.length; i += 1) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

/**
 * @param {ArrayBuffer | null} key
 * @param {Uint8Array} expected
 */
function sameKey(key, expected) {
  if (key === null) return false;
  const bytes = new Uint8Array(key);
  return bytes.length === expected.length && bytes.every((b, i) => b === expected[i]);
}

/**
 * Turn push on for this browser: asks the user's permission (call it from a click), registers
 * the service worker, subscribes with the server's VAPID key (replacing a subscription made
 * with another key) and registers it with the API. Idempotent: calling it again returns the same
 * stored subscription. Raises `PushError` (`unsupported`, `denied`) or the API's `ApiError`.
 * @param {PushOptions} options
 * @returns {Promise<PushSubscriptionItem>}
 */
export async function enablePush(options) {
  if (!pushSupported()) throw new PushError("unsupported", "this browser cannot receive Web Push");
  const permission = await Notification.requestPermission();
  if (permission !== "granted") {
    throw new PushError("denied", "notifications are not allowed for this site");
  }
  const scope = options.scope ?? new URL(".", new URL(options.serviceWorkerUrl, location.href)).pathname;
  await navigator.serviceWorker.register(options.serviceWorkerUrl, { scope });
  const registration = await navigator.serviceWorker.ready;
  const key = base64UrlToBytes(await options.rest.vapidPublicKey());
  let subscription = await registration.pushManager.getSubscription();
  if (subscription && !sameKey(subscription.options.applicationServerKey, key)) {
    await subscription.unsubscribe(); // made with another server key: it would be refused
    subscription = null;
  }
  subscription ??= await registration.pushManager.subscribe({
    userVisibleOnly: true,
    applicationServerKey: key,
  });
  const json = subscription.toJSON();
  const keys = json.keys ?? {};
  /** @type {SubscriptionBody} */
  const body = {
    endpoint: subscription.endpoint,
    expirationTime: json.expirationTime ?? null,
    keys: { p256dh: keys.p256dh ?? "", auth: keys.auth ?? "" },
  };
  return options.rest.registerPushSubscription(body);
}

/**
 * The browser's current subscription for `scope` and whether the API knows it.
 * @param {{rest: RestClient, scope: string}} options
 * @returns {Promise<{enabled: boolean, subscription: PushSubscriptionItem | null}>}
 */
export async function pushStatus(options) {
  if (!pushSupported() || Notification.permission !== "granted") {
    return { enabled: false, subscription: null };
  }
  const registration = await navigator.serviceWorker.getRegistration(options.scope);
  const local = await registration?.pushManager.getSubscription();
  if (!local) return { enabled: false, subscription: null };
  const stored = (await options.rest.listPushSubscriptions()).find((s) => s.endpoint === local.endpoint);
  return { enabled: stored !== undefined, subscription: stored ?? null };
}

/**
 * Turn push off for this browser: deletes the subscription from the API and unsubscribes.
 * Idempotent. The service worker stays (it only acts on pushes).
 * @param {{rest: RestClient, scope: string}} options
 */
export async function disablePush(options) {
  if (!pushSupported()) return;
  const registration = await navigator.serviceWorker.getRegistration(options.scope);
  const local = await registration?.pushManager.getSubscription();
  if (!local) return;
  for (const stored of await options.rest.listPushSubscriptions()) {
    if (stored.endpoint === local.endpoint) await options.rest.deletePushSubscription(stored.id);
  }
  await local.unsubscribe();
}
