// Typed helpers for the public REST API (notifications, chat sessions and history), every error
// raised as one `ApiError` carrying the server's stable `code`.

/** @typedef {import("./wire.js").NotificationItem} NotificationItem */
/** @typedef {import("./wire.js").NotificationPage} NotificationPage */
/** @typedef {import("./wire.js").ChatSession} ChatSession */
/** @typedef {import("./wire.js").SessionPage} SessionPage */
/** @typedef {import("./wire.js").History} History */
/** @typedef {import("./wire.js").VapidPublicKey} VapidPublicKey */
/** @typedef {import("./wire.js").SubscriptionBody} SubscriptionBody */
/** @typedef {import("./wire.js").PushSubscriptionItem} PushSubscriptionItem */
/** @typedef {import("./wire.js").PushSubscriptionList} PushSubscriptionList */

/** Any failure of a request: HTTP errors with the server's code, and network failures. */
export class ApiError extends Error {
  /**
   * @param {number} status  HTTP status; 0 when the server was not reached
   * @param {string} code  the server's stable code (`NOT_FOUND`, `UNAUTHORIZED`...) or
   *   `NETWORK_ERROR` / `HTTP_<status>` when it sent none
   * @param {string} message
   * @param {unknown} [details]
   */
  constructor(status, code, message, details = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/**
 * An `ApiError` from a response that is not ok, reading the `{"error": {...}}` body if any.
 * @param {Response} response
 * @returns {Promise<ApiError>}
 */
export async function apiError(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's error page): the status says enough
  }
  const error = body && typeof body === "object" ? body.error : null;
  if (error && typeof error.code === "string") {
    return new ApiError(response.status, error.code, String(error.message ?? ""), error.details ?? null);
  }
  return new ApiError(response.status, `HTTP_${response.status}`, response.statusText || "request failed");
}

/**
 * @typedef {object} RestOptions
 * @property {string} baseUrl  the gateway, e.g. "https://api.example.com" ("" in a page it serves)
 * @property {() => string | Promise<string>} getToken
 * @property {typeof fetch} [fetch]
 */

export class RestClient {
  /** @param {RestOptions} options */
  constructor(options) {
    this.baseUrl = options.baseUrl.replace(/\/$/, "");
    this.getToken = options.getToken;
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /**
   * One request; the parsed JSON body (undefined for 204). Raises `ApiError`.
   * @param {string} method
   * @param {string} path  starting with "/"
   * @param {{query?: Record<string, string | number | boolean | null | undefined>, body?: unknown, signal?: AbortSignal}} [options]
   * @returns {Promise<any>}
   */
  async request(method, path, options = {}) {
    const url = new URL(this.baseUrl + path, globalThis.location?.href ?? "http://localhost");
    for (const [name, value] of Object.entries(options.query ?? {})) {
      if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, String(value));
    }
    /** @type {Record<string, string>} */
    const headers = { authorization: `Bearer ${await this.getToken()}` };
    /** @type {RequestInit} */
    const init = { method, headers };
    if (options.signal) init.signal = options.signal;
    if (options.body !== undefined) {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    let response;
    try {
      response = await this.fetch(this.baseUrl ? url.href : url.pathname + url.search, init);
    } catch (error) {
      if (options.signal?.aborted) throw error;
      throw new ApiError(0, "NETWORK_ERROR", error instanceof Error ? error.message : String(error));
    }
    if (!response.ok) throw await apiError(response);
    if (response.status === 204) return undefined;
    return response.json();
  }

  /**
   * One page of the caller's notifications, newest first. Pass the previous page's
   * `next_cursor` as `cursor` for the next one (keyset paging: nothing skipped or repeated while
   * notifications arrive).
   * @param {{pageSize?: number, unreadOnly?: boolean, type?: string, cursor?: string | null}} [options]
   * @returns {Promise<NotificationPage>}
   */
  listNotifications(options = {}) {
    return this.request("GET", "/api/v1/notifications", {
      query: {
        page_size: options.pageSize,
        unread_only: options.unreadOnly,
        notification_type: options.type,
        cursor: options.cursor,
      },
    });
  }

  /**
   * Every page from the newest, as an async iterator of pages.
   * @param {{pageSize?: number, unreadOnly?: boolean, type?: string}} [options]
   * @returns {AsyncGenerator<NotificationPage>}
   */
  async *notificationPages(options = {}) {
    /** @type {string | null} */
    let cursor = null;
    do {
      const page = await this.listNotifications({ ...options, cursor });
      yield page;
      cursor = page.has_more ? page.next_cursor : null;
    } while (cursor);
  }

  /** @returns {Promise<number>} */
  async unreadCount() {
    const body = await this.request("GET", "/api/v1/notifications/unread/count");
    return body.unread_count;
  }

  /**
   * @param {string} id
   * @returns {Promise<NotificationItem>}
   */
  markRead(id) {
    return this.request("PATCH", `/api/v1/notifications/${encodeURIComponent(id)}/read`);
  }

  /** @returns {Promise<number>} how many were marked */
  async markAllRead() {
    const body = await this.request("POST", "/api/v1/notifications/read-all");
    return body.marked_read;
  }

  /**
   * @param {string} id
   * @returns {Promise<void>}
   */
  async deleteNotification(id) {
    await this.request("DELETE", `/api/v1/notifications/${encodeURIComponent(id)}`);
  }

  /**
   * @param {string} [title]
   * @returns {Promise<ChatSession>}
   */
  createSession(title) {
    return this.request("POST", "/api/v1/sessions", { body: title === undefined ? {} : { title } });
  }

  /**
   * The caller's chat sessions, most recently used first.
   * @param {{page?: number, pageSize?: number}} [options]
   * @returns {Promise<SessionPage>}
   */
  listSessions(options = {}) {
    return this.request("GET", "/api/v1/sessions", {
      query: { page: options.page, page_size: options.pageSize },
    });
  }

  /**
   * A session's messages, oldest first.
   * @param {string} sessionId
   * @param {{limit?: number}} [options]
   * @returns {Promise<History>}
   */
  history(sessionId, options = {}) {
    return this.request("GET", `/api/v1/sessions/${encodeURIComponent(sessionId)}/messages`, {
      query: { limit: options.limit },
    });
  }

  /**
   * The VAPID public key browsers subscribe with (base64url; no token needed).
   * @returns {Promise<string>}
   */
  async vapidPublicKey() {
    /** @type {VapidPublicKey} */
    const body = await this.request("GET", "/api/v1/push/vapid-public-key");
    return body.public_key;
  }

  /**
   * Register a browser's push subscription (`PushSubscription.toJSON()`); idempotent per
   * endpoint.
   * @param {SubscriptionBody} subscription
   * @returns {Promise<PushSubscriptionItem>}
   */
  registerPushSubscription(subscription) {
    return this.request("POST", "/api/v1/push/subscriptions", { body: subscription });
  }

  /** @returns {Promise<PushSubscriptionItem[]>} the caller's subscriptions, oldest first */
  async listPushSubscriptions() {
    /** @type {PushSubscriptionList} */
    const body = await this.request("GET", "/api/v1/push/subscriptions");
    return body.items;
  }

  /** @param {string} id */
  async deletePushSubscription(id) {
    await this.request("DELETE", `/api/v1/push/subscriptions/${encodeURIComponent(id)}`);
  }
}
