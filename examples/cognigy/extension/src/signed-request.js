// cognihook: signing for hmac-sha256-timestamped, and the POST a Cognigy Extension node makes.
//
// The gateway checks `X-Cognigy-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` computed
// over "<t>." followed by the exact body bytes, so the body is serialised once and that same
// string is both signed and sent. Plain Node.js (18+, for fetch); no dependencies, so the
// repository's tests run this file as it is.
"use strict";

const crypto = require("crypto");

/** The header value for `rawBody` (a string or Buffer) signed with `secret` at `unixSeconds`. */
function cognihookSignature(secret, rawBody, unixSeconds) {
  const t = String(unixSeconds === undefined ? Math.floor(Date.now() / 1000) : unixSeconds);
  const mac = crypto.createHmac("sha256", secret);
  mac.update(t + ".");
  mac.update(rawBody);
  return "t=" + t + ",v1=" + mac.digest("hex");
}

/**
 * POSTs `payload` as JSON to the gateway, signed. Resolves to `{ status, body }` (the body
 * parsed as JSON when it is JSON). `timeoutMs` should stay under the Flow's own budget.
 */
async function signedPost({ url, secret, payload, header = "X-Cognigy-Signature", timeoutMs = 7000 }) {
  const raw = JSON.stringify(payload);
  // AbortController with setTimeout: what Cognigy's extension sandbox offers (it has no
  // AbortSignal.timeout). The Extension node does not retry; a timeout lands in the Context.
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  let res;
  let text;
  try {
    res = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", [header]: cognihookSignature(secret, raw) },
      body: raw,
      signal: controller.signal,
    });
    text = await res.text();
  } finally {
    clearTimeout(timer);
  }
  let body = text;
  try {
    body = JSON.parse(text);
  } catch (_) {
    // not JSON: keep the text
  }
  return { status: res.status, body };
}

module.exports = { cognihookSignature, signedPost };

// `node signed-request.js sign` prints the header for stdin's bytes (secret in
// COGNIHOOK_SECRET, optional COGNIHOOK_T); `node signed-request.js post URL` sends stdin's
// JSON with signedPost and prints `{status, body}`. Used by the repository's tests.
if (require.main === module) {
  const [mode, url] = process.argv.slice(2);
  const chunks = [];
  process.stdin.on("data", (c) => chunks.push(c));
  process.stdin.on("end", async () => {
    const input = Buffer.concat(chunks);
    const secret = process.env.COGNIHOOK_SECRET || "";
    if (mode === "sign") {
      const t = process.env.COGNIHOOK_T ? Number(process.env.COGNIHOOK_T) : undefined;
      process.stdout.write(cognihookSignature(secret, input, t) + "\n");
    } else if (mode === "post") {
      const r = await signedPost({ url, secret, payload: JSON.parse(input.toString("utf8")) });
      process.stdout.write(JSON.stringify(r) + "\n");
    } else {
      process.stderr.write("usage: signed-request.js sign | post URL\n");
      process.exit(2);
    }
  });
}
