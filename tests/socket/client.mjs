// A Socket.IO client for the Order Service's tests, on the reference
// implementation (socket.io-client). It connects with a user token and
// prints one JSON object per line on stdout:
//   {"type":"connect","id":...}                  handshake accepted
//   {"type":"connect_error","message":...}       handshake refused (then it exits)
//   {"type":"raw","event":...,"args":[...]}      every event, as received
//   {"type":"notification","order":...,"notification":...}
//                                                an `order notification` that is
//                                                not a repeat (see dedup.mjs)
//   {"type":"duplicate","id":...,"isRead":...}   a repeat that was dropped
//   {"type":"disconnect","reason":...}
//
// Usage: node client.mjs <service-url> [<user-jwt> | -]
// Without a token (or with "-") it connects with no `auth` at all.
// It exits when its stdin closes, so it never outlives the test that runs it.

import { io } from "socket.io-client";
import { createNotificationDeduper } from "./dedup.mjs";

const [url, token] = process.argv.slice(2);
if (!url) {
  process.stderr.write("usage: node client.mjs <service-url> [<user-jwt> | -]\n");
  process.exit(64);
}

const print = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
const options = { reconnectionDelayMax: 1000 };
if (token && token !== "-") {
  options.auth = { token };
}
const socket = io(url, options);
const isNew = createNotificationDeduper();

socket.on("connect", () => print({ type: "connect", id: socket.id }));
socket.on("connect_error", (error) => {
  print({ type: "connect_error", message: error.message });
  // `active` is false when the server refused the handshake (a middleware
  // error), true when the connection merely failed and will be retried.
  if (!socket.active) process.exit(0);
});
socket.on("disconnect", (reason) => print({ type: "disconnect", reason }));
socket.onAny((event, ...args) => print({ type: "raw", event, args }));
socket.on("order notification", (order, notification) => {
  if (isNew(notification)) {
    print({ type: "notification", order, notification });
  } else {
    print({ type: "duplicate", id: notification?._id, isRead: notification?.isRead });
  }
});

process.stdin.on("end", () => {
  socket.close();
  process.exit(0);
});
process.stdin.resume();
