// The names the client uses for frames and REST bodies: each is a type generated from the API
// contract (docs/api/*.json → src/types.d.ts by scripts/gen-types.js), so nothing is written
// twice. Type-only module: it exports no values.

/** @typedef {import("./types.js").ServerFrame} ServerFrame  a frame the gateway defines */
/** @typedef {import("./types.js").ClientFrame} ClientFrame */
/**
 * Any frame: internal services may publish frames outside the contract (docs/protocol.md,
 * `POST /internal/v1/publish`), so unknown types reach the `frame` event as they are.
 * @typedef {{type: string, [field: string]: unknown}} AnyFrame
 */
/** @typedef {import("./types.js").Notification} NotificationFrame */
/** @typedef {import("./types.js").NotificationData} NotificationData */
/** @typedef {import("./types.js").NotificationsChangedData} NotificationsChangedData */
/** @typedef {import("./types.js").Message} MessageFrame */
/** @typedef {import("./types.js").MessageData} MessageData */
/** @typedef {import("./types.js").ErrorFrame} ErrorFrame */
/** @typedef {import("./types.js").ErrorBody} ErrorBody */
/** @typedef {import("./types.js").ChatEvent} ChatEvent */
/** @typedef {import("./types.js").ChatEventFrame} ChatEventFrame */
/** @typedef {import("./types.js").ChatBody} ChatBody */
/** @typedef {import("./types.js").ConnectionEstablished} ConnectionEstablished */
/** @typedef {import("./types.js").NotificationItem} NotificationItem */
/** @typedef {import("./types.js").NotificationPage} NotificationPage */
/** @typedef {import("./types.js").UnreadCount} UnreadCount */
/** @typedef {import("./types.js").MarkedRead} MarkedRead */
/** @typedef {import("./types.js").Session} ChatSession */
/** @typedef {import("./types.js").SessionPage} SessionPage */
/** @typedef {import("./types.js").SessionMessage} HistoryMessage */
/** @typedef {import("./types.js").SessionMessages} History */
/** @typedef {import("./types.js").CancelAccepted} CancelAccepted */
/** @typedef {import("./types.js").ErrorResponse} ErrorResponse */
/** @typedef {import("./types.js").VapidPublicKey} VapidPublicKey */
/** @typedef {import("./types.js").SubscriptionBody} SubscriptionBody */
/** @typedef {import("./types.js").PushSubscriptionItem} PushSubscriptionItem */
/** @typedef {import("./types.js").PushSubscriptionList} PushSubscriptionList */

export {};
