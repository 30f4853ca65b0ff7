// The docs page: Swagger UI for the OpenAPI document, and the AsyncAPI document's WebSocket
// frames listed below it. A file rather than an inline script, so the page's CSP needs no
// 'unsafe-inline' for scripts.
"use strict";

window.ui = SwaggerUIBundle({
  url: "/api/v1/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  validatorUrl: null, // the default asks a public validator service: nothing leaves the page
});

function resolve(doc, value) {
  // Follows local `$ref`s ("#/components/...") of the AsyncAPI document.
  while (value && value.$ref) {
    value = value.$ref.slice(2).split("/").reduce((node, key) => node[key], doc);
  }
  return value;
}

function text(tag, content, className) {
  const node = document.createElement(tag);
  node.textContent = content;
  if (className) node.className = className;
  return node;
}

fetch("/api/v1/asyncapi.json")
  .then((response) => response.json())
  .then((doc) => {
    const channel = doc.channels.session;
    document.getElementById("ws-address").textContent = channel.address;
    document.getElementById("ws-description").textContent = doc.info.description;
    const list = document.getElementById("ws-frames");
    for (const operation of Object.values(doc.operations)) {
      const arrow = operation.action === "send" ? "server → client" : "client → server";
      for (const ref of operation.messages) {
        const message = resolve(doc, resolve(doc, ref));
        const frame = document.createElement("details");
        frame.className = "frame " + operation.action;
        const summary = document.createElement("summary");
        summary.append(text("span", arrow, "direction"), text("code", message.name), " ");
        summary.append(message.summary || "");
        frame.append(summary, text("pre", JSON.stringify(resolve(doc, message.payload), null, 2)));
        list.append(frame);
      }
    }
    const rows = document.querySelector("#ws-close-codes tbody");
    for (const [code, name] of Object.entries(doc["x-close-codes"])) {
      const row = document.createElement("tr");
      row.append(text("td", code), text("td", name));
      rows.append(row);
    }
  });
