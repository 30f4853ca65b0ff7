// The names the client uses for frames and REST bodies. Each is an alias of a type generated from
// the API contract (docs/api/*.json → src/types.d.ts by scripts/gen-types.js), so nothing here
// is written twice. Until the contract lands, the aliases are loose.

/** @typedef {{type: string, [field: string]: any}} ServerFrame  any frame the server sends */
/** @typedef {{id: string, title: string, content: string, notification_type: string, seq?: number, created_at: string, is_read?: boolean, action?: any, related_entity_type?: string | null, related_entity_id?: string | null, [field: string]: any}} NotificationData */
/** @typedef {{type: "notification", data: NotificationData, timestamp: string}} NotificationFrame */
/** @typedef {{type: "message", data: {id: string, reply: string, tool_calls: any[], tokens_used: number, created_at: string}}} MessageFrame */
/** @typedef {{code: string, message: string, details?: any}} ErrorBody */
/** @typedef {{type: string, event_id?: string, [field: string]: any}} ChatEvent */
/** @typedef {{id: string, user_id: string, seq: number, title: string, content: string, type: string, action?: any, related_entity_type?: string | null, related_entity_id?: string | null, is_read: boolean, read_at?: string | null, created_at: string, updated_at: string}} NotificationItem */
/** @typedef {{items: NotificationItem[], total: number, page: number, page_size: number, has_more: boolean, next_cursor: string | null}} NotificationPage */
/** @typedef {{id: string, title: string | null, created_at: string, updated_at: string}} ChatSession */
/** @typedef {{items: ChatSession[], total: number, page: number, page_size: number}} SessionPage */
/** @typedef {{id: string, role: string, content: string, tool_calls?: any, tokens_used?: number | null, status?: string | null, created_at: string}} HistoryMessage */
/** @typedef {{session_id: string, items: HistoryMessage[]}} History */

export {};
