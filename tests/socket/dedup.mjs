// Client-side de-duplication of `order notification` events.
//
// The Order Service delivers each event at least once: after a failure it
// cannot tell apart from a lost emit, it emits again. A notification changes
// once (unread -> read, through PUT /notification/mark-as-read, which emits
// it again with `isRead: true`), so (`_id`, `isRead`) identifies one event;
// a second event with the same pair is a repeat to drop.

/**
 * Returns `isNew(notification)`: true the first time a (`_id`, `isRead`)
 * pair is seen, false for repeats. Remembers the last `capacity` pairs:
 * repeats arrive within seconds, so a small window is enough.
 */
export function createNotificationDeduper({ capacity = 1000 } = {}) {
  const seen = new Set();
  return function isNew(notification) {
    const key = `${notification?._id}:${notification?.isRead ? "read" : "unread"}`;
    if (seen.has(key)) return false;
    seen.add(key);
    if (seen.size > capacity) {
      // A Set iterates in insertion order: drop the oldest.
      seen.delete(seen.values().next().value);
    }
    return true;
  };
}
