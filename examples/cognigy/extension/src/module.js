// A Cognigy Extension with one node, "cognihook: signed request": it POSTs a JSON payload to
// a cognihook route that uses `auth = { scheme = "hmac-sha256-timestamped", … }` and stores
// the answer in the Context. Package it with @cognigy/extension-tools (see ../README.md).
"use strict";

const { createExtension, createNodeDescriptor } = require("@cognigy/extension-tools");
const { signedPost } = require("./signed-request");

const secretConnection = {
  type: "cognihook-secret",
  label: "cognihook signing secret",
  fields: [{ fieldName: "secret" }],
};

const signedRequest = createNodeDescriptor({
  type: "cognihookSignedRequest",
  defaultLabel: "cognihook: signed request",
  fields: [
    {
      key: "connection",
      label: "Signing secret",
      type: "connection",
      params: { connectionType: "cognihook-secret", required: true },
    },
    { key: "url", label: "Gateway route URL", type: "cognigyText", params: { required: true } },
    {
      key: "payload",
      label: "Payload",
      type: "json",
      defaultValue:
        '{"userId":"{{input.userId}}","sessionId":"{{input.sessionId}}","URLToken":"{{input.URLToken}}","text":"{{input.text}}","intent":"{{input.intent}}","intentScore":"{{input.intentScore}}"}',
    },
    { key: "contextKey", label: "Context key for the answer", type: "cognigyText", defaultValue: "cognihook" },
  ],
  function: async ({ cognigy, config }) => {
    const { context } = cognigy;
    try {
      context[config.contextKey] = await signedPost({
        url: config.url,
        secret: config.connection.secret,
        payload: config.payload,
      });
    } catch (err) {
      context[config.contextKey] = { status: 0, error: String(err) };
    }
  },
});

// Cognigy loads the extension object from the module's default export, as the CommonJS output
// of `export default createExtension(…)` in its own extensions provides it.
Object.defineProperty(exports, "__esModule", { value: true });
exports.default = createExtension({
  nodes: [signedRequest],
  connections: [secretConnection],
  options: { label: "cognihook" },
});
