// One agent: its identity, each operation with its docs, params and
// session, refreshed every second; controls for operators only.
"use strict";

const instanceId = decodeURIComponent(location.pathname.split("/").pop());
const cards = new Map();
let opNames = "";

function paramValue(text) {
  // As the `ocs` CLI: JSON if it parses as JSON, else text.
  try { return JSON.parse(text); } catch (_) { return text; }
}

async function act(op, action, card) {
  const body = {};
  if (action === "start") {
    body.params = {};
    for (const input of card.querySelectorAll("input[data-param]"))
      if (input.value !== "") body.params[input.dataset.param] = paramValue(input.value);
  }
  if (action === "wait") body.timeout = Number(card.querySelector("input.wait-timeout").value) || 10;
  const reply = card.querySelector(".reply");
  reply.textContent = `${action}…`;
  const answer = await OCS.post(`/api/agents/${encodeURIComponent(instanceId)}/ops/${encodeURIComponent(op.op_name)}/${action}`, body);
  reply.textContent = OCS.renderReply(answer.value);
  refresh();
}

function buildCard(op) {
  const card = OCS.el("div", { class: "card", id: `op-${op.op_name}` });
  const badge = OCS.el("span", { class: "op" });
  card.append(OCS.el("h2", {}, `${op.op_type} ${op.op_name}`, badge));
  if (op.docstring) card.append(OCS.el("div", { class: "doc", text: op.docstring }));
  if (OCS.me.may_control) {
    const controls = OCS.el("div", { class: "controls" });
    for (const param of op.params) {
      controls.append(OCS.el("label", { title: param.description || "" }, `${param.name} `,
        OCS.el("input", { "data-param": param.name, size: "10", placeholder: param.description || "" })));
    }
    const stopAction = op.op_type === "process" ? "stop" : "abort";
    for (const action of ["start", stopAction, "wait"]) {
      const button = OCS.el("button", { class: `action-${action}`, text: action });
      button.onclick = () => act(op, action, card);
      controls.append(button);
    }
    controls.append(OCS.el("label", {}, "wait up to ", OCS.el("input", { class: "wait-timeout", size: "4", value: "10" }), " s"));
    card.append(controls);
  }
  card.append(OCS.el("div", { class: "reply" }));
  card.append(OCS.el("div", { class: "session" }));
  return card;
}

function showOperations(api) {
  const names = api.operations.map((op) => op.op_name).join(",");
  if (names !== opNames) {
    opNames = names;
    cards.clear();
    const box = document.getElementById("operations");
    box.replaceChildren(...api.operations.map((op) => {
      const card = buildCard(op);
      cards.set(op.op_name, card);
      return card;
    }));
  }
  for (const op of api.operations) {
    const card = cards.get(op.op_name);
    const code = op.session ? op.session.op_code : 1;
    const badge = card.querySelector("h2 .op");
    badge.className = `op c${code}`;
    badge.textContent = OCS.OP_NAMES[code];
    card.querySelector(".session").textContent = op.session
      ? OCS.renderSession(op.session).join("\n") : "No session yet.";
  }
}

async function refresh() {
  const reply = await fetch(`/api/agents/${encodeURIComponent(instanceId)}`, { credentials: "same-origin" });
  const facts = document.getElementById("facts");
  if (!reply.ok) {
    const body = await reply.json().catch(() => ({}));
    facts.textContent = `The agent does not answer: ${body.error || reply.status}`;
    return;
  }
  const api = await reply.json();
  document.getElementById("address").textContent = api.agent_address;
  facts.textContent = `${api.agent_class} on ${api.instance_hostname} pid ${api.instance_pid}, version ${api.version}, ` +
    `up ${OCS.age(api.uptime)}, incarnation ${api.incarnation}` + (api.feeds.length ? `; feeds: ${api.feeds.join(", ")}` : "");
  showOperations(api);
}

document.getElementById("ping").onclick = async () => {
  const out = document.getElementById("ping-result");
  const reply = await fetch(`/api/agents/${encodeURIComponent(instanceId)}/ping`, { credentials: "same-origin" });
  const body = await reply.json();
  out.textContent = reply.ok
    ? `answered in ${body.round_trip_ms.toFixed(1)} ms: incarnation ${body.incarnation}, up ${OCS.age(body.uptime)}, version ${body.version}`
    : `no answer: ${body.error}`;
};

OCS.whoami().then((me) => {
  if (!me) return;
  document.getElementById("address").textContent = instanceId;
  OCS.follow((update) => {
    const row = update.agents.find((agent) => agent.instance_id === instanceId);
    if (row) {
      const state = document.getElementById("state");
      state.textContent = row.state;
      state.className = `count ${row.state}`;
    }
  });
  refresh();
  setInterval(refresh, 1000);
});
