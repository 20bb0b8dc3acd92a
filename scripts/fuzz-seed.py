#!/usr/bin/env python3
"""Seeds a running Order Service for scripts/fuzz.sh and writes the
schemathesis configuration that points the fuzzer at the seeded data.

Without it nearly every generated id names nothing and the routes answer 404
before their real logic runs. With it, about half of the generated path ids
and notification ids are ones that exist: orders in every state, on both
sides (the fuzz user as buyer and as seller), payable transactions, unread
notifications. Standard library only.

Environment: FUZZ_BASE (the service), FUZZ_SIM (the simulator),
FUZZ_JWT_SECRET, FUZZ_GATEWAY_SECRET, FUZZ_USER (the fuzzing user),
FUZZ_CONFIG (the TOML file to write).
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.error
import urllib.request

BASE = os.environ["FUZZ_BASE"]
SIM = os.environ["FUZZ_SIM"]
USER = os.environ["FUZZ_USER"]
PEER = USER + "-peer"
RUN = os.environ.get("FUZZ_RUN_ID", "run")


def jwt(secret, claims):
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    msg = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), msg.encode(), hashlib.sha256).digest()
    return msg + "." + b64(sig)


NOW = int(time.time())
GATEWAY = jwt(os.environ["FUZZ_GATEWAY_SECRET"], {"id": "order", "iat": NOW})


def user_token(name):
    claims = {"id": 1, "username": name, "email": name + "@example.com", "iat": NOW}
    return jwt(os.environ["FUZZ_JWT_SECRET"], claims)


def call(method, url, user=None, body=None):
    headers = {"gatewaytoken": GATEWAY}
    if user:
        headers["Authorization"] = "Bearer " + user_token(user)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def expect(status, reply, what):
    if status not in (200, 201):
        sys.exit(f"fuzz-seed: {what} answered {status}: {reply}")
    return reply


def create(order_id, buyer, seller):
    body = {
        "offer": {
            "gigTitle": "Fuzzed gig", "price": 1500, "description": "Seeded for fuzzing",
            "deliveryInDays": 5, "oldDeliveryDate": "2030-01-01T00:00:00Z",
            "accepted": True, "cancelled": False,
        },
        "gigId": "gig-fuzz", "sellerId": "seller-" + seller, "sellerUsername": seller,
        "sellerEmail": seller + "@example.com", "sellerImage": "https://example.com/s.png",
        "gigCoverImage": "https://example.com/c.png", "gigMainTitle": "Main",
        "gigBasicTitle": "Basic", "gigBasicDescription": "Basic description",
        "buyerId": "buyer-" + buyer, "buyerUsername": buyer,
        "buyerEmail": buyer + "@example.com", "buyerImage": "https://example.com/b.png",
        "orderId": order_id, "invoiceId": "inv-" + order_id, "quantity": 1, "price": 1500,
    }
    status, reply = call("POST", BASE + "/api/v1/order", buyer, body)
    return expect(status, reply, "create " + order_id)["order"]


def transaction(order):
    amount = order["price"] + order["serviceFee"]
    body = {"tx_ref": order["flutterwave"]["txRef"], "amount": amount,
            "currency": "NGN", "status": "successful"}
    request = urllib.request.Request(
        SIM + "/__sim/transactions", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["id"]


def main():
    orders, tx_refs, tx_ids = [], [], []
    # (buyer, seller, how far it gets): the fuzz user on both sides, in
    # every state the fuzzer can then move on.
    plan = [(USER, PEER, "created"), (USER, PEER, "paid"), (USER, PEER, "delivered"),
            (PEER, USER, "created"), (PEER, USER, "paid"), (PEER, USER, "delivered")]
    for n, (buyer, seller, stage) in enumerate(plan):
        order = create(f"fuzz-{RUN}-{n}", buyer, seller)
        orders.append(order["orderId"])
        tx_refs.append(order["flutterwave"]["txRef"])
        paid_with = transaction(order)
        tx_ids.append(str(paid_with))
        if stage == "created":
            continue
        status, reply = call(
            "PUT", f"{BASE}/api/v1/order/verify/{paid_with}/{order['flutterwave']['txRef']}", buyer)
        expect(status, reply, "verify " + order["orderId"])
        if stage == "delivered":
            status, reply = call("PUT", f"{BASE}/api/v1/order/deliver-order/{order['orderId']}",
                                 seller, {"message": "Seeded delivery"})
            expect(status, reply, "deliver " + order["orderId"])
    status, reply = call("GET", f"{BASE}/api/v1/order/notification/{USER}", USER)
    notifications = [n["_id"] for n in expect(status, reply, "notifications")["notifications"]]

    strings = lambda values: "[" + ", ".join(json.dumps(v) for v in values) + "]"
    binding = lambda name, p=0.6: f'{{ dictionary = "{name}", probability = {p} }}'
    config = f"""# Written by scripts/fuzz-seed.py: seeded ids the fuzzer draws from.
[dictionaries.orders]
values = {strings(orders)}
[dictionaries.users]
values = {strings([USER])}
[dictionaries.sellers]
values = {strings(["seller-" + USER])}
[dictionaries.buyers]
values = {strings(["buyer-" + USER])}
[dictionaries.tx_refs]
values = {strings(tx_refs)}
[dictionaries.tx_ids]
values = {strings(tx_ids)}
[dictionaries.notifications]
values = {strings(notifications or ["none"])}

[parameters]
"path.orderId" = {binding("orders")}
"path.userTo" = {binding("users")}
"path.sellerId" = {binding("sellers")}
"path.buyerId" = {binding("buyers")}
"path.txRef" = {binding("tx_refs")}
"path.transactionId" = {binding("tx_ids")}
"body.notificationId" = {binding("notifications")}
"body.buyerUsername" = {binding("users", 0.5)}
"""
    with open(os.environ["FUZZ_CONFIG"], "w") as out:
        out.write(config)
    print(f"fuzz-seed: {len(orders)} orders, {len(notifications)} notifications", file=sys.stderr)


if __name__ == "__main__":
    main()
