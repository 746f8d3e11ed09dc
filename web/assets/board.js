// The board: every agent, live. Rows are kept in a Map and only the rows in
// view are in the page, so 10,000 agents cost what a screenful does.
"use strict";

const ROW_HEIGHT = 32;
const STATES = ["alive", "expired", "left", "conflict", "flapping"];
const agents = new Map();
let shown = [];
let sortKey = "address";
let sortDown = false;
let dirty = true;

const viewport = document.getElementById("viewport");
const spacer = document.getElementById("spacer");
const filter = document.getElementById("filter");
const classFilter = document.getElementById("class-filter");
const stateFilter = document.getElementById("state-filter");

function matches(row, text, klass, state) {
  if (klass && row.agent_class !== klass) return false;
  if (state && row.state !== state) return false;
  if (!text) return true;
  const haystack = `${row.address} ${row.agent_class} ${row.host} ${row.operations.map((op) => op.name).join(" ")}`;
  return haystack.toLowerCase().includes(text);
}

function sortValue(row) {
  if (sortKey === "age") return -row.last_heartbeat;
  if (sortKey === "state") return STATES.indexOf(row.state);
  return row[sortKey] || "";
}

function recompute() {
  const text = filter.value.trim().toLowerCase();
  const klass = classFilter.value;
  const state = stateFilter.value;
  shown = [...agents.values()].filter((row) => matches(row, text, klass, state));
  shown.sort((a, b) => {
    const x = sortValue(a), y = sortValue(b);
    const order = x < y ? -1 : x > y ? 1 : a.address < b.address ? -1 : 1;
    return sortDown ? -order : order;
  });
  spacer.style.height = `${shown.length * ROW_HEIGHT}px`;
  renderCounts();
  renderClasses();
  dirty = false;
}

function renderCounts() {
  const counts = Object.fromEntries(STATES.map((state) => [state, 0]));
  for (const row of agents.values()) counts[row.state] = (counts[row.state] || 0) + 1;
  const box = document.getElementById("counts");
  box.replaceChildren(
    OCS.el("span", { class: "count", id: "count-all" }, OCS.el("b", { text: String(agents.size) }), " agents"),
    ...STATES.map((state) => {
      const pill = OCS.el("span", { class: `count ${state}`, id: `count-${state}` }, OCS.el("b", { text: String(counts[state]) }), ` ${state}`);
      pill.onclick = () => { stateFilter.value = stateFilter.value === state ? "" : state; dirty = true; };
      return pill;
    }),
  );
}

function renderClasses() {
  const classes = [...new Set([...agents.values()].map((row) => row.agent_class))].sort();
  const have = [...classFilter.options].slice(1).map((option) => option.value);
  if (have.join("\n") === classes.join("\n")) return;
  const selected = classFilter.value;
  classFilter.replaceChildren(OCS.el("option", { value: "", text: "every class" }),
    ...classes.map((klass) => OCS.el("option", { value: klass, text: klass })));
  classFilter.value = selected;
}

function rowNode(row, index) {
  const node = OCS.el("div", { class: `row ${row.state}`, "data-address": row.address });
  node.style.position = "absolute";
  node.style.top = `${index * ROW_HEIGHT}px`;
  node.style.left = "0";
  node.style.right = "0";
  const link = OCS.el("a", { href: `/agent/${encodeURIComponent(row.instance_id)}`, text: row.address });
  const state = row.unverified && row.state === "alive" ? "alive?" : row.state;
  node.append(
    OCS.el("span", {}, link),
    OCS.el("span", { text: row.agent_class }),
    OCS.el("span", { class: "state", text: state }),
    OCS.el("span", { class: "age", text: OCS.age(OCS.now() - row.last_heartbeat) }),
    OCS.el("span", { text: row.host }),
    OCS.el("span", { class: "ops" }, ...row.operations.map((op) =>
      OCS.el("span", { class: `op c${op.code}`, title: `${op.op_type} ${op.name}: ${OCS.OP_NAMES[op.code]}`, text: `${op.name}: ${OCS.OP_NAMES[op.code]}` }))),
  );
  return node;
}

function render() {
  if (dirty) recompute();
  const first = Math.max(0, Math.floor(viewport.scrollTop / ROW_HEIGHT) - 5);
  const last = Math.min(shown.length, Math.ceil((viewport.scrollTop + viewport.clientHeight) / ROW_HEIGHT) + 5);
  const nodes = [];
  for (let index = first; index < last; index++) nodes.push(rowNode(shown[index], index));
  spacer.replaceChildren(...nodes);
}

let frame = 0;
function schedule() {
  if (!frame) frame = requestAnimationFrame(() => { frame = 0; render(); });
}

function applyFleet(update) {
  if (update.reset) agents.clear();
  for (const row of update.agents) agents.set(row.address, row);
  for (const address of update.removed) agents.delete(address);
  document.getElementById("updated").textContent = `revision ${update.revision}`;
  dirty = true;
  schedule();
}

for (const input of [filter, classFilter, stateFilter]) input.addEventListener("input", () => { dirty = true; schedule(); });
document.getElementById("head").addEventListener("click", (event) => {
  const key = event.target.dataset.sort;
  if (!key) return;
  sortDown = key === sortKey ? !sortDown : false;
  sortKey = key;
  dirty = true;
  schedule();
});
viewport.addEventListener("scroll", schedule);
window.addEventListener("resize", schedule);
// Heartbeat ages tick on screen between events.
setInterval(schedule, 1000);

OCS.whoami().then((me) => { if (me) OCS.follow(applyFleet); });
